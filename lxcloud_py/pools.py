"""Provisioning pools: "keep N VMs of this template, each living L seconds".

A pool is one row of ``pools`` (see :class:`PoolSpec` for its fields). The pool manager
(:class:`PoolManager`, run by the daemon's pool stage) converges the farm to the pools in
cycles; each cycle

1. reads a :class:`Snapshot` of every pool, its VMs, their recent exit reasons and the hosts
   in one short transaction,
2. computes the :class:`Decision` list with :func:`decide`, a pure function of the snapshot,
3. applies each decision in its own transaction that re-checks what the decision assumed
   under the pool's row lock (``SELECT ... FOR UPDATE`` on MySQL, ``BEGIN IMMEDIATE`` on
   SQLite), so two managers (or two cycles) never overshoot a target, never drain one VM twice
   and never record one backoff twice; a decision whose premise no longer holds is dropped.

Rules (docs/pools.md has the long form):

* **Active** VMs of a pool are PENDING, ACTIVE/PROLOG, ACTIVE/BOOT and ACTIVE/RUNNING ones that
  were not asked to drain. Refill creates ``target - active`` VMs (``refill``), through the same
  path as ``one.vm.allocate``, tagged with the pool (``pool_id``, ``POOL`` in the template),
  higher ``priority`` first, at most ``max_new`` per cycle.
* **Drain**: when active > target, the surplus is told to end, newest first. A VM that has not
  started (PENDING/HOLD) is terminated at once (``terminate``); a started one is asked to drain
  (``drain``: ``vms.drain_requested`` is set, ``one.vm.info`` shows ``LXCLOUD_DRAIN = YES`` in
  USER_TEMPLATE, the in-VM callback sees it, finishes its work and ends itself with exit 100).
  A pool whose drain mode is ``hard`` terminates the surplus (and VMs still draining) at once
  (``terminate``, i.e. terminate-hard). A VM past its deadline (lifetime) is asked to drain too.
* **Backoff** (Vac): exit codes 300-699 make the pool back off: level = the number of such exits
  since the last 200, the pool makes no VM until ``last bad exit + min(base * 2**(level-1),
  max)``, then refills at most one VM per cycle until a 200 resets the level (``backoff``,
  ``reset``). Codes 100 and 700 do not change the backoff.
* **Offline**: a host whose last ``offline_after`` exits (since its last state change) were all
  500 is set OFFLINE (``offline``); an operator enabling it again starts a new count.
* A pool that is not ``enabled`` is left alone (no refill, no drain).

Every applied decision is one line in the log and a ``pool`` record in ``history`` (shown by
``lxcloud pool show``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import yaml
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import (
    InvalidName,
    validate_name,
)
from sqlalchemy import Connection, and_, case, delete, func, insert, or_, select, update

from lxcloud_py import template, users, vms
from lxcloud_py.lifecycle import Actor
from lxcloud_py.model import (
    LIVE_VM_STATES,
    Conflict,
    HostState,
    InvalidInput,
    LCMState,
    NotFound,
    VMState,
)
from lxcloud_py.store import Store, schema

log = logging.getLogger("lxcloud.pools")

_P, _V, _H, _HIST = schema.pools, schema.vms, schema.hosts, schema.history

#: ACTIVE LCM states that count as an active pool VM (with every PENDING VM).
ACTIVE_LCM = (LCMState.PROLOG, LCMState.BOOT, LCMState.RUNNING)
#: Every action a decision can carry, and what it does.
ACTIONS: dict[str, str] = {
    "refill": "create one VM for the pool (active < target)",
    "drain": "ask a started VM to end itself gracefully (surplus, or lifetime reached)",
    "terminate": "terminate a VM at once (surplus not started yet, or drain mode hard)",
    "backoff": "exits 300-699: the pool waits before making VMs (exponential, capped)",
    "reset": "exit 200: the pool's backoff is over",
    "offline": "a host whose VMs keep ending with 500 is set OFFLINE",
}
BACKOFF_CODES = range(300, 700)
DRAIN_MODES = ("graceful", "hard")
DEFAULT_OFFLINE_AFTER = 3
DEFAULT_MAX_NEW = 32
#: Exits per pool/host the snapshot reads (enough to reach any backoff cap: 2**31 s).
_EXIT_WINDOW = 32


# -- the model ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolSpec:
    """What an operator declares about a pool (the same fields in the CLI, YAML, the API and
    the Ansible module). ``template`` is an OpenNebula VM template (as one.vm.allocate takes);
    :func:`build_template` makes one from image + size."""

    name: str
    template: str
    target: int = 0
    lifetime: int | None = None
    priority: int = 0
    hosts: tuple[str, ...] = ()
    drain: str = "graceful"
    backoff_base: int = 60
    backoff_max: int = 3600
    enabled: bool = True

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["hosts"] = list(self.hosts)
        return out


#: Fields of a pool an operator sets (everything but the name).
SPEC_FIELDS = tuple(f.name for f in fields(PoolSpec) if f.name != "name")
#: Extra keys a pool mapping may use instead of ``template``.
SIZE_FIELDS = ("image", "cpu", "vcpu", "memory", "context")


def check_pool_name(name: object) -> str:
    try:
        return str(validate_name(name, "pool name"))
    except InvalidName as exc:
        raise InvalidInput(str(exc)) from None


def _int_field(data: Mapping[str, Any], key: str, minimum: int, maximum: int) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{key} must be a whole number, got {value!r}")
    if not minimum <= value <= maximum:
        raise InvalidInput(f"{key} must be between {minimum} and {maximum}, got {value}")
    return value


def build_template(
    image: str,
    cpu: float = 1.0,
    vcpu: int = 1,
    memory: int = 512,
    context: Mapping[str, str] | None = None,
) -> str:
    """An OpenNebula template for ``image`` and a size (the short form of a pool)."""
    tpl = template.Template()
    tpl.add("CPU", f"{cpu:g}")
    tpl.add("VCPU", str(vcpu))
    tpl.add("MEMORY", str(memory))
    tpl.add("DISK", {"IMAGE": image})
    if context:
        tpl.add("CONTEXT", {str(k).upper(): str(v) for k, v in context.items()})
    return tpl.to_text()


def normalise_template(text: str) -> str:
    """The template checked as one.vm.allocate would (NAME, NIC and LIFETIME are the pool's
    business and refused) and rendered canonically, so equal templates compare equal."""
    spec = vms.parse_spec(text)
    for key in ("NAME", "LIFETIME", "POOL", "SCHED_REQUIREMENTS"):
        if spec.template.get_all(key):
            raise InvalidInput(f"a pool template sets no {key}: the pool does")
    return spec.template.to_text()


def spec_from_mapping(data: Mapping[str, Any], name: str | None = None) -> PoolSpec:
    """A validated :class:`PoolSpec` from a mapping (YAML, API struct, module params): either
    ``template`` or ``image`` (+ ``cpu``, ``vcpu``, ``memory``, ``context``). Unknown keys and
    wrong types are errors naming the key."""
    data = {k: v for k, v in data.items() if v is not None}
    known = {"name", *SPEC_FIELDS, *SIZE_FIELDS}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise InvalidInput(f"unknown pool field(s): {', '.join(unknown)}")
    pool_name = check_pool_name(name if name is not None else data.get("name"))
    if "template" in data and "image" in data:
        raise InvalidInput(f"pool {pool_name}: give template or image, not both")
    size = [k for k in SIZE_FIELDS if k in data and k != "image"]
    if "template" in data:
        if size:
            raise InvalidInput(f"pool {pool_name}: {', '.join(size)} go with image, not template")
        if not isinstance(data["template"], str):
            raise InvalidInput(f"pool {pool_name}: template must be text")
        text = data["template"]
    elif "image" in data:
        ctx = data.get("context") or {}
        if not isinstance(ctx, Mapping):
            raise InvalidInput(f"pool {pool_name}: context must be a mapping")
        cpu = data.get("cpu", 1.0)
        if isinstance(cpu, bool) or not isinstance(cpu, int | float) or not cpu > 0:
            raise InvalidInput(f"pool {pool_name}: cpu must be a number > 0, got {cpu!r}")
        for key in ("vcpu", "memory"):
            if key in data:
                _int_field(data, key, 1, 2**31 - 1)
        text = build_template(
            str(data["image"]), float(cpu), data.get("vcpu", 1), data.get("memory", 512), ctx
        )
    else:
        raise InvalidInput(f"pool {pool_name}: give template (text) or image (+ cpu, memory)")
    try:
        text = normalise_template(text)
    except InvalidInput as exc:
        raise InvalidInput(f"pool {pool_name}: {exc}") from None
    values: dict[str, Any] = {"name": pool_name, "template": text}
    for key, lo, hi in (
        ("target", 0, 100000),
        ("lifetime", 0, vms.MAX_LIFETIME),
        ("priority", -1000, 1000),
        ("backoff_base", 1, 86400),
        ("backoff_max", 1, 30 * 86400),
    ):
        if key in data:
            try:
                values[key] = _int_field(data, key, lo, hi)
            except InvalidInput as exc:
                raise InvalidInput(f"pool {pool_name}: {exc}") from None
    if values.get("lifetime") == 0:
        values["lifetime"] = None  # 0: no lifetime
    if "enabled" in data:
        if not isinstance(data["enabled"], bool):
            raise InvalidInput(f"pool {pool_name}: enabled must be true or false")
        values["enabled"] = data["enabled"]
    if "drain" in data:
        if data["drain"] not in DRAIN_MODES:
            raise InvalidInput(f"pool {pool_name}: drain must be graceful or hard")
        values["drain"] = data["drain"]
    if "hosts" in data:
        raw = data["hosts"]
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple):
            raise InvalidInput(f"pool {pool_name}: hosts must be a list of host names")
        try:
            values["hosts"] = tuple(
                sorted({validate_name(h.strip(), "host") for h in items if str(h).strip()})
            )
        except (InvalidName, AttributeError) as exc:
            raise InvalidInput(f"pool {pool_name}: {exc}") from None
    spec = PoolSpec(**values)
    if spec.backoff_max < spec.backoff_base:
        raise InvalidInput(f"pool {pool_name}: backoff_max is less than backoff_base")
    return spec


def merged_mapping(current: PoolSpec, changes: Mapping[str, Any]) -> dict[str, Any]:
    """``current`` as a mapping with ``changes`` laid over it (an update that names only some
    fields); giving ``image`` (or a size field) replaces the template."""
    base = current.as_dict()
    if any(k in changes for k in SIZE_FIELDS):
        base.pop("template")
    base.update({k: v for k, v in changes.items() if v is not None})
    return base


def wire(spec: PoolSpec | None) -> dict[str, Any]:
    """A spec as XML-RPC can carry it (no None: lifetime 0 means none); {} for no pool."""
    if spec is None:
        return {}
    out = spec.as_dict()
    out["lifetime"] = spec.lifetime or 0
    return out


def plan_request(store: Store, data: Mapping[str, Any]) -> dict[str, Any]:
    """What setting the pool ``data`` names to ``data`` would change (``data`` merged over
    the current pool, as ``pool set`` and ``lxcloud.pool.update`` do): ``exists``,
    ``changed``, ``changes`` (texts), ``before`` and ``after`` (:func:`wire` form)."""
    name = check_pool_name(data.get("name"))
    with store.transaction() as conn:
        try:
            current: PoolSpec | None = get_spec(conn, name)
        except NotFound:
            current = None
    if current is None:
        new = spec_from_mapping(data)
        changes = [f"create: {describe(new)}"]
    else:
        new = spec_from_mapping(merged_mapping(current, data), name)
        changes = diff_specs(current, new)
    return {
        "exists": current is not None,
        "changed": bool(changes),
        "changes": changes,
        "before": wire(current),
        "after": wire(new),
    }


def vm_template(spec_template: str, pool: str, lifetime: int | None, hosts: Iterable[str]) -> str:
    """The template of one pool VM: the pool's, tagged ``POOL``, with its LIFETIME and the host
    constraint as OpenNebula's SCHED_REQUIREMENTS."""
    tpl = template.parse(spec_template)
    tpl.add("POOL", pool)
    if lifetime:
        tpl.add("LIFETIME", str(lifetime))
    names = list(hosts)
    if names:
        tpl.add("SCHED_REQUIREMENTS", " | ".join(f'HOSTNAME = "{h}"' for h in names))
    return tpl.to_text()


