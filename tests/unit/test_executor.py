"""The executor's state machine on both backends, with a scripted stand-in for the playbook run
(the batch it builds from the database, how runner events map to VM states, tokens, leases),
and its config and CLI helpers. ``test_executor_runner.py`` runs the real ansible-runner."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from lxcloud_py import auth, hosts, images, leases, users, vms
from lxcloud_py.cli.deploy import format_outcomes, parse_extra_vars
from lxcloud_py.config import load_config
from lxcloud_py.executor import Executor, ExecutorConfig
from lxcloud_py.model import InvalidInput, LCMState, LeaseState, VMState
from lxcloud_py.runner import RunResult
from lxcloud_py.scheduler import Scheduler
from lxcloud_py.store import Store, schema

SHA = "ab" * 32
API = "http://10.0.0.1:2633/RPC2"
STEPS = ("Clone the golden image", "Write the context disk", "Define and start the VM")
DESTROY_STEPS = ("Remove the domain with its clone and context", "Remove the clone",
                 "Remove the context disk")


class ScriptedRun:
    """Stands in for PlaybookRunner: emits the events ansible-runner emits for vm_deploy.yml /
    vm_destroy.yml (per-item ok/failed for each step, then the per-VM result task), following
    ``script``: domain -> None (ok) | (failing step, msg); host -> "unreachable"."""

    def __init__(self, script: dict[str, Any] | None = None, status: str = "successful",
                 during: Any = None) -> None:
        self.script = script or {}
        self.status = status
        self.during = during
        self.calls: list[dict[str, Any]] = []

    def cancel(self) -> None:
        pass

    def run(self, playbook: str, variables: dict, unsafe_variables: dict, on_event: Any,
            limit: Any = None) -> RunResult:
        items = unsafe_variables["lxcloud_vms"]
        self.calls.append({"playbook": playbook, "vars": variables, "items": items,
                           "secrets": unsafe_variables.get("lxcloud_vm_secrets"),
                           "limit": set(limit or ())})
        if self.during:
            self.during()
        steps = STEPS if playbook == "lxcloud.cloud.vm_deploy" else DESTROY_STEPS
        for host in sorted({i["host"] for i in items}):
            mine = [i for i in items if i["host"] == host]
            if self.script.get(host) == "unreachable":
                on_event({"event": "runner_on_unreachable",
                          "event_data": {"host": host, "task": steps[0],
                                         "res": {"msg": "ssh: connect timed out"}}})
                continue
            failed: dict[str, str] = {}
            for step in steps:
                for item in mine:
                    name = item["name"]
                    if name in failed:
                        continue
                    plan = self.script.get(name)
                    bad = plan is not None and plan[0] == step
                    if bad:
                        failed[name] = plan[1]
                    on_event({"event": "runner_item_on_failed" if bad else "runner_item_on_ok",
                              "event_data": {"host": host, "task": step,
                                             "res": {"_ansible_item_label": name,
                                                     "changed": True, "vm": item,
                                                     **({"msg": plan[1]} if bad else {})}}})
            for item in mine:
                name = item["name"]
                bad = name in failed
                on_event({"event": "runner_item_on_failed" if bad else "runner_item_on_ok",
                          "event_data": {"host": host, "task": "VM result",
                                         "res": {"_ansible_item_label": name, "vm": item,
                                                 "msg": f"{name} failed: {failed[name]}" if bad
                                                 else f"{name} running"}}})
        return RunResult(self.status, 0 if self.status == "successful" else 2, 0.1)


def farm(store: Store, tmp_path: Path, per_host: int = 2) -> dict[str, Any]:
    """Hosts hv1, hv2 registered with the image verified, leases pinned to them."""
    users.ensure_admin(store, "pw")
    img = images.register(store, "golden", "7", SHA, 1 << 20, "raw", "zstd")
    rows = ["ip,mac,name,host"]
    for h in (1, 2):
        for n in range(per_host):
            rows.append(f"10.9.{h}.{10 + n},52:54:00:09:{h:02x}:{10 + n:02x},wn{h}{n}.test,hv{h}")
        hosts.register(store, f"hv{h}", 8, 16384, 100000, [])
        hosts.report_image(store, f"hv{h}", "golden", "7", SHA, "verified")
    (tmp_path / "leases.csv").write_text("\n".join(rows) + "\n")
    leases.import_leases(store, tmp_path / "leases.csv")
    return {"image_id": img, "owner": users.user_id(store)}


TPL = ('NAME = "{name}"\nCPU = 1\nMEMORY = 256\nDISK = [ IMAGE = "golden" ]\n'
       'LIFETIME = 60\nCONTEXT = [ QUEUE = "grid", ETH0_IP = "6.6.6.6", VMID = "99" ]\n')


def request(store: Store, f: dict[str, Any], n: int, tpl: str = TPL) -> list[int]:
    """n VMs placed. Allocation refuses managed CONTEXT keys (ETH0_IP, VMID) since they came
    in; TPL's are written into the rows afterwards, as a VM allocated before that would hold
    them, so the executor's own refusal to pass them on is still tested."""
    clean = re.sub(r", (ETH0_IP|VMID) = \"[^\"]*\"", "", tpl)
    ids = [vms.allocate(store, clean.format(name=f"batch-{i}"), f["owner"])[0] for i in range(n)]
    with store.transaction() as conn:
        for i, vm_id in enumerate(ids):
            conn.execute(update(schema.vms).where(schema.vms.c.id == vm_id)
                         .values(template=tpl.format(name=f"batch-{i}")))
    Scheduler(store).run_cycle()
    return ids


