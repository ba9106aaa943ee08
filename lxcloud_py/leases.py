"""The network database: fixed leases (IP, MAC, DNS name) each pinned to one hypervisor.

A lease is identified by its IP address. The lease file (CSV with header ``ip,mac,name,host``,
or a YAML list of mappings with those keys) is the source of truth; :func:`import_leases`
validates every row, reports every problem with ``FILE:LINE``, and imports nothing unless the
whole file is good. Re-importing an unchanged file changes nothing; a changed file updates free
leases and only reports leases in use (a VM holds them); leases missing from the file are
reported and, with ``prune``, removed when free.

The file's format and its validation are :mod:`lxcloud_py.lease_file`; the export (dnsmasq,
CSV) is :mod:`lxcloud_py.lease_export`. The scheduler binds a VM to a free lease with
:func:`claim_lease` (atomic: ``UPDATE ... WHERE vm_id IS NULL`` and a rowcount check);
:func:`release_lease` frees the lease of a VM that ended.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from lxcloud_py.lease_file import (
    DEFAULT_PREFIX,
    LeaseFileError,
    LeaseRow,
    ip_key,
    line_of,
    parse_lease_file,
)
from lxcloud_py.model import InvalidInput, LeaseState
from lxcloud_py.store import Store, now, schema

_L = schema.leases


# -- import ------------------------------------------------------------------------------------
@dataclass
class ImportReport:
    added: list[LeaseRow] = field(default_factory=list)
    #: (new row, old lease) for free leases updated to the file's values
    updated: list[tuple[LeaseRow, dict[str, Any]]] = field(default_factory=list)
    unchanged: int = 0
    #: (wanted row, current lease) for leases in use whose row changed: left as they are
    in_use: list[tuple[LeaseRow, dict[str, Any]]] = field(default_factory=list)
    #: leases in the DB but not in the file, kept (not pruning, or in use)
    missing: list[dict[str, Any]] = field(default_factory=list)
    pruned: list[dict[str, Any]] = field(default_factory=list)
    #: rows pinned to a host that has not registered (yet)
    unknown_hosts: list[LeaseRow] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.pruned)

    def summary(self) -> str:
        parts = [
            f"{len(self.added)} added",
            f"{len(self.updated)} updated",
            f"{self.unchanged} unchanged",
        ]
        if self.in_use:
            parts.append(f"{len(self.in_use)} in use (not changed)")
        if self.pruned:
            parts.append(f"{len(self.pruned)} pruned")
        if self.missing:
            parts.append(f"{len(self.missing)} not in the file (kept)")
        return ", ".join(parts)


def _in_use(lease: dict[str, Any]) -> bool:
    return lease["vm_id"] is not None or lease["state"] != LeaseState.FREE


def _describe(lease: dict[str, Any]) -> str:
    text = f"lease {lease['ip']} ({lease['name']}, host {lease['host']}"
    if lease.get("vm_id") is not None:
        text += f", in use by VM {lease['vm_id']}"
    return text + ")"


def import_leases(
    store: Store,
    path: str | os.PathLike[str],
    *,
    prune: bool = False,
    dry_run: bool = False,
    strict: bool = False,
    prefix: int = DEFAULT_PREFIX,
) -> ImportReport:
    """Validate the lease file against itself and the database and apply it in one
    transaction. Raises :class:`LeaseFileError` listing every problem; nothing changes then.
    Rows pinned to a host that is not registered are reported in ``unknown_hosts`` (the host
    may register later), or refused with ``strict``."""
    fname = str(path)
    rows, errors = parse_lease_file(path, prefix)
    with store.transaction() as conn:
        # Lock the leases (MySQL) so no claim slips between the checks and the writes.
        current = [
            dict(r._mapping) for r in conn.execute(store.for_update(select(_L).order_by(_L.c.id)))
        ]
        by_ip = {lease["ip"]: lease for lease in current}
        report = ImportReport()
        known = set(conn.execute(select(schema.hosts.c.name)).scalars())
        for row in rows:
            if row.host not in known:
                report.unknown_hosts.append(row)
                if strict:
                    errors.append(f"{fname}:{row.line}: host {row.host} is not registered")
        in_file = {row.ip for row in rows}
        # Final state of every lease: the file's values where they apply, else the current.
        final: dict[str, tuple[str, str]] = {}  # ip -> (mac, name) after the import
        origin: dict[str, dict[str, Any]] = {}  # ip -> the DB lease, if it exists
        for lease in current:
            if lease["ip"] in in_file:
                continue
            if prune and not _in_use(lease):
                report.pruned.append(lease)
                continue
            report.missing.append(lease)
            final[lease["ip"]] = (lease["mac"], lease["name"])
            origin[lease["ip"]] = lease
        applied: list[LeaseRow] = []
        for row in rows:
            old = by_ip.get(row.ip)
            if old is None:
                report.added.append(row)
                applied.append(row)
                final[row.ip] = (row.mac, row.name)
                continue
            origin[row.ip] = old
            if (old["mac"], old["name"], old["host"]) == (row.mac, row.name, row.host):
                report.unchanged += 1
                applied.append(row)
                final[row.ip] = (row.mac, row.name)
            elif _in_use(old):
                report.in_use.append((row, old))
                final[row.ip] = (old["mac"], old["name"])
            else:
                report.updated.append((row, old))
                applied.append(row)
                final[row.ip] = (row.mac, row.name)
        holder_mac: dict[str, list[str]] = {}
        holder_name: dict[str, list[str]] = {}
        for ip, (mac, name) in final.items():
            holder_mac.setdefault(mac, []).append(ip)
            holder_name.setdefault(name, []).append(ip)
        for row in applied:
            for label, holder, value in (
                ("MAC", holder_mac, row.mac),
                ("DNS name", holder_name, row.name),
            ):
                for other_ip in holder.get(value, []):
                    if other_ip == row.ip:
                        continue
                    other = origin.get(other_ip)
                    desc = _describe(other) if other else f"lease {other_ip}"
                    hint = ""
                    if other and other_ip not in in_file:
                        hint = "; it is not in the file" + (
                            "" if _in_use(other) else ": --prune removes it"
                        )
                    elif other:
                        hint = "; it is in use and keeps its values"
                    errors.append(f"{fname}:{row.line}: {label} {value} is held by {desc}{hint}")
        if errors:
            errors.sort(key=line_of)
            raise LeaseFileError(errors)
        if dry_run:
            return report
        _apply(conn, report)
    return report


def _apply(conn: Connection, report: ImportReport) -> None:
    t = now()
    hist: list[dict[str, Any]] = []
    for lease in report.pruned:
        res = conn.execute(delete(_L).where(_L.c.id == lease["id"], _L.c.vm_id.is_(None)))
        if res.rowcount != 1:
            raise InvalidInput(f"{_describe(lease)} was claimed during the import; retry")
        hist.append(_hist(t, lease["id"], lease["state"], None, f"pruned {lease['ip']}"))
    # Two steps so that swapped MACs/names between leases never collide half-way.
    for _row, old in report.updated:
        conn.execute(
            update(_L)
            .where(_L.c.id == old["id"])
            .values(mac=f"~{old['id']:x}"[:17], name=f"~{old['id']}")
        )
    for row, old in report.updated:
        res = conn.execute(
            update(_L)
            .where(_L.c.id == old["id"], _L.c.vm_id.is_(None))
            .values(mac=row.mac, name=row.name, host=row.host, updated=t)
        )
        if res.rowcount != 1:
            raise InvalidInput(f"{_describe(old)} was claimed during the import; retry")
        changes = [
            f"{k} {old[k]} -> {getattr(row, k)}"
            for k in ("mac", "name", "host")
            if old[k] != getattr(row, k)
        ]
        hist.append(_hist(t, old["id"], old["state"], old["state"], "; ".join(changes)))
    if report.added:
        conn.execute(
            insert(_L),
            [
                dict(ip=r.ip, mac=r.mac, name=r.name, host=r.host, state=LeaseState.FREE, updated=t)
                for r in report.added
            ],
        )
        ids: dict[str, int] = {
            ip: lease_id for ip, lease_id in conn.execute(select(_L.c.ip, _L.c.id))
        }
        hist.extend(
            _hist(t, ids[r.ip], None, LeaseState.FREE, f"added {r.ip} {r.mac} {r.name} {r.host}")
            for r in report.added
        )
    if hist:
        conn.execute(insert(schema.history), hist)


def _hist(t: float, lease_id: int, old: str | None, new: str | None, msg: str) -> dict[str, Any]:
    return dict(
        ts=t, kind="lease", object_id=lease_id, old_state=old, new_state=new, message=msg[:1024]
    )


# -- queries and claims ------------------------------------------------------------------------
def list_leases(
    conn: Connection, host: str | None = None, state: str | None = None
) -> list[dict[str, Any]]:
    stmt = select(_L)
    if host is not None:
        stmt = stmt.where(_L.c.host == host)
    if state is not None:
        stmt = stmt.where(_L.c.state == state)
    rows = [dict(r._mapping) for r in conn.execute(stmt)]
    rows.sort(key=ip_key)
    return rows


def leases_for_host(conn: Connection, host: str) -> list[dict[str, Any]]:
    """Every lease pinned to ``host`` (by host name), in IP order."""
    return list_leases(conn, host=host)


def lease_of_vm(conn: Connection, vm_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(_L).where(_L.c.vm_id == vm_id)).first()
    return dict(row._mapping) if row else None


# Built once: claims run thousands of times per scheduling cycle.
_FREE = (_L.c.id == bindparam("lid"), _L.c.vm_id.is_(None), _L.c.state == LeaseState.FREE)
_CLAIM = (
    update(_L)
    .where(*_FREE)
    .values(vm_id=bindparam("vid"), state=LeaseState.USED, updated=bindparam("t"))
)
_CLAIM_AS_SEEN = _CLAIM.where(
    _L.c.ip == bindparam("seen_ip"),
    _L.c.mac == bindparam("seen_mac"),
    _L.c.name == bindparam("seen_name"),
    _L.c.host == bindparam("seen_host"),
)
_HISTORY = insert(schema.history)


def claim_lease(conn: Connection, lease_id: int, vm_id: int, *, as_seen: Any = None) -> bool:
    """Bind a free lease to a VM, atomically: False when someone else got it first.

    ``as_seen`` (anything with ``ip``, ``mac``, ``name`` and ``host`` attributes: the lease as
    the caller read it) makes the claim fail too if a concurrent import changed the lease,
    e.g. re-pinned it to another host, since the caller read it."""
    t = now()
    params: dict[str, Any] = {"lid": lease_id, "vid": vm_id, "t": t}
    stmt = _CLAIM
    if as_seen is not None:
        stmt = _CLAIM_AS_SEEN
        params.update(
            seen_ip=as_seen.ip,
            seen_mac=as_seen.mac,
            seen_name=as_seen.name,
            seen_host=as_seen.host,
        )
    res = conn.execute(stmt, params)
    if res.rowcount != 1:
        return False
    conn.execute(
        _HISTORY,
        _hist(t, lease_id, LeaseState.FREE, LeaseState.USED, f"claimed by VM {vm_id}"),
    )
    return True


def release_lease(conn: Connection, vm_id: int) -> int | None:
    """Free the lease held by a VM that ended; returns the lease id (None if it held none)."""
    lease_id = conn.execute(select(_L.c.id).where(_L.c.vm_id == vm_id)).scalar_one_or_none()
    if lease_id is None:
        return None
    conn.execute(
        update(_L)
        .where(_L.c.id == lease_id, _L.c.vm_id == vm_id)
        .values(vm_id=None, state=LeaseState.FREE, updated=now())
    )
    Store.record(
        conn, "lease", lease_id, LeaseState.USED, LeaseState.FREE, f"released by VM {vm_id}"
    )
    return int(lease_id)


