"""A reconcile cycle against a real database (both backends via the ``store`` fixture) with a
scripted stand-in for the observe and destroy playbook runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from test_executor import ScriptedRun, executor, farm, request, vm

from lxcloud_py import leases
from lxcloud_py.model import LCMState, VMState
from lxcloud_py.reconcile.engine import Reconciler
from lxcloud_py.reconcile.model import ReconcileSettings
from lxcloud_py.runner import RunResult
from lxcloud_py.store import Store


class Hosts:
    """Stands in for the runner: vm_observe.yml reports ``domains``/``files`` per host (a host
    missing from them is unreachable); vm_destroy.yml removes what it is given."""

    def __init__(self, domains: dict[str, dict[str, str]], files: dict[str, dict[str, float]]
                 | None = None) -> None:
        self.domains = domains
        self.files = files or {}
        self.destroyed: list[dict[str, Any]] = []

    def cancel(self) -> None:
        pass

    def run(self, playbook: str, variables: dict, unsafe: Any, on_event: Any,
            limit: Any = None) -> RunResult:
        for host in sorted(limit or ()):
            if playbook == "lxcloud.cloud.vm_observe":
                if host not in self.domains:
                    on_event({"event": "runner_on_unreachable",
                              "event_data": {"host": host, "task": "Domains", "res": {}}})
                    continue
                facts = {"lxcloud_observation": {"domains": self.domains[host],
                                                 "files": self.files.get(host, {})}}
                on_event({"event": "runner_on_ok", "event_data": {
                    "host": host, "task": "LXCloud observation", "res": {"ansible_facts": facts}}})
            else:
                for item in unsafe["lxcloud_vms"]:
                    if item["host"] == host:
                        self.destroyed.append(item)
                        self.domains.get(host, {}).pop(item["name"], None)
                        on_event({"event": "runner_item_on_ok", "event_data": {
                            "host": host, "task": "VM result",
                            "res": {"_ansible_item_label": item["name"]}}})
        return RunResult("successful", 0, 0.1)


def test_cycle_vanished_stray_orphan_and_lease(store: Store, tmp_path: Path) -> None:
    f = farm(store, tmp_path)
    a, b = request(store, f, 2)
    executor(store, ScriptedRun()).deploy([a, b])
    ha, hb = vm(store, a)["host"]["name"], vm(store, b)["host"]["name"]
    old = time.time() - 3600
    domains = {"hv1": {}, "hv2": {}}
    domains[hb][f"one-{b}"] = "running"
    domains[ha]["one-999"] = "running"  # a stray named like ours
    domains[ha]["someone-else"] = "running"
    files = {ha: {"one-998.qcow2": old, "one-998.context.iso": old, f"one-{a}.qcow2": old}}
    hosts = Hosts(domains, files)
    cfg = ReconcileSettings(grace=0.05, orphan_grace=60, destroy_strays=True)
    rec = Reconciler(store, hosts, cfg)  # type: ignore[arg-type]

    plan = {(d.action.rule, d.action.vm_id): d for d in rec.run_once(dry_run=True)}
    assert set(plan) == {("domain_vanished", a), ("stray_domain", 999), ("orphan_files", 998)}
    assert vm(store, a)["lcm_state"] == LCMState.RUNNING and hosts.destroyed == []  # dry run

    done = rec.run_once()
    assert all(d.result == "applied" for d in done), done
    assert vm(store, a)["lcm_state"] == LCMState.UNKNOWN
    assert vm(store, b)["lcm_state"] == LCMState.RUNNING
    assert sorted(i["name"] for i in hosts.destroyed) == ["one-998", "one-999"]
    assert {"name": "one-998", "host": ha, "disk": "qcow2"} in hosts.destroyed
    assert "someone-else" in domains[ha]

    time.sleep(0.1)  # past the grace: FAILED, lease freed
    hosts.files = {}
    done = rec.run_once()
    assert [(d.action.rule, d.action.transition, d.result) for d in done] == [
        ("domain_vanished", "failed", "applied")]
    v = vm(store, a)
    assert v["state"] == VMState.FAILED and v["ended"] and "missing" in v["sched_message"]
    with store.transaction() as conn:
        assert leases.lease_of_vm(conn, a) is None
    assert rec.run_once() == []  # converged


def test_unreachable_host_vms_left_alone(store: Store, tmp_path: Path) -> None:
    f = farm(store, tmp_path)
    ids = request(store, f, 2)
    executor(store, ScriptedRun()).deploy(ids)
    rec = Reconciler(store, Hosts({}), ReconcileSettings())  # type: ignore[arg-type]
    assert rec.run_once() == []
    assert all(vm(store, i)["lcm_state"] == LCMState.RUNNING for i in ids)


def test_cli_dry_run_table_and_stage_decisions(
    store: Store, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    from lxcloud_py.cli import main
    from lxcloud_py.config import effective, load_config
    from lxcloud_py.daemon.core import StageContext
    from lxcloud_py.daemon.reconciler import ReconcilerStage
    from lxcloud_py.store import schema

    monkeypatch.delenv("LXCLOUD_CONFIG", raising=False)
    monkeypatch.delenv("LXCLOUD_INVENTORY", raising=False)
    f = farm(store, tmp_path)
    (a,) = request(store, f, 1)
    executor(store, ScriptedRun()).deploy([a])
    from sqlalchemy import update
    with store.transaction() as conn:  # its lifetime ended long ago and it did not end itself
        conn.execute(update(schema.vms).where(schema.vms.c.id == a).values(deadline=1.0))
    url = store.engine.url.render_as_string(hide_password=False)
    assert main(["--db", url, "reconcile", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "lifetime" in out and "terminate" in out and "planned" in out
    assert vm(store, a)["lcm_state"] == LCMState.RUNNING
    assert main(["--db", url, "reconcile", "--lifetime-grace", "nope"]) == 1
    assert "reconcile.lifetime_grace" in capsys.readouterr().err

    stage = ReconcilerStage(StageContext(store, effective(load_config(None), {}, {})))
    stage.cycle()
    assert vm(store, a)["lcm_state"] == LCMState.SHUTDOWN
    with store.transaction() as conn:
        rows = conn.execute(schema.decisions.select()).all()
    assert [(r.stage, r.action, r.vm_id, r.ok) for r in rows] == [
        ("reconciler", "lifetime applied", a, True)]
