"""The inventory plugin lxcloud.cloud.lxcloud against a running API: two hosts registered with
``one.host.allocate`` (one then sends a heartbeat) are listed by ``ansible-inventory --graph``
in the hypervisors group and grouped by state and cluster; keyed_groups and compose apply;
``ansible-doc -t inventory`` shows the plugin's documentation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xmlrpc.client
from pathlib import Path

from lxcloud_py.api.launcher import ServeProcess

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ADMIN = "oneadmin:test-admin-pw"


def plain(value: object) -> object:
    """A value of ``ansible-inventory --list`` (strings may come marked unsafe)."""
    return value.get("__ansible_unsafe") if isinstance(value, dict) else value


def test_inventory_lists_hosts_allocated_through_the_api(tmp_path: Path) -> None:
    env = dict(os.environ, LXCLOUD_DB=f"sqlite:///{tmp_path / 'lxcloud.db'}")
    env.pop("LXCLOUD_CONFIG", None)
    subprocess.run([BIN / "lxcloud", "db", "init", "--admin-password", "test-admin-pw"],
                   env=env, check=True, capture_output=True, timeout=60)
    server = ServeProcess(env["LXCLOUD_DB"], tmp_path / "serve.log", env=env).start()
    try:
        with xmlrpc.client.ServerProxy(server.url) as api:
            for name in ("invh1", "invh2"):
                ok, body, *_ = api.one.host.allocate(ADMIN, name, "lxcloud", "kvm", -1)
                assert ok, body
        conf = tmp_path / "lxcloud.yml"
        conf.write_text(
            "plugin: lxcloud.cloud.lxcloud\n"
            f"api_url: {server.url}\napi_session: {ADMIN}\n"
            "keyed_groups:\n  - key: lxcloud_state\n    prefix: st\n"
            "compose:\n  fqdn: lxcloud_name ~ '.farm.test'\n"
        )
        run_env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
                       PATH=f"{BIN}:{os.environ.get('PATH', '')}")
        graph = subprocess.run([BIN / "ansible-inventory", "-i", str(conf), "--graph"],
                               env=run_env, capture_output=True, text=True, timeout=120)
        assert graph.returncode == 0, graph.stderr
        lines = [ln.strip("|-@: ") for ln in graph.stdout.splitlines()]
        assert "hypervisors" in lines and "lxcloud_cluster_default" in lines
        assert lines.count("invh1") >= 2 and lines.count("invh2") >= 2, graph.stdout
        listing = subprocess.run([BIN / "ansible-inventory", "-i", str(conf), "--list"],
                                 env=run_env, capture_output=True, text=True, timeout=120)
        data = json.loads(listing.stdout)
        hv = data["_meta"]["hostvars"]
        assert plain(hv["invh1"]["fqdn"]) == "invh1.farm.test"
        state = plain(hv["invh1"]["lxcloud_state"])
        assert sorted(data[f"st_{state}"]["hosts"]) == ["invh1", "invh2"]
        assert sorted(data[f"lxcloud_state_{state}"]["hosts"]) == ["invh1", "invh2"]
        bad = tmp_path / "bad" / "lxcloud.yml"
        bad.parent.mkdir()
        bad.write_text(f"plugin: lxcloud.cloud.lxcloud\napi_url: {server.url}\n"
                       "api_session: oneadmin:wrong\n")
        failed = subprocess.run([BIN / "ansible-inventory", "-i", str(bad), "--list"],
                                env=run_env, capture_output=True, text=True, timeout=120)
        assert "lxcloud inventory:" in failed.stderr
    finally:
        server.stop()
    doc = subprocess.run([BIN / "ansible-doc", "-t", "inventory", "lxcloud.cloud.lxcloud"],
                         capture_output=True, text=True, timeout=120)
    assert doc.returncode == 0 and "one.hostpool.info" in doc.stdout, doc.stderr
