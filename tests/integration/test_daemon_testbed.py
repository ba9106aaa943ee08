"""The daemon on the testbed, every part real (2 hosts, libvirt/qemu, ansible-runner), on SQLite
and on MariaDB: ``lxcloud serve`` with the scheduler and executor stages places and deploys VMs
nobody schedules or deploys by hand; killed with SIGKILL in the middle of a deploy run (its
ansible-playbook with it) and started again, it finishes the rollout without duplicates: each VM
has exactly one domain, on its host, no disk is orphaned, no lease leaked, each VM was placed and
deployed once. SIGTERM during a deploy run lets the run finish (the VMs end RUNNING) and exits 0.
Terminated VMs are cleaned up by the running daemon, leaving the hosts and the leases as found.

The farm (leases, hypervisors playbook, image staged) is :func:`test_farm.prepare`'s.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from test_farm import (
    DISKS,
    HOSTS,
    IMAGE,
    NET,
    Farm,
    deploy_vars,
    farm_on_testbed,
    prepare,
    wait_for,
)
from testbed_helpers import Testbed

from lxcloud_py.api.launcher import ServeProcess
from lxcloud_py.model import LCMState, VMState
from lxcloud_py.store import schema

pytestmark = [pytest.mark.testbed, pytest.mark.libvirt, pytest.mark.slow]

PER_HOST = 4  # leases per host
LEASES = [
    (f"{NET}.{30 + 10 * h + i}", f"52:54:00:d5:1{h}:{i:02x}", f"wn{h}{i}.daemon.test", host)
    for h, host in enumerate(HOSTS)
    for i in range(PER_HOST)
]
VM_IDS = list(range(1, 2 * PER_HOST + 1))
TPL = ('NAME = "{name}"\nCPU = 0.25\nVCPU = 1\nMEMORY = 192\nDISK = [ IMAGE = "' + IMAGE
       + '" ]\nLIFETIME = 3600\n')  # fmt: skip


class Daemon:
    """``lxcloud serve`` with every implemented stage but pools, on the farm's API address."""

    def __init__(self, farm: Farm, name: str, stages: str) -> None:
        conf = farm.work / "lxcloud.yml"
        conf.write_text(json.dumps({
            "daemon": {"sched_interval": 1, "executor_interval": 1, "shutdown_timeout": 120},
            "executor": {"inventory": str(farm.tb.inventory), "api_url": farm.url,
                         "disk_backend": "qcow2", "runtime_dir": str(farm.work / "runtime"),
                         "vars": deploy_vars()},
        }))  # fmt: skip
        self.proc = ServeProcess(farm.db, farm.work / f"{name}.log", farm.listen,
                                 farm.server.port, ["--config", str(conf), "--stages", stages],
                                 env=farm.env)  # fmt: skip

    def start(self) -> Daemon:
        self.proc.start()
        return self

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    def log(self) -> str:
        return self.proc.log_tail(200_000)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def playbook_running(pid: int) -> bool:
    for child in descendants(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ansible-playbook" in cmd:
            return True
    return False


def vm_states(farm: Farm) -> dict[int, tuple[int, int]]:
    with farm.store.transaction() as conn:
        rows = conn.execute(select(schema.vms.c.id, schema.vms.c.state,
                                   schema.vms.c.lcm_state)).all()  # fmt: skip
    return {int(r[0]): (int(r[1]), int(r[2])) for r in rows}


def files_on(farm: Farm) -> dict[str, tuple[list[str], list[str]]]:
    """host -> (lxcloud domains one-*, files in the disks directory)."""
    out = {}
    for h in HOSTS:
        doms = farm.ssh(h, ["virsh", "list", "--all", "--name"]).split()
        files = farm.ssh(h, f"ls -A {DISKS} 2>/dev/null || true").split()
        out[h] = ([d for d in doms if d.startswith("one-")], files)
    return out


def assert_accounted_for(farm: Farm) -> None:
    """Each live VM: one domain, on its host, its disks there; no other domain, disk or lease."""
    with farm.store.transaction() as conn:
        live = {
            int(r.id): str(r.name)
            for r in conn.execute(
                select(schema.vms.c.id, schema.hosts.c.name)
                .join(schema.hosts, schema.hosts.c.id == schema.vms.c.host_id)
                .where(schema.vms.c.state == VMState.ACTIVE)
            ).all()
        }
        held = {int(r.vm_id): str(r.host) for r in conn.execute(
            select(schema.leases.c.vm_id, schema.leases.c.host)
            .where(schema.leases.c.vm_id.is_not(None))).all()}  # fmt: skip
        used = conn.execute(select(func.count()).select_from(schema.leases)
                            .where(schema.leases.c.state == "used")).scalar_one()  # fmt: skip
    seen = files_on(farm)
    for h, (doms, files) in seen.items():
        mine = {i for i, host in live.items() if host == h}
        assert sorted(doms) == sorted(f"one-{i}" for i in mine), (h, doms, live)
        owners = {int(f.split(".")[0].removeprefix("one-")) for f in files if f.startswith("one-")}
        assert owners == mine, f"{h}: disks of VMs {sorted(owners - mine)} are orphans: {files}"
    assert held == live, f"leases {held} vs live VMs {live}"
    assert used == len(live)


def decisions_per_vm(farm: Farm, action: str) -> dict[int, int]:
    with farm.store.transaction() as conn:
        rows = conn.execute(
            select(schema.decisions.c.vm_id, func.count())
            .where(schema.decisions.c.action == action)
            .group_by(schema.decisions.c.vm_id)
        ).all()
    return {int(r[0]): int(r[1]) for r in rows}


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def dfarm(
    request: pytest.FixtureRequest, testbed_factory: Callable[[int], Testbed], tmp_path: Path
) -> Iterator[Farm]:
    db = str(request.getfixturevalue(f"{request.param}_url"))
    with farm_on_testbed(testbed_factory(len(HOSTS)), tmp_path, VM_IDS, db) as farm:
        prepare(farm, LEASES, HOSTS)
        yield farm


def test_daemon_survives_sigkill_mid_rollout_and_sigterm_finishes_the_job(dfarm: Farm) -> None:
    farm, figures = dfarm, {}
    first = 2 * PER_HOST - 2
    for i in range(first):
        farm.call("one.vm.allocate", TPL.format(name=f"d{i + 1}"), False)
    farm.server.stop()  # the daemons serve the API from here on, on the same address
    daemon = Daemon(farm, "daemon-1", "api,monitor,scheduler,executor").start()
    killed_at: dict[int, tuple[int, int]] = {}
    try:
        t0 = time.monotonic()

        # -- wait until the deploy run has touched a host, then kill everything at once
        def disks_made() -> bool:
            return playbook_running(daemon.pid) and any(
                files for _doms, files in files_on(farm).values()
            )

        wait_for("a deploy run under way", disks_made, 120, step=0.2)
        procs = [daemon.pid, *descendants(daemon.pid)]
        for pid in procs:
            os.kill(pid, signal.SIGKILL)
        daemon.proc.stop()
        figures["killed_after_s"] = time.monotonic() - t0
        killed_at = vm_states(farm)
    finally:
        daemon.proc.stop()
    prolog = [i for i, s in killed_at.items() if s == (VMState.ACTIVE, LCMState.PROLOG)]
    assert prolog, f"the kill came too late to be mid-rollout: {killed_at}"

    # -- started again, it finishes the rollout: every VM RUNNING, nothing doubled or leaked
    daemon = Daemon(farm, "daemon-2", "api,monitor,scheduler,executor").start()
    try:
        t0 = time.monotonic()
        wait_for(f"{first} VMs RUNNING", lambda: sorted(vm_states(farm).values()) == [
            (VMState.ACTIVE, LCMState.RUNNING)] * first, 240)  # fmt: skip
        figures["restart_to_all_running_s"] = time.monotonic() - t0
        assert_accounted_for(farm)
        assert decisions_per_vm(farm, "placed") == dict.fromkeys(range(1, first + 1), 1)
        assert decisions_per_vm(farm, "deployed") == dict.fromkeys(range(1, first + 1), 1)

        # -- nothing in flight: SIGTERM stops it at once
        t0 = time.monotonic()
        daemon.proc.stop(timeout=30)
        assert daemon.proc.proc is not None and daemon.proc.proc.returncode == 0
        figures["idle_sigterm_to_exit_s"] = time.monotonic() - t0
    finally:
        daemon.proc.stop()

    # -- two more VMs placed by a daemon without an executor (several processes, one DB) ...
    daemon = Daemon(farm, "daemon-3", "api,scheduler").start()
    try:
        new = [int(farm.call("one.vm.allocate", TPL.format(name=f"d{i + 1}"), False))
               for i in range(first, 2 * PER_HOST)]  # fmt: skip
        wait_for("the new VMs placed", lambda: [vm_states(farm)[i] for i in new] == [
            (VMState.ACTIVE, LCMState.PROLOG)] * len(new), 30)  # fmt: skip
    finally:
        daemon.proc.stop()
    # -- ... deployed by the next one, which gets SIGTERM during the run: the run finishes
    daemon = Daemon(farm, "daemon-4", "api,monitor,scheduler,executor").start()
    try:
        wait_for("the deploy run", lambda: playbook_running(daemon.pid), 60, step=0.1)
        proc = daemon.proc.proc
        assert proc is not None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(150) == 0, daemon.log()[-3000:]
        figures["busy_sigterm_to_exit_s"] = time.monotonic() - t0
        states = vm_states(farm)
        assert [states[i] for i in new] == [(VMState.ACTIVE, LCMState.RUNNING)] * len(new), (
            daemon.log()[-3000:]
        )
        assert "still busy" not in daemon.log()
        assert_accounted_for(farm)
    finally:
        daemon.proc.stop()

    # -- terminated VMs: the daemon destroys them; hosts and leases back to empty
    for i in VM_IDS:
        farm.lxcloud("vm", "terminate", str(i))
    daemon = Daemon(farm, "daemon-5", "api,scheduler,executor").start()
    try:
        wait_for("every VM DONE", lambda: all(
            s == VMState.DONE for s, _lcm in vm_states(farm).values()), 120)  # fmt: skip
        assert_accounted_for(farm)
        assert all(doms == [] for doms, _files in files_on(farm).values())
        assert decisions_per_vm(farm, "destroyed") == dict.fromkeys(VM_IDS, 1)
    finally:
        daemon.proc.stop()
    print(
        f"\ndaemon figures ({farm.store.backend}): "
        f"{json.dumps({k: round(v, 1) for k, v in figures.items()})}"
    )


def pool_vms(farm: Farm) -> dict[int, tuple[int, int]]:
    with farm.store.transaction() as conn:
        rows = conn.execute(
            select(schema.vms.c.id, schema.vms.c.state, schema.vms.c.lcm_state)
            .join(schema.pools, schema.pools.c.id == schema.vms.c.pool_id)
            .where(schema.pools.c.name == "batch")
        ).all()
    return {int(r[0]): (int(r[1]), int(r[2])) for r in rows}


def running_domains(farm: Farm) -> set[str]:
    out = set()
    for h in HOSTS:
        out |= {d for d in farm.ssh(h, ["virsh", "list", "--name"]).split() if d.startswith("one-")}
    return out


@pytest.mark.parametrize("dfarm", ["sqlite"], indirect=True)
def test_serve_converges_a_pool_with_no_other_command(dfarm: Farm) -> None:
    """The issue's "done when": `lxcloud serve` (all stages) and `lxcloud pool set` only."""
    farm, figures = dfarm, {}
    running = (VMState.ACTIVE, LCMState.RUNNING)
    farm.server.stop()
    daemon = Daemon(farm, "daemon", "api,monitor,scheduler,executor,pools").start()
    tpl = farm.work / "batch.tpl"
    tpl.write_text(  # no NAME, no LIFETIME: the pool sets them
        f'CPU = 0.25\nVCPU = 1\nMEMORY = 192\nDISK = [ IMAGE = "{IMAGE}" ]\n'
        'CONTEXT = [ DRAIN_CHECK_INTERVAL = "1" ]\n'
    )
    try:
        t0 = time.monotonic()
        farm.lxcloud(
            "pool", "set", "batch", "--template", tpl, "--count", "3", "--lifetime", "3600"
        )

        def converged(n: int) -> bool:
            vms = pool_vms(farm)
            live = {i for i, s in vms.items() if s[0] != VMState.DONE}
            return (len(live) == n and all(vms[i] == running for i in live)
                    and running_domains(farm) == {f"one-{i}" for i in live})  # fmt: skip

        wait_for("3 RUNNING VMs with running domains", lambda: converged(3), 240, step=1)
        figures["pool_set_3_to_running_s"] = time.monotonic() - t0
        assert len(pool_vms(farm)) == 3
        assert_accounted_for(farm)
        status = json.loads(farm.lxcloud("status", "--json").stdout)
        (batch,) = status["pools"]
        assert (batch["target"], batch["active"], batch["pending"]) == (3, 3, 0)
        assert {d["action"] for d in status["decisions"]} >= {"refilled", "placed", "deployed"}

        # -- lowering to 1: the two newest end themselves (drain), none is created
        t0 = time.monotonic()
        farm.lxcloud("pool", "set", "batch", "--count", "1")
        wait_for("1 VM left", lambda: converged(1), 180, step=1)
        figures["pool_set_1_drained_s"] = time.monotonic() - t0
        vms = pool_vms(farm)
        assert len(vms) == 3, vms  # none created
        assert [i for i, s in vms.items() if s == running] == [min(vms)]  # the oldest stays
        assert_accounted_for(farm)

        # -- raising to 4: exactly 3 more
        t0 = time.monotonic()
        farm.lxcloud("pool", "set", "batch", "--count", "4")
        wait_for("4 RUNNING VMs", lambda: converged(4), 240, step=1)
        figures["pool_set_4_to_running_s"] = time.monotonic() - t0
        time.sleep(3)  # a few more cycles: still exactly 3 more
        assert len(pool_vms(farm)) == 6
        assert_accounted_for(farm)
        print(farm.lxcloud("status").stdout)

        # -- down to 0, hard: every VM terminated and cleaned up
        farm.lxcloud("pool", "set", "batch", "--count", "0", "--hard")
        wait_for("pool empty", lambda: converged(0), 120, step=1)
        assert_accounted_for(farm)
    finally:
        daemon.proc.stop()
    print(f"\npool figures: {json.dumps({k: round(v, 1) for k, v in figures.items()})}")