def vm(store: Store, vm_id: int) -> dict[str, Any]:
    with store.transaction() as conn:
        return vms.get(conn, vm_id)


def executor(store: Store, run: ScriptedRun, **cfg: Any) -> Executor:
    cfg.setdefault("api_url", API)
    return Executor(store, ExecutorConfig(**cfg), runner=run)  # type: ignore[arg-type]


def test_deploy_builds_one_batch_from_the_database(store: Store, tmp_path: Path) -> None:
    f = farm(store, tmp_path)
    ids = request(store, f, 3)
    old_hash = {i: vm(store, i)["token_hash"] for i in ids}
    run = ScriptedRun()
    out = executor(store, run, disk_backend="qcow2", vars={"lxcloud_vm_network": "user"}).deploy(
        ids)
    assert len(run.calls) == 1, "one playbook run for the whole batch"
    call = run.calls[0]
    assert call["playbook"] == "lxcloud.cloud.vm_deploy"
    assert call["vars"] == {"lxcloud_vm_network": "user"}
    items = {i["name"]: i for i in call["items"]}
    assert set(items) == {f"one-{i}" for i in ids}
    assert call["limit"] == {i["host"] for i in items.values()}
    assert [i["host"] for i in call["items"]] == sorted(i["host"] for i in call["items"])
    for i in ids:
        v, item = vm(store, i), items[f"one-{i}"]
        assert item["host"] == v["host"]["name"]
        assert item["image"] == "golden-7.raw" and item["image_format"] == "raw"
        assert item["lease"] == {k: v["lease"][k] for k in ("ip", "mac", "name")}
        assert (item["vcpus"], item["memory_mb"], item["lifetime"], item["disk"]) == (
            1, 256, 60, "qcow2")
        ctx = item["context"]
        assert ctx["LXCLOUD_API"] == API and ctx["VMID"] == str(i) and ctx["QUEUE"] == "grid"
        assert "ETH0_IP" not in ctx, "the template must not override the lease's address"
        # a fresh token per deploy, passed apart from the item (a failed item is printed
        # whole): it is the VM's token now, the old one no longer
        assert "LXCLOUD_TOKEN" not in ctx and "token" not in str(item).lower()
        token = call["secrets"][f"one-{i}"]["LXCLOUD_TOKEN"]
        assert auth.verify_token(token, v["token_hash"])
        assert v["token_hash"] != old_hash[i]
        assert (v["state"], v["lcm_state"]) == (VMState.ACTIVE, LCMState.RUNNING)
        assert v["started"] and v["deadline"] == pytest.approx(v["started"] + 60)
    assert [o.result for o in out] == ["RUNNING"] * 3
    assert all(o.ok and o.action == "deploy" for o in out)
    assert set(call["secrets"]) == set(items)
    tokens = [s["LXCLOUD_TOKEN"] for s in call["secrets"].values()]
    assert not any(t in format_outcomes(out) for t in tokens)
    # nothing left in PROLOG: the next pass runs nothing
    assert executor(store, run).reconcile_once() == [] and len(run.calls) == 1


def test_failures_map_to_prolog_and_boot_failure(store: Store, tmp_path: Path) -> None:
    f = farm(store, tmp_path)
    a, b, c = request(store, f, 3)
    run = ScriptedRun({f"one-{b}": ("Clone the golden image", "base image does not exist"),
                       f"one-{c}": ("Define and start the VM", "qemu: could not open disk")})
    out = {o.vm_id: o for o in executor(store, run).deploy([a, b, c])}
    assert out[a].result == "RUNNING"
    assert out[b].result == "PROLOG_FAILURE" and "base image does not exist" in out[b].message
    assert out[c].result == "BOOT_FAILURE" and "could not open disk" in out[c].message
    assert vm(store, b)["lcm_state"] == LCMState.PROLOG_FAILURE
    assert vm(store, c)["lcm_state"] == LCMState.BOOT_FAILURE
    assert vm(store, c)["sched_message"] == "BOOT_FAILURE: qemu: could not open disk"
    with store.transaction() as conn:
        hist = conn.execute(
            select(schema.history.c.old_state, schema.history.c.new_state,
                   schema.history.c.message)
            .where(schema.history.c.kind == "vm", schema.history.c.object_id == c)
            .order_by(schema.history.c.id)
        ).all()
    assert hist[-1] == ("ACTIVE/PROLOG", "ACTIVE/BOOT_FAILURE", "qemu: could not open disk")
    # the failed VMs keep their leases until terminated; terminate -> SHUTDOWN -> destroy
    for i in (b, c):
        vms.action(store, i, "terminate")
    out2 = executor(store, run).reconcile_once()
    assert {o.vm_id: o.result for o in out2} == {b: "DONE", c: "DONE"}
    with store.transaction() as conn:
        assert leases.lease_of_vm(conn, b) is None and leases.lease_of_vm(conn, c) is None


