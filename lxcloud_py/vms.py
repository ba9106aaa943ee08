"""Virtual machines: allocation from an OpenNebula template, life-cycle actions with
OpenNebula's state rules, callback tokens and pool queries.

A new VM is PENDING (or HOLD) until the scheduler binds it to a lease and a host. Actions
(``one.vm.action``) follow OpenNebula's rules; a wrong-state action raises :class:`WrongState`
(the API's ACTION error, 0x0800):

=================  ============================================  ==============================
action             allowed from                                  result
=================  ============================================  ==============================
terminate[-hard]   PENDING, HOLD                                 DONE at once, lease freed
terminate[-hard]   ACTIVE (any LCM state), POWEROFF              ACTIVE/SHUTDOWN: the executor
                                                                 destroys domain and clone
poweroff[-hard]    ACTIVE/RUNNING, ACTIVE/UNKNOWN                ACTIVE/SHUTDOWN_POWEROFF
resume             POWEROFF                                      ACTIVE/BOOT_POWEROFF
reboot             ACTIVE/RUNNING                                unchanged, recorded
hold               PENDING                                       HOLD
release            HOLD                                          PENDING
=================  ============================================  ==============================

Repeating ``terminate`` on a VM already in SHUTDOWN, or ``poweroff`` on one already in
SHUTDOWN_POWEROFF, succeeds without a change (an in-VM callback whose reply was lost retries).
Every state change is recorded in the history, with the action's name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ansible_collections.lxcloud.cloud.plugins.module_utils.names import (
    InvalidName,
    validate_name,
)
from sqlalchemy import Connection, insert, select, update

from lxcloud_py import auth, template
from lxcloud_py.leases import release_lease
from lxcloud_py.model import Conflict, InvalidInput, LCMState, NotFound, VMState
from lxcloud_py.store import Store, now, schema

log = logging.getLogger("lxcloud.vms")

_V, _L, _H, _I, _U = schema.vms, schema.leases, schema.hosts, schema.images, schema.users

ACTIONS = (
    "terminate",
    "terminate-hard",
    "poweroff",
    "poweroff-hard",
    "resume",
    "reboot",
    "hold",
    "release",
)
#: Actions a VM may ask for itself with its callback token.
SELF_ACTIONS = ("terminate", "terminate-hard", "poweroff", "poweroff-hard")
MAX_LIFETIME = 10 * 365 * 86400


class WrongState(Conflict):
    """The action is not allowed in the VM's current state (OpenNebula ACTION error)."""


@dataclass(frozen=True)
class Spec:
    """What a template asks for."""

    name: str | None
    cpu: float
    vcpu: int
    memory_mb: int
    image: str | None
    lifetime: int | None
    template: template.Template


def _float(tpl: template.Template, key: str, default: float) -> float:
    raw = tpl.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{key} must be a number, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise InvalidInput(f"{key} must be greater than 0, got {raw!r}")
    return value


