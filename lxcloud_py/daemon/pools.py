"""Stage ``pools``: every ``daemon.pools_interval`` seconds, one pool manager cycle.

:class:`lxcloud_py.pools.PoolManager` decides and applies refills, drains and backoffs, each as
its own transaction (the count and the creation in one), and returns its decisions; this stage
logs and stores them.

With ``daemon.pools_file`` the stage makes the database's pools match that YAML file (as
``lxcloud pool apply FILE`` does, ``--prune`` with ``daemon.pools_prune``) when it starts and on
every SIGHUP; a file with an error is refused whole (at start: the daemon does not start; on
SIGHUP: logged, the pools stay as they were). Pools set by other means are re-read every cycle.
"""

from __future__ import annotations

from pathlib import Path

from lxcloud_py import pools
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


def _manager(ctx: StageContext, settings: Settings) -> pools.PoolManager:
    """A pool manager, after applying ``daemon.pools_file`` if one is set."""
    path = settings["daemon.pools_file"]
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise InvalidInput(f"daemon.pools_file {path!r}: {exc.strerror or exc}") from None
        specs = pools.parse_pool_file(path, text)
        plan = pools.apply_specs(ctx.store, specs, prune=bool(settings["daemon.pools_prune"]))
        ctx.decide(
            [
                Decision("pools", f"pool {c.action}", pool=c.pool, message="; ".join(c.details))
                for c in plan
                if c.action != "unchanged"
            ]
        )
    return pools.PoolManager(ctx.store)


class PoolsStage(PeriodicStage):
    name = "pools"

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.manager = _manager(ctx, ctx.settings)

    def interval(self) -> float:
        return float(self.ctx.settings["daemon.pools_interval"])

    def apply(self, settings: Settings) -> None:
        self.manager = _manager(self.ctx, settings)
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