# -- store operations on pools -------------------------------------------------------------------
def _row_spec(row: Any) -> PoolSpec:
    return PoolSpec(
        name=row.name,
        template=row.template,
        target=int(row.target),
        lifetime=int(row.lifetime) if row.lifetime is not None else None,
        priority=int(row.priority),
        hosts=tuple(h for h in (row.hosts or "").split(",") if h),
        drain=row.drain,
        backoff_base=int(row.backoff_base),
        backoff_max=int(row.backoff_max),
        enabled=bool(row.enabled),
    )


def _spec_values(spec: PoolSpec) -> dict[str, Any]:
    values = spec.as_dict()
    values["hosts"] = ",".join(spec.hosts) or None
    return values


def create_pool(store: Store, spec: PoolSpec) -> int:
    """A new pool (Conflict if the name is taken); returns its id."""
    with store.transaction() as conn:
        if conn.execute(select(_P.c.id).where(_P.c.name == spec.name)).first() is not None:
            raise Conflict(f"pool {spec.name!r} exists")
        t = time.time()
        res = conn.execute(insert(_P).values(created=t, updated=t, **_spec_values(spec)))
        pool_id = vms._inserted_id(res)
        Store.record(conn, "pool", pool_id, None, None, f"created: {describe(spec)}")
    log.info("pool %s created: %s", spec.name, describe(spec))
    return pool_id


