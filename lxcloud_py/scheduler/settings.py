"""The scheduler's settings, handed in by whoever builds a :class:`~.core.Scheduler` (the CLI
reads them from the ``scheduler`` section of the config file, :mod:`lxcloud_py.config`).

The scheduler never imports the config module. Plain data and checks: the names of filters and
weighers are checked against the registries the caller hands in; the scheduler hands in its own
(:data:`~.filters.FILTERS`, :data:`~.weighers.WEIGHERS`: :func:`~.core.settings_from` and
:class:`~.core.Scheduler`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, fields
from typing import Any

from lxcloud_py.model import InvalidInput

DEFAULT_FILTERS = (
    "HostStateFilter",
    "RequirementsFilter",
    "ImageFilter",
    "LeaseFilter",
    "CpuFilter",
    "MemoryFilter",
    "DispatchLimitFilter",
)
DEFAULT_WEIGHERS = ("CapacityWeigher", "FreeLeasesWeigher")
DEFAULT_MULTIPLIERS = {"CapacityWeigher": 1.0, "FreeLeasesWeigher": 0.1}
STRATEGIES = ("packing", "striping")


@dataclass
class SchedulerConfig:
    filters: list[str] = field(default_factory=lambda: list(DEFAULT_FILTERS))
    weighers: list[str] = field(default_factory=lambda: list(DEFAULT_WEIGHERS))
    weigher_multipliers: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MULTIPLIERS))
    #: packing fills the fullest host first (keeps whole hosts free); striping spreads.
    strategy: str = "packing"
    #: Per-host dispatch limit: VMs in PROLOG/BOOT on one host at once (None = unlimited).
    #: A host's own ``hosts.max_dispatch`` overrides it.
    dispatch_limit: int | None = 4
    cpu_allocation_ratio: float = 1.0
    memory_allocation_ratio: float = 1.0
    #: Stop a cycle after this many placements (None = no limit).
    max_placements_per_cycle: int | None = None

    def validate(
        self, where: str = "scheduler", *, filters: Collection[str], weighers: Collection[str]
    ) -> SchedulerConfig:
        """Check every value; ``filters`` and ``weighers`` are the names that exist."""
        for name in self.filters:
            if name not in filters:
                raise InvalidInput(
                    f"{where}.filters: unknown filter {name!r} "
                    f"(known: {', '.join(sorted(filters))})"
                )
        for name in self.weighers:
            if name not in weighers:
                raise InvalidInput(
                    f"{where}.weighers: unknown weigher {name!r} "
                    f"(known: {', '.join(sorted(weighers))})"
                )
        for name, mult in self.weigher_multipliers.items():
            if name not in weighers:
                raise InvalidInput(f"{where}.weigher_multipliers: unknown weigher {name!r}")
            if not isinstance(mult, int | float) or isinstance(mult, bool):
                raise InvalidInput(f"{where}.weigher_multipliers.{name}: not a number: {mult!r}")
        if self.strategy not in STRATEGIES:
            raise InvalidInput(
                f"{where}.strategy: {self.strategy!r} is not one of {', '.join(STRATEGIES)}"
            )
        for key in ("dispatch_limit", "max_placements_per_cycle"):
            value = getattr(self, key)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise InvalidInput(f"{where}.{key}: must be a positive integer or null: {value!r}")
        for key in ("cpu_allocation_ratio", "memory_allocation_ratio"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise InvalidInput(f"{where}.{key}: must be a positive number: {value!r}")
        return self

    def multiplier(self, weigher: str) -> float:
        return float(self.weigher_multipliers.get(weigher, 1.0))


def from_mapping(
    data: Any, where: str, *, filters: Collection[str], weighers: Collection[str]
) -> SchedulerConfig:
    """Settings from the ``scheduler`` section of a config file (None: the defaults); a
    wrong key, type or name is an InvalidInput naming it, prefixed with ``where``."""
    if data is None:
        return SchedulerConfig().validate(where, filters=filters, weighers=weighers)
    if not isinstance(data, dict):
        raise InvalidInput(f"{where}: must be a mapping")
    known = {f.name for f in fields(SchedulerConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInput(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(known))})"
        )
    kwargs = dict(data)
    for key in ("filters", "weighers"):
        if key in kwargs and (
            not isinstance(kwargs[key], list) or not all(isinstance(x, str) for x in kwargs[key])
        ):
            raise InvalidInput(f"{where}.{key}: must be a list of names")
    if "weigher_multipliers" in kwargs:
        mults = kwargs["weigher_multipliers"]
        if not isinstance(mults, dict):
            raise InvalidInput(f"{where}.weigher_multipliers: must be a mapping name: number")
        # Multipliers not given keep their defaults.
        kwargs["weigher_multipliers"] = {**DEFAULT_MULTIPLIERS, **mults}
    return SchedulerConfig(**kwargs).validate(where, filters=filters, weighers=weighers)
