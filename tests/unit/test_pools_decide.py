"""The pool manager's pure decision function: refill, drain, lifetime, backoff, offline."""

from __future__ import annotations

import pytest

from lxcloud_py.model import HostState, LCMState, VMState
from lxcloud_py.pools import (
    Exit,
    HostExits,
    PoolSpec,
    PoolState,
    PoolVM,
    Snapshot,
    backoff_of,
    decide,
)

NOW = 10_000.0
TPL = 'CPU = 1\nMEMORY = 64\nDISK = [\n  IMAGE = "golden" ]\n'


def spec(**kw: object) -> PoolSpec:
    values: dict[str, object] = {"name": "batch", "template": TPL, "target": 3}
    values.update(kw)
    return PoolSpec(**values)  # type: ignore[arg-type]


def running(vm_id: int, created: float = 0.0, **kw: object) -> PoolVM:
    values: dict[str, object] = {"state": VMState.ACTIVE, "lcm_state": LCMState.RUNNING}
    values.update(kw)
    return PoolVM(vm_id, created=created, **values)  # type: ignore[arg-type]


def pending(vm_id: int, created: float = 0.0) -> PoolVM:
    return PoolVM(vm_id, VMState.PENDING, LCMState.LCM_INIT, created)


def pool(s: PoolSpec | None = None, vms=(), exits=(), level=0, until=None, pid=1) -> PoolState:
    return PoolState(pid, s or spec(), level, until, tuple(vms), tuple(exits))


def actions(decisions) -> list[tuple[str, int | None]]:
    return [(d.action, d.vm_id) for d in decisions]


def test_empty_pool_refills_to_target() -> None:
    got = decide(Snapshot(NOW, (pool(),)))
    assert actions(got) == [("refill", None)] * 3
    assert all(d.pool == "batch" for d in got)
    assert "0 active < target 3" in got[0].message


def test_full_pool_decides_nothing() -> None:
    vms = [running(1), running(2), pending(3)]
    assert decide(Snapshot(NOW, (pool(vms=vms),))) == []


@pytest.mark.parametrize(
    ("state", "lcm", "counts"),
    [
        (VMState.PENDING, LCMState.LCM_INIT, True),
        (VMState.ACTIVE, LCMState.PROLOG, True),
        (VMState.ACTIVE, LCMState.BOOT, True),
        (VMState.ACTIVE, LCMState.RUNNING, True),
        (VMState.ACTIVE, LCMState.SHUTDOWN, False),
        (VMState.ACTIVE, LCMState.UNKNOWN, False),
        (VMState.ACTIVE, LCMState.BOOT_FAILURE, False),
        (VMState.ACTIVE, LCMState.PROLOG_FAILURE, False),
        (VMState.HOLD, LCMState.LCM_INIT, False),
        (VMState.POWEROFF, LCMState.LCM_INIT, False),
    ],
)
def test_which_states_count_as_active(state: VMState, lcm: LCMState, counts: bool) -> None:
    vm = PoolVM(1, state, lcm, 0.0)
    got = decide(Snapshot(NOW, (pool(spec(target=1), vms=[vm]),)))
    assert actions(got) == ([] if counts else [("refill", None)])


def test_draining_vms_do_not_count() -> None:
    vms = [running(1, drain_requested=5.0), running(2)]
    got = decide(Snapshot(NOW, (pool(spec(target=2), vms=vms),)))
    assert actions(got) == [("refill", None)]


def test_lowering_target_drains_newest_first_and_creates_none() -> None:
    vms = [running(1, created=1), running(2, created=3), running(3, created=2), running(4, 4)]
    got = decide(Snapshot(NOW, (pool(spec(target=1), vms=vms),)))
    assert actions(got) == [("drain", 4), ("drain", 2), ("drain", 3)]
    assert "asked to drain" in got[0].message


def test_surplus_not_started_is_terminated_not_drained() -> None:
    vms = [running(1, created=1), pending(2, created=2)]
    got = decide(Snapshot(NOW, (pool(spec(target=1), vms=vms),)))
    assert actions(got) == [("terminate", 2)]
    assert "not started" in got[0].message


def test_hard_drain_terminates_surplus_and_draining() -> None:
    vms = [running(1, 1), running(2, 2), running(3, 3, drain_requested=1.0)]
    got = decide(Snapshot(NOW, (pool(spec(target=1, drain="hard"), vms=vms),)))
    assert actions(got) == [("terminate", 2), ("terminate", 3)]


def test_hard_drain_skips_vms_already_shutting_down() -> None:
    vm = PoolVM(3, VMState.ACTIVE, LCMState.SHUTDOWN, 3.0, drain_requested=1.0)
    got = decide(Snapshot(NOW, (pool(spec(target=0, drain="hard"), vms=[vm]),)))
    assert got == []


def test_target_zero_drains_everything() -> None:
    vms = [running(1, 1), running(2, 2)]
    got = decide(Snapshot(NOW, (pool(spec(target=0), vms=vms),)))
    assert actions(got) == [("drain", 2), ("drain", 1)]


def test_lifetime_reached_drains_and_refills() -> None:
    vms = [running(1, 1, deadline=NOW - 1), running(2, 2, deadline=NOW + 100)]
    got = decide(Snapshot(NOW, (pool(spec(target=2), vms=vms),)))
    assert actions(got) == [("drain", 1), ("refill", None)]
    assert "lifetime" in got[0].message


def test_disabled_pool_is_left_alone() -> None:
    vms = [running(1, 1), running(2, 2)]
    assert decide(Snapshot(NOW, (pool(spec(target=0, enabled=False), vms=vms),))) == []
    assert decide(Snapshot(NOW, (pool(spec(target=5, enabled=False)),))) == []


