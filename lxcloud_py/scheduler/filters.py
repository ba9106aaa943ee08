"""Placement rules, one tiny class each (Nova's filter scheduler).

A filter's :meth:`host_passes` says whether a host can take a request; ``reason`` says why a
host was rejected, and :meth:`none_left` phrases the message a VM keeps (``sched_message``)
when this filter removed the last candidates. Filters are enabled by name in the config and
run in the configured order, each on the hosts the previous ones left.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import ClassVar

from .settings import SchedulerConfig
from .state import HostState, Request

_EPS = 1e-9


class BaseFilter:
    name: ClassVar[str] = "BaseFilter"
    reason: ClassVar[str] = "rejected"
    #: True when the verdict depends only on things that do not change during a cycle (host
    #: state, staged images) and on :meth:`cache_key` of the request: the scheduler then
    #: computes it once per cycle and key instead of once per VM.
    static: ClassVar[bool] = False

    def cache_key(self, request: Request) -> Hashable:
        return ()

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config

    def host_passes(self, host: HostState, request: Request) -> bool:  # pragma: no cover
        raise NotImplementedError

    def none_left(self, request: Request) -> str:
        return f"No host passes {self.name} ({self.reason})"


class HostStateFilter(BaseFilter):
    """The host is enabled: its state is one the scheduler may place on."""

    name = "HostStateFilter"
    reason = "host disabled, offline or in error"
    static = True

    def host_passes(self, host: HostState, request: Request) -> bool:
        return host.schedulable

    def none_left(self, request: Request) -> str:
        return "No enabled host"


class RequirementsFilter(BaseFilter):
    """The host is one the VM's SCHED_REQUIREMENTS allow (the ``HOSTNAME = "h" | ...`` subset
    of OpenNebula's expressions; pools with a host constraint write it)."""

    name = "RequirementsFilter"
    reason = "not allowed by SCHED_REQUIREMENTS"
    static = True

    def cache_key(self, request: Request) -> Hashable:
        return request.hosts

    def host_passes(self, host: HostState, request: Request) -> bool:
        return request.hosts is None or host.name in request.hosts

    def none_left(self, request: Request) -> str:
        if request.hosts == frozenset():
            return (
                f"SCHED_REQUIREMENTS {request.requirements!r} is not understood "
                '(lxcloud knows HOSTNAME = "name" terms joined by |)'
            )
        return f"No host allowed by SCHED_REQUIREMENTS ({', '.join(sorted(request.hosts or ()))})"


class ImageFilter(BaseFilter):
    """The requested image is staged and verified on the host."""

    name = "ImageFilter"
    reason = "requested image not staged and verified"
    static = True

    def cache_key(self, request: Request) -> Hashable:
        return request.image_name

    def host_passes(self, host: HostState, request: Request) -> bool:
        return request.image_name is None or request.image_name in host.images

    def none_left(self, request: Request) -> str:
        return f"Image {request.image_name!r} is not staged and verified on any enabled host"


class LeaseFilter(BaseFilter):
    """A free lease is pinned to the host (and its MAC is one the host allows); a VM that
    already holds a lease can only go to that lease's host."""

    name = "LeaseFilter"
    reason = "no free lease pinned to the host"

    def host_passes(self, host: HostState, request: Request) -> bool:
        if request.held_lease is not None:
            return request.held_lease.host == host.name
        return bool(host.free_leases)

    def none_left(self, request: Request) -> str:
        if request.held_lease is not None:
            return (
                f"The host {request.held_lease.host!r} of the VM's lease "
                f"{request.held_lease.ip} cannot take it"
            )
        if request.image_name:
            return f"No free lease pinned to any host holding image {request.image_name!r}"
        return "No free lease pinned to any enabled host"


class _CapacityFilter(BaseFilter):
    def none_left(self, request: Request) -> str:
        return f"No host with enough capacity (CPU {request.cpu:g}, MEMORY {request.memory_mb} MB)"


class CpuFilter(_CapacityFilter):
    """CPU (cores) requested fits in the host's cores (times the allocation ratio) minus the
    CPU of the live VMs on it."""

    name = "CpuFilter"
    reason = "not enough free CPU"

    def host_passes(self, host: HostState, request: Request) -> bool:
        limit = host.cpu_total * self.config.cpu_allocation_ratio
        return host.cpu_used + request.cpu <= limit + _EPS


class MemoryFilter(_CapacityFilter):
    name = "MemoryFilter"
    reason = "not enough free memory"

    def host_passes(self, host: HostState, request: Request) -> bool:
        limit = host.memory_total * self.config.memory_allocation_ratio
        return host.memory_used + request.memory_mb <= limit + _EPS


class DispatchLimitFilter(BaseFilter):
    """At most N VMs being deployed (PROLOG/BOOT) on one host at once: N is the host's
    ``max_dispatch`` or the config's ``dispatch_limit``."""

    name = "DispatchLimitFilter"
    reason = "dispatch limit reached"

    def limit(self, host: HostState) -> int | None:
        return host.max_dispatch if host.max_dispatch else self.config.dispatch_limit

    def host_passes(self, host: HostState, request: Request) -> bool:
        limit = self.limit(host)
        return limit is None or host.dispatching < limit

    def none_left(self, request: Request) -> str:
        return "Every candidate host reached its dispatch limit (VMs in PROLOG/BOOT)"


FILTERS: dict[str, type[BaseFilter]] = {
    cls.name: cls
    for cls in (
        HostStateFilter,
        RequirementsFilter,
        ImageFilter,
        LeaseFilter,
        CpuFilter,
        MemoryFilter,
        DispatchLimitFilter,
    )
}
