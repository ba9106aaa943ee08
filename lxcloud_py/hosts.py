"""Hypervisor hosts: allocation, registration with capacity and allowed MACs, heartbeats,
operator status changes and the staleness monitor.

States are OpenNebula's (:class:`lxcloud_py.model.HostState`). A host that registers or
heartbeats is MONITORED (an operator's DISABLED or OFFLINE stays); :func:`mark_stale` turns a
host that missed ``missed`` heartbeat intervals into ERROR, and its next report brings it back.
Every state change is recorded in the history.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.lxcloud.cloud.plugins.module_utils.names import (
    InvalidName,
    validate_mac,
    validate_name,
)
from sqlalchemy import Connection, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from lxcloud_py.model import (
    LIVE_VM_STATES,
    Conflict,
    HostState,
    ImageState,
    InvalidInput,
    NotFound,
)
from lxcloud_py.store import Store, now, schema

log = logging.getLogger("lxcloud.hosts")

_H, _M, _V = schema.hosts, schema.host_macs, schema.vms
_I, _HI = schema.images, schema.host_images
MAX_INFO_BYTES = 256 * 1024
MAX_MACS = 4096
#: Host states an operator chose; registration and heartbeats leave them alone.
OPERATOR_STATES = (HostState.DISABLED, HostState.OFFLINE)
#: States the staleness monitor watches.
WATCHED_STATES = (HostState.INIT, HostState.MONITORED, HostState.MONITORING_MONITORED)
#: one.host.status values (OpenNebula: 0 enabled, 1 disabled, 2 offline).
STATUS_ENABLE, STATUS_DISABLE, STATUS_OFFLINE = 0, 1, 2


def check_name(name: object) -> str:
    try:
        return str(validate_name(name, "host name"))
    except InvalidName as exc:
        raise InvalidInput(str(exc)) from None


def _macs(macs: Iterable[object]) -> list[str]:
    out: set[str] = set()
    bad = []
    for m in macs:
        try:
            out.add(str(validate_mac(m)))
        except InvalidName:
            bad.append(repr(m))
    if bad:
        raise InvalidInput(f"bad MAC address(es): {', '.join(bad[:10])}")
    if len(out) > MAX_MACS:
        raise InvalidInput(f"more than {MAX_MACS} MAC addresses")
    return sorted(out)


def _number(value: object, what: str, integer: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{what} must be a number, got {value!r}")
    if value < 0 or value != value or value == float("inf"):
        raise InvalidInput(f"{what} must be a non-negative number, got {value!r}")
    if integer:
        if int(value) != value:
            raise InvalidInput(f"{what} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def _info_json(info: Mapping[str, Any] | None) -> str | None:
    if info is None:
        return None
    if not isinstance(info, Mapping):
        raise InvalidInput("info must be a struct")
    text = json.dumps(info, sort_keys=True, default=str)
    if len(text) > MAX_INFO_BYTES:
        raise InvalidInput(f"info larger than {MAX_INFO_BYTES} bytes")
    return text


def _set_state(conn: Connection, row: Any, new: HostState, message: str, **values: Any) -> None:
    conn.execute(update(_H).where(_H.c.id == row.id).values(state=int(new), **values))
    if row.state != new:
        Store.record(conn, "host", row.id, HostState(row.state), new, message)
        log.info("host %s: %s -> %s (%s)", row.name, HostState(row.state).name, new.name, message)


def _by_name(store: Store, conn: Connection, name: str) -> Any:
    return conn.execute(store.for_update(select(_H).where(_H.c.name == name))).first()


def _by_id(store: Store, conn: Connection, host_id: int) -> Any:
    row = conn.execute(store.for_update(select(_H).where(_H.c.id == host_id))).first()
    if row is None:
        raise NotFound(f"host {host_id} does not exist")
    return row


# -- operations ---------------------------------------------------------------------------------
def allocate(store: Store, name: str, im_mad: str = "lxcloud", vmm_mad: str = "kvm") -> int:
    """Create a host in INIT (OpenNebula's one.host.allocate); Conflict if the name is taken."""
    name = check_name(name)
    for value, what in ((im_mad, "im_mad"), (vmm_mad, "vmm_mad")):
        if not isinstance(value, str) or len(value) > 32:
            raise InvalidInput(f"{what} must be a name of at most 32 characters")
        if value:
            try:
                validate_name(value, what)
            except InvalidName as exc:
                raise InvalidInput(str(exc)) from None
    try:
        with store.transaction() as conn:
            old = _by_name(store, conn, name)
            if old is not None:
                raise Conflict(f"NAME is already taken by HOST {old.id}")
            res = conn.execute(
                insert(_H).values(
                    name=name,
                    state=int(HostState.INIT),
                    im_mad=im_mad or "lxcloud",
                    vmm_mad=vmm_mad or "kvm",
                    created=now(),
                )
            )
            host_id = _inserted_id(res)
            Store.record(conn, "host", host_id, None, HostState.INIT, "allocated")
            return host_id
    except IntegrityError:  # a concurrent allocation/registration of the same name won
        raise Conflict(f"NAME {name} is already taken") from None


def register(
    store: Store,
    name: str,
    cpu: object,
    memory_mb: object,
    disk_mb: object,
    macs: Iterable[object],
    info: Mapping[str, Any] | None = None,
) -> int:
    """Create or update a host with its capacity and allowed MACs (never a duplicate);
    last_seen = now; state MONITORED unless an operator disabled it or set it offline."""
    name = check_name(name)
    cpu_f = float(_number(cpu, "cpu"))
    mem = int(_number(memory_mb, "memory_mb", integer=True))
    disk = int(_number(disk_mb, "disk_mb", integer=True))
    if isinstance(macs, str | bytes) or not isinstance(macs, Iterable):
        raise InvalidInput("macs must be an array of MAC addresses")
    mac_list = _macs(macs)
    info_text = _info_json(info)
    try:
        return _register(store, name, cpu_f, mem, disk, mac_list, info_text)
    except IntegrityError:
        # Two first registrations of one name raced (MySQL does not lock a missing row):
        # the loser's insert hit the unique name; now the row exists and this updates it.
        return _register(store, name, cpu_f, mem, disk, mac_list, info_text)


def _register(
    store: Store,
    name: str,
    cpu_f: float,
    mem: int,
    disk: int,
    mac_list: list[str],
    info_text: str | None,
) -> int:
    t = now()
    with store.transaction() as conn:
        row = _by_name(store, conn, name)
        values: dict[str, Any] = dict(
            cpu=cpu_f, memory_mb=mem, disk_mb=disk, registered=t, last_seen=t
        )
        if info_text is not None:
            values["info"] = info_text
        if row is None:
            res = conn.execute(
                insert(_H).values(name=name, state=int(HostState.MONITORED), created=t, **values)
            )
            host_id = _inserted_id(res)
            Store.record(
                conn,
                "host",
                host_id,
                None,
                HostState.MONITORED,
                f"registered: {cpu_f:g} cores, {mem} MiB, {disk} MiB disk, {len(mac_list)} MACs",
            )
        else:
            host_id = int(row.id)
            new = HostState(row.state) if row.state in OPERATOR_STATES else HostState.MONITORED
            changes = []
            for key, val in (("cpu", cpu_f), ("memory_mb", mem), ("disk_mb", disk)):
                if getattr(row, key) != val:
                    changes.append(f"{key} {getattr(row, key):g} -> {val:g}")
            _set_state(conn, row, new, "re-registered", **values)
            if changes:
                Store.record(conn, "host", host_id, new, new, "capacity: " + ", ".join(changes))
        old_macs = {m for (m,) in conn.execute(select(_M.c.mac).where(_M.c.host_id == host_id))}
        if old_macs != set(mac_list):
            if old_macs - set(mac_list):
                conn.execute(delete(_M).where(_M.c.host_id == host_id, _M.c.mac.not_in(mac_list)))
            add = [m for m in mac_list if m not in old_macs]
            if add:
                conn.execute(insert(_M), [{"host_id": host_id, "mac": m} for m in add])
            if row is not None:
                Store.record(
                    conn,
                    "host",
                    host_id,
                    None,
                    None,
                    f"MACs: {len(add)} added, {len(old_macs - set(mac_list))} removed",
                )
        return host_id


def heartbeat(store: Store, name: str, info: Mapping[str, Any] | None = None) -> int:
    """The host is alive: last_seen = now; ERROR/INIT → MONITORED (operator states stay)."""
    name = check_name(name)
    info_text = _info_json(info)
    with store.transaction() as conn:
        row = _by_name(store, conn, name)
        if row is None:
            raise NotFound(f"host {name!r} is not registered")
        values: dict[str, Any] = {"last_seen": now()}
        if info_text is not None:
            values["info"] = info_text
        new = HostState(row.state) if row.state in OPERATOR_STATES else HostState.MONITORED
        _set_state(conn, row, new, "heartbeat", **values)
        return int(row.id)


def set_status(store: Store, host_id: int, status: int) -> int:
    """one.host.status: 0 enable (MONITORED if it ever reported, else INIT), 1 disable,
    2 offline."""
    with store.transaction() as conn:
        row = _by_id(store, conn, host_id)
        if status == STATUS_ENABLE:
            new = HostState.MONITORED if row.last_seen is not None else HostState.INIT
            if row.state not in OPERATOR_STATES:
                new = HostState(row.state)  # already enabled: leave monitoring's verdict
            message = "enabled"
        elif status == STATUS_DISABLE:
            new, message = HostState.DISABLED, "disabled"
        elif status == STATUS_OFFLINE:
            new, message = HostState.OFFLINE, "set offline"
        else:
            raise InvalidInput(f"status must be 0 (enable), 1 (disable) or 2 (offline): {status}")
        _set_state(conn, row, new, message)
        return int(row.id)


def delete_host(store: Store, host_id: int) -> int:
    """Remove a host without live VMs (with its MACs and image records)."""
    with store.transaction() as conn:
        row = _by_id(store, conn, host_id)
        live = conn.execute(
            select(func.count())
            .select_from(_V)
            .where(_V.c.host_id == host_id, _V.c.state.in_(LIVE_VM_STATES))
        ).scalar_one()
        if live:
            raise Conflict(f"host {row.name} has {live} live VM(s); terminate them first")
        # Ended VMs keep their record; they forget the host.
        conn.execute(update(_V).where(_V.c.host_id == host_id).values(host_id=None))
        conn.execute(delete(_M).where(_M.c.host_id == host_id))
        conn.execute(delete(_HI).where(_HI.c.host_id == host_id))
        conn.execute(delete(_H).where(_H.c.id == host_id))
        Store.record(conn, "host", host_id, HostState(row.state), None, f"deleted {row.name}")
        return int(host_id)


def report_image(store: Store, host: str, image: str, version: str, sha256: str, state: str) -> int:
    """A host tells what it holds of an image (``verified``/``failed``/``absent``)."""
    host = check_name(host)
    if state not in (ImageState.VERIFIED, ImageState.FAILED, ImageState.ABSENT):
        raise InvalidInput(f"state must be verified, failed or absent: {state!r}")
    if not isinstance(sha256, str) or (sha256 and len(sha256) != 64):
        raise InvalidInput(f"bad sha256 {sha256!r}")
    with store.transaction() as conn:
        row = conn.execute(select(_H.c.id).where(_H.c.name == host)).first()
        if row is None:
            raise NotFound(f"host {host!r} is not registered")
        img = conn.execute(
            select(_I.c.id, _I.c.sha256).where(_I.c.name == image, _I.c.version == version)
        ).first()
        if img is None:
            raise NotFound(f"image {image} version {version} is not registered")
        if state == ImageState.VERIFIED and sha256.lower() != img.sha256:
            raise Conflict(
                f"host {host} verified {image} {version} with sha256 {sha256}, "
                f"the registered image has {img.sha256}"
            )
        old = conn.execute(
            store.for_update(
                select(_HI.c.state).where(_HI.c.host_id == row.id, _HI.c.image_id == img.id)
            )
        ).scalar_one_or_none()
        values = dict(state=state, sha256=sha256.lower() or None, updated=now())
        if old is None:
            conn.execute(insert(_HI).values(host_id=row.id, image_id=img.id, **values))
        else:
            conn.execute(
                update(_HI)
                .where(_HI.c.host_id == row.id, _HI.c.image_id == img.id)
                .values(**values)
            )
        if old != state:
            Store.record(conn, "image", int(img.id), old, state, f"on host {host}")
        return int(row.id)


def mark_stale(store: Store, now: float, interval: float, missed: int) -> list[tuple[int, str]]:
    """At time ``now``, hosts that have not reported for more than ``missed`` intervals
    (counted from their last report, or from their creation if they never reported) go to
    ERROR, with a history record; returns their (id, name)."""
    limit = now - interval * missed
    seen = func.coalesce(_H.c.last_seen, _H.c.created)
    marked: list[tuple[int, str]] = []
    with store.transaction() as conn:
        rows = conn.execute(
            store.for_update(
                select(_H).where(_H.c.state.in_([int(s) for s in WATCHED_STATES]), seen < limit)
            )
        ).all()
        for row in rows:
            last = row.last_seen if row.last_seen is not None else row.created
            _set_state(
                conn,
                row,
                HostState.ERROR,
                f"no report for {now - last:.0f} s ({missed} intervals of {interval:g} s)",
            )
            marked.append((int(row.id), str(row.name)))
    return marked


# -- queries ------------------------------------------------------------------------------------
def get(conn: Connection, host_id: int) -> dict[str, Any]:
    row = conn.execute(select(_H).where(_H.c.id == host_id)).first()
    if row is None:
        raise NotFound(f"host {host_id} does not exist")
    return dict(row._mapping)


def list_hosts(conn: Connection, ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """Hosts with usage (cpu_used, memory_used, vms: ids of live VMs), MACs and images."""
    stmt = select(_H).order_by(_H.c.id)
    if ids is not None:
        stmt = stmt.where(_H.c.id.in_(list(ids)))
    hosts = {r.id: dict(r._mapping) for r in conn.execute(stmt)}
    for h in hosts.values():
        h.update(cpu_used=0.0, memory_used=0, vms=[], macs=[], images=[])
    if not hosts:
        return []
    host_ids = list(hosts)
    for vm_id, host_id, cpu, mem in conn.execute(
        select(_V.c.id, _V.c.host_id, _V.c.cpu, _V.c.memory_mb)
        .where(_V.c.host_id.in_(host_ids), _V.c.state.in_(LIVE_VM_STATES))
        .order_by(_V.c.id)
    ):
        h = hosts[host_id]
        h["cpu_used"] += float(cpu or 0)
        h["memory_used"] += int(mem or 0)
        h["vms"].append(int(vm_id))
    for host_id, mac in conn.execute(
        select(_M.c.host_id, _M.c.mac).where(_M.c.host_id.in_(host_ids)).order_by(_M.c.mac)
    ):
        hosts[host_id]["macs"].append(mac)
    for host_id, name, version, state in conn.execute(
        select(_HI.c.host_id, _I.c.name, _I.c.version, _HI.c.state)
        .join(_I, _I.c.id == _HI.c.image_id)
        .where(_HI.c.host_id.in_(host_ids))
        .order_by(_I.c.name, _I.c.version)
    ):
        hosts[host_id]["images"].append({"name": name, "version": version, "state": state})
    return list(hosts.values())


def find_id(conn: Connection, name_or_id: str) -> int:
    """A host id from a name or a numeric id (CLI convenience)."""
    stmt = select(_H.c.id).where(
        or_(_H.c.name == name_or_id, _H.c.id == (int(name_or_id) if name_or_id.isdigit() else -1))
    )
    found = conn.execute(stmt).scalar_one_or_none()
    if found is None:
        raise NotFound(f"no host {name_or_id!r}")
    return int(found)


def _inserted_id(res: Any) -> int:
    """The primary key of the row an INSERT created."""
    pk = res.inserted_primary_key
    if pk is None:  # pragma: no cover - every table here has an autoincrement key
        raise RuntimeError("INSERT returned no primary key")
    return int(pk[0])
