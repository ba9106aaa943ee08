"""Stage ``monitor``: hosts that stopped reporting go to ERROR; old decisions are pruned.

Every ``api.monitor_interval`` seconds, a host whose last heartbeat (or registration) is older
than ``api.missed_intervals`` intervals goes to ERROR (the scheduler stops placing on it; its next
heartbeat brings it back). The hosts report liveness and capacity only: the VM states on a host
(libvirt's view) are the reconciler's business (issue 12), not reported yet.
"""

from __future__ import annotations

import time

from lxcloud_py import hosts

from . import decisions
from .core import PeriodicStage
from .decisions import Decision


class MonitorStage(PeriodicStage):
    name = "monitor"

    def interval(self) -> float:
        return float(self.ctx.settings["api.monitor_interval"])

    def cycle(self) -> None:
        s = self.ctx.settings
        interval, missed = float(s["api.monitor_interval"]), int(s["api.missed_intervals"])
        stale = hosts.mark_stale(self.ctx.store, time.time(), interval, missed)
        self.ctx.decide(
            [
                Decision(
                    self.name,
                    "host error",
                    host=name,
                    message=f"missed {missed} heartbeats of {interval:g} s",
                    ok=False,
                )
                for _host_id, name in stale
            ]
        )
        decisions.prune(self.ctx.store, int(s["daemon.decisions_kept"]))


STAGE = MonitorStage
