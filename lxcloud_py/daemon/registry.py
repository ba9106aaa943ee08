"""The stages a daemon can run, by name (``--stages``), each in its own module.

Modules are imported only when their stage is started, so ``--help`` and ``config show`` do not
load the API server or ansible-runner.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lxcloud_py.model import InvalidInput

if TYPE_CHECKING:
    from .core import Stage


@dataclass(frozen=True)
class StageInfo:
    name: str
    help: str
    module: str | None  # None: the name is reserved, the stage is not implemented yet


STAGES: dict[str, StageInfo] = {
    s.name: s
    for s in (
        StageInfo("api", "the XML-RPC API (OpenNebula protocol)", "lxcloud_py.daemon.api"),
        StageInfo(
            "monitor",
            "hosts silent for too long go to ERROR; prunes old decisions",
            "lxcloud_py.daemon.monitor",
        ),
        StageInfo(
            "scheduler", "places PENDING VMs on hosts (binds leases)", "lxcloud_py.daemon.scheduler"
        ),
        StageInfo(
            "executor",
            "deploys PROLOG VMs and destroys SHUTDOWN ones (ansible-runner)",
            "lxcloud_py.daemon.executor",
        ),
        StageInfo("pools", "refills and drains the provisioning pools", "lxcloud_py.daemon.pools"),
        StageInfo("ec2", "the EC2 Query API (config section ec2, default port 4567)",
                  "lxcloud_py.api.ec2.stage"),
        StageInfo(
            "reconciler",
            "compares the DB with libvirt, disks and leases; repairs (every reconcile_interval)",
            "lxcloud_py.daemon.reconciler",
        ),
    )
}
DEFAULT_STAGES = ("api", "monitor", "scheduler", "executor", "pools")


def check_stages(names: list[str]) -> list[str]:
    """The stage names, checked and without repeats; an unknown or unimplemented name is an
    error naming it."""
    out: list[str] = []
    if not names:
        raise InvalidInput("no stages to run (--stages)")
    for name in names:
        info = STAGES.get(name)
        if info is None:
            raise InvalidInput(f"unknown stage {name!r} (known: {', '.join(STAGES)})")
        if info.module is None:
            raise InvalidInput(f"stage {name!r} is not implemented yet: {info.help}")
        if name not in out:
            out.append(name)
    return out


def stage_class(name: str) -> type[Stage]:
    info = STAGES[name]
    assert info.module is not None, name
    cls: type[Stage] = importlib.import_module(info.module).STAGE
    return cls


def describe() -> str:
    """One line per stage, for ``--help``."""
    return "\n".join(f"  {s.name:<11} {s.help}" for s in STAGES.values())
