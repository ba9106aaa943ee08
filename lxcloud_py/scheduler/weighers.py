"""Host weighers (Nova style): each gives a raw weight per candidate host; the scheduler
normalises every weigher's weights to [0, 1] across the candidates, multiplies them by the
weigher's multiplier from the config and adds them up. The highest total wins.
"""

from __future__ import annotations

from typing import ClassVar

from .settings import SchedulerConfig
from .state import HostState, Request


class BaseWeigher:
    name: ClassVar[str] = "BaseWeigher"

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.multiplier = config.multiplier(self.name)

    def weigh(self, host: HostState, request: Request) -> float:  # pragma: no cover
        raise NotImplementedError


def normalise(weights: list[float]) -> list[float]:
    """Scale to [0, 1] (min -> 0, max -> 1); all equal -> all 0."""
    if not weights:
        return []
    lo, hi = min(weights), max(weights)
    if hi - lo < 1e-12:
        return [0.0] * len(weights)
    span = hi - lo
    return [(w - lo) / span for w in weights]


class CapacityWeigher(BaseWeigher):
    """Free fraction of the host's CPU and memory (mean of the two). ``strategy: striping``
    prefers the emptiest host (spread); ``strategy: packing`` flips the sign and fills the
    fullest host first, keeping whole hosts free."""

    name = "CapacityWeigher"

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config)
        sign = 1.0 if config.strategy == "striping" else -1.0
        self.multiplier = sign * abs(self.multiplier)

    def weigh(self, host: HostState, request: Request) -> float:
        cpu = 1.0 - host.cpu_used / host.cpu_total if host.cpu_total > 0 else 0.0
        mem = 1.0 - host.memory_used / host.memory_total if host.memory_total > 0 else 0.0
        return (cpu + mem) / 2.0


class FreeLeasesWeigher(BaseWeigher):
    """More free leases pinned to the host weigh more: hosts with few leases left keep them
    for VMs that can go nowhere else."""

    name = "FreeLeasesWeigher"

    def weigh(self, host: HostState, request: Request) -> float:
        return float(len(host.free_leases))


class DispatchLoadWeigher(BaseWeigher):
    """Fewer VMs being deployed on the host weigh more (spreads boot storms)."""

    name = "DispatchLoadWeigher"

    def weigh(self, host: HostState, request: Request) -> float:
        return -float(host.dispatching)


WEIGHERS: dict[str, type[BaseWeigher]] = {
    cls.name: cls for cls in (CapacityWeigher, FreeLeasesWeigher, DispatchLoadWeigher)
}
