"""Stage ``executor``: every ``daemon.executor_interval`` seconds, one executor pass.

The pass is :meth:`lxcloud_py.executor.Executor.reconcile_once`: VMs in ACTIVE/SHUTDOWN are
destroyed (then DONE, lease free), VMs in ACTIVE/PROLOG deployed (then RUNNING, or
PROLOG_FAILURE/BOOT_FAILURE with the error). Its steps are re-runnable: a VM stays in PROLOG or
SHUTDOWN until its playbook reported, and the playbooks converge (an existing domain, clone or
context disk is kept or replaced, never doubled), so a daemon killed during a run finishes the
work on its next start.
"""

from __future__ import annotations

import logging

from lxcloud_py.config import Settings
from lxcloud_py.executor import Executor, ExecutorConfig
from lxcloud_py.model import InvalidInput

from . import decisions
from .core import PeriodicStage, StageContext
from .decisions import Decision

log = logging.getLogger("lxcloud.daemon.executor")

ACTIONS = {  # (action, result) -> the decision's action
    ("deploy", "RUNNING"): "deployed",
    ("destroy", "DONE"): "destroyed",
}


def _executor(ctx: StageContext, settings: Settings) -> Executor:
    overrides = settings.section("executor")
    try:
        config = ExecutorConfig.from_config(settings.config, **overrides)
        return Executor(ctx.store, config, progress=log.debug)
    except InvalidInput as exc:
        raise InvalidInput(f"executor stage: {exc} (or leave executor out of --stages)") from None


class ExecutorStage(PeriodicStage):
    name = "executor"

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.executor = _executor(ctx, ctx.settings)

    def interval(self) -> float:
        return float(self.ctx.settings["daemon.executor_interval"])

    def apply(self, settings: Settings) -> None:
        self.executor = _executor(self.ctx, settings)
        self.ctx.settings = settings

    def cycle(self) -> None:
        outcomes = self.executor.reconcile_once()
        pools = decisions.pool_names(self.ctx.store, (o.vm_id for o in outcomes))
        self.ctx.decide(
            [
                Decision(
                    self.name,
                    ACTIONS.get((o.action, o.result), f"{o.action} {o.result}"),
                    vm_id=o.vm_id,
                    host=o.host or None,
                    pool=pools.get(o.vm_id),
                    message=o.message or f"{o.name} in {o.seconds:.1f} s",
                    ok=o.ok,
                )
                for o in outcomes
                if o.result != "unchanged"
            ]
        )

    def cancel(self) -> None:
        self.executor.runner.cancel()


STAGE = ExecutorStage
