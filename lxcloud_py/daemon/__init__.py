"""The daemon: every stage of the control plane in one process (``lxcloud serve``).

* :mod:`.core` — the loop: one thread per stage, a monotonic clock, signal handlers that only
  set flags (SIGTERM/SIGINT: stop; a second one: exit at once; SIGHUP: reload), the graceful
  stop that lets jobs in flight finish within ``daemon.shutdown_timeout``.
* :mod:`.registry` — the stage names (``--stages``) and the module of each.
* :mod:`.decisions` — one log line and one ``decisions`` row per decision.
* one module per stage: :mod:`.api`, :mod:`.monitor`, :mod:`.scheduler`, :mod:`.executor`,
  :mod:`.pools`. No stage imports another: they meet in the store. Each cycle reads what it needs
  in short transactions, makes every step a database transition before the work it stands for,
  and so can be killed anywhere and re-run.
"""

from __future__ import annotations

from .core import Daemon, PeriodicStage, Stage, StageContext
from .registry import DEFAULT_STAGES, STAGES, check_stages

__all__ = [
    "DEFAULT_STAGES",
    "STAGES",
    "Daemon",
    "PeriodicStage",
    "Stage",
    "StageContext",
    "check_stages",
]
