#!/usr/bin/env python3
"""Scheduler throughput at the farm's scale: 500 hosts, 8,000 leases, N pending VMs.

Fills a fresh SQLite database (and, with ``--mysql mysql+pymysql://user@host:port``, a
temporary database on that MariaDB server, dropped afterwards), then runs scheduling cycles
until nothing more is placed and prints placements per second, the cost of loading the
cycle's host states, and the cost of a cycle that finds nothing to place.

    .venv/bin/python bench/scheduler.py [--vms 8000] [--mysql URL]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lxcloud_py.model import HostState, ImageState, LCMState, VMState
from lxcloud_py.scheduler import Scheduler, SchedulerConfig, load_hosts, load_requests
from lxcloud_py.store import Store, schema

HOSTS, LEASES = 500, 8000


def fill(store: Store, n_vms: int, seed: int = 1) -> None:
    rnd = random.Random(seed)
    with store.transaction() as conn:
        conn.execute(
            insert(schema.users).values(
                name="oneadmin",
                password_hash="x",  # noqa: S106
                is_admin=True,
                created=0,
            )
        )
        conn.execute(
            insert(schema.images).values(
                name="slc5-batch", version="1", sha256="a" * 64, size=1, format="raw", created=0
            )
        )
        conn.execute(
            insert(schema.hosts),
            [
                dict(
                    name=f"hv{i:03d}",
                    state=HostState.MONITORED if i % 50 else HostState.DISABLED,
                    cpu=24,
                    memory_mb=49152,
                    disk_mb=10**6,
                    created=0,
                )
                for i in range(HOSTS)
            ],
        )
        conn.execute(
            insert(schema.host_images),
            [
                dict(host_id=i + 1, image_id=1, state=ImageState.VERIFIED, updated=0)
                for i in range(HOSTS)
                if i % 40  # a few hosts lack the image
            ],
        )
        conn.execute(
            insert(schema.leases),
            [
                dict(
                    ip=f"10.1.{n // 250}.{n % 250 + 1}",
                    mac=f"02:00:00:00:{n >> 8:02x}:{n & 255:02x}",
                    name=f"vm{n:05d}.farm.example",
                    host=f"hv{n % HOSTS:03d}",
                    state="free",
                    updated=0,
                )
                for n in range(LEASES)
            ],
        )
        # A running farm: a few VMs already on every host.
        conn.execute(
            insert(schema.vms),
            [
                dict(
                    name=f"old{i}",
                    owner_id=1,
                    template="",
                    state=VMState.ACTIVE,
                    lcm_state=LCMState.RUNNING,
                    cpu=2,
                    vcpu=2,
                    memory_mb=4096,
                    image_name="slc5-batch",
                    host_id=i % HOSTS + 1,
                    created=0,
                )
                for i in range(2 * HOSTS)
            ],
        )
        conn.execute(
            insert(schema.vms),
            [
                dict(
                    name=f"batch{i}",
                    owner_id=1,
                    template="",
                    state=VMState.PENDING,
                    lcm_state=LCMState.LCM_INIT,
                    cpu=rnd.choice([1, 1, 2]),
                    vcpu=1,
                    memory_mb=rnd.choice([2048, 4096]),
                    image_name="slc5-batch",
                    created=1 + i,
                )
                for i in range(n_vms)
            ],
        )


def run(label: str, url: str, n_vms: int) -> float:
    store = Store(url)
    store.create_schema()
    t = time.perf_counter()
    fill(store, n_vms)
    print(
        f"[{label}] filled {HOSTS} hosts, {LEASES} leases, {n_vms} pending VMs "
        f"in {time.perf_counter() - t:.1f} s"
    )
    t = time.perf_counter()
    with store.transaction() as conn:
        hosts = load_hosts(conn)
        reqs = load_requests(conn)
    load = time.perf_counter() - t
    print(
        f"[{label}] loading the cycle's state ({len(hosts)} hosts, {len(reqs)} requests): "
        f"{load * 1000:.0f} ms"
    )
    sched = Scheduler(store, SchedulerConfig(dispatch_limit=None))
    placed, seconds, cycles = 0, 0.0, 0
    while True:
        r = sched.run_cycle()
        cycles += 1
        seconds += r.seconds
        placed += len(r.placements)
        print(
            f"[{label}] cycle {cycles}: {len(r.placements)} placed, {len(r.unplaced)} unplaced "
            f"in {r.seconds:.2f} s"
        )
        if not r.placements:
            idle = r.seconds
            break
    rate = placed / (seconds - idle) if seconds > idle else 0.0
    print(
        f"[{label}] {placed} placements in {seconds - idle:.2f} s: {rate:.0f} placements/s; "
        f"a cycle with nothing placeable ({r.requests} pending): {idle * 1000:.0f} ms"
    )
    with store.transaction() as conn:
        over = conn.execute(
            text(
                "SELECT COUNT(*) FROM (SELECT h.id FROM hosts h JOIN vms v ON v.host_id = h.id "
                "AND v.state = 3 GROUP BY h.id, h.cpu, h.memory_mb "
                "HAVING SUM(v.cpu) > h.cpu OR SUM(v.memory_mb) > h.memory_mb) x"
            )
        ).scalar_one()
    print(f"[{label}] over-committed hosts: {over}")
    store.dispose()
    return rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=8000, help="pending VMs (default 8000)")
    ap.add_argument(
        "--mysql",
        metavar="URL",
        help="MariaDB server URL (a temporary database is created and dropped)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lxcloud-bench-") as d:
        sqlite_rate = run("sqlite", f"sqlite:///{d}/bench.db", args.vms)
    if args.mysql:
        server = make_url(args.mysql).set(database=None)
        name = "lxbench_" + uuid.uuid4().hex[:8]
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
        try:
            mysql_rate = run("mysql", server.set(database=name).render_as_string(False), args.vms)
        finally:
            with admin.connect() as c:
                c.execute(text(f"DROP DATABASE IF EXISTS {name}"))
            admin.dispose()
        if sqlite_rate:
            print(f"mysql/sqlite placement rate ratio: {mysql_rate / sqlite_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
