"""The reconciler's rules: each a pure function of (snapshot, observation, now, settings) that
returns the :class:`~.model.Action` values it wants, with what it saw. :func:`plan` runs them in
:data:`RULES` order; for one VM (or one name on one host) the first rule's action wins.

An observation is a mapping host name -> :class:`~.model.HostObservation`; a host that is
missing or not ``ok`` was not observed, and no rule judges its domains or files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from lxcloud_py import lifecycle
from lxcloud_py.model import HostState, LCMState, VMState

from .model import FILE, Action, HostObservation, ReconcileSettings, Snapshot, vm_id_of

Observation = Mapping[str, HostObservation]
Rule = Callable[[Snapshot, Observation, float, ReconcileSettings], list[Action]]

#: libvirt states (vm_info's names) of a domain that is up, and of one that is down.
UP = ("running", "blocked", "paused")
DOWN = ("shutoff", "crashed")
#: VM states whose domain belongs on its host.
PLACED = (VMState.ACTIVE, VMState.POWEROFF)
_A, _L = VMState.ACTIVE, LCMState


def _name(vm_id: int) -> str:
    return f"one-{vm_id}"


def _seen(obs: Observation, host: str | None, snap: Snapshot) -> HostObservation | None:
    """The host's observation, if it was observed and is not in ERROR (a silent host's VMs
    are judged by :func:`host_silent` only, so a probe cannot fight the heartbeat)."""
    o = obs.get(host or "")
    h = snap.hosts.get(host or "")
    if o is None or not o.ok or h is None or h.state == HostState.ERROR:
        return None
    return o


def lease_of_ended_vm(snap: Snapshot, obs: Observation, now: float,
                      cfg: ReconcileSettings) -> list[Action]:
    """A lease bound to a VM that is DONE, FAILED or gone from the database is freed."""
    out = []
    for lease in snap.leases:
        if lease.vm_state is None or lease.vm_state in (VMState.DONE, VMState.FAILED):
            what = "no such VM" if lease.vm_state is None else VMState(lease.vm_state).name
            out.append(Action(
                "lease_of_ended_vm", "lease", f"lease {lease.ip} held by VM {lease.vm_id} ({what})",
                "free the lease", vm_id=lease.vm_id, target=str(lease.id),
            ))
    return out


def host_silent(snap: Snapshot, obs: Observation, now: float,
                cfg: ReconcileSettings) -> list[Action]:
    """A VM RUNNING on a host in ERROR (silent past its heartbeat timeout) becomes UNKNOWN; it
    is found again when the host reports and shows its domain."""
    out = []
    for vm in snap.vms.values():
        h = snap.hosts.get(vm.host or "")
        if vm.state == _A and vm.lcm == _L.RUNNING and h is not None and h.state == HostState.ERROR:
            out.append(Action(
                "host_silent", "vm", f"host {vm.host} is ERROR (no heartbeat)",
                "ACTIVE/RUNNING -> UNKNOWN", vm.id, vm.host, lifecycle.LOST,
            ))
    return out


def no_lease(snap: Snapshot, obs: Observation, now: float,
             cfg: ReconcileSettings) -> list[Action]:
    """A VM in PROLOG/BOOT without a lease cannot be deployed: FAILED."""
    return [
        Action("no_lease", "vm", f"VM in {lifecycle.state_text(vm.state, vm.lcm)} holds no lease",
               "-> FAILED", vm.id, vm.host, lifecycle.FAILED)
        for vm in snap.vms.values()
        if vm.state == _A and vm.lcm in (_L.PROLOG, _L.BOOT) and not vm.has_lease
    ]


def domain_state(snap: Snapshot, obs: Observation, now: float,
                 cfg: ReconcileSettings) -> list[Action]:
    """RUNNING/UNKNOWN VMs against their domain on an observed host: vanished -> UNKNOWN, and
    after ``grace`` FAILED (DONE if its lifetime was over); shut off without a request ->
    POWEROFF; up again -> RUNNING."""
    out = []
    for vm in snap.vms.values():
        if vm.state != _A or vm.lcm not in (_L.RUNNING, _L.UNKNOWN):
            continue
        o = _seen(obs, vm.host, snap)
        if o is None:
            continue
        d = o.domains.get(_name(vm.id))
        where = f"domain {_name(vm.id)} on {vm.host}"
        if vm.lcm == _L.RUNNING and d is None:
            out.append(Action("domain_vanished", "vm", f"{where} is missing",
                              "ACTIVE/RUNNING -> UNKNOWN", vm.id, vm.host, lifecycle.LOST))
        elif d in DOWN:
            out.append(Action("domain_shut_off", "vm", f"{where} is {d} (not requested)",
                              "-> POWEROFF", vm.id, vm.host, lifecycle.STOPPED))
        elif vm.lcm == _L.UNKNOWN and d in UP:
            out.append(Action("domain_found", "vm", f"{where} is {d}",
                              "ACTIVE/UNKNOWN -> RUNNING", vm.id, vm.host, lifecycle.FOUND))
        elif vm.lcm == _L.UNKNOWN and d is None and now - vm.since > cfg.grace:
            over = vm.deadline is not None and vm.deadline <= now
            name = lifecycle.GONE if over else lifecycle.FAILED
            out.append(Action(
                "domain_vanished", "vm",
                f"{where} missing for {now - vm.since:.0f} s (grace {cfg.grace:g} s)"
                + (", lifetime over" if over else ""),
                f"ACTIVE/UNKNOWN -> {'DONE' if over else 'FAILED'} (lease freed)",
                vm.id, vm.host, name,
            ))
    return out


def lifetime(snap: Snapshot, obs: Observation, now: float,
             cfg: ReconcileSettings) -> list[Action]:
    """A RUNNING VM past its LIFETIME + ``lifetime_grace`` that did not end itself: terminated."""
    return [
        Action("lifetime", "vm",
               f"{now - vm.deadline:.0f} s past its lifetime (grace {cfg.lifetime_grace:g} s)",
               "terminate", vm.id, vm.host, "terminate")
        for vm in snap.vms.values()
        if vm.state == _A and vm.lcm == _L.RUNNING and vm.deadline is not None
        and now > vm.deadline + cfg.lifetime_grace
    ]


def deploy_stuck(snap: Snapshot, obs: Observation, now: float,
                 cfg: ReconcileSettings) -> list[Action]:
    """A deploy stuck in PROLOG/BOOT past ``deploy_timeout``, or failed (PROLOG_FAILURE,
    BOOT_FAILURE), is retried ``deploy_retries`` times; then the VM is FAILED."""
    out = []
    for vm in snap.vms.values():
        if vm.state != _A or not vm.has_lease:
            continue
        stuck = vm.lcm in (_L.PROLOG, _L.BOOT) and now - vm.since > cfg.deploy_timeout
        if not (stuck or vm.lcm in (_L.PROLOG_FAILURE, _L.BOOT_FAILURE)):
            continue
        saw = (f"in {_L(vm.lcm).name} for {now - vm.since:.0f} s"
               f" (timeout {cfg.deploy_timeout:g} s)" if stuck else f"deploy {_L(vm.lcm).name}")
        saw += f", {vm.retries} of {cfg.deploy_retries} retries made"
        if vm.retries >= cfg.deploy_retries:
            out.append(Action("deploy_stuck", "vm", saw, "-> FAILED (lease freed)", vm.id,
                              vm.host, lifecycle.FAILED))
        else:
            out.append(Action("deploy_stuck", "vm", saw, "retry the deploy (-> PROLOG)", vm.id,
                              vm.host, lifecycle.RETRY))
    return out


def poweroff_policy(snap: Snapshot, obs: Observation, now: float,
                    cfg: ReconcileSettings) -> list[Action]:
    """A pool VM in POWEROFF (its domain shut off by itself) is ended or restarted, as
    ``poweroff_policy`` says (``keep``: left alone). Other VMs stay for their owner to resume."""
    if cfg.poweroff_policy == "keep":
        return []
    name, do = (("restart", "restart (-> PROLOG)") if cfg.poweroff_policy == "restart"
                else ("terminate", "terminate"))
    return [
        Action("poweroff_policy", "vm", f"pool {vm.pool} VM in POWEROFF", do, vm.id, vm.host, name)
        for vm in snap.vms.values()
        if vm.state == VMState.POWEROFF and vm.pool
    ]


def _owned_here(snap: Snapshot, vm_id: int, host: str) -> bool:
    vm = snap.vms.get(vm_id)
    return vm is not None and vm.host == host and vm.state in PLACED


def stray_domain(snap: Snapshot, obs: Observation, now: float,
                 cfg: ReconcileSettings) -> list[Action]:
    """A domain named like ours (``one-<id>``) that no live VM placed on that host owns: reported;
    destroyed (with its clone and context) only with ``destroy_strays``. Other names: never."""
    out = []
    for host, o in sorted(obs.items()):
        if not o.ok:
            continue
        for name, state in sorted(o.domains.items()):
            vm_id = vm_id_of(name)
            if vm_id is None or _owned_here(snap, vm_id, host):
                continue
            vm = snap.vms.get(vm_id)
            why = (f"no live VM {vm_id}" if vm is None
                   else f"VM {vm_id} is {lifecycle.state_text(vm.state, vm.lcm)} on "
                        f"{vm.host or 'no host'}")
            saw = f"stray domain {name} ({state}) on {host}: {why}"
            if cfg.destroy_strays:
                out.append(Action("stray_domain", "destroy", saw, "destroy it with its disks",
                                  vm_id, host, target=name))
            else:
                out.append(Action("stray_domain", "report", saw,
                                  "reported (reconcile.destroy_strays is false)", vm_id, host,
                                  target=name))
    return out


def orphan_files(snap: Snapshot, obs: Observation, now: float,
                 cfg: ReconcileSettings) -> list[Action]:
    """Clone/context files ``one-<id>.*`` without a domain and without a live VM placed on that
    host, all older than ``orphan_grace``: removed."""
    out = []
    for host, o in sorted(obs.items()):
        if not o.ok:
            continue
        groups: dict[str, dict[str, float]] = {}
        for fname, mtime in o.files.items():
            m = FILE.match(fname)
            if m:
                groups.setdefault(m.group(1), {})[m.group(2)] = mtime
        for name, files in sorted(groups.items()):
            vm_id = vm_id_of(name)
            if vm_id is None or name in o.domains or _owned_here(snap, vm_id, host):
                continue
            age = now - max(files.values())
            if age <= cfg.orphan_grace:
                continue
            extra = {}
            if ".qcow2" in files:
                extra["disk"] = "qcow2"
            elif ".raw" in files:
                extra["disk"] = "copy"
            listed = ", ".join(name + ext for ext in sorted(files))
            out.append(Action(
                "orphan_files", "destroy",
                f"{listed} on {host} without a live VM, {age:.0f} s old "
                f"(grace {cfg.orphan_grace:g} s)",
                "remove them", vm_id, host, target=name, extra=extra,
            ))
    return out


#: The rules, in order: the first action for a VM (or a name on a host) wins.
RULES: tuple[Rule, ...] = (
    lease_of_ended_vm,
    host_silent,
    no_lease,
    domain_state,
    lifetime,
    deploy_stuck,
    poweroff_policy,
    stray_domain,
    orphan_files,
)


def plan(snap: Snapshot, obs: Observation, now: float, cfg: ReconcileSettings,
         rules: tuple[Rule, ...] = RULES) -> list[Action]:
    """Every rule's actions, in rule order, without two for one VM or one host name."""
    out: list[Action] = []
    seen: set[tuple[str, object]] = set()
    for rule in rules:
        for action in rule(snap, obs, now, cfg):
            if action.key() not in seen:
                seen.add(action.key())
                out.append(action)
    return out
