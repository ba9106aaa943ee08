"""Stage ``scheduler``: every ``daemon.sched_interval`` seconds, one placement cycle.

The cycle is :class:`lxcloud_py.scheduler.Scheduler`'s: each placement is its own transaction
(PENDING -> ACTIVE/PROLOG with the lease bound), so a cycle killed half-way leaves placed VMs
placed and the rest PENDING. ``scheduler.max_placements_per_cycle`` is OpenNebula's
MAX_DISPATCH, ``scheduler.dispatch_limit`` its MAX_HOST.
"""

from __future__ import annotations

from lxcloud_py.config import Settings
from lxcloud_py.scheduler import Scheduler

from . import decisions
from .core import PeriodicStage, StageContext
from .decisions import Decision


class SchedulerStage(PeriodicStage):
    name = "scheduler"

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.scheduler = Scheduler(ctx.store, ctx.settings.scheduler())

    def interval(self) -> float:
        return float(self.ctx.settings["daemon.sched_interval"])

    def apply(self, settings: Settings) -> None:
        self.scheduler = Scheduler(self.ctx.store, settings.scheduler())
        self.ctx.settings = settings

    def cycle(self) -> None:
        result = self.scheduler.run_cycle()
        pools = decisions.pool_names(self.ctx.store, (p.vm_id for p in result.placements))
        self.ctx.decide(
            [
                Decision(
                    self.name,
                    "placed",
                    vm_id=p.vm_id,
                    host=p.host,
                    pool=pools.get(p.vm_id),
                    message=f"{p.vm_name} on {p.host} as {p.lease_name} ({p.ip})",
                )
                for p in result.placements
            ]
        )


STAGE = SchedulerStage
