"""What the scheduler knows about hosts and requests during one cycle.

Host states are loaded once per cycle with a handful of aggregate queries (hosts, live-VM usage
per host, allowed MACs, verified images, free leases) and then updated in memory as the cycle
places VMs; each claim re-checks the host against the database under a row lock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, case, func, or_, select

from lxcloud_py import template
from lxcloud_py.model import (
    LIVE_VM_STATES,
    SCHEDULABLE_HOST_STATES,
    ImageState,
    InvalidInput,
    LCMState,
    LeaseState,
    VMState,
)
from lxcloud_py.store import schema

_H, _V, _L = schema.hosts, schema.vms, schema.leases
_I, _HI, _M = schema.images, schema.host_images, schema.host_macs
DISPATCHING_LCM = (LCMState.PROLOG, LCMState.BOOT)
#: Live VMs that occupy their host. A PENDING VM is not placed yet, even if it still names
#: the host it ran on before a resubmit: it must not count against that host twice.
PLACED_VM_STATES = tuple(s for s in LIVE_VM_STATES if s != VMState.PENDING)


@dataclass(frozen=True)
class Lease:
    id: int
    ip: str
    mac: str
    name: str
    host: str


@dataclass
class HostState:
    id: int
    name: str
    state: int
    cpu_total: float
    memory_total: int
    max_dispatch: int | None = None
    cpu_used: float = 0.0
    memory_used: int = 0
    vms: int = 0
    #: VMs on this host in PROLOG/BOOT (being deployed): the dispatch limit counts these.
    dispatching: int = 0
    #: image name -> (image id, version) of the newest version staged and verified here
    images: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: MACs the host reported it allows (empty: the host reported none, no restriction)
    macs: frozenset[str] = frozenset()
    #: free leases pinned to this host that it may use (MAC allowed), lowest id first
    free_leases: list[Lease] = field(default_factory=list)
    #: free leases pinned here whose MAC the host does not allow
    blocked_leases: int = 0

    @property
    def schedulable(self) -> bool:
        return self.state in SCHEDULABLE_HOST_STATES

    def set_usage(self, cpu: float, memory: int, vms: int, dispatching: int) -> None:
        self.cpu_used, self.memory_used = float(cpu or 0), int(memory or 0)
        self.vms, self.dispatching = int(vms or 0), int(dispatching or 0)

    def consume(self, request: Request, lease: Lease | None) -> None:
        self.cpu_used += request.cpu
        self.memory_used += request.memory_mb
        self.vms += 1
        self.dispatching += 1
        if lease is not None and lease in self.free_leases:
            self.free_leases.remove(lease)


@dataclass
class Request:
    """A PENDING VM asking for a place."""

    vm_id: int
    name: str
    cpu: float
    vcpu: int
    memory_mb: int
    image_name: str | None
    created: float
    sched_message: str | None = None
    #: the lease this VM already holds (a resubmitted VM keeps its lease, hence its host)
    held_lease: Lease | None = None
    #: the hosts its SCHED_REQUIREMENTS allow (None: any host; empty: an expression lxcloud
    #: does not understand, which no host passes)
    hosts: frozenset[str] | None = None
    requirements: str | None = None


_REQ_TERM = re.compile(r'\s*HOSTNAME\s*=\s*"?([A-Za-z0-9][A-Za-z0-9._-]*)"?\s*\Z')


def requirement_hosts(expression: str) -> frozenset[str]:
    """The hosts an OpenNebula SCHED_REQUIREMENTS expression allows, for the subset lxcloud
    understands: ``HOSTNAME = "a" | HOSTNAME = "b"`` (what pools with a host constraint write).
    Anything else allows no host (the VM says why in its SCHED_MESSAGE)."""
    names = []
    for term in expression.split("|"):
        m = _REQ_TERM.match(term)
        if m is None:
            return frozenset()
        names.append(m.group(1))
    return frozenset(names)


def _requirements(text: str | None) -> str | None:
    if not text or "SCHED_REQUIREMENTS" not in text.upper():
        return None  # cheap: most templates have none
    try:
        return template.parse(text).get("SCHED_REQUIREMENTS")
    except InvalidInput:
        return ""


def usage_query() -> Any:
    """Per-host sums over placed live VMs: (host_id, cpu, memory_mb, vms, dispatching)."""
    dispatching = func.sum(
        case(
            (and_(_V.c.state == VMState.ACTIVE, _V.c.lcm_state.in_(DISPATCHING_LCM)), 1),
            else_=0,
        )
    )
    return (
        select(
            _V.c.host_id,
            func.sum(_V.c.cpu),
            func.sum(_V.c.memory_mb),
            func.count(),
            dispatching,
        )
        .where(_V.c.host_id.is_not(None), _V.c.state.in_(PLACED_VM_STATES))
        .group_by(_V.c.host_id)
    )


def load_hosts(conn: Connection) -> list[HostState]:
    """Every registered host with its usage, images, allowed MACs and free leases."""
    hosts = {
        r.id: HostState(
            id=r.id,
            name=r.name,
            state=r.state,
            cpu_total=float(r.cpu or 0),
            memory_total=int(r.memory_mb or 0),
            max_dispatch=r.max_dispatch,
        )
        for r in conn.execute(
            select(_H.c.id, _H.c.name, _H.c.state, _H.c.cpu, _H.c.memory_mb, _H.c.max_dispatch)
        )
    }
    for host_id, cpu, mem, n, disp in conn.execute(usage_query()):
        if host_id in hosts:
            hosts[host_id].set_usage(cpu, mem, n, disp)
    macs: dict[int, set[str]] = {}
    for host_id, mac in conn.execute(select(_M.c.host_id, _M.c.mac)):
        macs.setdefault(host_id, set()).add(mac.lower())
    for host_id, found in macs.items():
        if host_id in hosts:
            hosts[host_id].macs = frozenset(found)
    verified = (
        select(_HI.c.host_id, _I.c.id, _I.c.name, _I.c.version)
        .join(_I, _I.c.id == _HI.c.image_id)
        .where(
            _HI.c.state == ImageState.VERIFIED,
            or_(_HI.c.sha256.is_(None), _HI.c.sha256 == _I.c.sha256),
        )
        .order_by(_I.c.created, _I.c.id)  # newest last: it wins below
    )
    for host_id, image_id, name, version in conn.execute(verified):
        if host_id in hosts:
            hosts[host_id].images[name] = (image_id, version)
    by_name = {h.name: h for h in hosts.values()}
    free = select(_L.c.id, _L.c.ip, _L.c.mac, _L.c.name, _L.c.host).where(
        _L.c.vm_id.is_(None), _L.c.state == LeaseState.FREE
    )
    for r in conn.execute(free.order_by(_L.c.id)):
        host = by_name.get(r.host)
        if host is None:
            continue  # pinned to a host that has not registered (yet)
        if host.macs and r.mac.lower() not in host.macs:
            host.blocked_leases += 1
            continue
        host.free_leases.append(Lease(r.id, r.ip, r.mac, r.name, r.host))
    return sorted(hosts.values(), key=lambda h: h.id)


def load_requests(conn: Connection, limit: int | None = None) -> list[Request]:
    """PENDING VMs, oldest first (HOLD ones are not asking)."""
    stmt = (
        select(
            _V.c.id,
            _V.c.name,
            _V.c.cpu,
            _V.c.vcpu,
            _V.c.memory_mb,
            _V.c.image_name,
            _V.c.created,
            _V.c.sched_message,
            _V.c.template,
        )
        .where(_V.c.state == VMState.PENDING)
        .order_by(_V.c.created, _V.c.id)
    )
    if limit:
        stmt = stmt.limit(limit)
    requests = [
        Request(
            vm_id=r.id,
            name=r.name,
            cpu=float(r.cpu if r.cpu is not None else 1.0),
            vcpu=int(r.vcpu or 1),
            memory_mb=int(r.memory_mb if r.memory_mb is not None else 0),
            image_name=r.image_name or None,
            created=r.created,
            sched_message=r.sched_message,
            requirements=req,
            hosts=None if req is None else requirement_hosts(req),
        )
        for r in conn.execute(stmt)
        for req in (_requirements(r.template),)
    ]
    held = {
        r.vm_id: Lease(r.id, r.ip, r.mac, r.name, r.host)
        for r in conn.execute(
            select(_L.c.id, _L.c.ip, _L.c.mac, _L.c.name, _L.c.host, _L.c.vm_id)
            .join(_V, _V.c.id == _L.c.vm_id)
            .where(_V.c.state == VMState.PENDING)
        )
    }
    for req in requests:
        req.held_lease = held.get(req.vm_id)
    return requests
