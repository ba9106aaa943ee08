"""Registration: change detection, check mode, heartbeat, and the module itself.

The control plane is not reachable in a unit test, so ``ControlPlane`` stands in for it: a real
XML-RPC server on loopback implementing the contract of docs/api.md for the four calls a
hypervisor makes (``lxcloud.host.register``/``heartbeat``, ``lxcloud.lease.list``,
``one.hostpool.info``). The end-to-end test against ``lxcloud serve`` is
tests/integration/test_hypervisors.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape
from xmlrpc.server import SimpleXMLRPCServer

import pytest
from ansible_collections.lxcloud.cloud.plugins.module_utils import host_probe as hp
from ansible_collections.lxcloud.cloud.plugins.module_utils.api_client import ApiClient

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class ControlPlane:
    def __init__(self) -> None:
        self.hosts: dict[str, dict] = {}
        self.calls: list[str] = []
        self.leases: list[dict] = []
        self.srv = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False, allow_none=True)
        for name in ("lxcloud.host.register", "lxcloud.host.heartbeat", "lxcloud.lease.list",
                     "one.hostpool.info"):
            self.srv.register_function(getattr(self, name.replace(".", "_")), name)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/RPC2"
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def _auth(self, session):
        return session == "oneadmin:pw"

    def lxcloud_host_register(self, session, name, capacity, macs, info):
        self.calls.append("register")
        if not self._auth(session):
            return [False, "authentication failed", 0x0100]
        h = self.hosts.setdefault(name, {"id": len(self.hosts)})
        h.update(capacity, macs=sorted(macs), info=info, state=2)
        return [True, h["id"], 0]

    def lxcloud_host_heartbeat(self, session, name, info):
        self.calls.append("heartbeat")
        if name not in self.hosts:
            return [False, f"host {name} not registered", 0x0400]
        self.hosts[name]["state"] = 2
        return [True, self.hosts[name]["id"], 0]

    def lxcloud_lease_list(self, session, host):
        self.calls.append("lease.list")
        return [True, [lease for lease in self.leases if lease["host"] == host], 0]

    def one_hostpool_info(self, session):
        self.calls.append("hostpool.info")
        out = ["<HOST_POOL>"]
        for name, h in self.hosts.items():
            out.append(
                f"<HOST><ID>{h['id']}</ID><NAME>{escape(name)}</NAME><STATE>{h['state']}</STATE>"
                f"<HOST_SHARE><TOTAL_CPU>{round(h['cpu'] * 100)}</TOTAL_CPU>"
                f"<TOTAL_MEM>{h['memory_mb'] * 1024}</TOTAL_MEM>"
                f"<TOTAL_DISK>{h['disk_mb']}</TOTAL_DISK></HOST_SHARE>"
                f"<TEMPLATE><MACS>{' '.join(h['macs'])}</MACS></TEMPLATE></HOST>"
            )
        out.append("</HOST_POOL>")
        return [True, "".join(out), 0]

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()
        self.thread.join()


@pytest.fixture
def cp() -> Iterator[ControlPlane]:
    c = ControlPlane()
    try:
        yield c
    finally:
        c.close()


def facts(macs=("02:00:00:00:00:01",), cpu=2, memory_mb=2048, disk_mb=10000):
    return {
        "name": "lxh1", "cpu": cpu, "memory_mb": memory_mb, "disk_mb": disk_mb,
        "disk_free_mb": 5000, "storage": {"backend": "dir"}, "lease_source": "file",
        "leases": [{"ip": f"10.0.0.{i}", "mac": m, "name": f"v{i}"} for i, m in enumerate(macs)],
        "macs": sorted(macs), "libvirt": {"available": True, "version": "9.0.0", "domains": []},
        "images": [],
    }


def test_first_registration_then_no_change(cp):
    client = ApiClient(cp.url, "oneadmin:pw")
    r = hp.register(client, facts())
    assert r["changed"] and r["action"] == "register" and r["before"] == {}
    assert r["after"] == {"cpu": 2.0, "memory_mb": 2048, "disk_mb": 10000,
                          "macs": ["02:00:00:00:00:01"]}
    assert cp.hosts["lxh1"]["macs"] == ["02:00:00:00:00:01"]
    cp.calls.clear()
    r = hp.register(client, facts())
    assert not r["changed"] and r["action"] == "heartbeat" and r["before"] == r["after"]
    assert cp.calls == ["hostpool.info", "heartbeat"]
    assert len(cp.hosts) == 1


@pytest.mark.parametrize(
    "change",
    [{"macs": ("02:00:00:00:00:01", "02:00:00:00:00:02")}, {"macs": ()}, {"cpu": 4},
     {"memory_mb": 4096}, {"disk_mb": 9999}],
)
def test_any_capacity_or_mac_change_re_registers(cp, change):
    client = ApiClient(cp.url, "oneadmin:pw")
    hp.register(client, facts())
    r = hp.register(client, facts(**change))
    assert r["changed"] and r["action"] == "register" and r["before"] != r["after"]
    assert len(cp.hosts) == 1 and r["host_id"] == 0


def test_check_mode_sends_nothing(cp):
    client = ApiClient(cp.url, "oneadmin:pw")
    r = hp.register(client, facts(), check_mode=True)
    assert r["changed"] and r["action"] == "register" and cp.hosts == {}
    hp.register(client, facts())
    cp.calls.clear()
    r = hp.register(client, facts(cpu=8), check_mode=True)
    assert r["changed"] and cp.calls == ["hostpool.info"]
    r = hp.register(client, facts(), check_mode=True)
    assert not r["changed"] and r["action"] == "none"


def test_heartbeat_never_changes_and_skips_the_pool(cp):
    client = ApiClient(cp.url, "oneadmin:pw")
    hp.register(client, facts())
    cp.hosts["lxh1"]["state"] = 3
    cp.calls.clear()
    r = hp.register(client, facts(cpu=64), heartbeat=True)
    assert not r["changed"] and cp.calls == ["heartbeat"] and cp.hosts["lxh1"]["state"] == 2
    assert cp.hosts["lxh1"]["cpu"] == 2


def test_capacity_override_and_force(cp):
    client = ApiClient(cp.url, "oneadmin:pw")
    hp.register(client, facts(), capacity={"memory_mb": 1024, "cpu": None})
    assert cp.hosts["lxh1"]["memory_mb"] == 1024 and cp.hosts["lxh1"]["cpu"] == 2
    cp.calls.clear()
    r = hp.register(client, facts(), capacity={"memory_mb": 1024}, force=True)
    assert not r["changed"] and r["action"] == "register" and cp.calls[-1] == "register"


# -- the module, through ansible (real AnsibleModule argument handling, check and diff) -----


def run_module(args: dict, *flags: str) -> dict:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               ANSIBLE_CALLBACK_RESULT_FORMAT="json", ANSIBLE_NOCOLOR="1",
               PATH="{}:{}".format(BIN, os.environ.get("PATH", "")))
    proc = subprocess.run(
        [BIN / "ansible", "localhost", "-c", "local", "-m", "lxcloud.cloud.host_register",
         "-a", json.dumps(args), *flags],
        capture_output=True, text=True, env=env, check=False,
    )
    # "localhost | CHANGED => {...}"; with --diff the diff is printed before it.
    # The callback drops "failed" and "diff" from the printed result: keep the status word and
    # the whole output for those.
    _, sep, body = proc.stdout.partition("localhost | ")
    assert sep, proc.stdout + proc.stderr
    status, result = body.split(" => ", 1)
    out = json.loads(result)
    out["_status"], out["_stdout"] = status.strip().rstrip("!"), proc.stdout
    return out


def test_module_check_real_idempotent_and_diff(cp, tmp_path):
    lease_file = tmp_path / "leases.csv"
    lease_file.write_text("ip,mac,name,host\n10.0.0.1,02:00:00:00:00:01,vm1.t,lxh1\n")
    args = {
        "name": "lxh1", "storage_dir": str(tmp_path), "images_dir": str(tmp_path),
        "lease_file": str(lease_file), "api_url": cp.url, "api_session": "oneadmin:pw",
        "api_config": str(tmp_path / "absent.conf"), "libvirt_uri": "test:///default",
    }
    r = run_module(args, "--check", "--diff")
    assert r["changed"] is True and cp.hosts == {}
    assert r["_status"] == "CHANGED" and r["before"] == {}
    assert r["after"]["macs"] == ["02:00:00:00:00:01"]
    assert re.search(r'^\+\s+"macs": \[', r["_stdout"], re.M)  # the diff --diff prints
    assert "oneadmin:pw" not in json.dumps(r)
    r = run_module(args)
    assert r["changed"] is True and r["action"] == "register"
    assert cp.hosts["lxh1"]["macs"] == ["02:00:00:00:00:01"]
    r = run_module(args, "--check")
    assert r["changed"] is False
    r = run_module(args)
    assert r["changed"] is False and r["action"] == "heartbeat"
    lease_file.write_text(lease_file.read_text() + "10.0.0.2,02:00:00:00:00:02,vm2.t,lxh1\n")
    r = run_module(args, "--diff")
    assert r["changed"] is True
    assert r["before"]["macs"] == ["02:00:00:00:00:01"]
    assert re.search(r'^\+\s+"02:00:00:00:00:02"', r["_stdout"], re.M)
    assert cp.hosts["lxh1"]["macs"] == ["02:00:00:00:00:01", "02:00:00:00:00:02"]
    assert len(cp.hosts) == 1


def test_module_reports_api_errors(cp, tmp_path):
    args = {"name": "lxh1", "storage_dir": str(tmp_path), "lease_source": "none",
            "api_url": cp.url, "api_session": "oneadmin:wrong", "libvirt_uri": "test:///default"}
    r = run_module(args)
    assert r["_status"] == "FAILED" and r["api_code"] == 0x0100 and "authentication" in r["msg"]
    r = run_module(dict(args, api_session=None, api_config=str(tmp_path / "none.conf")))
    assert r["_status"] == "FAILED" and "cannot read" in r["msg"]


# -- the boot script, with the module_utils laid out as the role installs them --------------


def test_boot_script_registers_and_heartbeats(cp, tmp_path):
    lib = tmp_path / "lib"
    pkg = lib / "ansible_collections" / "lxcloud" / "cloud" / "plugins" / "module_utils"
    pkg.mkdir(parents=True)
    for name in ("api_client.py", "host_probe.py", "names.py", "wire.py"):
        (pkg / name).write_bytes((REPO / "plugins" / "module_utils" / name).read_bytes())
    api_conf = tmp_path / "api.conf"
    api_conf.write_text(f"[api]\nurl = {cp.url}\nsession = oneadmin:pw\n")
    api_conf.chmod(0o600)
    leases = tmp_path / "leases.csv"
    leases.write_text("10.0.0.1,02:00:00:00:00:01,vm1.t,lxh7\n10.0.0.2,02:00:00:00:00:02,vm2.t,lxh8\n")
    host_conf = tmp_path / "host.conf"
    host_conf.write_text(
        f"name=lxh7\nstorage_backend=dir\nstorage_dir={tmp_path}\nimages_dir={tmp_path}\n"
        f"lease_source=file\nlease_file={leases}\nlibvirt_uri=test:///default\n"
    )
    log = tmp_path / "register.log"
    script = REPO / "roles" / "hypervisor" / "files" / "lxcloud-register"
    # /usr/bin/python3 is what hypervisors run; the script must not need the venv.
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LXCLOUD_LIB": str(lib)}

    def run(*args):
        return subprocess.run(
            [python, script, "--host-config", host_conf, "--api-config", api_conf,
             "--log", log, *args],
            capture_output=True, text=True, env=env, check=False,
        )

    p = run("--boot")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["action"] == "register" and out["changed"] and out["macs"] == 1
    assert cp.hosts["lxh7"]["macs"] == ["02:00:00:00:00:01"]
    # Boot again: registers again (force) but nothing changed, still one host.
    p = run("--boot")
    assert json.loads(p.stdout)["action"] == "register" and not json.loads(p.stdout)["changed"]
    cp.calls.clear()
    p = run("--heartbeat", "--quiet")
    assert p.returncode == 0 and p.stdout == "" and cp.calls == ["heartbeat"]
    # The control plane forgot the host: a heartbeat falls back to registering.
    cp.hosts.clear()
    p = run("--heartbeat")
    assert p.returncode == 0 and json.loads(p.stdout)["action"] == "register"
    assert list(cp.hosts) == ["lxh7"]
    assert len(log.read_text().splitlines()) == 4
    # Bad credentials file mode: configuration error, exit 2.
    api_conf.chmod(0o644)
    p = run()
    assert p.returncode == 2 and "0600" in p.stderr
    api_conf.chmod(0o600)
    host_conf.write_text(host_conf.read_text() + "storage=/elsewhere\n")
    p = run()
    assert p.returncode == 2 and "unknown setting 'storage=/elsewhere'" in p.stderr
    # The control plane is down: connection error after the retries, exit 1.
    host_conf.write_text(host_conf.read_text().replace("storage=/elsewhere\n", ""))
    cp.close()
    p = run("--retries", "1")
    assert p.returncode == 1 and "after 2 attempts" in p.stderr