def update_pool(store: Store, name: str, spec: PoolSpec) -> list[str]:
    """Make pool ``name`` match ``spec`` (the name stays); returns the changes, one text per
    field (empty: nothing changed, nothing written)."""
    with store.transaction() as conn:
        row = conn.execute(store.for_update(select(_P).where(_P.c.name == name))).first()
        if row is None:
            raise NotFound(f"pool {name!r} does not exist")
        changes = diff_specs(_row_spec(row), replace(spec, name=row.name))
        if changes:
            values = _spec_values(replace(spec, name=row.name))
            conn.execute(update(_P).where(_P.c.id == row.id).values(updated=time.time(), **values))
            Store.record(conn, "pool", row.id, None, None, "updated: " + "; ".join(changes))
    if changes:
        log.info("pool %s updated: %s", name, "; ".join(changes))
    return changes


def set_pool(store: Store, spec: PoolSpec) -> tuple[str, list[str]]:
    """Create or update: ("created"|"updated"|"unchanged", changes)."""
    try:
        changes = update_pool(store, spec.name, spec)
    except NotFound:
        create_pool(store, spec)
        return "created", [describe(spec)]
    return ("updated" if changes else "unchanged"), changes


def delete_pool(store: Store, name: str, force: bool = False) -> int:
    """Remove a pool without live VMs; with ``force``, its live VMs stay, no longer pooled."""
    with store.transaction() as conn:
        row = conn.execute(store.for_update(select(_P).where(_P.c.name == name))).first()
        if row is None:
            raise NotFound(f"pool {name!r} does not exist")
        live = conn.execute(
            select(func.count())
            .select_from(_V)
            .where(_V.c.pool_id == row.id, _V.c.state.in_([int(s) for s in LIVE_VM_STATES]))
        ).scalar_one()
        if live and not force:
            raise Conflict(
                f"pool {name!r} still has {live} live VM(s): set its target to 0 and let them "
                "drain, or delete with force"
            )
        conn.execute(update(_V).where(_V.c.pool_id == row.id).values(pool_id=None))
        conn.execute(delete(_P).where(_P.c.id == row.id))
        Store.record(conn, "pool", row.id, None, None, f"deleted ({live} live VMs left)")
    log.info("pool %s deleted", name)
    return int(row.id)


