"""Random farms against a brute-force oracle: every placement obeys every rule, and no VM left
PENDING could have been placed anywhere (the cycle leaves nothing placeable behind)."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
import sched_rows as rows
from sqlalchemy import select

from lxcloud_py.model import (
    SCHEDULABLE_HOST_STATES,
    HostState,
    ImageState,
    LCMState,
    VMState,
)
from lxcloud_py.scheduler import Scheduler, SchedulerConfig
from lxcloud_py.store import Store, schema

IMAGES = ["slc5-batch", "slc6-batch"]
LIMIT = 3


def build(store: Store, rnd: random.Random) -> None:
    with store.transaction() as conn:
        img = {name: rows.image(conn, name, sha=name[:4].encode().hex() * 8) for name in IMAGES}
        n_lease = 0
        for h in range(rnd.randint(3, 8)):
            name = f"hv{h}"
            state = rnd.choice([HostState.MONITORED] * 4 + [HostState.DISABLED, HostState.ERROR])
            leases = [
                (n_lease + i, f"02:00:00:00:{h:02x}:{i:02x}") for i in range(rnd.randint(0, 6))
            ]
            n_lease += len(leases)
            macs = [m for _, m in leases if rnd.random() < 0.8] if rnd.random() < 0.5 else []
            hid = rows.host(
                conn,
                name,
                cpu=rnd.choice([2, 4, 8]),
                memory_mb=rnd.choice([4096, 8192]),
                state=state,
                macs=macs,
            )
            for image, image_id in img.items():
                r = rnd.random()
                if r < 0.6:
                    rows.stage(conn, hid, image_id, sha=image[:4].encode().hex() * 8)
                elif r < 0.7:
                    rows.stage(conn, hid, image_id, state=ImageState.FAILED)
                elif r < 0.8:
                    rows.stage(conn, hid, image_id, sha="f" * 64)  # verified, wrong checksum
            for n, mac in leases:
                rows.lease(conn, n + 1, name, mac=mac)
            if state == HostState.MONITORED and rnd.random() < 0.5:
                rows.vm(
                    conn,
                    "old",
                    cpu=1,
                    memory_mb=2048,
                    state=VMState.ACTIVE,
                    lcm_state=rnd.choice([LCMState.RUNNING, LCMState.BOOT]),
                    host_id=hid,
                )
        for i in range(rnd.randint(5, 30)):
            rows.vm(
                conn,
                f"v{i}",
                cpu=rnd.choice([1, 1, 2, 3]),
                memory_mb=rnd.choice([1024, 2048, 4096]),
                image_name=rnd.choice([*IMAGES, None, "unknown-image"]),
            )


def oracle(store: Store, cfg: SchedulerConfig) -> tuple[int, int]:
    """Check every rule on the final state; return (placed, pending)."""
    S = schema
    with store.transaction() as conn:
        hosts = {h.id: h for h in conn.execute(select(S.hosts))}
        macs = defaultdict(set)
        for hid, mac in conn.execute(select(S.host_macs.c.host_id, S.host_macs.c.mac)):
            macs[hid].add(mac)
        good = defaultdict(set)  # host id -> verified image names (checksum matches)
        for hid, name in conn.execute(
            select(S.host_images.c.host_id, S.images.c.name)
            .join(S.images, S.images.c.id == S.host_images.c.image_id)
            .where(S.host_images.c.state == "verified", S.host_images.c.sha256 == S.images.c.sha256)
        ):
            good[hid].add(name)
        vms = list(conn.execute(select(S.vms)))
        leases = list(conn.execute(select(S.leases)))
    lease_of = {lease.vm_id: lease for lease in leases if lease.vm_id is not None}
    cpu, mem, disp = defaultdict(float), defaultdict(int), defaultdict(int)
    for v in vms:
        if v.state == VMState.ACTIVE:
            cpu[v.host_id] += v.cpu
            mem[v.host_id] += v.memory_mb
            disp[v.host_id] += v.lcm_state in (LCMState.PROLOG, LCMState.BOOT)
    placed = [v for v in vms if v.state == VMState.ACTIVE and v.lcm_state == LCMState.PROLOG]
    for v in placed:
        h = hosts[v.host_id]
        lease = lease_of[v.id]
        assert h.state in SCHEDULABLE_HOST_STATES
        assert lease.host == h.name and lease.state == "used"
        assert not macs[h.id] or lease.mac in macs[h.id]
        assert v.image_name is None or v.image_name in good[h.id]
    for hid, h in hosts.items():
        assert cpu[hid] <= h.cpu and mem[hid] <= h.memory_mb
    for hid in hosts:
        new = sum(1 for v in placed if v.host_id == hid)
        assert new == 0 or disp[hid] <= LIMIT
    pending = [v for v in vms if v.state == VMState.PENDING]
    for v in pending:
        assert v.id not in lease_of and v.sched_message
        for hid, h in hosts.items():
            free = [
                lease
                for lease in leases
                if lease.host == h.name
                and lease.vm_id is None
                and (not macs[hid] or lease.mac in macs[hid])
            ]
            fits = (
                h.state in SCHEDULABLE_HOST_STATES
                and free
                and (v.image_name is None or v.image_name in good[hid])
                and cpu[hid] + v.cpu <= h.cpu
                and mem[hid] + v.memory_mb <= h.memory_mb
                and disp[hid] < LIMIT
            )
            assert not fits, f"VM {v.id} left PENDING ({v.sched_message}) but fits on {h.name}"
    return len(placed), len(pending)


@pytest.mark.parametrize("strategy", ["packing", "striping"])
def test_random_farms_obey_every_rule(store: Store, strategy: str) -> None:
    rnd = random.Random(f"{strategy}-{store.backend}")
    cfg = SchedulerConfig(dispatch_limit=LIMIT, strategy=strategy)
    totals = [0, 0]
    for _ in range(6 if store.backend == "sqlite" else 3):  # DDL is slow on MariaDB
        store.drop_schema()
        store.create_schema()
        build(store, rnd)
        Scheduler(store, cfg).run_cycle()
        placed, pending = oracle(store, cfg)
        totals[0] += placed
        totals[1] += pending
    assert totals[0] > 0 and totals[1] > 0  # the farms exercised both outcomes
