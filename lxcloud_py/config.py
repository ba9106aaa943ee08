"""Control-plane configuration: one YAML file, every key optional, defaults below.

The file comes from ``--config FILE`` or ``$LXCLOUD_CONFIG``; without either, the defaults
apply. Sections lxcloud knows are validated (a typo is an error naming the key, not a silently
ignored setting); other top-level sections are kept as plain mappings for the parts of the
control plane that read them (:meth:`Config.section`).

Example::

    scheduler:
      filters: [HostStateFilter, ImageFilter, LeaseFilter, CpuFilter, MemoryFilter,
                DispatchLimitFilter]
      weighers: [CapacityWeigher, FreeLeasesWeigher]
      weigher_multipliers: {CapacityWeigher: 1.0, FreeLeasesWeigher: 0.1}
      strategy: packing          # packing: fill the fullest host first; striping: spread
      dispatch_limit: 4          # VMs in PROLOG/BOOT per host at once; null = unlimited
      cpu_allocation_ratio: 1.0
      memory_allocation_ratio: 1.0
      max_placements_per_cycle: null
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from lxcloud_py.model import InvalidInput

DEFAULT_FILTERS = (
    "HostStateFilter",
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

    def validate(self, where: str = "scheduler") -> SchedulerConfig:
        from lxcloud_py.scheduler import FILTERS, WEIGHERS  # the registries of names

        for name in self.filters:
            if name not in FILTERS:
                raise InvalidInput(
                    f"{where}.filters: unknown filter {name!r} "
                    f"(known: {', '.join(sorted(FILTERS))})"
                )
        for name in self.weighers:
            if name not in WEIGHERS:
                raise InvalidInput(
                    f"{where}.weighers: unknown weigher {name!r} "
                    f"(known: {', '.join(sorted(WEIGHERS))})"
                )
        for name, mult in self.weigher_multipliers.items():
            if name not in WEIGHERS:
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


@dataclass
class Config:
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    path: str | None = None
    other: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        """A top-level section this module does not model, as a mapping ({} when absent)."""
        value = self.other.get(name) or {}
        if not isinstance(value, dict):
            raise InvalidInput(f"{self.path or 'config'}: section {name!r} must be a mapping")
        return value


def _scheduler_from(data: Any, where: str) -> SchedulerConfig:
    if data is None:
        return SchedulerConfig().validate(where)
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
    return SchedulerConfig(**kwargs).validate(where)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the YAML config at ``path`` (else ``$LXCLOUD_CONFIG``; else defaults only)."""
    path = path or os.environ.get("LXCLOUD_CONFIG") or None
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read config {str(p)!r}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{p}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidInput(f"{p}: the config must be a mapping of sections")
    other = {k: v for k, v in data.items() if k != "scheduler"}
    return Config(
        scheduler=_scheduler_from(data.get("scheduler"), f"{p}: scheduler"),
        path=str(p),
        other=other,
    )