def diff_specs(old: PoolSpec, new: PoolSpec) -> list[str]:
    """One text per field that differs, e.g. ``target 4 -> 2``."""
    out = []
    for key in SPEC_FIELDS:
        a, b = getattr(old, key), getattr(new, key)
        if a != b:
            if key == "template":
                out.append("template changed")
            else:
                out.append(f"{key} {_show(a)} -> {_show(b)}")
    return out


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(value) or "-"
    return "-" if value is None else str(value)


def describe(spec: PoolSpec) -> str:
    parts = [f"target {spec.target}"]
    if spec.lifetime:
        parts.append(f"lifetime {spec.lifetime} s")
    if spec.priority:
        parts.append(f"priority {spec.priority}")
    if spec.hosts:
        parts.append(f"hosts {','.join(spec.hosts)}")
    if spec.drain != "graceful":
        parts.append(f"drain {spec.drain}")
    if not spec.enabled:
        parts.append("disabled")
    return ", ".join(parts)


def get_spec(conn: Connection, name: str) -> PoolSpec:
    return _row_spec(find(conn, name))


def get_spec_of(row: Any) -> PoolSpec:
    """The spec of a pool row (as :func:`find` returns)."""
    return _row_spec(row)


def find(conn: Connection, name_or_id: str | int) -> Any:
    """The pool row by name or id (NotFound)."""
    if isinstance(name_or_id, int):
        row = conn.execute(select(_P).where(_P.c.id == int(name_or_id))).first()
    else:
        row = conn.execute(select(_P).where(_P.c.name == str(name_or_id))).first()
    if row is None:
        raise NotFound(f"pool {name_or_id!r} does not exist")
    return row


def _active_clause() -> Any:
    return and_(
        _V.c.drain_requested.is_(None),
        or_(
            _V.c.state == int(VMState.PENDING),
            and_(
                _V.c.state == int(VMState.ACTIVE),
                _V.c.lcm_state.in_([int(s) for s in ACTIVE_LCM]),
            ),
        ),
    )