def test_unreachable_host_fails_its_vms_only(store: Store, tmp_path: Path) -> None:
    f = farm(store, tmp_path, per_host=1)
    ids = request(store, f, 2)
    on = {vm(store, i)["host"]["name"]: i for i in ids}
    out = {o.vm_id: o for o in executor(store, ScriptedRun({"hv2": "unreachable"})).deploy(ids)}
    assert out[on["hv1"]].result == "RUNNING"
    assert out[on["hv2"]].result == "PROLOG_FAILURE"
    assert "unreachable" in out[on["hv2"]].message


def test_vm_without_result_fails_with_the_reason(store: Store, tmp_path: Path) -> None:
    f = farm(store, tmp_path, per_host=1)
    ids = request(store, f, 1)

    class Silent(ScriptedRun):
        def run(self, playbook, variables, unsafe_variables, on_event, limit=None):
            return RunResult("failed", 4, 0.2, "PLAY RECAP\nERROR! no hosts matched\n")

    out = executor(store, Silent()).deploy(ids)
    assert out[0].result == "PROLOG_FAILURE"
    assert "no result from host" in out[0].message and "no hosts matched" in out[0].message


def test_canceled_run_leaves_vms_for_the_next_pass(store: Store, tmp_path: Path) -> None:
    f = farm(store, tmp_path, per_host=1)
    ids = request(store, f, 1)

    class Canceled(ScriptedRun):
        def run(self, playbook, variables, unsafe_variables, on_event, limit=None):
            return RunResult("canceled", None, 0.2)

    out = executor(store, Canceled()).deploy(ids)
    assert out[0].result == "unchanged"
    assert vm(store, ids[0])["lcm_state"] == LCMState.PROLOG


def test_vm_terminated_while_deploying_is_destroyed_next_pass(
    store: Store, tmp_path: Path
) -> None:
    f = farm(store, tmp_path, per_host=1)
    (i,) = request(store, f, 1)
    run = ScriptedRun(during=lambda: vms.action(store, i, "terminate"))
    out = executor(store, run).deploy([i])
    assert out[0].result == "unchanged"
    assert vm(store, i)["lcm_state"] == LCMState.SHUTDOWN
    out = executor(store, ScriptedRun()).reconcile_once()
    assert [(o.vm_id, o.action, o.result) for o in out] == [(i, "destroy", "DONE")]


def test_destroy_done_and_lease_free_or_epilog_failure(store: Store, tmp_path: Path) -> None:
    f = farm(store, tmp_path)
    a, b = request(store, f, 2)
    executor(store, ScriptedRun()).deploy([a, b])
    for i in (a, b):
        vms.action(store, i, "terminate")
    run = ScriptedRun({f"one-{b}": ("Remove the clone", "rm: Device or resource busy")},
                      )
    out = {o.vm_id: o for o in executor(store, run, disk_backend="lvm").destroy([a, b])}
    assert run.calls[0]["playbook"] == "lxcloud.cloud.vm_destroy"
    assert {i["name"]: i for i in run.calls[0]["items"]}[f"one-{a}"] == {
        "name": f"one-{a}", "host": vm(store, a)["host"]["name"], "disk": "lvm"}
    assert out[a].result == "DONE" and vm(store, a)["state"] == VMState.DONE
    assert vm(store, a)["ended"]
    with store.transaction() as conn:
        lease = conn.execute(select(schema.leases).where(schema.leases.c.vm_id == a)).first()
        assert lease is None
        assert leases.lease_of_vm(conn, b) is not None
    assert out[b].result == "EPILOG_FAILURE" and "busy" in out[b].message
    assert vm(store, b)["lcm_state"] == LCMState.EPILOG_FAILURE
    # terminate again retries the destroy
    vms.action(store, b, "terminate")
    assert executor(store, ScriptedRun()).reconcile_once()[0].result == "DONE"
    with store.transaction() as conn:
        assert all(x["state"] == LeaseState.FREE for x in leases.list_leases(conn))


