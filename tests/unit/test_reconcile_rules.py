"""The reconciler's rules, each alone, on plain data (no database, no host)."""

from __future__ import annotations

from lxcloud_py import lifecycle
from lxcloud_py.model import HostState, LCMState, VMState
from lxcloud_py.reconcile import rules
from lxcloud_py.reconcile.model import VM, Host, HostObservation, Lease, ReconcileSettings, Snapshot

NOW = 100_000.0
CFG = ReconcileSettings(grace=60, orphan_grace=120, deploy_timeout=300, deploy_retries=2,
                        lifetime_grace=30)
A, L = VMState.ACTIVE, LCMState


def snap(*vms: VM, hosts: dict[str, int] | None = None, leases: list[Lease] | None = None):
    hosts = hosts if hosts is not None else {"h1": HostState.MONITORED, "h2": HostState.MONITORED}
    return Snapshot({v.id: v for v in vms}, {n: Host(n, s) for n, s in hosts.items()},
                    leases or [])


def seen(host: str = "h1", domains=None, files=None, ok: bool = True):
    return {host: HostObservation(host, ok, "" if ok else "unreachable", domains or {},
                                  files or {})}


def running(vm_id: int = 1, host: str = "h1", **kw) -> VM:
    return VM(vm_id, A, L.RUNNING, host, has_lease=True, since=NOW - 1000, **kw)


def test_domain_vanished_goes_unknown_then_failed_after_grace():
    acts = rules.domain_state(snap(running()), seen(domains={}), NOW, CFG)
    assert [(a.vm_id, a.transition) for a in acts] == [(1, lifecycle.LOST)]
    unknown = VM(1, A, L.UNKNOWN, "h1", has_lease=True, since=NOW - 30)
    assert rules.domain_state(snap(unknown), seen(), NOW, CFG) == []  # within the grace
    late = VM(1, A, L.UNKNOWN, "h1", has_lease=True, since=NOW - 61)
    assert [a.transition for a in rules.domain_state(snap(late), seen(), NOW, CFG)] == ["failed"]
    over = VM(1, A, L.UNKNOWN, "h1", has_lease=True, since=NOW - 61, deadline=NOW - 5)
    assert [a.transition for a in rules.domain_state(snap(over), seen(), NOW, CFG)] == ["gone"]


def test_domain_found_and_shut_off():
    unknown = VM(1, A, L.UNKNOWN, "h1", has_lease=True, since=NOW)
    acts = rules.domain_state(snap(unknown), seen(domains={"one-1": "running"}), NOW, CFG)
    assert [a.transition for a in acts] == [lifecycle.FOUND]
    acts = rules.domain_state(snap(running()), seen(domains={"one-1": "shutoff"}), NOW, CFG)
    assert [a.transition for a in acts] == [lifecycle.STOPPED]
    assert rules.domain_state(snap(running()), seen(domains={"one-1": "running"}), NOW, CFG) == []


def test_unobserved_or_silent_host_is_not_judged_by_domains():
    assert rules.domain_state(snap(running()), seen(ok=False), NOW, CFG) == []
    assert rules.domain_state(snap(running()), {}, NOW, CFG) == []
    silent = snap(running(), hosts={"h1": HostState.ERROR})
    assert rules.domain_state(silent, seen(domains={}), NOW, CFG) == []
    acts = rules.host_silent(silent, {}, NOW, CFG)
    assert [(a.vm_id, a.transition) for a in acts] == [(1, lifecycle.LOST)]
    assert rules.host_silent(snap(running()), {}, NOW, CFG) == []


def test_stray_reported_or_destroyed_and_foreign_names_untouched():
    obs = seen(domains={"one-7": "running", "one-1": "running", "web": "running",
                        "one-07": "running", "lxvm-1": "shutoff"})
    acts = rules.stray_domain(snap(running()), obs, NOW, CFG)
    assert [(a.kind, a.target) for a in acts] == [("report", "one-7")]
    acts = rules.stray_domain(snap(running()), obs, NOW,
                              ReconcileSettings(destroy_strays=True))
    assert [(a.kind, a.target, a.host) for a in acts] == [("destroy", "one-7", "h1")]
    # VM 1 placed on h2: its domain on h1 is a stray too
    acts = rules.stray_domain(snap(running(host="h2")), obs, NOW, CFG)
    assert sorted(a.target for a in acts) == ["one-1", "one-7"]


def test_orphan_files_after_grace_only_without_live_vm_or_domain():
    files = {"one-1.qcow2": NOW - 500, "one-2.qcow2": NOW - 500, "one-2.context.iso": NOW - 500,
             "one-3.raw": NOW - 10, "one-4.qcow2": NOW - 500, "other.qcow2": NOW - 9999}
    obs = seen(domains={"one-4": "shutoff"}, files=files)
    acts = rules.orphan_files(snap(running()), obs, NOW, CFG)
    assert [(a.target, a.extra) for a in acts] == [("one-2", {"disk": "qcow2"})]
    assert "one-2.context.iso, one-2.qcow2" in acts[0].saw