def test_priority_orders_refills_under_max_new() -> None:
    low = pool(spec(name="low", target=3, priority=0), pid=1)
    high = pool(spec(name="high", target=2, priority=10), pid=2)
    got = decide(Snapshot(NOW, (low, high)), max_new=3)
    assert [d.pool for d in got] == ["high", "high", "low"]


def test_max_new_interleaves_pools_of_equal_priority() -> None:
    a = pool(spec(name="a", target=2), pid=1)
    b = pool(spec(name="b", target=2), pid=2)
    assert [d.pool for d in decide(Snapshot(NOW, (a, b)), max_new=2)] == ["a", "b"]
    assert decide(Snapshot(NOW, (a, b)), max_new=0) == []


# -- backoff ------------------------------------------------------------------------------------
def ex(vm_id: int, code: int, t: float, host: str | None = "h1") -> Exit:
    return Exit(vm_id, code, t, host)


@pytest.mark.parametrize(
    ("codes", "level"),
    [
        ([], 0),
        ([100], 0),
        ([700], 0),
        ([300], 1),
        ([300, 500], 2),
        ([400, 100, 600], 2),
        ([300, 200, 300, 300], 1),  # newest first: one 300 since the 200
        ([200, 300, 300], 0),
        ([699, 300], 2),
    ],
)
def test_backoff_level_counts_300_to_699_since_last_200(codes: list[int], level: int) -> None:
    exits = [ex(i, c, NOW - i) for i, c in enumerate(codes)]
    assert backoff_of(spec(), exits)[0] == level


def test_backoff_delay_doubles_up_to_the_cap() -> None:
    s = spec(backoff_base=10, backoff_max=50)
    for n, delay in [(1, 10), (2, 20), (3, 40), (4, 50), (30, 50)]:
        exits = [ex(i, 300, NOW - i) for i in range(n)]
        assert backoff_of(s, exits) == (n, NOW + delay)


def test_new_backoff_is_recorded_and_blocks_refill() -> None:
    p = pool(spec(backoff_base=60), exits=[ex(7, 300, NOW - 10)])
    got = decide(Snapshot(NOW, (p,)))
    assert actions(got) == [("backoff", 7)]
    assert got[0].data == (1, NOW + 50)
    assert "backoff level 1" in got[0].message and "50 s" in got[0].message


def test_recorded_backoff_is_not_repeated() -> None:
    p = pool(spec(backoff_base=60), exits=[ex(7, 300, NOW - 10)], level=1, until=NOW + 50)
    assert decide(Snapshot(NOW, (p,))) == []


def test_after_the_wait_refill_is_one_per_cycle() -> None:
    p = pool(spec(backoff_base=60), exits=[ex(7, 300, NOW - 100)], level=1, until=NOW - 40)
    assert actions(decide(Snapshot(NOW, (p,)))) == [("refill", None)]


def test_exit_200_resets_backoff_and_refills_fully() -> None:
    exits = [ex(8, 200, NOW - 1), ex(7, 300, NOW - 100)]
    p = pool(spec(), exits=exits, level=1, until=NOW + 20)
    got = decide(Snapshot(NOW, (p,)))
    assert actions(got) == [("reset", 8)] + [("refill", None)] * 3
    assert got[0].data == (0, None)


def test_backoff_still_drains_surplus() -> None:
    p = pool(spec(target=0), vms=[running(1)], exits=[ex(7, 300, NOW - 1)], level=1, until=NOW + 59)
    assert actions(decide(Snapshot(NOW, (p,)))) == [("drain", 1)]


# -- offline -------------------------------------------------------------------------------------
def host(exits, state=HostState.MONITORED, name="h1", hid=5) -> HostExits:
    return HostExits(hid, name, state, tuple(exits))


def test_host_with_repeated_500_goes_offline() -> None:
    exits = [ex(3, 500, 30), ex(2, 500, 20), ex(1, 500, 10)]
    p = pool(spec(target=0), exits=exits)
    got = [d for d in decide(Snapshot(NOW, (p,), (host(exits),))) if d.action == "offline"]
    assert len(got) == 1
    assert got[0].host == "h1" and got[0].pool == "batch" and got[0].data == (5, 2)
    assert "VMs 3, 2, 1" in got[0].message


@pytest.mark.parametrize(
    ("codes", "threshold", "offline"),
    [
        ([500, 500], 3, False),
        ([500, 500, 500], 3, True),
        ([500, 500, 100], 3, False),
        ([500, 200, 500, 500], 3, False),
        ([500], 1, True),
        ([500, 500, 500], 0, False),  # 0 turns it off
    ],
)
def test_offline_threshold(codes: list[int], threshold: int, offline: bool) -> None:
    exits = [ex(i, c, 100 - i) for i, c in enumerate(codes)]
    got = decide(Snapshot(NOW, (), (host(exits),)), offline_after=threshold)
    assert [d.action for d in got] == (["offline"] if offline else [])


@pytest.mark.parametrize("state", [HostState.OFFLINE, HostState.DISABLED])
def test_offline_leaves_operator_states(state: HostState) -> None:
    exits = [ex(i, 500, 100 - i) for i in range(3)]
    assert decide(Snapshot(NOW, (), (host(exits, state=state),))) == []


def test_decide_is_pure_and_repeatable() -> None:
    snap = Snapshot(NOW, (pool(vms=[running(1)], exits=[ex(1, 300, NOW - 1)]),))
    assert decide(snap) == decide(snap)
