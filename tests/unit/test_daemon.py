"""The daemon's loop, signals, stage registry and decisions, with stand-in stages; the
scheduler and pools stages and ``lxcloud status`` over a real store (both backends)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import sched_rows as rows
from sqlalchemy import insert, update

from lxcloud_py import pools
from lxcloud_py.cli import build_parser, main
from lxcloud_py.cli.serve import resolve
from lxcloud_py.cli.status import format_snapshot, snapshot
from lxcloud_py.config import Config, Settings, effective
from lxcloud_py.daemon import Daemon, PeriodicStage, StageContext, check_stages
from lxcloud_py.daemon.core import EXIT_NOW
from lxcloud_py.daemon.decisions import Decision, JsonFormatter, latest, prune, record
from lxcloud_py.daemon.pools import PoolsStage
from lxcloud_py.daemon.scheduler import SchedulerStage
from lxcloud_py.model import HostState, InvalidInput, LCMState, VMState
from lxcloud_py.store import Store, schema

REPO = Path(__file__).resolve().parents[2]


def settings(**flags: str) -> Settings:
    return effective(Config(), flags, {})


class Ticker(PeriodicStage):
    """A stage whose cycle takes ``work`` seconds; records when each cycle started."""

    name = "ticker"
    every = 0.05
    work = 0.0

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.starts: list[float] = []
        self.finished = 0
        self.cancelled = threading.Event()
        self.seen: list[Settings] = []

    def interval(self) -> float:
        return self.every

    def cycle(self) -> None:
        self.starts.append(time.monotonic())
        self.seen.append(self.ctx.settings)
        if self.cancelled.wait(self.work) and self.work:
            return
        self.finished += 1

    def cancel(self) -> None:
        self.cancelled.set()


def test_periodic_stage_keeps_its_interval_and_never_sleeps_past_a_stop(store: Store) -> None:
    stage = Ticker(StageContext(store, settings()))
    stage.start()
    time.sleep(0.5)
    stage.every = 3600.0  # the next wait is an hour long...
    time.sleep(0.15)
    t0 = time.monotonic()
    stage.request_stop()
    assert stage.join(2)  # ...and a stop ends it at once
    assert time.monotonic() - t0 < 1
    gaps = [b - a for a, b in zip(stage.starts, stage.starts[1:], strict=False)]
    assert len(stage.starts) >= 5
    assert all(g >= 0.045 for g in gaps), gaps  # start to start, on the monotonic clock


def test_a_failing_cycle_is_a_decision_and_the_loop_goes_on(store: Store) -> None:
    class Flaky(Ticker):
        name = "flaky"

        def cycle(self) -> None:
            super().cycle()
            if len(self.starts) == 1:
                raise RuntimeError("disk on fire")

    stage = Flaky(StageContext(store, settings()))
    stage.start()
    deadline = time.monotonic() + 5
    while len(stage.starts) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    stage.request_stop()
    assert stage.join(2)
    failed = [d for d in latest(store) if not d["ok"]]
    assert [(d["stage"], d["action"], d["message"]) for d in failed] == [
        ("flaky", "cycle failed", "disk on fire")
    ]


def _signal_later(*steps: tuple[float, signal.Signals]) -> threading.Thread:
    def send() -> None:
        for delay, sig in steps:
            time.sleep(delay)
            os.kill(os.getpid(), sig)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    return t


def test_sigterm_lets_the_cycle_in_flight_finish_and_exits_0(store: Store) -> None:
    class Slow(Ticker):
        work = 1.5

    made: list[Slow] = []

    class Tracked(Slow):
        def __init__(self, ctx: StageContext) -> None:
            super().__init__(ctx)
            made.append(self)

    reloads: list[int] = []

    def reload() -> Settings:
        reloads.append(1)
        return settings(sched_interval="42")

    daemon = Daemon(store, settings(), [Tracked], reload)
    before = signal.getsignal(signal.SIGTERM)
    # SIGHUP while the first cycle runs, SIGTERM while the second (with the new settings) runs.
    sender = _signal_later((0.3, signal.SIGHUP), (1.6, signal.SIGTERM))
    t0 = time.monotonic()
    assert daemon.run() == 0
    sender.join()
    (stage,) = made
    assert reloads == [1]
    assert stage.finished == len(stage.starts) == 2  # the cycle in flight finished
    assert stage.seen[1]["daemon.sched_interval"] == 42.0  # applied between two cycles
    assert not stage.cancelled.is_set()
    assert time.monotonic() - t0 < 4.5
    assert signal.getsignal(signal.SIGTERM) == before  # the handlers are given back


def test_sighup_with_a_broken_config_keeps_the_old_settings(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    def reload() -> Settings:
        raise InvalidInput("lxcloud.yml: daemon: unknown key(s) 'oops'")

    daemon = Daemon(store, settings(), [Ticker], reload)
    sender = _signal_later((0.2, signal.SIGHUP), (0.3, signal.SIGTERM))
    with caplog.at_level(logging.ERROR, "lxcloud.daemon"):
        assert daemon.run() == 0
    sender.join()
    assert "keeping the old settings" in caplog.text and "oops" in caplog.text
    assert daemon.settings["daemon.sched_interval"] == 5.0


def test_shutdown_timeout_cancels_the_job_in_flight(store: Store) -> None:
    class Stuck(Ticker):
        work = 60.0

    made: list[Stuck] = []

    class Tracked(Stuck):
        def __init__(self, ctx: StageContext) -> None:
            super().__init__(ctx)
            made.append(self)

    daemon = Daemon(store, settings(shutdown_timeout="0.5"), [Tracked], settings)
    sender = _signal_later((0.3, signal.SIGTERM))
    t0 = time.monotonic()
    assert daemon.run() == 0
    sender.join()
    assert made[0].cancelled.is_set() and made[0].finished == 0
    assert time.monotonic() - t0 < 5


def test_a_second_sigterm_exits_at_once(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from lxcloud_py.config import Config, effective
        from lxcloud_py.daemon import Daemon, PeriodicStage
        from lxcloud_py.store import Store

        class Busy(PeriodicStage):
            name = "busy"
            def interval(self): return 1.0
            def cycle(self):
                print("cycle", flush=True)
                time.sleep(60)

        store = Store(sys.argv[1]); store.create_schema()
        s = effective(Config(), {}, {})
        sys.exit(Daemon(store, s, [Busy], lambda: s).run())
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, f"sqlite:///{tmp_path / 'db'}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "cycle"
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None  # the first one waits for the cycle (60 s, timeout 300 s)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == EXIT_NOW
        assert time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_stage_names_are_checked() -> None:
    assert check_stages(["api", "scheduler", "api"]) == ["api", "scheduler"]
    with pytest.raises(InvalidInput, match="unknown stage 'sheduler'"):
        check_stages(["sheduler"])
    assert check_stages(["api", "reconciler"]) == ["api", "reconciler"]
    with pytest.raises(InvalidInput, match="no stages"):
        check_stages([])


def test_serve_help_names_every_stage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name in ("api", "monitor", "scheduler", "executor", "pools", "reconciler"):
        assert f"\n  {name} " in out
    assert "LXCLOUD_RECONCILE_INTERVAL; OpenNebula RECONCILE_INTERVAL" in " ".join(out.split())
    assert "LXCLOUD_SCHED_INTERVAL; OpenNebula SCHED_INTERVAL" in " ".join(out.split())


def test_serve_refuses_unknown_stages_and_an_executor_without_inventory(
    sqlite_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LXCLOUD_INVENTORY", raising=False)
    monkeypatch.delenv("LXCLOUD_CONFIG", raising=False)
    assert main(["--db", sqlite_url, "db", "init", "--admin-password", "pw"]) == 0
    argv = ["--db", sqlite_url, "serve", "--listen", "127.0.0.1:0"]
    assert main([*argv, "--stages", "api,reconciler", "--destroy-strays", "maybe"]) == 1
    assert "reconcile.destroy_strays (flag --destroy-strays)" in capsys.readouterr().err
    assert main([*argv, "--stages", "executor"]) == 1
    assert "executor stage: no inventory" in capsys.readouterr().err
    # The default stages without an inventory: all but the executor, and it says so.
    args = build_parser().parse_args(argv)
    settings = resolve(args)
    assert settings["daemon.stages"] == ["api", "monitor", "scheduler", "pools"]
    assert "without executor" in settings.sources["daemon.stages"]
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("[hypervisors]\n")
    settings = resolve(build_parser().parse_args([*argv, "--inventory", str(inventory)]))
    assert settings["daemon.stages"] == ["api", "monitor", "scheduler", "executor", "pools"]


def test_decisions_are_logged_stored_and_pruned(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "lxcloud.decision"):
        record(store, [
            Decision("scheduler", "placed", vm_id=7, host="hv1", pool="batch", message="wn1"),
            Decision("pools", "backed off", pool="batch", message="exit 300", ok=False),
        ])  # fmt: skip
    assert "decision placed vm=7 host=hv1 pool=batch: wn1" in caplog.messages
    assert "decision backed off pool=batch: exit 300" in caplog.messages
    newest, older = latest(store)
    assert (newest["action"], newest["ok"], newest["vm_id"]) == ("backed off", False, None)
    assert (older["stage"], older["host"], older["pool"]) == ("scheduler", "hv1", "batch")
    record(store, [Decision("executor", "deployed", vm_id=i) for i in range(5)])
    assert prune(store, 3) == 4
    assert [d["vm_id"] for d in latest(store)] == [4, 3, 2]
    assert prune(store, 3) == 0


def test_json_log_lines_carry_the_decision_fields() -> None:
    d = Decision("executor", "deployed", vm_id=3, host="hv2", message="in 4.2 s")
    rec = logging.LogRecord("lxcloud.decision", logging.INFO, __file__, 1, "%s", (d.text(),), None)
    rec.decision = {"stage": d.stage, "action": d.action, "ok": d.ok, "vm_id": 3,
                    "host": "hv2", "pool": None, "message": d.message}  # fmt: skip
    out = json.loads(JsonFormatter().format(rec))
    assert out["message"] == "decision deployed vm=3 host=hv2: in 4.2 s"
    assert (out["action"], out["vm_id"], out["host"], out["detail"]) == (
        "deployed", 3, "hv2", "in 4.2 s")  # fmt: skip
    assert "pool" not in out


def _pool(conn, name: str, target: int) -> int:
    res = conn.execute(
        insert(schema.pools).values(name=name, template="", target=target, created=time.time())
    )
    return int(res.inserted_primary_key[0])


def test_scheduler_stage_places_and_names_vm_host_pool(store: Store) -> None:
    with store.transaction() as conn:
        img = rows.image(conn, "slc5-batch")
        hid = rows.host(conn, "hv1")
        rows.stage(conn, hid, img)
        rows.lease(conn, 1, "hv1")
        pool = _pool(conn, "batch", 1)
        vm = rows.vm(conn, "batch-1")
        conn.execute(update(schema.vms).where(schema.vms.c.id == vm).values(pool_id=pool))
    stage = SchedulerStage(StageContext(store, settings(max_dispatch="5")))
    assert stage.scheduler.config.max_placements_per_cycle == 5
    stage.cycle()
    with store.transaction() as conn:
        assert rows.vm_row(conn, vm).lcm_state == LCMState.PROLOG
    (d,) = latest(store)
    assert (d["stage"], d["action"], d["vm_id"], d["host"], d["pool"]) == (
        "scheduler", "placed", vm, "hv1", "batch")  # fmt: skip
    stage.cycle()  # nothing pending: no decision
    assert len(latest(store)) == 1


def test_pools_stage_stores_the_managers_decisions(store: Store) -> None:
    with store.transaction() as conn:
        rows.user(conn)
    pools.create_pool(store, pools.PoolSpec(name="batch", template=pools.build_template(
        "slc5-batch", cpu=0.5), target=2))  # fmt: skip
    stage = PoolsStage(StageContext(store, settings()))
    stage.cycle()
    made = latest(store)
    assert [(d["stage"], d["action"], d["pool"]) for d in made] == [
        ("pools", "refilled", "batch")] * 2  # fmt: skip
    assert {d["vm_id"] for d in made} == {1, 2}
    stage.cycle()  # the target is met: nothing more
    assert len(latest(store)) == 2


def test_status_shows_hosts_pools_decisions_errors(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    with store.transaction() as conn:
        hid = rows.host(conn, "hv1", cpu=8, memory_mb=16384)
        rows.host(conn, "hv2", state=HostState.ERROR)
        pool = _pool(conn, "batch", 3)
        running = rows.vm(conn, "b1", cpu=2, memory_mb=2048, state=VMState.ACTIVE,
                          lcm_state=LCMState.RUNNING, host_id=hid)  # fmt: skip
        pending = rows.vm(conn, "b2")
        failed = rows.vm(conn, "b3", state=VMState.ACTIVE, lcm_state=LCMState.BOOT_FAILURE,
                         host_id=hid)  # fmt: skip
        conn.execute(update(schema.vms).where(schema.vms.c.id.in_([running, pending, failed]))
                     .values(pool_id=pool, sched_message="virsh start failed"))  # fmt: skip
    record(store, [Decision("scheduler", "placed", vm_id=running, host="hv1", pool="batch")])
    snap = snapshot(store)
    hv1 = next(h for h in snap["hosts"] if h["name"] == "hv1")
    assert (hv1["cpu_used"], hv1["cpu_total"], hv1["memory_mb_used"], hv1["vms"]) == (
        3.0, 8.0, 3072, 2)  # fmt: skip
    (p,) = snap["pools"]
    # active: what counts against the target (the running and the pending one)
    assert (p["name"], p["target"], p["active"], p["pending"]) == ("batch", 3, 2, 1)
    whats = [e["what"] for e in snap["errors"]]
    assert whats == ["host hv2", f"VM {failed} (b3)"]
    assert "BOOT_FAILURE: virsh start failed" in snap["errors"][1]["message"]
    text = format_snapshot(snap)
    for part in ("HOSTS (2)", "3/8", "POOLS (1)", "LAST DECISIONS (1)", "placed", "ERRORS (2)"):
        assert part in text
    assert main(["--db", store.url, "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pools"][0]["name"] == "batch"


def test_pools_file_is_applied_at_start_and_on_reload(store: Store, tmp_path: Path) -> None:
    with store.transaction() as conn:
        rows.user(conn)
    path = tmp_path / "pools.yml"
    entry = "  - {{name: {}, image: slc5-batch, cpu: 0.5, target: {}}}\n"
    path.write_text("pools:\n" + entry.format("batch", 2) + entry.format("service", 1))
    stage = PoolsStage(StageContext(store, settings(pools_file=str(path))))
    assert [(d["action"], d["pool"]) for d in latest(store)] == [
        ("pool create", "service"), ("pool create", "batch")]  # fmt: skip
    # SIGHUP: the file changed; with prune, the pool it no longer declares goes
    path.write_text("pools:\n" + entry.format("batch", 3))
    stage.apply(settings(pools_file=str(path), pools_prune="yes"))
    with store.transaction() as conn:
        assert {p["name"]: p["target"] for p in pools.list_pools(conn)} == {"batch": 3}
    assert [(d["action"], d["pool"]) for d in latest(store)[:2]] == [
        ("pool delete", "service"), ("pool update", "batch")]  # fmt: skip
    # a broken file is refused whole, the pools stay
    path.write_text("pools:\n  - {name: batch, target: -1}\n")
    with pytest.raises(InvalidInput, match=r"pools\.yml:2"):
        stage.apply(settings(pools_file=str(path)))
    with store.transaction() as conn:
        assert {p["name"]: p["target"] for p in pools.list_pools(conn)} == {"batch": 3}


def test_status_watch_redraws_until_interrupted(sqlite_url: str) -> None:
    Store(sqlite_url).create_schema()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lxcloud_py", "--db", sqlite_url, "status", "--watch", "0.2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(2.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out.count("lxcloud status at") >= 3  # not a terminal: one snapshot after another
    assert main(["--db", sqlite_url, "status", "--watch", "0"]) == 1