def test_lease_of_ended_vm_freed():
    leases = [Lease(5, "10.0.0.5", 1, int(VMState.DONE)), Lease(6, "10.0.0.6", 2, int(A)),
              Lease(7, "10.0.0.7", 3, None), Lease(8, "10.0.0.8", 4, int(VMState.FAILED))]
    acts = rules.lease_of_ended_vm(snap(leases=leases), {}, NOW, CFG)
    assert [a.target for a in acts] == ["5", "7", "8"]


def test_no_lease_in_prolog_fails():
    vm = VM(1, A, L.PROLOG, "h1", has_lease=False, since=NOW)
    assert [a.transition for a in rules.no_lease(snap(vm), {}, NOW, CFG)] == ["failed"]
    ok = VM(1, A, L.PROLOG, "h1", has_lease=True, since=NOW)
    assert rules.no_lease(snap(ok), {}, NOW, CFG) == []


def test_deploy_stuck_retried_then_failed():
    fresh = VM(1, A, L.PROLOG, "h1", has_lease=True, since=NOW - 100)
    assert rules.deploy_stuck(snap(fresh), {}, NOW, CFG) == []
    stuck = VM(1, A, L.PROLOG, "h1", has_lease=True, since=NOW - 301, retries=1)
    assert [a.transition for a in rules.deploy_stuck(snap(stuck), {}, NOW, CFG)] == ["retry"]
    failed = VM(1, A, L.PROLOG_FAILURE, "h1", has_lease=True, since=NOW, retries=0)
    assert [a.transition for a in rules.deploy_stuck(snap(failed), {}, NOW, CFG)] == ["retry"]
    spent = VM(1, A, L.BOOT_FAILURE, "h1", has_lease=True, since=NOW, retries=2)
    assert [a.transition for a in rules.deploy_stuck(snap(spent), {}, NOW, CFG)] == ["failed"]


def test_lifetime_hard_limit():
    assert rules.lifetime(snap(running(deadline=NOW - 10)), {}, NOW, CFG) == []
    acts = rules.lifetime(snap(running(deadline=NOW - 31)), {}, NOW, CFG)
    assert [a.transition for a in acts] == ["terminate"]


def test_poweroff_policy():
    off = VM(1, VMState.POWEROFF, L.LCM_INIT, "h1", pool="batch", has_lease=True)
    mine = VM(2, VMState.POWEROFF, L.LCM_INIT, "h1", has_lease=True)
    assert [(a.vm_id, a.transition) for a in rules.poweroff_policy(snap(off, mine), {}, NOW, CFG)
            ] == [(1, "terminate")]
    restart = ReconcileSettings(poweroff_policy="restart")
    assert [a.transition for a in rules.poweroff_policy(snap(off), {}, NOW, restart)] == [
        "restart"]
    assert rules.poweroff_policy(snap(off), {}, NOW, ReconcileSettings(poweroff_policy="keep")
                                 ) == []


def test_plan_one_action_per_vm_first_rule_wins():
    vm = running(deadline=NOW - 1000)  # past its lifetime and its domain vanished
    acts = rules.plan(snap(vm), seen(domains={}), NOW, CFG)
    assert [(a.rule, a.transition) for a in acts] == [("domain_vanished", lifecycle.LOST)]


def test_lifecycle_reconciler_transitions():
    R = lifecycle.Actor.RECONCILER
    assert lifecycle.decide("stopped", R, A, L.RUNNING).target == (VMState.POWEROFF, L.LCM_INIT)
    rule = lifecycle.decide("failed", R, A, L.UNKNOWN)
    assert rule.target[0] == VMState.FAILED and rule.ends
    assert lifecycle.decide("gone", R, A, L.UNKNOWN).ends
    assert lifecycle.decide("retry", R, A, L.PROLOG).effect is lifecycle.Effect.RECORD
    assert lifecycle.decide("retry", R, A, L.BOOT_FAILURE).target == (A, L.PROLOG)
    assert lifecycle.decide("restart", R, VMState.POWEROFF, L.LCM_INIT).target == (A, L.PROLOG)
    assert lifecycle.decide("terminate", R, A, L.RUNNING).target == (A, L.SHUTDOWN)
    try:
        lifecycle.decide("failed", R, A, L.RUNNING)
    except lifecycle.WrongState:
        pass
    else:
        raise AssertionError("failed from RUNNING must be refused")
    try:
        lifecycle.decide("failed", lifecycle.Actor.USER, A, L.UNKNOWN)
    except lifecycle.NotPermitted:
        pass
    else:
        raise AssertionError("a user may not fail a VM")
