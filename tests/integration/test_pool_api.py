"""Pools against the real control plane: ``lxcloud serve`` on a temporary SQLite DB.

* The Ansible module ``lxcloud.cloud.pool`` in a playbook: check mode, real run, check mode
  again and a second real run, which must report no change (the idempotence test of the
  collection's best practice); then a change that check mode predicts.
* A VM of a pool ends itself through ``lxcloud.vm.exit`` with its own token, with the golden
  node's callback (exit code from the context), and the code shows in ``one.vm.info``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxcloud_py import pools
from lxcloud_py.api.launcher import ServeProcess
from lxcloud_py.store import Store

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CALLBACK = REPO / "roles" / "golden_node" / "files" / "lxcloud-callback"
PASSWORD = "test-admin-pw"
ADMIN = f"oneadmin:{PASSWORD}"

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  vars:
    api: &api
      api_url: "{url}"
      api_session: "{session}"
      api_config: /nonexistent
  tasks:
    - name: check mode predicts the creation
      lxcloud.cloud.pool: &batch
        <<: *api
        name: batch
        image: golden
        memory: 128
        target: {target}
        lifetime: 600
      check_mode: true
      register: check1
    - name: create
      lxcloud.cloud.pool: *batch
      register: real1
    - name: check mode again
      lxcloud.cloud.pool: *batch
      check_mode: true
      register: check2
    - name: second run
      lxcloud.cloud.pool: *batch
      register: real2
    - name: report
      ansible.builtin.copy:
        dest: "{out}"
        content: "{{{{ [check1, real1, check2, real2] | to_json }}}}"
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServeProcess, dict[str, str]]]:
    env = dict(os.environ, LXCLOUD_DB=f"sqlite:///{tmp_path / 'lxcloud.db'}")
    env.pop("LXCLOUD_CONFIG", None)
    subprocess.run(
        [BIN / "lxcloud", "db", "init", "--admin-password", PASSWORD],
        env=env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server = ServeProcess(env["LXCLOUD_DB"], tmp_path / "serve.log", env=env).start()
    try:
        yield server, env
    finally:
        server.stop()


def run_playbook(tmp_path: Path, url: str, target: int) -> list[dict]:
    out = tmp_path / f"results-{target}.json"
    book = tmp_path / f"pool-{target}.yml"
    book.write_text(PLAYBOOK.format(url=url, session=ADMIN, target=target, out=out))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        [BIN / "ansible-playbook", "-i", "localhost,", "-c", "local", str(book)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return list(json.loads(out.read_text()))


def test_module_is_idempotent_against_lxcloud_serve(served, tmp_path: Path) -> None:
    server, env = served
    check1, real1, check2, real2 = run_playbook(tmp_path, server.url, 3)
    assert (check1["changed"], check1["action"]) == (True, "created")
    assert (real1["changed"], real1["action"]) == (True, "created")
    assert check1["after"] == real1["after"]  # check mode predicted the real run
    assert check2["changed"] is False
    assert (real2["changed"], real2["action"]) == (False, "none")
    # a change: predicted by check mode, made once, then stable
    check1, real1, check2, real2 = run_playbook(tmp_path, server.url, 1)
    assert check1["changes"] == real1["changes"] == ["target 3 -> 1"]
    assert (check2["changed"], real2["changed"]) == (False, False)
    store = Store(env["LXCLOUD_DB"])
    try:
        with store.transaction() as conn:
            spec = pools.get_spec(conn, "batch")
    finally:
        store.dispose()
    assert (spec.target, spec.lifetime) == (1, 600)


def test_pool_vm_ends_itself_with_its_exit_code(served, tmp_path: Path) -> None:
    server, env = served
    with xmlrpc.client.ServerProxy(server.url) as api:  # keep-alive: closed after
        _pool_vm_exit(api, server, env, tmp_path)


def _pool_vm_exit(api: xmlrpc.client.ServerProxy, server, env, tmp_path: Path) -> None:
    template = 'MEMORY = 64\nCONTEXT = [ VM_EXIT_CODE = "300", VM_EXIT_MESSAGE = "queue empty" ]\n'
    ok, pid, _ = api.lxcloud.pool.allocate(ADMIN, {"name": "b", "template": template,
                                                    "target": 1, "lifetime": 5})[:3]
    assert ok, pid
    store = Store(env["LXCLOUD_DB"])
    try:
        (refill,) = pools.PoolManager(store).cycle()
    finally:
        store.dispose()
    vm_id = refill.vm_id
    ok, token, _ = api.lxcloud.vm.token(ADMIN, vm_id)[:3]
    assert ok, token
    # the callback reads VM_EXIT_CODE from its context, as the executor writes it
    ctx = tmp_path / "context.sh"
    ctx.write_text(f"VMID='{vm_id}'\nLIFETIME='5'\nLXCLOUD_TOKEN='{token}'\n"
                   f"LXCLOUD_API='{server.url}'\nVM_EXIT_CODE='300'\n"
                   "VM_EXIT_MESSAGE='queue empty'\n")
    uptime = tmp_path / "uptime"
    uptime.write_text("6.0 1.0\n")
    proc = subprocess.run(
        ["/usr/bin/python3", str(CALLBACK), "--context", str(ctx), "--uptime-file", str(uptime),
         "--lock-file", str(tmp_path / "lock"), "--state-file", str(tmp_path / "state"),
         "--busy-file", "", "--batch-user", "lxcloud-no-such-user",
         "--shutdown-message-file", ""],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ok, doc, _ = api.one.vm.info(ADMIN, vm_id)[:3]
    user = ET.fromstring(doc).find("USER_TEMPLATE")  # noqa: S314 - our own server
    assert user is not None
    assert user.findtext("LXCLOUD_EXIT_CODE") == "300"
    assert user.findtext("LXCLOUD_EXIT_MESSAGE") == "queue empty"
    assert user.findtext("POOL") == "b"
    # the VM has ended: its token died with it (and never could end another VM)
    ok, _msg, code = api.lxcloud.vm.exit(f"vm-{vm_id}:{token}", vm_id + 1, 100, "")[:3]
    assert not ok and code == 0x0100
