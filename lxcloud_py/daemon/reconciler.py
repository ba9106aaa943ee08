"""Stage ``reconciler``: every ``daemon.reconcile_interval`` seconds (OpenNebula's
RECONCILE_INTERVAL idea), one reconcile cycle (:mod:`lxcloud_py.reconcile`): observe the hosts
through the runner, compare with the database, apply each action as its own transition, and
record each as a decision. Re-runnable by construction: a killed cycle is simply run again."""

from __future__ import annotations

from lxcloud_py.config import Settings
from lxcloud_py.reconcile.engine import Reconciler, from_settings

from . import decisions
from .core import PeriodicStage, StageContext
from .decisions import Decision


class ReconcilerStage(PeriodicStage):
    name = "reconciler"

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.reconciler: Reconciler = from_settings(ctx.store, ctx.settings)

    def interval(self) -> float:
        return float(self.ctx.settings["daemon.reconcile_interval"])

    def apply(self, settings: Settings) -> None:
        self.reconciler = from_settings(self.ctx.store, settings)
        self.ctx.settings = settings

    def cycle(self) -> None:
        done = self.reconciler.run_once()
        pools = decisions.pool_names(
            self.ctx.store, (d.action.vm_id for d in done if d.action.vm_id is not None))
        self.ctx.decide([
            Decision(
                self.name,
                f"{d.action.rule} {d.result}"[:32],
                vm_id=d.action.vm_id,
                host=d.action.host,
                pool=pools.get(d.action.vm_id) if d.action.vm_id is not None else None,
                message=f"saw {d.action.saw}; {d.action.do}"
                + (f": {d.message}" if d.message else ""),
                ok=d.ok,
            )
            for d in done
        ])

    def cancel(self) -> None:
        self.reconciler.cancel()


STAGE = ReconcilerStage
