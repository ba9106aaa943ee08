"""Pools against the store, on SQLite and MariaDB: CRUD, refill, drain, exits, backoff,
offline, concurrent managers that must not overshoot, and the schema migration."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from sqlalchemy import inspect, select, update

from lxcloud_py import hosts, pools, users, vms
from lxcloud_py.model import Conflict, HostState, InvalidInput, LCMState, NotFound, VMState
from lxcloud_py.store import Store, schema

TPL = 'CPU = 1\nMEMORY = 64\nDISK = [ IMAGE = "golden" ]\n'
_V = schema.vms


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def admin(store: Store) -> int:
    users.ensure_admin(store, "pw")
    return users.user_id(store)


def make_pool(store: Store, **kw: object) -> pools.PoolSpec:
    data: dict[str, object] = {"name": "batch", "template": TPL, "target": 3}
    data.update(kw)
    spec = pools.spec_from_mapping(data)
    pools.create_pool(store, spec)
    return spec


def pool_vms(store: Store, live_only: bool = True) -> list[dict]:
    with store.transaction() as conn:
        stmt = select(_V).where(_V.c.pool_id.is_not(None)).order_by(_V.c.id)
        if live_only:
            stmt = stmt.where(_V.c.state != int(VMState.DONE))
        return [dict(r._mapping) for r in conn.execute(stmt)]


def set_state(store: Store, vm_id: int, state: VMState, lcm: LCMState, **kw: object) -> None:
    with store.transaction() as conn:
        conn.execute(
            update(_V).where(_V.c.id == vm_id).values(state=int(state), lcm_state=int(lcm), **kw)
        )


def run_all(store: Store) -> None:
    for vm in pool_vms(store):
        if vm["state"] == VMState.PENDING:
            set_state(store, vm["id"], VMState.ACTIVE, LCMState.RUNNING, started=1.0)


# -- the model ----------------------------------------------------------------------------------
def test_spec_from_image_and_size_builds_a_template() -> None:
    spec = pools.spec_from_mapping(
        {"name": "svc", "image": "golden", "cpu": 0.5, "memory": 256, "target": 2}
    )
    parsed = vms.parse_spec(spec.template)
    assert (parsed.image, parsed.cpu, parsed.memory_mb) == ("golden", 0.5, 256)
    assert spec.target == 2 and spec.drain == "graceful"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"name": "b", "template": TPL, "colour": 1}, "unknown pool field(s): colour"),
        ({"name": "b"}, "give template"),
        ({"name": "b", "template": TPL, "image": "x"}, "not both"),
        ({"name": "b", "template": TPL, "target": -1}, "target must be between"),
        ({"name": "b", "template": TPL, "target": "3"}, "target must be a whole number"),
        ({"name": "b", "template": TPL, "drain": "now"}, "drain must be"),
        ({"name": "../x", "template": TPL}, "pool name"),
        ({"name": "b", "template": "NAME = x\n" + TPL}, "sets no NAME"),
        ({"name": "b", "template": TPL + "LIFETIME = 5\n"}, "sets no LIFETIME"),
        ({"name": "b", "template": "CPU = -1\n"}, "CPU must be greater than 0"),
        ({"name": "b", "template": TPL, "hosts": ["ok", "bad/host"]}, "host"),
        ({"name": "b", "template": TPL, "backoff_base": 100, "backoff_max": 10}, "backoff_max"),
        ({"name": "b", "image": "golden", "cpu": 0}, "cpu must be a number > 0"),
    ],
)
def test_spec_errors_name_the_field(data: dict, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=None) as err:
        pools.spec_from_mapping(data)
    assert fragment in str(err.value)


def test_crud_and_diff(store: Store, admin: int) -> None:
    make_pool(store, lifetime=600, hosts="h2,h1")
    with pytest.raises(Conflict):
        make_pool(store)
    same = pools.spec_from_mapping({"name": "batch", "template": TPL, "target": 3,
                                    "lifetime": 600, "hosts": ["h1", "h2"]})
    assert pools.set_pool(store, same) == ("unchanged", [])
    lower = pools.spec_from_mapping({"name": "batch", "template": TPL, "target": 1,
                                     "lifetime": 600, "hosts": ["h1", "h2"]})
    assert pools.set_pool(store, lower) == ("updated", ["target 3 -> 1"])
    with store.transaction() as conn:
        listed = pools.list_pools(conn)
        assert [p["name"] for p in listed] == ["batch"]
        assert listed[0]["spec"].hosts == ("h1", "h2")
        history = pools.decisions_of(conn, listed[0]["id"])
    assert history[0]["message"] == "updated: target 3 -> 1"
    pools.delete_pool(store, "batch")
    with pytest.raises(NotFound):
        pools.delete_pool(store, "batch")


def test_delete_refuses_live_vms_unless_forced(store: Store, admin: int) -> None:
    make_pool(store, target=1)
    pools.PoolManager(store).cycle()
    with pytest.raises(Conflict, match="1 live VM"):
        pools.delete_pool(store, "batch")
    pools.delete_pool(store, "batch", force=True)
    with store.transaction() as conn:
        assert conn.execute(select(_V.c.pool_id)).scalar_one() is None


# -- refill and drain ---------------------------------------------------------------------------
def test_refill_creates_tagged_vms_through_the_allocate_path(store: Store, admin: int) -> None:
    make_pool(store, lifetime=600, hosts=["h1"])
    done = pools.PoolManager(store).cycle()
    assert [d.action for d in done] == ["refill"] * 3
    created = pool_vms(store)
    assert [d.vm_id for d in done] == [v["id"] for v in created]
    for v in created:
        assert v["state"] == VMState.PENDING and v["owner_id"] == admin
        assert v["name"] == f"batch-{v['id']}" and v["lifetime"] == 600
        tpl = vms.parse_spec(v["template"]).template
        assert tpl.get("POOL") == "batch"
        assert tpl.get("SCHED_REQUIREMENTS") == 'HOSTNAME = "h1"'
    assert pools.PoolManager(store).cycle() == []  # re-runnable: nothing more to do
    with store.transaction() as conn:
        (p,) = pools.list_pools(conn)
        assert (p["active"], p["pending"]) == (3, 3)
        assert [h["new_state"] for h in pools.decisions_of(conn, p["id"])][:3] == ["refill"] * 3


def test_lower_then_raise(store: Store, admin: int) -> None:
    spec = make_pool(store, target=3)
    mgr = pools.PoolManager(store)
    mgr.cycle()
    run_all(store)
    pools.update_pool(store, "batch", pools.PoolSpec(**{**spec.as_dict(), "target": 1,
                                                        "hosts": ()}))
    done = mgr.cycle()
    newest = [v["id"] for v in pool_vms(store)][-2:]
    assert [(d.action, d.vm_id) for d in done] == [("drain", newest[1]), ("drain", newest[0])]
    assert mgr.cycle() == []  # drained VMs are not drained twice, nothing created
    live = pool_vms(store)
    assert len(live) == 3 and all(v["state"] == VMState.ACTIVE for v in live)
    assert [v["drain_requested"] is not None for v in live] == [False, True, True]
    # the drained VMs see it in one.vm.info and end themselves with 100
    for vm_id in newest:
        vms.exit_vm(store, vm_id, 100, "drained")
    pools.update_pool(store, "batch", pools.PoolSpec(**{**spec.as_dict(), "target": 4,
                                                        "hosts": ()}))
    assert [d.action for d in mgr.cycle()] == ["refill"] * 3


def test_pending_surplus_is_terminated_at_once(store: Store, admin: int) -> None:
    spec = make_pool(store, target=2)
    mgr = pools.PoolManager(store)
    mgr.cycle()
    pools.update_pool(store, "batch", pools.PoolSpec(**{**spec.as_dict(), "target": 0,
                                                        "hosts": ()}))
    done = mgr.cycle()
    assert [d.action for d in done] == ["terminate", "terminate"]
    assert pool_vms(store) == []


def test_hard_drain_terminates(store: Store, admin: int) -> None:
    spec = make_pool(store, target=2)
    mgr = pools.PoolManager(store)
    mgr.cycle()
    run_all(store)
    pools.update_pool(store, "batch", pools.PoolSpec(**{**spec.as_dict(), "target": 1,
                                                        "drain": "hard", "hosts": ()}))
    done = mgr.cycle()
    assert [d.action for d in done] == ["terminate"]
    vm = pool_vms(store)[-1]
    assert (vm["state"], vm["lcm_state"]) == (VMState.ACTIVE, LCMState.SHUTDOWN)


def test_lifetime_drain_uses_the_deadline(store: Store, admin: int) -> None:
    clock = Clock()
    make_pool(store, target=1, lifetime=60)
    mgr = pools.PoolManager(store, clock=clock)
    (d,) = mgr.cycle()
    set_state(store, d.vm_id, VMState.ACTIVE, LCMState.RUNNING, deadline=clock.t + 60)
    assert mgr.cycle() == []
    clock.t += 61
    assert [x.action for x in mgr.cycle()] == ["drain", "refill"]


# -- exits, backoff, offline --------------------------------------------------------------------
def test_exit_stores_code_and_terminates(store: Store, admin: int) -> None:
    make_pool(store, target=1)
    (d,) = pools.PoolManager(store).cycle()
    set_state(store, d.vm_id, VMState.ACTIVE, LCMState.RUNNING)
    vms.exit_vm(store, d.vm_id, 300, "no work\x07 left")
    vms.exit_vm(store, d.vm_id, 200, "repeat")  # the first exit wins
    with store.transaction() as conn:
        vm = vms.get(conn, d.vm_id)
    assert (vm["exit_code"], vm["exit_message"]) == (300, "no work  left")
    assert (vm["state"], vm["lcm_state"]) == (VMState.ACTIVE, LCMState.SHUTDOWN)
    with pytest.raises(InvalidInput, match="exit code must be one of"):
        vms.exit_vm(store, d.vm_id, 301, "")
    with pytest.raises(NotFound):
        vms.exit_vm(store, 999, 100, "")


def finish(store: Store, vm_id: int, code: int, t: float, host_id: int | None = None) -> None:
    set_state(store, vm_id, VMState.ACTIVE, LCMState.RUNNING, host_id=host_id)
    vms.exit_vm(store, vm_id, code, f"code {code}")
    set_state(store, vm_id, VMState.DONE, LCMState.LCM_INIT, exit_time=t)


def test_backoff_then_reset(store: Store, admin: int) -> None:
    clock = Clock()
    make_pool(store, target=2, backoff_base=100, backoff_max=1000)
    mgr = pools.PoolManager(store, clock=clock)
    first = mgr.cycle()
    finish(store, first[0].vm_id, 300, clock.t)
    done = mgr.cycle()
    assert [d.action for d in done] == ["backoff"]
    assert "backoff level 1" in done[0].message
    with store.transaction() as conn:
        row = conn.execute(select(schema.pools)).one()
    assert (row.backoff_level, row.backoff_until) == (1, clock.t + 100)
    assert mgr.cycle() == []  # waiting
    clock.t += 101
    assert [d.action for d in mgr.cycle()] == ["refill"]  # one per cycle
    finish(store, first[1].vm_id, 200, clock.t)
    assert [d.action for d in mgr.cycle()] == ["reset", "refill"]


def test_host_offline_after_repeated_500(store: Store, admin: int) -> None:
    clock = Clock(time.time())  # host history records carry real times
    hid = hosts.register(store, "h1", 4, 4096, 0, [])
    make_pool(store, target=3, backoff_base=1, backoff_max=1)
    mgr = pools.PoolManager(store, clock=clock, offline_after=3)
    created = mgr.cycle()
    for i, d in enumerate(created):
        finish(store, d.vm_id, 500, time.time() + i / 1000, host_id=hid)
    time.sleep(0.01)
    done = mgr.cycle()
    assert "offline" in [d.action for d in done]
    with store.transaction() as conn:
        assert hosts.get(conn, hid)["state"] == HostState.OFFLINE
    assert "offline" not in [d.action for d in mgr.cycle()]
    hosts.set_status(store, hid, 0)  # the operator enables it: a new count starts
    assert "offline" not in [d.action for d in mgr.cycle()]


# -- concurrency --------------------------------------------------------------------------------
def test_concurrent_managers_never_overshoot(store: Store, admin: int) -> None:
    """Four managers all decide from the same (soon stale) snapshot, then apply at once: each
    planned 7 refills, exactly 7 VMs exist."""
    make_pool(store, target=7)
    stores = [Store(store.url) for _ in range(4)]
    managers = [pools.PoolManager(s) for s in stores]
    plans = [pools.decide(m.snapshot()) for m in managers]
    assert [len(p) for p in plans] == [7, 7, 7, 7]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    applied: list[int] = []

    def worker(mgr: pools.PoolManager, plan: list[pools.Decision]) -> None:
        try:
            barrier.wait()
            applied.extend(1 for d in plan if mgr.apply(d) is not None)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=a) for a in zip(managers, plans, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for s in stores:
        s.dispose()
    assert errors == []
    assert len(applied) == 7
    assert len(pool_vms(store)) == 7


def test_stale_drain_decisions_do_not_drain_twice(store: Store, admin: int) -> None:
    spec = make_pool(store, target=3)
    mgr = pools.PoolManager(store)
    mgr.cycle()
    run_all(store)
    pools.update_pool(store, "batch", replace(spec, target=2))
    plans = [pools.decide(mgr.snapshot()) for _ in range(3)]
    done = [d for plan in plans for d in plan if mgr.apply(d) is not None]
    assert [d.action for d in done] == ["drain"]
    assert sum(v["drain_requested"] is not None for v in pool_vms(store)) == 1


def test_concurrent_processes_never_overshoot(store: Store, admin: int, tmp_path) -> None:
    """Three processes take their snapshots, wait for a common start, then apply."""
    import subprocess
    import sys

    make_pool(store, target=5)
    go = tmp_path / "go"
    code = (
        "import os, sys, time\n"
        "from lxcloud_py.pools import PoolManager, decide\n"
        "from lxcloud_py.store import Store\n"
        "s = Store(sys.argv[1])\n"
        "m = PoolManager(s)\n"
        "plan = decide(m.snapshot())\n"
        "assert len(plan) == 5, plan\n"
        "open(sys.argv[2] + '.' + str(os.getpid()), 'w').close()\n"
        "while not os.path.exists(sys.argv[2]):\n"
        "    time.sleep(0.01)\n"
        "print(sum(m.apply(d) is not None for d in plan))\n"
        "s.dispose()\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, store.url, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go.*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    made = 0
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        made += int(out)
    assert made == 5
    assert len(pool_vms(store)) == 5


# -- schema -------------------------------------------------------------------------------------
def test_version_1_database_is_migrated(db_url: str) -> None:
    s = Store(db_url)
    try:
        s.create_schema()
        with s.transaction() as conn:
            if s.backend == "sqlite":  # (MySQL keeps it: the foreign key on pool_id needs it)
                conn.exec_driver_sql("DROP INDEX ix_vms_pool")
            for table, column in schema.MIGRATIONS[2]:
                conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
            conn.execute(update(schema.meta).values(value="1"))
        s.create_schema()
        users.ensure_admin(s, "pw")
        make_pool(s, target=1, priority=3)
        assert [d.action for d in pools.PoolManager(s).cycle()] == ["refill"]
        with s.transaction() as conn:
            version = conn.execute(select(schema.meta.c.value)).scalar_one()
        assert version == str(schema.SCHEMA_VERSION)  # migrated to the current version
        assert "ix_vms_pool" in {i["name"] for i in inspect(s.engine).get_indexes("vms")}
    finally:
        s.dispose()

