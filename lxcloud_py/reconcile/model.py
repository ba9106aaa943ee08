"""The reconciler's plain data: what the database says, what the hosts showed, what to do."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

#: lxcloud's names on a host: domain ``one-<id>``, clone ``one-<id>.qcow2``/``.raw`` (or LV
#: ``one-<id>``), context ``one-<id>.context.iso``. Nothing else is ever touched.
DOMAIN = re.compile(r"\Aone-([1-9][0-9]{0,17})\Z")
FILE = re.compile(r"\A(one-[1-9][0-9]{0,17})(\.qcow2|\.raw|\.context\.iso)\Z")


def vm_id_of(name: str) -> int | None:
    """The VM id in a domain name like ours (``one-17`` -> 17), else None."""
    m = DOMAIN.match(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class VM:
    """A live VM (PENDING, HOLD, ACTIVE, POWEROFF) as the database has it."""

    id: int
    state: int  # VMState
    lcm: int  # LCMState
    host: str | None = None
    pool: str | None = None
    has_lease: bool = False
    since: float = 0.0  # when it entered its current state (its newest history record)
    deadline: float | None = None
    retries: int = 0  # deploy retries the reconciler already made


@dataclass(frozen=True)
class Host:
    name: str
    state: int  # HostState


@dataclass(frozen=True)
class Lease:
    id: int
    ip: str
    vm_id: int
    vm_state: int | None  # None: the VM row does not exist


@dataclass
class Snapshot:
    vms: dict[int, VM] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    leases: list[Lease] = field(default_factory=list)  # leases bound to a VM


@dataclass
class HostObservation:
    """What one host showed. ``ok`` False: not observed (unreachable, timed out)."""

    host: str
    ok: bool
    error: str = ""
    domains: dict[str, str] = field(default_factory=dict)  # one-<id> -> libvirt state name
    files: dict[str, float] = field(default_factory=dict)  # file name -> mtime (epoch s)


@dataclass(frozen=True)
class ReconcileSettings:
    grace: float = 300.0
    orphan_grace: float = 600.0
    deploy_timeout: float = 900.0
    deploy_retries: int = 2
    lifetime_grace: float = 600.0
    destroy_strays: bool = False
    poweroff_policy: str = "end"  # end | restart | keep
    probe_timeout: int = 120

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> ReconcileSettings:
        """From the ``reconcile`` section of the resolved settings (name -> value)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})


#: Kinds of action. ``vm``: a lifecycle transition (``transition``) of VM ``vm_id``;
#: ``lease``: free lease ``target`` (its VM ended); ``destroy``: remove domain/clone/context
#: ``target`` (one-<id>) on ``host`` with the vm_destroy playbook; ``report``: nothing done.
KINDS = ("vm", "lease", "destroy", "report")


@dataclass(frozen=True)
class Action:
    rule: str
    kind: str
    saw: str  # what the rule saw (logged, shown)
    do: str  # what it does, in words
    vm_id: int | None = None
    host: str | None = None
    transition: str | None = None  # kind vm: the lifecycle transition
    target: str | None = None  # kind lease: the lease id; destroy/report: the name on the host
    extra: dict[str, str] = field(default_factory=dict)  # destroy: {"disk": backend}

    def key(self) -> tuple[str, object]:
        """Two actions with one key are one action (the first rule's wins)."""
        if self.kind == "vm":
            return ("vm", self.vm_id)
        return (self.kind, (self.host, self.target))
