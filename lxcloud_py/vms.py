"""Virtual machines: allocation from an OpenNebula template, life-cycle actions with
OpenNebula's state rules, callback tokens and pool queries.

A new VM is PENDING (or HOLD) until the scheduler binds it to a lease and a host. Actions
(``one.vm.action``) and the executor's outcomes follow the state machine in
:mod:`lxcloud_py.lifecycle` (OpenNebula's rules, and who may ask for what); a wrong-state action
raises :class:`~lxcloud_py.lifecycle.WrongState` (the API's ACTION error, 0x0800). Every state
change is recorded in the history, with the action's name.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ansible_collections.lxcloud.cloud.plugins.module_utils import wire
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import (
    InvalidName,
    validate_name,
)
from sqlalchemy import Connection, insert, select, update

from lxcloud_py import auth, lifecycle, template
from lxcloud_py.leases import release_lease
from lxcloud_py.lifecycle import Actor, Effect, WrongState  # WrongState: vms.WrongState too
from lxcloud_py.model import InvalidInput, NotFound, VMState
from lxcloud_py.store import Store, now, schema

log = logging.getLogger("lxcloud.vms")

_V, _L, _H, _I, _U = schema.vms, schema.leases, schema.hosts, schema.images, schema.users

ACTIONS = wire.VM_ACTIONS
#: Older OpenNebula names, accepted as the action they became (OpenNebula 5.0 renamed them).
LEGACY_ACTIONS = {"shutdown": "terminate", "shutdown-hard": "terminate-hard"}
#: Actions a VM may ask for itself with its callback token.
SELF_ACTIONS = lifecycle.actions_for(Actor.VM)
MAX_LIFETIME = 10 * 365 * 86400
#: Attributes lxcloud sets itself; a client's template may not carry them (top level or CONTEXT).
MANAGED_KEY = re.compile(r"\A(ETH\d+_\w+|VMID|LXCLOUD_\w+)\Z")
#: In CONTEXT also NAME and LIFETIME: lxcloud writes them from the VM's own attributes.
MANAGED_CONTEXT_KEY = re.compile(r"\A(NAME|LIFETIME|ETH\d+_\w+|VMID|LXCLOUD_\w+)\Z")
_TEMPLATING = re.compile(r"\{\{|\{%|\{#|\}\}|%\}|#\}")


@dataclass(frozen=True)
class Limits:
    """Bounds checked at allocate (config section ``limits``, see :func:`configure_limits`)."""

    max_cpu: float = 1024.0
    max_vcpu: int = 1024
    max_memory_mb: int = 4 * 1024 * 1024  # 4 TiB
    max_attributes: int = 1000  # top-level attributes plus every vector's entries
    max_value_chars: int = 64 * 1024


_limits = Limits()


def configure_limits(limits: Limits) -> None:
    """Set the bounds every allocation checks (the daemon calls it with its config)."""
    global _limits
    _limits = limits


def limits() -> Limits:
    return _limits


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


def _float(tpl: template.Template, key: str, default: float, maximum: float) -> float:
    raw = tpl.get(key)
    if raw is None:
        return default
    if not raw.isascii():
        raise InvalidInput(f"{key} must be written with ASCII digits, got {raw!r}")
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{key} must be a number, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise InvalidInput(f"{key} must be greater than 0, got {raw!r}")
    if value > maximum:
        raise InvalidInput(f"{key} {raw} is more than the limit {maximum:g}")
    return value


def _int(
    tpl: template.Template, key: str, default: int | None, minimum: int, maximum: int
) -> int | None:
    raw = tpl.get(key)
    if raw is None:
        return default
    if not raw.isascii():
        raise InvalidInput(f"{key} must be written with ASCII digits, got {raw!r}")
    try:
        value = int(raw, 10)
    except ValueError:
        raise InvalidInput(f"{key} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise InvalidInput(f"{key} must be at least {minimum}, got {raw!r}")
    if value > maximum:
        raise InvalidInput(f"{key} {value} is more than the limit {maximum}")
    return value


def check_client_template(tpl: template.Template, lim: Limits) -> None:
    """What a client may not send, whatever the attribute: templating delimiters (values reach
    playbooks), attributes lxcloud manages, oversized values, too many attributes."""
    count = 0
    for key, value in tpl:
        count += 1 + (len(value) if isinstance(value, dict) else 0)
        if count > lim.max_attributes:
            raise InvalidInput(f"the template has more than {lim.max_attributes} attributes")
        if MANAGED_KEY.match(key):
            raise InvalidInput(f"{key} is set by lxcloud, not by the template")
        entries = value.items() if isinstance(value, dict) else [("", value)]
        for sub, text in entries:
            name = f"{key}/{sub}" if sub else key
            if len(text) > lim.max_value_chars:
                raise InvalidInput(f"{name}: longer than {lim.max_value_chars} characters")
            if _TEMPLATING.search(text):
                raise InvalidInput(f"{name}: template delimiters ({{{{ {{% {{#) are not allowed")
            if key == "CONTEXT" and MANAGED_CONTEXT_KEY.match(sub):
                raise InvalidInput(f"{name} is set by lxcloud, not by the template")


def parse_spec(text: str) -> Spec:
    """Parse and validate a VM template (NAME, CPU, VCPU, MEMORY, DISK/IMAGE, CONTEXT,
    LIFETIME; other attributes are kept as they are)."""
    tpl = template.parse(text)
    lim = _limits
    check_client_template(tpl, lim)
    name = tpl.get("NAME")
    if name is not None:
        try:
            validate_name(name, "NAME")
        except InvalidName as exc:
            raise InvalidInput(str(exc)) from None
    cpu = _float(tpl, "CPU", 1.0, lim.max_cpu)
    vcpu = _int(tpl, "VCPU", 1, 1, lim.max_vcpu) or 1
    memory = _int(tpl, "MEMORY", 512, 1, lim.max_memory_mb) or 512
    lifetime = _int(tpl, "LIFETIME", None, 0, 2**62)
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
    state, lcm = lifecycle.initial_state(hold)
    res = conn.execute(
        insert(_V).values(
            name=spec.name or "one-new",
            owner_id=owner_id,
            template=spec.template.to_text(),
            state=int(state),
            lcm_state=int(lcm),
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
_state_text = lifecycle.state_text


def action(store: Store, vm_id: int, name: str, actor: Actor = Actor.USER) -> int:
    """Apply ``one.vm.action`` ``name``, asked by ``actor``, to the VM; returns its id."""
    if name not in ACTIONS:
        raise InvalidInput(f"unknown action {name!r} (known: {', '.join(ACTIONS)})")
    lifecycle.check_actor(name, actor)
    with store.transaction() as conn:
        return action_in(store, conn, vm_id, name, actor=actor)


def action_in(
    store: Store,
    conn: Connection,
    vm_id: int,
    name: str,
    why: str = "",
    actor: Actor = Actor.USER,
) -> int:
    """:func:`action` in the caller's transaction (``why`` is added to the history record)."""
    row = conn.execute(store.for_update(select(_V).where(_V.c.id == vm_id))).first()
    if row is None:
        raise NotFound(f"VM {vm_id} does not exist")
    current = _state_text(row.state, row.lcm_state)
    rule = lifecycle.decide(name, actor, row.state, row.lcm_state, vm_id)
    if rule.effect is Effect.AGAIN:
        return vm_id  # already there (a callback whose reply was lost retries)
    if rule.effect is Effect.RECORD:
        Store.record(conn, "vm", vm_id, current, current, f"{name} requested")
        return vm_id
    new = rule.target
    extra: dict[str, Any] = {"ended": now()} if rule.ends else {}
    res = conn.execute(
        update(_V)
        .where(_V.c.id == vm_id, _V.c.state == row.state, _V.c.lcm_state == row.lcm_state)
        .values(state=int(new[0]), lcm_state=int(new[1]), **extra)
    )
    if res.rowcount != 1:  # pragma: no cover - the row lock/BEGIN IMMEDIATE prevents it
        raise WrongState(f"VM {vm_id} changed state during {name}; retry")
    Store.record(conn, "vm", vm_id, current, _state_text(*new), f"{name}: {why}" if why else name)
    if rule.ends:
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
        action_in(store, conn, vm_id, "terminate-hard" if hard else "terminate", why,
                  actor=Actor.VM)
    log.info("VM %d ended itself: %d %s", vm_id, code, message)
    return vm_id


# -- executor transitions -----------------------------------------------------------------------
#: What the executor may do to a VM: (expected state, new state), from
#: :mod:`lxcloud_py.lifecycle`. Each transition happens only from its expected state, so a VM an
#: operator terminated while a playbook ran is left alone (the next executor pass destroys it).
EXECUTOR_TRANSITIONS: dict[str, tuple[lifecycle.Full, lifecycle.Full]] = (
    lifecycle.transitions_of(Actor.EXECUTOR)
)


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
        if name == lifecycle.DEPLOYED:
            values.update(started=t, sched_message=None)
            values["deadline"] = t + row.lifetime if row.lifetime else None
        elif new_s == VMState.DONE:
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
        if new_s == VMState.DONE:
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