def pool_status(conn: Connection, rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Pools with their spec, counts (``active``, ``pending``, ``draining``, ``live``) and
    backoff state, for ``pool list/show`` and the API."""
    out = []
    for row in rows:
        live_states = [int(s) for s in LIVE_VM_STATES]
        counts = conn.execute(
            select(
                func.count(),
                func.sum(case((_active_clause(), 1), else_=0)),
                func.sum(case((_V.c.state == int(VMState.PENDING), 1), else_=0)),
                func.sum(case((_V.c.drain_requested.is_not(None), 1), else_=0)),
            )
            .select_from(_V)
            .where(_V.c.pool_id == row.id, _V.c.state.in_(live_states))
        ).one()
        d = dict(row._mapping)
        d["spec"] = _row_spec(row)
        d["live"] = int(counts[0] or 0)
        d["active"] = int(counts[1] or 0)
        d["pending"] = int(counts[2] or 0)
        d["draining"] = int(counts[3] or 0)
        out.append(d)
    return out


def list_pools(conn: Connection) -> list[dict[str, Any]]:
    return pool_status(conn, conn.execute(select(_P).order_by(_P.c.priority.desc(), _P.c.name)))


def decisions_of(conn: Connection, pool_id: int, limit: int = 20) -> list[dict[str, Any]]:
    """The pool's latest history records (decisions and changes), newest first."""
    rows = conn.execute(
        select(_HIST)
        .where(_HIST.c.kind == "pool", _HIST.c.object_id == pool_id)
        .order_by(_HIST.c.id.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in rows]


# -- declarative files -------------------------------------------------------------------------
def _error_line(message: str, key_lines: Mapping[str, int], default: int) -> int:
    """The line of the field an error message names (longest name first), else ``default``."""
    for key in sorted(key_lines, key=len, reverse=True):
        if re.search(rf"\b{re.escape(key)}\b", message):
            return key_lines[key]
    return default


def parse_pool_file(fname: str, text: str) -> list[PoolSpec]:
    """The pools a YAML file declares: ``pools:`` followed by a list of pool mappings (or the
    list alone). Every error is collected and reported as ``FILE:LINE: ...``."""
    try:
        doc = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise InvalidInput(
            f"{fname}:{line}: not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    if doc is None:
        return []
    if isinstance(doc, yaml.MappingNode) and isinstance(data, dict):
        extra = sorted(str(k) for k in data if k != "pools")
        if extra:
            raise InvalidInput(f"{fname}:1: unknown top-level key(s) {', '.join(extra)}")
        doc = next((v for k, v in doc.value if k.value == "pools"), None)
        data = data.get("pools")
        if doc is None or data is None:
            return []
    if not isinstance(doc, yaml.SequenceNode) or not isinstance(data, list):
        raise InvalidInput(f"{fname}:{doc.start_mark.line + 1}: expected a list of pools")
    errors: list[str] = []
    specs: list[PoolSpec] = []
    seen: dict[str, int] = {}
    for node, item in zip(doc.value, data, strict=True):
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.MappingNode) or not isinstance(item, dict):
            errors.append(f"{fname}:{line}: expected a mapping (name, template or image, ...)")
            continue
        key_lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
        try:
            spec = spec_from_mapping(item)
        except InvalidInput as exc:
            errors.append(f"{fname}:{_error_line(str(exc), key_lines, line)}: {exc}")
            continue
        if spec.name in seen:
            errors.append(
                f"{fname}:{line}: pool {spec.name} declared twice (first at line {seen[spec.name]})"
            )
            continue
        seen[spec.name] = line
        specs.append(spec)
    if errors:
        raise InvalidInput("\n".join(errors))
    return specs


@dataclass(frozen=True)
class Change:
    """One step of :func:`apply_specs`: ``create``, ``update``, ``delete``, ``drain`` (pruned
    but still has live VMs: target 0 now, deleted by a later apply) or ``unchanged``."""

    action: str
    pool: str
    details: tuple[str, ...] = ()


def apply_specs(
    store: Store, specs: Iterable[PoolSpec], prune: bool = False, dry_run: bool = False
) -> list[Change]:
    """Make the database's pools match ``specs`` (a declarative file): create the missing
    ones, update the different ones; with ``prune``, remove the pools not declared (a pool
    that still has live VMs is set to target 0 and drains; a later apply deletes it)."""
    wanted = {s.name: s for s in specs}
    with store.transaction() as conn:
        current = {p["name"]: p for p in list_pools(conn)}
    plan: list[Change] = []
    for name, spec in wanted.items():
        if name not in current:
            plan.append(Change("create", name, (describe(spec),)))
        else:
            changes = diff_specs(current[name]["spec"], spec)
            plan.append(Change("update" if changes else "unchanged", name, tuple(changes)))
    if prune:
        for name, p in current.items():
            if name in wanted:
                continue
            if p["live"]:
                if p["spec"].target:
                    plan.append(Change("drain", name, (f"target {p['spec'].target} -> 0",)))
                else:
                    plan.append(Change("unchanged", name, (f"draining, {p['live']} live VMs",)))
            else:
                plan.append(Change("delete", name))
    if dry_run:
        return plan
    for step in plan:
        if step.action == "create":
            create_pool(store, wanted[step.pool])
        elif step.action == "update":
            update_pool(store, step.pool, wanted[step.pool])
        elif step.action == "drain":
            update_pool(store, step.pool, replace(current[step.pool]["spec"], target=0))
        elif step.action == "delete":
            delete_pool(store, step.pool)
    return plan


# -- snapshot and decisions ---------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """One thing the pool manager decided: ``action`` is a key of :data:`ACTIONS`."""

    action: str
    pool: str
    vm_id: int | None = None
    host: str | None = None
    message: str = ""  # one human line: what was decided and why
    #: backoff/reset: the (level, until) the pool goes to; offline: the host's id
    data: tuple[Any, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class PoolVM:
    id: int
    state: int
    lcm_state: int
    created: float
    deadline: float | None = None
    drain_requested: float | None = None

    @property
    def started(self) -> bool:
        return self.state not in (VMState.PENDING, VMState.HOLD)

    @property
    def active(self) -> bool:
        return self.drain_requested is None and (
            self.state == VMState.PENDING
            or (self.state == VMState.ACTIVE and self.lcm_state in ACTIVE_LCM)
        )


@dataclass(frozen=True)
class Exit:
    vm_id: int
    code: int
    time: float
    host: str | None = None
    message: str = ""


@dataclass(frozen=True)
class PoolState:
    id: int
    spec: PoolSpec
    backoff_level: int = 0
    backoff_until: float | None = None
    #: live VMs (LIVE_VM_STATES) of the pool
    vms: tuple[PoolVM, ...] = ()
    #: the pool's latest exits, newest first
    exits: tuple[Exit, ...] = ()


@dataclass(frozen=True)
class HostExits:
    id: int
    name: str
    state: int
    #: the host's latest exits since its last state change, newest first
    exits: tuple[Exit, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    now: float
    pools: tuple[PoolState, ...] = ()
    hosts: tuple[HostExits, ...] = ()


def backoff_of(spec: PoolSpec, exits: Iterable[Exit]) -> tuple[int, float | None]:
    """(level, until) from the pool's exits, newest first: the number of 300-699 exits since
    the newest 200, and the newest such exit + min(base * 2**(level-1), max)."""
    level, newest_bad = 0, None
    for ex in exits:
        if ex.code == 200:
            break
        if ex.code in BACKOFF_CODES:
            level += 1
            if newest_bad is None:
                newest_bad = ex.time
    if not level or newest_bad is None:
        return 0, None
    delay = min(spec.backoff_base * 2.0 ** min(level - 1, 40), float(spec.backoff_max))
    return level, newest_bad + delay


def decide(
    snap: Snapshot,
    *,
    offline_after: int = DEFAULT_OFFLINE_AFTER,
    max_new: int = DEFAULT_MAX_NEW,
) -> list[Decision]:
    """Every decision for one cycle, from the snapshot alone (no I/O)."""
    out: list[Decision] = []
    refills: list[tuple[int, int, str, Decision]] = []
    for p in snap.pools:
        spec = p.spec
        level, until = backoff_of(spec, p.exits)
        if (level, until) != (p.backoff_level, p.backoff_until):
            if level:
                delay = max(0.0, (until or snap.now) - snap.now)
                last = p.exits[0] if p.exits else None
                why = f"exit {last.code} of VM {last.vm_id}" if last else "exits"
                out.append(
                    Decision(
                        "backoff",
                        spec.name,
                        last.vm_id if last else None,
                        last.host if last else None,
                        f"pool {spec.name}: backoff level {level} after {why}: no new VM "
                        f"for {delay:.0f} s, then one per cycle until an exit 200",
                        (level, until),
                    )
                )
            elif p.backoff_level:
                last = p.exits[0] if p.exits else None
                out.append(
                    Decision(
                        "reset",
                        spec.name,
                        last.vm_id if last else None,
                        None,
                        f"pool {spec.name}: backoff reset by exit 200 of VM "
                        f"{last.vm_id if last else '?'}",
                        (0, None),
                    )
                )
        if not spec.enabled:
            continue
        # lifetime: started VMs past their deadline are asked to drain (and no longer count)
        expired = {
            vm.id
            for vm in p.vms
            if vm.active
            and vm.deadline is not None
            and snap.now >= vm.deadline
            and vm.state == VMState.ACTIVE
            and vm.lcm_state == LCMState.RUNNING
        }
        for vm_id in sorted(expired):
            out.append(
                Decision(
                    "drain",
                    spec.name,
                    vm_id,
                    None,
                    f"pool {spec.name}: VM {vm_id} reached its lifetime: asked to drain",
                )
            )
        active = sorted(
            (v for v in p.vms if v.active and v.id not in expired), key=lambda v: (v.created, v.id)
        )
        surplus = len(active) - spec.target
        if surplus > 0:
            for vm in reversed(active[-surplus:]):
                if not vm.started or spec.drain == "hard":
                    why = "not started" if not vm.started else "drain mode hard"
                    out.append(
                        Decision(
                            "terminate",
                            spec.name,
                            vm.id,
                            None,
                            f"pool {spec.name}: {len(active)} active > target {spec.target}: "
                            f"VM {vm.id} terminated ({why})",
                        )
                    )
                else:
                    out.append(
                        Decision(
                            "drain",
                            spec.name,
                            vm.id,
                            None,
                            f"pool {spec.name}: {len(active)} active > target {spec.target}: "
                            f"VM {vm.id} (newest) asked to drain",
                        )
                    )
        if spec.drain == "hard":
            for vm in p.vms:
                if vm.drain_requested is not None and vm.state in (
                    VMState.ACTIVE,
                    VMState.PENDING,
                    VMState.HOLD,
                    VMState.POWEROFF,
                ):
                    if vm.state == VMState.ACTIVE and vm.lcm_state == LCMState.SHUTDOWN:
                        continue
                    out.append(
                        Decision(
                            "terminate",
                            spec.name,
                            vm.id,
                            None,
                            f"pool {spec.name}: draining VM {vm.id} terminated (drain mode hard)",
                        )
                    )
        missing = spec.target - len(active)
        if missing <= 0:
            continue
        if level and until is not None and snap.now < until:
            continue  # backing off: no VM until `until`
        if level:
            missing = 1  # after the wait: one per cycle until a 200 resets the level
        for i in range(missing):
            refills.append(
                (
                    -spec.priority,
                    i,
                    spec.name,
                    Decision(
                        "refill",
                        spec.name,
                        None,
                        None,
                        f"pool {spec.name}: {len(active) + i} active < target {spec.target}: "
                        "new VM" + (f" (backoff level {level}: one per cycle)" if level else ""),
                    ),
                )
            )
    refills.sort(key=lambda r: (r[0], r[1], r[2]))
    out.extend(r[3] for r in refills[: max(0, max_new)])
    for h in snap.hosts:
        if h.state in (HostState.OFFLINE, HostState.DISABLED) or offline_after <= 0:
            continue
        recent = h.exits[:offline_after]
        if len(recent) == offline_after and all(e.code == 500 for e in recent):
            ids = ", ".join(str(e.vm_id) for e in recent)
            pool = next((p.spec.name for p in snap.pools if _has_exit(p, recent[0])), "")
            out.append(
                Decision(
                    "offline",
                    pool,
                    recent[0].vm_id,
                    h.name,
                    f"host {h.name}: the last {offline_after} VMs ended with 500 "
                    f"(VMs {ids}): set OFFLINE",
                    (h.id, h.state),
                )
            )
    return out


def _has_exit(p: PoolState, ex: Exit) -> bool:
    return any(e.vm_id == ex.vm_id for e in p.exits)


def _exit_rows(conn: Connection, where: Any, limit: int) -> list[Exit]:
    rows = conn.execute(
        select(_V.c.id, _V.c.exit_code, _V.c.exit_time, _V.c.exit_message, _H.c.name)
        .select_from(_V.outerjoin(_H, _H.c.id == _V.c.host_id))
        .where(_V.c.exit_code.is_not(None), where)
        .order_by(_V.c.exit_time.desc(), _V.c.id.desc())
        .limit(limit)
    )
    return [
        Exit(int(r.id), int(r.exit_code), float(r.exit_time), r.name, r.exit_message or "")
        for r in rows
    ]


def read_snapshot(conn: Connection, now: float, offline_after: int) -> Snapshot:
    """Everything :func:`decide` needs, read in the caller's (short) transaction."""
    pools: list[PoolState] = []
    live = [int(s) for s in LIVE_VM_STATES]
    prow = conn.execute(select(_P).order_by(_P.c.id)).all()
    vm_rows: dict[int, list[PoolVM]] = {int(r.id): [] for r in prow}
    if prow:
        for r in conn.execute(
            select(
                _V.c.id,
                _V.c.pool_id,
                _V.c.state,
                _V.c.lcm_state,
                _V.c.created,
                _V.c.deadline,
                _V.c.drain_requested,
            )
            .where(_V.c.pool_id.in_(list(vm_rows)), _V.c.state.in_(live))
            .order_by(_V.c.id)
        ):
            vm_rows[int(r.pool_id)].append(
                PoolVM(
                    int(r.id),
                    int(r.state),
                    int(r.lcm_state),
                    float(r.created),
                    r.deadline,
                    r.drain_requested,
                )
            )
    for r in prow:
        pools.append(
            PoolState(
                int(r.id),
                _row_spec(r),
                int(r.backoff_level),
                r.backoff_until,
                tuple(vm_rows[int(r.id)]),
                tuple(_exit_rows(conn, _V.c.pool_id == r.id, _EXIT_WINDOW)),
            )
        )
    hosts: list[HostExits] = []
    if offline_after > 0:
        since: dict[int, float] = {
            int(oid): float(ts)
            for oid, ts in conn.execute(
                select(_HIST.c.object_id, func.max(_HIST.c.ts))
                .where(_HIST.c.kind == "host", _HIST.c.new_state.is_not(None))
                .group_by(_HIST.c.object_id)
            )
        }
        for h in conn.execute(
            select(_H.c.id, _H.c.name, _H.c.state).where(
                _H.c.state.not_in([int(HostState.OFFLINE), int(HostState.DISABLED)])
            )
        ):
            t0 = since.get(h.id) or 0.0
            exits = _exit_rows(conn, and_(_V.c.host_id == h.id, _V.c.exit_time > t0), offline_after)
            if exits:
                hosts.append(HostExits(int(h.id), str(h.name), int(h.state), tuple(exits)))
    return Snapshot(now, tuple(pools), tuple(hosts))


# -- applying decisions -------------------------------------------------------------------------
class PoolManager:
    """Runs pool cycles against a store (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        offline_after: int = DEFAULT_OFFLINE_AFTER,
        max_new: int = DEFAULT_MAX_NEW,
    ) -> None:
        self.store = store
        self.clock = clock
        self.offline_after = offline_after
        self.max_new = max_new
        self._owner: int | None = None

    def snapshot(self) -> Snapshot:
        with self.store.transaction() as conn:
            return read_snapshot(conn, self.clock(), self.offline_after)

    def cycle(self) -> list[Decision]:
        """One pass over all pools; returns the decisions that were applied."""
        planned = decide(self.snapshot(), offline_after=self.offline_after, max_new=self.max_new)
        done: list[Decision] = []
        for d in planned:
            try:
                applied = self.apply(d)
            except (Conflict, NotFound, InvalidInput) as exc:
                log.warning("pool %s: %s not applied: %s", d.pool, d.action, exc)
                continue
            if applied is not None:
                # DEBUG: the daemon's pools stage logs each returned decision as its line
                log.debug("%s", applied.message)
                done.append(applied)
        return done

    def apply(self, d: Decision) -> Decision | None:
        """Apply one decision in its own transaction; None when its premise no longer holds
        (another manager was faster, the target changed, the VM moved on)."""
        handler = getattr(self, f"_apply_{d.action}", None)
        if handler is None:
            raise InvalidInput(f"unknown pool decision {d.action!r}")
        result: Decision | None = handler(d)
        return result

    # each _apply_* re-reads and locks the pool row first: decisions on one pool serialise
    def _lock_pool(self, conn: Connection, name: str) -> Any:
        return conn.execute(self.store.for_update(select(_P).where(_P.c.name == name))).first()

    def _active_count(self, conn: Connection, pool_id: int) -> int:
        return int(
            conn.execute(
                select(func.count())
                .select_from(_V)
                .where(_V.c.pool_id == pool_id, _active_clause())
            ).scalar_one()
        )

    def _owner_id(self) -> int:
        if self._owner is None:
            self._owner = users.user_id(self.store)
        return self._owner

    def _apply_refill(self, d: Decision) -> Decision | None:
        owner = self._owner_id()
        with self.store.transaction() as conn:
            row = self._lock_pool(conn, d.pool)
            if row is None or not row.enabled:
                return None
            if self._active_count(conn, row.id) >= row.target:
                return None
            if row.backoff_until is not None and self.clock() < row.backoff_until:
                return None
            spec = _row_spec(row)
            text = vm_template(spec.template, spec.name, spec.lifetime, spec.hosts)
            vm_id, _token = vms.insert_vm(
                conn, vms.parse_spec(text), owner, pool_id=row.id, note=f"pool {spec.name}"
            )
            conn.execute(update(_V).where(_V.c.id == vm_id).values(name=f"{spec.name}-{vm_id}"))
            applied = replace(d, vm_id=vm_id, message=f"{d.message}: VM {vm_id}")
            Store.record(conn, "pool", row.id, None, "refill", applied.message)
        return applied

    def _pool_and_vm(self, conn: Connection, d: Decision) -> tuple[Any, Any] | None:
        """The decision's pool and VM rows, locked; None if either is gone."""
        row = self._lock_pool(conn, d.pool)
        if row is None or d.vm_id is None:
            return None
        vm = conn.execute(
            self.store.for_update(select(_V).where(_V.c.id == d.vm_id, _V.c.pool_id == row.id))
        ).first()
        return None if vm is None else (row, vm)

    def _apply_drain(self, d: Decision) -> Decision | None:
        with self.store.transaction() as conn:
            found = self._pool_and_vm(conn, d)
            if found is None or found[1].drain_requested is not None:
                return None
            row, vm = found
            pvm = PoolVM(vm.id, vm.state, vm.lcm_state, vm.created, vm.deadline)
            expired = vm.deadline is not None and self.clock() >= vm.deadline
            if not pvm.active or not pvm.started:
                return None
            if not expired and self._active_count(conn, row.id) <= row.target:
                return None
            conn.execute(update(_V).where(_V.c.id == vm.id).values(drain_requested=self.clock()))
            Store.record(conn, "vm", vm.id, None, None, f"drain requested: {d.message}")
            Store.record(conn, "pool", row.id, None, "drain", d.message)
        return d

    def _apply_terminate(self, d: Decision) -> Decision | None:
        with self.store.transaction() as conn:
            found = self._pool_and_vm(conn, d)
            if found is None:
                return None
            row, vm = found
            pvm = PoolVM(vm.id, vm.state, vm.lcm_state, vm.created, vm.deadline, vm.drain_requested)
            hard = row.drain == "hard"
            if pvm.active:
                if self._active_count(conn, row.id) <= row.target:
                    return None
                if pvm.started and not hard:
                    return None
            elif not (hard and vm.drain_requested is not None):
                return None
            if vm.state == VMState.ACTIVE and vm.lcm_state == LCMState.SHUTDOWN:
                return None
            if vm.state not in (VMState.ACTIVE, VMState.PENDING, VMState.HOLD, VMState.POWEROFF):
                return None
            conn.execute(
                update(_V)
                .where(_V.c.id == vm.id)
                .values(drain_requested=vm.drain_requested or self.clock())
            )
            vms.action_in(
                self.store, conn, vm.id, "terminate-hard" if hard else "terminate", d.message,
                actor=Actor.POOLS,
            )
            Store.record(conn, "pool", row.id, None, "terminate", d.message)
        return d

    def _apply_backoff(self, d: Decision) -> Decision | None:
        return self._set_backoff(d)

    def _apply_reset(self, d: Decision) -> Decision | None:
        return self._set_backoff(d)

    def _set_backoff(self, d: Decision) -> Decision | None:
        level, until = d.data
        with self.store.transaction() as conn:
            row = self._lock_pool(conn, d.pool)
            if row is None:
                return None
            exits = _exit_rows(conn, _V.c.pool_id == row.id, _EXIT_WINDOW)
            now_level, now_until = backoff_of(_row_spec(row), exits)
            if (now_level, now_until) != (level, until):
                return None  # newer exits arrived: the next cycle decides
            if (row.backoff_level, row.backoff_until) == (level, until):
                return None  # another manager recorded it
            conn.execute(
                update(_P).where(_P.c.id == row.id).values(backoff_level=level, backoff_until=until)
            )
            Store.record(conn, "pool", row.id, None, d.action, d.message)
        return d

    def _apply_offline(self, d: Decision) -> Decision | None:
        host_id, old_state = d.data
        with self.store.transaction() as conn:
            h = conn.execute(self.store.for_update(select(_H).where(_H.c.id == host_id))).first()
            if h is None or h.state != old_state:
                return None
            conn.execute(update(_H).where(_H.c.id == host_id).values(state=int(HostState.OFFLINE)))
            Store.record(conn, "host", host_id, HostState(h.state), HostState.OFFLINE, d.message)
            prow = conn.execute(select(_P.c.id).where(_P.c.name == d.pool)).first()
            if prow is not None:
                Store.record(conn, "pool", prow.id, None, "offline", d.message)
        return d
