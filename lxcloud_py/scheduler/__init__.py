"""Placement: Nova-style filters and weighers, atomic lease claims in the database.

See :mod:`lxcloud_py.scheduler.core` for the cycle and the claim protocol.
"""

from __future__ import annotations

from .core import CycleResult, Placement, Scheduler, Unplaced, run_cycle, settings_from
from .filters import FILTERS, BaseFilter
from .settings import SchedulerConfig
from .state import HostState, Lease, Request, load_hosts, load_requests
from .weighers import WEIGHERS, BaseWeigher

__all__ = [
    "FILTERS",
    "WEIGHERS",
    "BaseFilter",
    "BaseWeigher",
    "CycleResult",
    "HostState",
    "Lease",
    "Placement",
    "Request",
    "Scheduler",
    "SchedulerConfig",
    "Unplaced",
    "load_hosts",
    "load_requests",
    "run_cycle",
    "settings_from",
]