def _int(tpl: template.Template, key: str, default: int | None, minimum: int) -> int | None:
    raw = tpl.get(key)
    if raw is None:
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise InvalidInput(f"{key} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise InvalidInput(f"{key} must be at least {minimum}, got {raw!r}")
    return value


def parse_spec(text: str) -> Spec:
    """Parse and validate a VM template (NAME, CPU, VCPU, MEMORY, DISK/IMAGE, CONTEXT,
    LIFETIME; other attributes are kept as they are)."""
    tpl = template.parse(text)
    name = tpl.get("NAME")
    if name is not None:
        try:
            validate_name(name, "NAME")
        except InvalidName as exc:
            raise InvalidInput(str(exc)) from None
    cpu = _float(tpl, "CPU", 1.0)
    vcpu = _int(tpl, "VCPU", 1, 1) or 1
    if vcpu > 1024:
        raise InvalidInput(f"VCPU {vcpu} is more than 1024")
    memory = _int(tpl, "MEMORY", 512, 1) or 512
    lifetime = _int(tpl, "LIFETIME", None, 0)
    if lifetime is not None and lifetime > MAX_LIFETIME:
        raise InvalidInput(f"LIFETIME {lifetime} is more than ten years")
    images = [d["IMAGE"] for d in tpl.vectors("DISK") if "IMAGE" in d]
    if len(images) > 1:
        raise InvalidInput("lxcloud VMs boot one image: give IMAGE in one DISK only")
    for d in tpl.vectors("DISK"):
        if "IMAGE" not in d:
            raise InvalidInput("every DISK needs an IMAGE (lxcloud has no volatile disks)")
    image = images[0] if images else None
    if image is not None:
        try:
            validate_name(image, "DISK/IMAGE")
        except InvalidName as exc:
            raise InvalidInput(str(exc)) from None
    if len(tpl.vectors("CONTEXT")) > 1:
        raise InvalidInput("CONTEXT given more than once")
    for key in ("NAME", "CPU", "VCPU", "MEMORY", "LIFETIME"):
        if len(tpl.get_all(key)) > 1:
            raise InvalidInput(f"{key} given more than once")
    for key in ("NIC",):
        if tpl.get_all(key):
            raise InvalidInput("NIC is assigned by lxcloud (the VM's lease), not in the template")
    return Spec(name, cpu, vcpu, memory, image, lifetime, tpl)


# -- allocation and tokens ----------------------------------------------------------------------
def allocate(
    store: Store,
    text: str,
    owner_id: int,
    hold: bool = False,
    pool_id: int | None = None,
) -> tuple[int, str]:
    """Create a VM from a template; returns (id, callback token). PENDING, or HOLD."""
    spec = parse_spec(text)
    with store.transaction() as conn:
        return insert_vm(conn, spec, owner_id, hold=hold, pool_id=pool_id)


def insert_vm(
    conn: Connection,
    spec: Spec,
    owner_id: int,
    hold: bool = False,
    pool_id: int | None = None,
    note: str = "",
) -> tuple[int, str]:
    """Insert a VM for a parsed template in the caller's transaction (the one path of
    ``one.vm.allocate`` and of pool refills); returns (id, callback token)."""
    token = auth.new_token()
    state = VMState.HOLD if hold else VMState.PENDING
    res = conn.execute(
        insert(_V).values(
            name=spec.name or "one-new",
            owner_id=owner_id,
            template=spec.template.to_text(),
            state=int(state),
            lcm_state=int(LCMState.LCM_INIT),
            cpu=spec.cpu,
            vcpu=spec.vcpu,
            memory_mb=spec.memory_mb,
            image_name=spec.image,
            pool_id=pool_id,
            lifetime=spec.lifetime,
            created=now(),
            token_hash=auth.hash_token(token),
        )
    )
    vm_id = _inserted_id(res)
    if spec.name is None:
        conn.execute(update(_V).where(_V.c.id == vm_id).values(name=f"one-{vm_id}"))
    message = "allocated" + (" on hold" if hold else "") + (f" ({note})" if note else "")
    Store.record(conn, "vm", vm_id, None, state, message)
    log.info("VM %d allocated (%s)%s", vm_id, state.name, f" {note}" if note else "")
    return vm_id, token


def issue_token(store: Store, vm_id: int) -> str:
    """A new callback token for the VM; the old one stops working."""
    token = auth.new_token()
    with store.transaction() as conn:
        res = conn.execute(
            update(_V).where(_V.c.id == vm_id).values(token_hash=auth.hash_token(token))
        )
        if res.rowcount != 1:
            raise NotFound(f"VM {vm_id} does not exist")
        Store.record(conn, "vm", vm_id, None, None, "callback token re-issued")
    return token


# -- actions ------------------------------------------------------------------------------------
def _state_text(state: int, lcm: int) -> str:
    s = VMState(state).name
    if state == VMState.ACTIVE:
        try:
            return f"{s}/{LCMState(lcm).name}"
        except ValueError:
            return f"{s}/{lcm}"
    return s


def action(store: Store, vm_id: int, name: str) -> int:
    """Apply ``one.vm.action`` ``name`` to the VM; returns its id."""
    if name not in ACTIONS:
        raise InvalidInput(f"unknown action {name!r} (known: {', '.join(ACTIONS)})")
    with store.transaction() as conn:
        return action_in(store, conn, vm_id, name)


def action_in(store: Store, conn: Connection, vm_id: int, name: str, why: str = "") -> int:
    """:func:`action` in the caller's transaction (``why`` is added to the history record)."""
    row = conn.execute(store.for_update(select(_V).where(_V.c.id == vm_id))).first()
    if row is None:
        raise NotFound(f"VM {vm_id} does not exist")
    state, lcm = VMState(row.state), int(row.lcm_state)
    current = _state_text(state, lcm)
    new: tuple[VMState, LCMState] | None = None
    extra: dict[str, Any] = {}
    free_lease = False
    if name in ("terminate", "terminate-hard"):
        if state in (VMState.PENDING, VMState.HOLD):
            new = (VMState.DONE, LCMState.LCM_INIT)
            extra["ended"] = now()
            free_lease = True
        elif state == VMState.ACTIVE and lcm == LCMState.SHUTDOWN:
            return vm_id  # already being terminated
        elif state in (VMState.ACTIVE, VMState.POWEROFF):
            new = (VMState.ACTIVE, LCMState.SHUTDOWN)
    elif name in ("poweroff", "poweroff-hard"):
        if state == VMState.ACTIVE and lcm == LCMState.SHUTDOWN_POWEROFF:
            return vm_id
        if state == VMState.ACTIVE and lcm in (LCMState.RUNNING, LCMState.UNKNOWN):
            new = (VMState.ACTIVE, LCMState.SHUTDOWN_POWEROFF)
    elif name == "resume":
        if state == VMState.POWEROFF:
            new = (VMState.ACTIVE, LCMState.BOOT_POWEROFF)
    elif name == "reboot":
        if state == VMState.ACTIVE and lcm == LCMState.RUNNING:
            Store.record(conn, "vm", vm_id, current, current, "reboot requested")
            return vm_id
    elif name == "hold":
        if state == VMState.PENDING:
            new = (VMState.HOLD, LCMState.LCM_INIT)
    elif name == "release" and state == VMState.HOLD:
        new = (VMState.PENDING, LCMState.LCM_INIT)
    if new is None:
        raise WrongState(f"cannot {name} VM {vm_id} in state {current}")
    res = conn.execute(
        update(_V)
        .where(_V.c.id == vm_id, _V.c.state == row.state, _V.c.lcm_state == row.lcm_state)
        .values(state=int(new[0]), lcm_state=int(new[1]), **extra)
    )
    if res.rowcount != 1:  # pragma: no cover - the row lock/BEGIN IMMEDIATE prevents it
        raise WrongState(f"VM {vm_id} changed state during {name}; retry")
    Store.record(conn, "vm", vm_id, current, _state_text(*new), f"{name}: {why}" if why else name)
    if free_lease:
        release_lease(conn, vm_id)
    log.info("VM %d: %s: %s -> %s", vm_id, name, current, _state_text(*new))
    return vm_id


# -- exit reasons (Vac's shutdown codes) ------------------------------------------------------
#: The codes a VM may end itself with (Vac/Vcycle's), and what they mean.
EXIT_CODES: dict[int, str] = {
    100: "shutdown as requested by the host (lifetime reached, drain)",
    200: "intended work completed ok",
    300: "no more work available from the task queue",
    400: "site/host/VM banned or disabled from receiving work",
    500: "problem with the environment/VM/contextualization provided by the site",
    600: "grid-wide problem with the job agent or application",
    700: "error of the job agent or application inside the VM",
}
MAX_EXIT_MESSAGE = 512


def check_exit(code: object, message: object) -> tuple[int, str]:
    """The validated (code, message) of an exit: a code of :data:`EXIT_CODES`, a message of
    printable characters (control characters become spaces, cut at 512)."""
    if isinstance(code, bool) or not isinstance(code, int) or code not in EXIT_CODES:
        known = ", ".join(str(c) for c in EXIT_CODES)
        raise InvalidInput(f"exit code must be one of {known}, got {code!r}")
    if not isinstance(message, str):
        raise InvalidInput("exit message must be a string")
    clean = "".join(ch if ch.isprintable() else " " for ch in message).strip()
    return code, clean[:MAX_EXIT_MESSAGE]


def exit_vm(store: Store, vm_id: int, code: int, message: str, hard: bool = False) -> int:
    """The VM ends itself with an exit ``code`` and ``message``: both are stored (the first
    exit reported wins; a repeated call, e.g. a callback whose reply was lost, changes
    nothing) and the VM is terminated in the same transaction. Returns the VM's id."""
    code, message = check_exit(code, message)
    with store.transaction() as conn:
        row = conn.execute(
            store.for_update(select(_V.c.state, _V.c.exit_code).where(_V.c.id == vm_id))
        ).first()
        if row is None:
            raise NotFound(f"VM {vm_id} does not exist")
        if row.state == VMState.DONE:
            raise WrongState(f"cannot exit VM {vm_id}: it is DONE")
        why = f"exit {code} {message}".rstrip()
        if row.exit_code is None:
            conn.execute(
                update(_V)
                .where(_V.c.id == vm_id)
                .values(exit_code=code, exit_message=message or None, exit_time=now())
            )
        action_in(store, conn, vm_id, "terminate-hard" if hard else "terminate", why)
    log.info("VM %d ended itself: %d %s", vm_id, code, message)
    return vm_id


# -- executor transitions -----------------------------------------------------------------------
#: What the executor may do to a VM: (expected state, new state). Each transition happens only
#: from its expected state, so a VM an operator terminated while a playbook ran is left alone
#: (the next executor pass destroys it).
EXECUTOR_TRANSITIONS: dict[str, tuple[tuple[VMState, LCMState], tuple[VMState, LCMState]]] = {
    "deployed": ((VMState.ACTIVE, LCMState.PROLOG), (VMState.ACTIVE, LCMState.RUNNING)),
    "prolog_failure": (
        (VMState.ACTIVE, LCMState.PROLOG),
        (VMState.ACTIVE, LCMState.PROLOG_FAILURE),
    ),
    "boot_failure": ((VMState.ACTIVE, LCMState.PROLOG), (VMState.ACTIVE, LCMState.BOOT_FAILURE)),
    "destroyed": ((VMState.ACTIVE, LCMState.SHUTDOWN), (VMState.DONE, LCMState.LCM_INIT)),
    "epilog_failure": (
        (VMState.ACTIVE, LCMState.SHUTDOWN),
        (VMState.ACTIVE, LCMState.EPILOG_FAILURE),
    ),
}


def executor_transition(store: Store, vm_id: int, name: str, message: str) -> bool:
    """Apply the executor's transition ``name`` (see :data:`EXECUTOR_TRANSITIONS`) with a
    history record; False (nothing changed) when the VM is no longer in the expected state.

    ``deployed`` sets ``started`` (and ``deadline`` from the lifetime) and clears the message;
    the failures keep ``message`` in ``sched_message``; ``destroyed`` sets ``ended`` and frees
    the VM's lease."""
    (old_s, old_l), (new_s, new_l) = EXECUTOR_TRANSITIONS[name]
    t = now()
    with store.transaction() as conn:
        row = conn.execute(store.for_update(select(_V.c.lifetime).where(_V.c.id == vm_id))).first()
        if row is None:
            raise NotFound(f"VM {vm_id} does not exist")
        values: dict[str, Any] = dict(state=int(new_s), lcm_state=int(new_l))
        if name == "deployed":
            values.update(started=t, sched_message=None)
            values["deadline"] = t + row.lifetime if row.lifetime else None
        elif name == "destroyed":
            values["ended"] = t
        else:
            values["sched_message"] = f"{new_l.name}: {message}"[:512]
        res = conn.execute(
            update(_V)
            .where(_V.c.id == vm_id, _V.c.state == int(old_s), _V.c.lcm_state == int(old_l))
            .values(**values)
        )
        if res.rowcount != 1:
            return False
        Store.record(
            conn, "vm", vm_id, _state_text(old_s, old_l), _state_text(new_s, new_l), message
        )
        if name == "destroyed":
            release_lease(conn, vm_id)
    log.info("VM %d: %s -> %s", vm_id, _state_text(old_s, old_l), _state_text(new_s, new_l))
    return True


# -- queries ------------------------------------------------------------------------------------
def _enrich(conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not rows:
        return rows
    ids = [r["id"] for r in rows]
    leases = {
        r.vm_id: dict(r._mapping)
        for r in conn.execute(
            select(_L.c.vm_id, _L.c.ip, _L.c.mac, _L.c.name, _L.c.host).where(_L.c.vm_id.in_(ids))
        )
    }
    host_ids = {r["host_id"] for r in rows if r["host_id"] is not None}
    hosts = (
        {
            r.id: dict(r._mapping)
            for r in conn.execute(
                select(_H.c.id, _H.c.name, _H.c.vmm_mad).where(_H.c.id.in_(host_ids))
            )
        }
        if host_ids
        else {}
    )
    owners = {
        r.id: r.name
        for r in conn.execute(
            select(_U.c.id, _U.c.name).where(_U.c.id.in_({r["owner_id"] for r in rows}))
        )
    }
    image_ids = {r["image_id"] for r in rows if r["image_id"] is not None}
    images = (
        {
            r.id: dict(r._mapping)
            for r in conn.execute(
                select(_I.c.id, _I.c.name, _I.c.version).where(_I.c.id.in_(image_ids))
            )
        }
        if image_ids
        else {}
    )
    for r in rows:
        r["lease"] = leases.get(r["id"])
        r["host"] = hosts.get(r["host_id"]) if r["host_id"] is not None else None
        r["owner"] = owners.get(r["owner_id"], "")
        r["image"] = images.get(r["image_id"]) if r["image_id"] is not None else None
    return rows


def get(conn: Connection, vm_id: int) -> dict[str, Any]:
    """The VM row plus ``lease``, ``host``, ``owner`` and ``image``."""
    row = conn.execute(select(_V).where(_V.c.id == vm_id)).first()
    if row is None:
        raise NotFound(f"VM {vm_id} does not exist")
    return _enrich(conn, [dict(row._mapping)])[0]


def list_vms(
    conn: Connection,
    owner_id: int | None = None,
    start_id: int = -1,
    end_id: int = -1,
    state: int = -1,
    ids: Iterable[int] | None = None,
    offset: int | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """VMs by OpenNebula's pool filter: ``state`` -2 any, -1 any but DONE, else that state;
    ids from ``start_id`` to ``end_id`` (-1: open); ``offset``/``limit`` page through them."""
    stmt = select(_V).order_by(_V.c.id)
    if owner_id is not None:
        stmt = stmt.where(_V.c.owner_id == owner_id)
    if start_id >= 0:
        stmt = stmt.where(_V.c.id >= start_id)
    if end_id >= 0:
        stmt = stmt.where(_V.c.id <= end_id)
    if state == -1:
        stmt = stmt.where(_V.c.state != int(VMState.DONE))
    elif state >= 0:
        stmt = stmt.where(_V.c.state == state)
    elif state != -2:
        raise InvalidInput(f"state filter must be -2, -1 or a state number, got {state}")
    if ids is not None:
        stmt = stmt.where(_V.c.id.in_(list(ids)))
    if limit is not None:
        stmt = stmt.limit(limit).offset(offset or 0)
    return _enrich(conn, [dict(r._mapping) for r in conn.execute(stmt)])


def state_text(vm: dict[str, Any]) -> str:
    return _state_text(vm["state"], vm["lcm_state"])


def _inserted_id(res: Any) -> int:
    """The primary key of the row an INSERT created."""
    pk = res.inserted_primary_key
    if pk is None:  # pragma: no cover - every table here has an autoincrement key
        raise RuntimeError("INSERT returned no primary key")
    return int(pk[0])
