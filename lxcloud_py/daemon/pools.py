"""Stage ``pools``: every ``daemon.pools_interval`` seconds, one pool manager cycle.

:class:`lxcloud_py.pools.PoolManager` decides and applies refills, drains and backoffs, each as
its own transaction (the count and the creation in one), and returns its decisions; this stage
logs and stores them. SIGHUP makes a fresh manager (pools are re-read every cycle anyway).
"""

from __future__ import annotations

import importlib
from typing import Any

from lxcloud_py.config import Settings
from lxcloud_py.model import InvalidInput

from .core import PeriodicStage, StageContext
from .decisions import Decision

#: The pool manager's actions as decisions are logged (others as they are).
ACTIONS = {
    "refill": "refilled",
    "drain": "drained",
    "terminate": "terminated",
    "backoff": "backed off",
    "reset": "backoff reset",
    "offline": "host offline",
}


def _manager(ctx: StageContext) -> Any:
    try:
        module = importlib.import_module("lxcloud_py.pools")
    except ImportError as exc:
        raise InvalidInput(f"pools stage: the pool manager is not available ({exc})") from None
    return module.PoolManager(ctx.store)


class PoolsStage(PeriodicStage):
    name = "pools"

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.manager = _manager(ctx)

    def interval(self) -> float:
        return float(self.ctx.settings["daemon.pools_interval"])

    def apply(self, settings: Settings) -> None:
        self.manager = _manager(self.ctx)
        self.ctx.settings = settings

    def cycle(self) -> None:
        self.ctx.decide(
            [
                Decision(
                    self.name,
                    ACTIONS.get(str(d.action), str(d.action)),
                    vm_id=d.vm_id,
                    host=d.host,
                    pool=d.pool,
                    message=d.message or "",
                    ok=d.action != "offline",
                )
                for d in self.manager.cycle()
            ]
        )


STAGE = PoolsStage
