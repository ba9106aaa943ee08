"""Control-plane configuration: one YAML file, every key optional, defaults below.

The file comes from ``--config FILE`` or ``$LXCLOUD_CONFIG``; without either, the defaults
apply. Sections lxcloud knows are validated (a typo is an error naming the key, not a silently
ignored setting); other top-level sections are kept as plain mappings for the parts of the
control plane that read them (:meth:`Config.section`). The ``scheduler`` section is parsed and
checked by the scheduler itself (:func:`lxcloud_py.scheduler.settings_from`): this module
depends on the scheduler, never the other way round.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lxcloud_py.model import InvalidInput
from lxcloud_py.scheduler import SchedulerConfig, settings_from


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
        scheduler=settings_from(data.get("scheduler"), f"{p}: scheduler"),
        path=str(p),
        other=other,
    )
