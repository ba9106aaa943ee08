"""One scheduling cycle: filter, weigh, claim.

Each PENDING VM (oldest first) goes through the enabled filters in order over the cycle's host
states; the survivors are weighed; the scheduler then tries to *claim* the best one in one
database transaction:

1. lock the host row (``SELECT ... FOR UPDATE`` on MySQL; SQLite's ``BEGIN IMMEDIATE`` already
   serialises writers) and check it is still schedulable;
2. re-check CPU, memory and the dispatch limit against the live VMs on the host *in the
   database* (another scheduler may have placed VMs there since the cycle began);
3. ``UPDATE leases SET vm_id=?, state='used' WHERE id=? AND vm_id IS NULL`` — rowcount 1 or
   the lease is gone and the next free lease of the host is tried;
4. ``UPDATE vms SET host_id, image_id, state=ACTIVE, lcm_state=PROLOG ... WHERE id=? AND
   state=PENDING`` — rowcount 1 or the VM was taken (or held) meanwhile and everything rolls
   back; plus a history record.

A claim that loses a race moves on to the next candidate host. Because every claim on a host
holds that host's row lock while it re-counts the host's VMs, two schedulers can neither claim
one lease twice nor over-commit a host. A VM that cannot be placed stays PENDING with the
reason in ``vms.sched_message``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BindParameter, Connection, bindparam, insert, select, update
from sqlalchemy.exc import OperationalError

from lxcloud_py import lifecycle
from lxcloud_py.leases import claim_lease
from lxcloud_py.model import SCHEDULABLE_HOST_STATES
from lxcloud_py.store import Store, schema

from .filters import FILTERS, BaseFilter
from .settings import SchedulerConfig, from_mapping
from .state import HostState, Lease, Request, load_hosts, load_requests, usage_query
from .weighers import WEIGHERS, BaseWeigher, normalise

log = logging.getLogger("lxcloud.scheduler")

_H, _V, _L = schema.hosts, schema.vms, schema.leases
_HISTORY = insert(schema.history)
#: The scheduler's one transition (lxcloud_py.lifecycle): PENDING -> ACTIVE/PROLOG.
_PLACE_FROM, _PLACE_TO = lifecycle.transition(lifecycle.PLACE)
#: MySQL errors that mean "try again": deadlock found, lock wait timeout.
_RETRYABLE_MYSQL = {1213, 1205}


@dataclass
class Placement:
    vm_id: int
    vm_name: str
    host: str
    host_id: int
    lease_id: int
    ip: str
    mac: str
    lease_name: str
    image_id: int | None


@dataclass
class Unplaced:
    vm_id: int
    vm_name: str
    reason: str


@dataclass
class CycleResult:
    placements: list[Placement] = field(default_factory=list)
    unplaced: list[Unplaced] = field(default_factory=list)
    #: VMs another scheduler (or an operator) took while this cycle ran
    skipped: list[int] = field(default_factory=list)
    #: claims lost to a concurrent change (lease taken, host filled, deadlock): retried elsewhere
    conflicts: int = 0
    hosts: int = 0
    requests: int = 0
    seconds: float = 0.0
    #: filter name -> how many (VM, host) pairs it rejected this cycle
    rejected: Counter[str] = field(default_factory=Counter)


class _VMTaken(Exception):
    """The VM is no longer PENDING: roll the claim back and move on."""


class _Lost(Exception):
    """The host can no longer take the VM (refreshed state tells why)."""


class Scheduler:
    def __init__(self, store: Store, config: SchedulerConfig | None = None) -> None:
        self.store = store
        self.config = (config or SchedulerConfig()).validate(filters=FILTERS, weighers=WEIGHERS)
        self.filters: list[BaseFilter] = [FILTERS[n](self.config) for n in self.config.filters]
        self.weighers: list[BaseWeigher] = [WEIGHERS[n](self.config) for n in self.config.weighers]
        self._conn: Connection | None = None
        # Capacity rules re-checked under the host's lock at claim time.
        self._capacity_filters = [
            f
            for f in self.filters
            if f.name in ("CpuFilter", "MemoryFilter", "DispatchLimitFilter")
        ]
        # Statements built once (a cycle runs thousands of claims).
        hid: BindParameter[int] = bindparam("hid")
        self._lock_host = store.for_update(
            select(_H.c.state, _H.c.cpu, _H.c.memory_mb, _H.c.max_dispatch).where(_H.c.id == hid)
        )
        self._host_usage = usage_query().where(_V.c.host_id == hid)
        self._host_macs = select(schema.host_macs.c.mac).where(schema.host_macs.c.host_id == hid)
        self._bind_vm = (
            update(_V)
            .where(_V.c.id == bindparam("vid"), _V.c.state == _PLACE_FROM[0])
            .values(
                host_id=hid,
                image_id=bindparam("iid"),
                state=_PLACE_TO[0],
                lcm_state=_PLACE_TO[1],
                sched_message=None,
            )
        )
        self._n_static = 0
        while self._n_static < len(self.filters) and self.filters[self._n_static].static:
            self._n_static += 1
        self._static: dict[
            tuple[object, ...], tuple[list[HostState], list[tuple[str, int]], BaseFilter | None]
        ] = {}

    # -- one cycle ------------------------------------------------------------------------------
    def run_cycle(self, limit: int | None = None) -> CycleResult:
        """Place the PENDING VMs (at most ``limit`` of the oldest); see the module docstring."""
        t0 = time.monotonic()
        with self.store.transaction() as conn:
            hosts = load_hosts(conn)
            requests = load_requests(conn, limit)
        result = CycleResult(hosts=len(hosts), requests=len(requests))
        self._static.clear()
        # One connection for the cycle, one short transaction per claim on it (a new SQLite
        # connection per claim would cost a WAL checkpoint each time the last one closes).
        with self.store.engine.connect() as conn:
            self._conn = conn
            try:
                self._run(hosts, requests, result)
            finally:
                self._conn = None
        result.seconds = time.monotonic() - t0
        if result.requests:
            log.info(
                "cycle: %d pending, %d placed, %d unplaced, %d taken elsewhere, %d conflicts, "
                "%.3f s; rejections per filter: %s",
                result.requests,
                len(result.placements),
                len(result.unplaced),
                len(result.skipped),
                result.conflicts,
                result.seconds,
                dict(result.rejected) or "none",
            )
        return result

    def _run(
        self,
        hosts: list[HostState],
        requests: list[Request],
        result: CycleResult,
    ) -> None:
        # A request shape that found no host cannot find one later in the same cycle: hosts
        # only fill up. Cache the reason instead of filtering 500 hosts again.
        failed: dict[tuple[float, int, str | None, frozenset[str] | None], str] = {}
        max_placed = self.config.max_placements_per_cycle
        for req in requests:
            if max_placed is not None and len(result.placements) >= max_placed:
                break
            key = (req.cpu, req.memory_mb, req.image_name, req.hosts)
            if req.held_lease is None and key in failed:
                result.unplaced.append(Unplaced(req.vm_id, req.name, failed[key]))
                continue
            outcome = self._place(req, hosts, result)
            if isinstance(outcome, Placement):
                result.placements.append(outcome)
            elif outcome is None:
                result.skipped.append(req.vm_id)
            else:
                result.unplaced.append(Unplaced(req.vm_id, req.name, outcome))
                if req.held_lease is None:
                    failed[key] = outcome
        self._save_messages(requests, result)

    def _apply(
        self,
        filters: list[BaseFilter],
        remaining: list[HostState],
        req: Request,
        counts: list[tuple[str, int]],
    ) -> tuple[list[HostState], BaseFilter | None]:
        """Run ``filters`` in order; returns the hosts left and the filter that left none."""
        debug = log.isEnabledFor(logging.DEBUG)
        for f in filters:
            passes = f.host_passes
            kept = [h for h in remaining if passes(h, req)]
            if len(kept) != len(remaining):
                counts.append((f.name, len(remaining) - len(kept)))
            if debug:
                log.debug(
                    "VM %d: %s left %d of %d hosts", req.vm_id, f.name, len(kept), len(remaining)
                )
            remaining = kept
            if not remaining:
                return [], f
        return remaining, None

    def _filter(
        self, req: Request, hosts: list[HostState], result: CycleResult
    ) -> tuple[list[HostState], str | None]:
        """Run the filters in order; return the candidates, or none and the reason."""
        if not hosts:
            return [], "No hosts registered"
        n = self._n_static
        counts: list[tuple[str, int]] = []
        remaining: list[HostState] = hosts
        emptied: BaseFilter | None = None
        if n:
            # The leading static filters: once per cycle and request key.
            key = tuple(f.cache_key(req) for f in self.filters[:n])
            cached = self._static.get(key)
            if cached is None:
                static_counts: list[tuple[str, int]] = []
                kept, by = self._apply(self.filters[:n], hosts, req, static_counts)
                cached = self._static[key] = (kept, static_counts, by)
            remaining, static_counts, emptied = cached
            counts.extend(static_counts)
        if emptied is None:
            remaining, emptied = self._apply(self.filters[n:], remaining, req, counts)
        for name, dropped in counts:
            result.rejected[name] += dropped
        if emptied is None:
            return remaining, None
        detail = ", ".join(f"{name}({dropped})" for name, dropped in counts)
        total = len(hosts)
        return [], (
            f"{emptied.none_left(req)}: {total} host{'s' if total != 1 else ''} "
            f"filtered out by {detail}"
        )

    def _weigh(self, req: Request, candidates: list[HostState]) -> list[HostState]:
        if len(candidates) < 2 or not self.weighers:
            return candidates
        totals = [0.0] * len(candidates)
        for w in self.weighers:
            if not w.multiplier:
                continue
            norm = normalise([w.weigh(h, req) for h in candidates])
            for i, x in enumerate(norm):
                totals[i] += w.multiplier * x
        order = sorted(range(len(candidates)), key=lambda i: (-totals[i], candidates[i].id))
        return [candidates[i] for i in order]

    def _place(
        self, req: Request, hosts: list[HostState], result: CycleResult
    ) -> Placement | str | None:
        candidates, reason = self._filter(req, hosts, result)
        if reason is not None:
            return reason
        lost = 0
        for host in self._weigh(req, candidates):
            # An earlier lost race in this loop may have refreshed this host: re-filter it.
            if lost and not all(f.host_passes(host, req) for f in self.filters):
                continue
            try:
                placement = self._claim(req, host)
            except _VMTaken:
                return None
            except _Lost as exc:
                self._static.clear()  # the host's state may have changed
                lost += 1
                result.conflicts += 1
                log.info("VM %d: claim on host %s lost: %s", req.vm_id, host.name, exc)
                continue
            except OperationalError as exc:
                code = getattr(exc.orig, "args", [None])[0]
                if self.store.backend != "mysql" or code not in _RETRYABLE_MYSQL:
                    raise
                lost += 1
                result.conflicts += 1
                log.info("VM %d: claim on host %s: %s, next host", req.vm_id, host.name, exc.orig)
                continue
            host.consume(req, req.held_lease or _lease_by_id(host, placement.lease_id))
            log.debug("VM %d placed on %s with lease %s", req.vm_id, host.name, placement.ip)
            return placement
        n = len(candidates)
        return (
            f"All {n} candidate host{'s' if n != 1 else ''} were taken by concurrent "
            "placements; retrying next cycle"
        )

    # -- the atomic claim -----------------------------------------------------------------------
    def _claim(self, req: Request, host: HostState) -> Placement:
        conn = self._conn
        assert conn is not None, "claims happen inside run_cycle"
        with conn.begin():
            row = conn.execute(self._lock_host, {"hid": host.id}).first()
            if row is None:
                host.state = -1
                raise _Lost("host was deleted")
            host.state, host.max_dispatch = row.state, row.max_dispatch
            host.cpu_total, host.memory_total = float(row.cpu or 0), int(row.memory_mb or 0)
            if row.state not in SCHEDULABLE_HOST_STATES:
                raise _Lost(f"host state is now {row.state}")
            # Re-count the host's live VMs in the database, under the host's lock.
            usage = conn.execute(self._host_usage, {"hid": host.id}).first()
            host.set_usage(*(usage[1:] if usage else (0, 0, 0, 0)))
            for f in self._capacity_filters:
                if not f.host_passes(host, req):
                    raise _Lost(f.reason)
            # Without ImageFilter enabled the host may lack the image: bind none then.
            staged = host.images.get(req.image_name) if req.image_name else None
            image_id = staged[0] if staged else None
            res = conn.execute(self._bind_vm, {"vid": req.vm_id, "hid": host.id, "iid": image_id})
            if res.rowcount != 1:
                raise _VMTaken()
            # Only now, with the VM row ours (locked on MySQL), claim its lease.
            lease = self._take_lease(conn, req, host)
            image = f", image {req.image_name}" if req.image_name else ""
            conn.execute(
                _HISTORY,
                {
                    "ts": time.time(),
                    "kind": "vm",
                    "object_id": req.vm_id,
                    "old_state": _PLACE_FROM[0].name,
                    "new_state": _PLACE_TO[0].name,
                    "message": f"PROLOG: placed on host {host.name}, lease {lease.ip} "
                    f"{lease.mac} {lease.name}{image}",
                },
            )
        return Placement(
            vm_id=req.vm_id,
            vm_name=req.name,
            host=host.name,
            host_id=host.id,
            lease_id=lease.id,
            ip=lease.ip,
            mac=lease.mac,
            lease_name=lease.name,
            image_id=image_id,
        )

    def _take_lease(self, conn: Connection, req: Request, host: HostState) -> Lease:
        if req.held_lease is not None:
            still = conn.execute(
                select(_L.c.id).where(_L.c.id == req.held_lease.id, _L.c.vm_id == req.vm_id)
            ).first()
            if still is None:
                raise _VMTaken()
            return req.held_lease
        # The host's allowed MACs, re-read under its lock (registration may have changed them).
        host.macs = frozenset(m.lower() for (m,) in conn.execute(self._host_macs, {"hid": host.id}))
        while host.free_leases:
            lease = host.free_leases[0]
            if host.macs and lease.mac not in host.macs:
                host.free_leases.pop(0)
                host.blocked_leases += 1
                continue
            if claim_lease(conn, lease.id, req.vm_id, as_seen=lease):
                return lease
            # Someone else claimed it, or an import changed it: gone for this cycle.
            host.free_leases.pop(0)
        raise _Lost("no free lease left on the host")

    # -- messages -------------------------------------------------------------------------------
    def _save_messages(self, requests: list[Request], result: CycleResult) -> None:
        """Store the reason of each unplaced VM in vms.sched_message (only when it changed)."""
        old = {r.vm_id: r.sched_message for r in requests}
        changed = [
            {"vid": u.vm_id, "msg": u.reason[:512]}
            for u in result.unplaced
            if old.get(u.vm_id) != u.reason[:512]
        ]
        if not changed:
            return
        assert self._conn is not None
        with self._conn.begin():
            self._conn.execute(
                update(_V)
                .where(_V.c.id == bindparam("vid"), _V.c.state == _PLACE_FROM[0])
                .values(sched_message=bindparam("msg")),
                changed,
            )


def _lease_by_id(host: HostState, lease_id: int) -> Lease | None:
    for lease in host.free_leases:
        if lease.id == lease_id:
            return lease
    return None


def settings_from(data: Any, where: str = "scheduler") -> SchedulerConfig:
    """Settings from the ``scheduler`` section of a config file, the names of filters and
    weighers checked against the scheduler's registries."""
    return from_mapping(data, where, filters=FILTERS, weighers=WEIGHERS)


def run_cycle(store: Store, config: SchedulerConfig | None = None) -> CycleResult:
    """One scheduling cycle with the given (or default) configuration."""
    return Scheduler(store, config).run_cycle()
