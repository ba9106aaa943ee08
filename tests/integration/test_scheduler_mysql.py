"""Concurrent schedulers on one MariaDB: more pending VMs than leases and capacity, several
schedulers (threads with their own engine, and separate `lxcloud schedule --once` processes)
racing for the same VMs, hosts and leases. Afterwards SQL checks that no lease was claimed
twice, no host is over-committed and every placement is consistent."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sched_rows as rows
from sqlalchemy import text

from lxcloud_py.model import VMState
from lxcloud_py.scheduler import CycleResult, Scheduler, SchedulerConfig
from lxcloud_py.store import Store

REPO = Path(__file__).resolve().parents[2]
IMG = "slc5-batch"


def build_farm(store: Store, seed: int) -> tuple[int, int]:
    """12 hosts (4 cores, 8 GiB); half with more leases than capacity, half with fewer;
    90 pending VMs of mixed sizes. Returns (leases, vms)."""
    rnd = random.Random(seed)
    n_leases = 0
    with store.transaction() as conn:
        img = rows.image(conn, IMG)
        for h in range(12):
            name = f"hv{h:02d}"
            hid = rows.host(conn, name, cpu=4, memory_mb=8192)
            rows.stage(conn, hid, img)
            for _ in range(7 if h % 2 else 2):
                n_leases += 1
                rows.lease(conn, n_leases, name)
        n_vms = 90
        for i in range(n_vms):
            rows.vm(
                conn, f"batch{i}", cpu=rnd.choice([1, 1, 2]), memory_mb=rnd.choice([1024, 3072])
            )
    return n_leases, n_vms


def check_consistent(store: Store) -> int:
    """SQL checks over the whole database; returns the number of placed VMs."""
    with store.transaction() as conn:

        def q(sql: str) -> list:
            states = {"active": int(VMState.ACTIVE), "pending": int(VMState.PENDING)}
            return list(conn.execute(text(sql), states).all())

        # A lease is held by at most one VM and a VM holds at most one lease.
        assert (
            q("SELECT vm_id FROM leases WHERE vm_id IS NOT NULL GROUP BY vm_id HAVING COUNT(*) > 1")
            == []
        )
        # used <=> held.
        assert q("SELECT id FROM leases WHERE (state = 'used') <> (vm_id IS NOT NULL)") == []
        # Every placed VM holds exactly one lease, pinned to the VM's host; every held lease
        # belongs to a placed VM.
        placed = q("SELECT id, host_id FROM vms WHERE state = :active")
        assert all(h is not None for _, h in placed)
        bad = q(
            "SELECT v.id FROM vms v LEFT JOIN leases l ON l.vm_id = v.id "
            "LEFT JOIN hosts h ON h.id = v.host_id "
            "WHERE v.state = :active AND (l.id IS NULL OR l.host <> h.name)"
        )
        assert bad == []
        assert (
            q("SELECT l.id FROM leases l JOIN vms v ON v.id = l.vm_id WHERE v.state <> :active")
            == []
        )
        # PENDING VMs hold nothing and sit on no host.
        assert (
            q(
                "SELECT v.id FROM vms v LEFT JOIN leases l ON l.vm_id = v.id "
                "WHERE v.state = :pending AND (l.id IS NOT NULL OR v.host_id IS NOT NULL)"
            )
            == []
        )
        # No host over-committed (CPU or memory).
        over = q(
            "SELECT h.name, SUM(v.cpu), h.cpu, SUM(v.memory_mb), h.memory_mb FROM hosts h "
            "JOIN vms v ON v.host_id = h.id AND v.state = :active "
            "GROUP BY h.id, h.name, h.cpu, h.memory_mb "
            "HAVING SUM(v.cpu) > h.cpu OR SUM(v.memory_mb) > h.memory_mb"
        )
        assert over == []
        # Each VM was placed exactly once (one PENDING -> ACTIVE transition in the history).
        twice = q(
            "SELECT object_id FROM history WHERE kind = 'vm' AND new_state = 'ACTIVE' "
            "GROUP BY object_id HAVING COUNT(*) <> 1"
        )
        assert twice == []
        n_hist = q("SELECT COUNT(*) FROM history WHERE kind = 'vm' AND new_state = 'ACTIVE'")
        assert n_hist[0][0] == len(placed)
        return len(placed)


def assert_saturated(store: Store) -> None:
    """A fresh scheduler finds nothing more to place: the racers left no capacity unused
    by mistake, and every VM still pending says why."""
    result = Scheduler(store, SchedulerConfig(dispatch_limit=None)).run_cycle()
    assert result.placements == []
    with store.transaction() as conn:
        assert (
            conn.execute(
                text("SELECT COUNT(*) FROM vms WHERE state = :pending AND sched_message IS NULL"),
                {"pending": int(VMState.PENDING)},
            ).scalar_one()
            == 0
        )


def test_concurrent_scheduler_threads(db_url: str) -> None:
    """Four schedulers as threads, each with its own Store; on MariaDB (marker mysql) and,
    for comparison, on an SQLite file."""
    url = db_url
    backend = "mysql" if url.startswith("mysql") else "sqlite"
    setup = Store(url)
    setup.create_schema()
    n_leases, n_vms = build_farm(setup, seed=7)
    n = 4
    barrier = threading.Barrier(n)
    results: list[list[CycleResult]] = [[] for _ in range(n)]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        store = Store(url)  # own engine and connections
        # Striping for some, packing for others: different orders, more collisions.
        config = SchedulerConfig(dispatch_limit=None, strategy="packing" if i % 2 else "striping")
        try:
            sched = Scheduler(store, config)
            barrier.wait()
            for _ in range(3):
                r = sched.run_cycle()
                results[i].append(r)
                if not r.placements and not r.skipped:
                    break
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            store.dispose()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    placed = check_consistent(setup)
    reported = sum(len(r.placements) for rs in results for r in rs)
    conflicts = sum(r.conflicts + len(r.skipped) for rs in results for r in rs)
    print(
        f"{backend}: {placed} placed of {n_vms} VMs, {n_leases} leases, "
        f"{conflicts} lost races/VMs taken by another scheduler"
    )
    assert reported == placed  # each placement reported by exactly one scheduler
    assert 0 < placed < n_vms and placed <= n_leases
    assert_saturated(setup)
    setup.dispose()


@pytest.mark.mysql
def test_concurrent_scheduler_processes(mysql_url: str) -> None:
    """Three `lxcloud schedule --once` processes started together on one MariaDB."""
    setup = Store(mysql_url)
    setup.create_schema()
    n_leases, n_vms = build_farm(setup, seed=11)
    env = dict(os.environ, PYTHONPATH=str(REPO), LXCLOUD_CONFIG="")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lxcloud_py", "--db", mysql_url, "schedule", "--once"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    placed = check_consistent(setup)
    reported = sum(int(out.strip().splitlines()[-1].split()[0]) for out, _ in outs)
    assert reported == placed
    assert 0 < placed <= n_leases < n_vms
    setup.dispose()
