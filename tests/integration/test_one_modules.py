"""OpenNebula's own Ansible content, unchanged, against a served lxcloud (issue 18): the
``community.general`` modules ``one_host``, ``one_template``, ``one_vm`` and the
``community.general.opennebula`` inventory plugin (from the ``ansible`` package).

``test_modules_and_inventory`` needs only the API (``lxcloud serve`` on a temporary SQLite
database): one_host allocates a host (which registers, as a hypervisor does at boot) and
finds it unchanged the second time; one_template creates a template; one_vm with
``template_name``, ``count: 2`` and labels runs without ``wait`` (the VMs stay PENDING until
``lxcloud schedule --once`` places them), and the inventory plugin then lists them with IPs.

``test_one_vm_lifecycle_on_testbed`` is the end to end on 2 testbed hosts with the daemon
(``lxcloud serve`` running the scheduler and executor stages): one_vm with ``wait`` brings VMs
up, ``exact_count: 3`` + ``count_labels`` converges, ``state: absent`` terminates them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lxcloud_py.api.launcher import ServeProcess
from lxcloud_py.model import LCMState, VMState

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
PW = "one-modules-pw"
ADMIN = f"oneadmin:{PW}"
HOST = "hv-a"


class Served:
    """``lxcloud db init`` + leases for hv-a + ``lxcloud serve`` on a free loopback port."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = dict(os.environ, LXCLOUD_DB=f"sqlite:///{tmp / 'lxcloud.db'}")
        self.env.pop("LXCLOUD_CONFIG", None)
        self.lxcloud("db", "init", "--admin-password", PW)
        leases = tmp / "leases.csv"
        leases.write_text(
            "ip,mac,name,host\n"
            + "".join(f"10.77.0.{10 + i},52:54:00:77:00:{10 + i:02x},vm{i}.farm,{HOST}\n"
                      for i in range(4))
        )  # fmt: skip
        self.lxcloud("lease", "import", str(leases))
        self.server = ServeProcess(self.env["LXCLOUD_DB"], tmp / "serve.log", env=self.env).start()
        self.url = self.server.url
        self.api = xmlrpc.client.ServerProxy(self.url)

    def lxcloud(self, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "lxcloud"), *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def register_when_allocated(self, name: str, timeout: float = 60) -> threading.Thread:
        """What a hypervisor does at boot: once one_host has allocated ``name`` (INIT), it
        registers with its capacity, which makes it MONITORED (one_host waits for that)."""

        def run() -> None:
            deadline = time.monotonic() + timeout
            with xmlrpc.client.ServerProxy(self.url) as api:
                while time.monotonic() < deadline:
                    ok, pool = api.one.hostpool.info(ADMIN)[:2]
                    if ok and f"<NAME>{name}</NAME>" in pool:
                        reply = api.lxcloud.host.register(
                            ADMIN, name, {"cpu": 4.0, "memory_mb": 8192}, [], {}
                        )
                        assert reply[0], reply
                        return
                    time.sleep(0.2)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def playbook(
        self, tasks: list[dict[str, Any]], name: str, may_fail: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        return run_playbook(self.tmp, self.url, PW, tasks, name, self.env, may_fail)

    def inventory(self) -> dict[str, Any]:
        return list_inventory(self.tmp, self.url, PW, self.env)

    def stop(self) -> None:
        self.api("close")()
        self.server.stop()


def run_playbook(
    work: Path,
    url: str,
    password: str,
    tasks: list[dict[str, Any]],
    name: str,
    env: dict[str, str],
    may_fail: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run ``tasks`` on localhost with the one_* modules pointed at ``url``; the tasks'
    results by task name (every task must succeed but those named in ``may_fail``, which
    must have ``ignore_errors``)."""
    play = [
        {
            "name": name,
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "module_defaults": {
                f"community.general.{m}": {
                    "api_url": url,
                    "api_username": "oneadmin",
                    "api_password": password,
                }
                for m in ("one_host", "one_template", "one_vm", "one_image_info", "one_vnet")
            },
            "tasks": tasks,
        }
    ]
    path = work / f"{name}.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    done = subprocess.run(
        [
            str(BIN / "ansible-playbook"), "-i", "localhost,", str(path),
            "-e", f"ansible_python_interpreter={sys.executable}",
        ],
        env=dict(env, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1",
                 ANSIBLE_RETRY_FILES_ENABLED="0"),
        cwd=work, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    try:
        report = json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"ansible-playbook: {done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    results = {t["task"]["name"]: t["hosts"]["localhost"] for t in report["plays"][0]["tasks"]}
    failed = {k: v.get("msg") for k, v in results.items() if v.get("failed") and k not in may_fail}
    assert not failed, (failed, done.stderr[-2000:])
    assert done.returncode == 0, done.stderr[-2000:]
    return results


def list_inventory(work: Path, url: str, password: str, env: dict[str, str]) -> dict[str, Any]:
    """``ansible-inventory --list`` through community.general.opennebula."""
    conf = work / "opennebula.yml"
    conf.write_text(
        yaml.safe_dump(
            {
                "plugin": "community.general.opennebula",
                "api_url": url,
                "api_username": "oneadmin",
                "api_password": password,
                "hostname": "v4_first_ip",
                "group_by_labels": True,
            }
        )
    )
    done = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(conf), "--list"],
        env=env, cwd=work, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # a plugin that fails is only a warning for ansible-inventory (which then lists nothing)
    assert "parse" not in done.stderr, done.stderr
    return dict(json.loads(done.stdout, object_hook=_plain))


def _plain(obj: dict[str, Any]) -> Any:
    """ansible-inventory's JSON marks the plugin's values ``{"__ansible_unsafe": value}``."""
    return obj["__ansible_unsafe"] if set(obj) == {"__ansible_unsafe"} else obj


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path)
    try:
        yield s
    finally:
        s.stop()


HOST_TASK = {
    "community.general.one_host": {
        "name": HOST,
        "im_mad_name": "lxcloud",
        "vmm_mad_name": "kvm",
        "labels": ["rack1", "ssd"],
        "wait_timeout": 60,
    }
}
TEMPLATE_TASK = {
    "community.general.one_template": {
        "name": "batch",
        "template": 'CPU = "0.5"\nVCPU = "1"\nMEMORY = "256"\nCONTEXT = [ ROLE = "worker" ]\n',
    }
}


def test_modules_and_inventory(served: Served) -> None:
    registrar = served.register_when_allocated(HOST)
    r = served.playbook(
        [
            {"name": "host 1", **HOST_TASK, "register": "h1"},
            {"name": "host 2", **HOST_TASK, "register": "h2"},
            {"name": "template 1", **TEMPLATE_TASK},
            {"name": "template 2", **TEMPLATE_TASK},
            {
                "name": "vms",
                "community.general.one_vm": {
                    "template_name": "batch",
                    "count": 2,
                    "labels": ["farm", "batch"],
                    "attributes": {"name": "worker-##"},
                    "wait": False,  # PENDING until a scheduling cycle; no daemon here
                },
            },
        ],
        "modules",
    )
    registrar.join(5)
    assert r["host 1"]["changed"] is True and r["host 2"]["changed"] is False
    assert r["template 1"]["changed"] is True and r["template 2"]["changed"] is False
    assert r["template 2"]["template"]["CONTEXT"] == {"ROLE": "worker"}
    vms = r["vms"]
    assert vms["changed"] is True and len(vms["instances"]) == 2
    assert sorted(i["vm_name"] for i in vms["instances"]) == ["worker-00", "worker-01"]
    for inst in vms["instances"]:
        assert inst["state"] == "PENDING" and inst["labels"] == ["farm", "batch"]
        assert inst["template_id"] == r["template 2"]["id"]

    # the host's labels are in its template, its cluster the default one
    ok, host_xml = served.api.one.hostpool.info(ADMIN)[:2]
    assert ok and "<LABELS>rack1, ssd</LABELS>" in host_xml
    assert "<CLUSTER_ID>0</CLUSTER_ID>" in host_xml

    # images and the network are read-only views: one_image_info lists the golden image,
    # one_vnet (check mode) finds the lease network; its update is refused, naming the way
    reply = served.api.lxcloud.image.register(
        ADMIN, "golden", "v1", "ab" * 32, 2**20, "raw", "zstd"
    )
    assert reply[0], reply
    r = served.playbook(
        [
            {"name": "images", "community.general.one_image_info": {}},
            {
                "name": "vnet",
                "community.general.one_vnet": {"name": "lxcloud", "template": 'A = "b"'},
                "check_mode": True,
            },
            {
                "name": "vnet update",
                "community.general.one_vnet": {"name": "lxcloud", "template": 'A = "b"'},
                "ignore_errors": True,
            },
        ],
        "views",
        may_fail=("vnet update",),
    )
    (image,) = r["images"]["images"]
    assert (image["name"], image["state"], image["size"]) == ("golden", "READY", 1)
    assert image["template"]["VERSION"] == "v1"
    assert r["vnet"]["id"] == 0 and len(r["vnet"]["ar_pool"]) == 4
    assert r["vnet update"]["failed"] and "lxcloud lease import" in r["vnet update"]["msg"]

    # nothing placed yet: the inventory (ACTIVE VMs) is empty; after a cycle it lists both
    assert served.inventory()["all"].get("children", []) in ([], ["ungrouped"])
    served.lxcloud("schedule", "--once")
    inv = served.inventory()
    hostvars = inv["_meta"]["hostvars"]
    assert sorted(hostvars) == ["worker-00", "worker-01"]
    ips = {h["ansible_host"] for h in hostvars.values()}
    assert len(ips) == 2 and all(ip.startswith("10.77.0.") for ip in ips)
    for h in hostvars.values():
        assert h["host"] == HOST and h["LABELS"] == ["farm", "batch"]
        assert h["v4_first_ip"] == h["ansible_host"]
    assert sorted(inv["farm"]["hosts"]) == ["worker-00", "worker-01"]


E2E_TEMPLATE = {
    "community.general.one_template": {
        "name": "e2e",
        "template": 'CPU = "0.25"\nVCPU = "1"\nMEMORY = "192"\nDISK = [ IMAGE = "{image}" ]\n'
        'LIFETIME = "3600"\n',
    }
}


@pytest.mark.testbed
@pytest.mark.libvirt
def test_one_vm_lifecycle_on_testbed(testbed_factory: Callable[[int], Any], tmp_path: Path) -> None:
    """The full end to end on 2 testbed hosts with ``lxcloud serve`` running the scheduler and
    executor stages: one_vm with ``wait`` brings two VMs up (RUNNING, with their leases' IPs),
    ``exact_count: 3`` + ``count_labels`` converges to three (and again: no change), the
    inventory plugin lists the three with their IPs, ``state: absent`` terminates them (DONE:
    domains and disks gone, leases free)."""
    from test_daemon_testbed import Daemon, assert_accounted_for, files_on, vm_states
    from test_farm import HOSTS, IMAGE, NET, farm_on_testbed, prepare

    leases = [
        (f"{NET}.{60 + 10 * h + i}", f"52:54:00:d5:6{h}:{i:02x}", f"one{h}{i}.e2e.test", host)
        for h, host in enumerate(HOSTS)
        for i in range(2)
    ]
    vm_ids = [1, 2, 3, 4]
    with farm_on_testbed(testbed_factory(len(HOSTS)), tmp_path, vm_ids) as farm:
        prepare(farm, leases, HOSTS)
        farm.server.stop()  # the daemon serves the API from here on, on the same address
        daemon = Daemon(farm, "daemon", "api,monitor,scheduler,executor").start()
        env = dict(os.environ)
        try:
            tpl = {"community.general.one_template": {
                **E2E_TEMPLATE["community.general.one_template"],
                "template": E2E_TEMPLATE["community.general.one_template"]["template"].format(
                    image=IMAGE),
            }}  # fmt: skip
            vm = {"template_name": "e2e", "labels": ["e2e"], "wait": True, "wait_timeout": 300}
            t0 = time.monotonic()
            r = run_playbook(farm.work, farm.url, farm.password, [
                {"name": "template", **tpl},
                {"name": "two", "community.general.one_vm": {**vm, "count": 2}},
            ], "e2e-up", env)  # fmt: skip
            up_s = time.monotonic() - t0
            two = r["two"]["instances"]
            assert [i["state"] for i in two] == ["ACTIVE", "ACTIVE"], two
            assert [i["lcm_state"] for i in two] == ["RUNNING", "RUNNING"], two
            ips = {n["ip"] for i in two for n in i["networks"]}
            assert len(ips) == 2 and ips <= {ip for ip, *_ in leases}

            exact = {**vm, "exact_count": 3, "count_labels": ["e2e"]}
            r = run_playbook(farm.work, farm.url, farm.password, [
                {"name": "three", "community.general.one_vm": exact},
                {"name": "again", "community.general.one_vm": exact},
            ], "e2e-exact", env)  # fmt: skip
            assert r["three"]["changed"] is True and r["again"]["changed"] is False
            active = (VMState.ACTIVE, LCMState.RUNNING)
            running = [i for i, s in vm_states(farm).items() if s == active]
            assert len(running) == 3, vm_states(farm)
            assert_accounted_for(farm)

            inv = list_inventory(farm.work, farm.url, farm.password, env)
            hostvars = inv["_meta"]["hostvars"]
            assert sorted(h["id"] for h in hostvars.values()) == sorted(running)
            assert {h["ansible_host"] for h in hostvars.values()} <= {ip for ip, *_ in leases}
            assert {h["host"] for h in hostvars.values()} <= set(HOSTS)
            assert sorted(inv["e2e"]["hosts"]) == sorted(hostvars)

            t0 = time.monotonic()
            r = run_playbook(farm.work, farm.url, farm.password, [
                {"name": "absent", "community.general.one_vm": {
                    "instance_ids": running, "state": "absent", "wait": True,
                    "wait_timeout": 300}},
            ], "e2e-absent", env)  # fmt: skip
            absent_s = time.monotonic() - t0
            assert r["absent"]["changed"] is True
            assert all(s[0] == VMState.DONE for s in vm_states(farm).values())
            assert all(doms == [] for doms, _files in files_on(farm).values())
            assert_accounted_for(farm)
            print(f"\none_vm e2e: 2 VMs up {up_s:.1f} s, 3 terminated {absent_s:.1f} s")
        finally:
            daemon.proc.stop()