def test_reconcile_destroys_before_deploying(store: Store, tmp_path: Path) -> None:
    f = farm(store, tmp_path, per_host=1)
    (a,) = request(store, f, 1)
    executor(store, ScriptedRun()).deploy([a])
    vms.action(store, a, "terminate")
    (b,) = request(store, f, 1)
    run = ScriptedRun()
    out = executor(store, run).reconcile_once()
    assert [c["playbook"] for c in run.calls] == [
        "lxcloud.cloud.vm_destroy", "lxcloud.cloud.vm_deploy"]
    assert [(o.vm_id, o.result) for o in out] == [(a, "DONE"), (b, "RUNNING")]


def test_bad_vm_fails_before_the_run(store: Store, tmp_path: Path) -> None:
    f = farm(store, tmp_path, per_host=1)
    bad_ctx = request(store, f, 1, TPL.replace('"grid"', '"{{ lookup(\'pipe\', \'id\') }}"'))[0]
    no_image = request(store, f, 1)[0]
    # placed while the image was verified there; then the host lost it
    hosts.report_image(store, vm(store, no_image)["host"]["name"], "golden", "7", SHA, "failed")
    run = ScriptedRun()
    out = {o.vm_id: o for o in executor(store, run).deploy([bad_ctx, no_image])}
    assert out[bad_ctx].result == "PROLOG_FAILURE"
    assert "template delimiter" in out[bad_ctx].message
    assert out[no_image].result == "PROLOG_FAILURE" and "not verified" in out[no_image].message
    assert run.calls == [], "nothing runnable: no playbook run"


def test_deploy_needs_an_api_url(store: Store, tmp_path: Path) -> None:
    f = farm(store, tmp_path, per_host=1)
    ids = request(store, f, 1)
    with pytest.raises(InvalidInput, match="API URL"):
        Executor(store, ExecutorConfig(), runner=ScriptedRun()).deploy(ids)  # type: ignore
    assert vm(store, ids[0])["lcm_state"] == LCMState.PROLOG


def test_executor_transition_only_from_the_expected_state(store: Store, tmp_path: Path) -> None:
    f = farm(store, tmp_path, per_host=1)
    (i,) = request(store, f, 1)
    assert vms.executor_transition(store, i, "destroyed", "x") is False
    assert vms.executor_transition(store, i, "deployed", "ok") is True
    assert vms.executor_transition(store, i, "deployed", "again") is False


def test_config_section_and_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.yml"
    p.write_text("executor:\n  api_url: http://h:2633/RPC2\n  forks: 7\n"
                 "  disk_backend: reflink\n  vars: {lxcloud_virt_type: qemu}\n")
    cfg = ExecutorConfig.from_config(load_config(p), forks=3, inventory=None)
    assert (cfg.api_url, cfg.forks, cfg.disk_backend, cfg.inventory) == (
        "http://h:2633/RPC2", 3, "reflink", None)
    assert cfg.vars == {"lxcloud_virt_type": "qemu"}
    p.write_text("executor:\n  forcks: 7\n")
    with pytest.raises(InvalidInput, match="forcks"):
        ExecutorConfig.from_config(load_config(p))
    for bad in ({"disk_backend": "zfs"}, {"forks": 0}, {"api_url": "ftp://x"},
                {"vars": {"lxcloud_vms": []}}):
        with pytest.raises(InvalidInput):
            ExecutorConfig(**bad).validate()  # type: ignore[arg-type]


def test_extra_vars(tmp_path: Path) -> None:
    (tmp_path / "v.yml").write_text("a: 1\nb: [x]\n")
    assert parse_extra_vars(["k=v", 'n={"x": 2}', f"@{tmp_path / 'v.yml'}"]) == {
        "k": "v", "n": {"x": 2}, "a": 1, "b": ["x"]}
    for bad in (["novalue"], ["bad key=1"], [f"@{tmp_path / 'missing.yml'}"]):
        with pytest.raises(InvalidInput):
            parse_extra_vars(bad)


def test_cli_deploy_once(sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from lxcloud_py.cli import main

    assert main(["--db", sqlite_url, "db", "init", "--admin-password", "pw"]) == 0
    inv = tmp_path / "inv.ini"
    inv.write_text("[hypervisors]\n")
    capsys.readouterr()
    argv = ["--db", sqlite_url, "deploy", "--once", "-i", str(inv), "--api-url", API,
            "--runtime-dir", str(tmp_path / "rt")]
    assert main(argv) == 0
    assert "pass: 0 VM(s), 0 ok, 0 not" in capsys.readouterr().out
    assert main([*argv[:5], str(tmp_path / "missing.ini")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main([*argv, "-e", "lxcloud_vms=[]"]) == 1
    assert "lxcloud_vms" in capsys.readouterr().err
