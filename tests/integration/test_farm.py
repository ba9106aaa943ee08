"""The whole farm on 2 testbed hosts, every part real: the control plane on the testbed bridge
(temporary SQLite), the hypervisors playbook registers lxh1 and lxh2 through the API, the test
golden image is captured, registered and staged with the chain strategy (installed and reported
by the ``lxcloud.cloud.image`` module), a lease file pins one lease to each host, two VMs are
allocated with ``one.vm.allocate`` (one with LIFETIME=5), ``lxcloud schedule --once`` places
them, ``lxcloud deploy --once`` (the executor, ansible-runner + vm_deploy.yml) starts them: both
RUNNING, both print ``LXCLOUD-BOOTED`` with their context on their serial console. The
short-lived one asks the API to terminate itself (ACTIVE/SHUTDOWN); the next ``deploy --once``
destroys it (domain, clone, context gone on its host), marks it DONE and frees its lease, and
leaves the other VM alone; a pass after that changes nothing.

VMs use slirp on 10.213.9.0/24 (gateway .2, DNS .3; docs/context.md), so they reach the API on
10.213.0.1 through their hypervisor's namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ansible_collections.lxcloud.cloud.plugins.module_utils.api_client import api_params
from ansible_collections.lxcloud.cloud.plugins.module_utils.capture import capture
from ansible_collections.lxcloud.cloud.plugins.module_utils.capture import (
    register as register_image,
)
from testbed_helpers import Testbed

from lxcloud_py import vms
from lxcloud_py.api.launcher import ServeProcess, free_port
from lxcloud_py.leases import lease_of_vm
from lxcloud_py.model import LCMState, VMState
from lxcloud_py.store import Store

pytestmark = [pytest.mark.testbed, pytest.mark.libvirt, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
IMAGE_DIR = REPO / ".cache" / "test-image"
PREFIX = os.environ.get("LXCLOUD_TESTBED_PREFIX") or "lxh"  # the testbed's host names
HOSTS = [f"{PREFIX}1", f"{PREFIX}2"]
NET = "10.213.9"  # the VMs' slirp subnet: must not contain the API's 10.213.0.1
LEASES = {  # one lease per host: the two VMs land one on each
    HOSTS[0]: (f"{NET}.11", "52:54:00:d5:09:0b", "wn11.farm.test"),
    HOSTS[1]: (f"{NET}.12", "52:54:00:d5:09:0c", "wn12.farm.test"),
}
IMAGE = "lxfarm"
DISKS = "/var/lib/lxcloud/disks"
SHARED_FILES = [  # what the hypervisor role installs in the shared root filesystem
    "/usr/local/sbin/lxcloud-register",
    "/usr/local/lib/lxcloud",
    "/etc/init.d/lxcloud-register",
    "/etc/cron.d/lxcloud-heartbeat",
]
FIGURES: dict[str, float] = {}


def _run(argv: list[object], env: dict[str, str] | None = None, timeout: float = 300,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env,
                         timeout=timeout, check=False)
    if check:
        assert res.returncode == 0, (
            f"{' '.join(map(str, argv))} -> rc {res.returncode}\n"
            f"{res.stdout[-5000:]}\n{res.stderr[-3000:]}"
        )
    return res


class Farm:
    def __init__(self, tb: Testbed, work: Path, db: str | None = None) -> None:
        self.tb, self.work = tb, work
        self.db = db or f"sqlite:///{work / 'lxcloud.db'}"
        self.password = secrets.token_urlsafe(16)
        self.session = f"oneadmin:{self.password}"
        self.listen = tb.bridge_ip
        self.server = ServeProcess(self.db, work / "serve.log", self.listen)
        self.url = self.server.url
        self.env = {**tb.ansible_env(), "ANSIBLE_NOCOLOR": "1"}
        self.store = Store(self.db)

    def lxcloud(self, *args: object, check: bool = True,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return _run([BIN / "lxcloud", "--db", self.db, *args], env=self.env, check=check,
                    timeout=timeout)

    def call(self, method: str, *args: object, session: str | None = None) -> object:
        with xmlrpc.client.ServerProxy(self.url) as proxy:
            fn = proxy
            for part in method.split("."):
                fn = getattr(fn, part)
            ok, body, code, *_ = fn(session or self.session, *args)
        assert ok, f"{method}: 0x{code:04x} {body}"
        return body

    def start(self) -> None:
        self.lxcloud("db", "init", "--admin-password", self.password)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        self.store.dispose()

    def vm(self, vm_id: int) -> dict:
        with self.store.transaction() as conn:
            return vms.get(conn, vm_id)

    def ssh(self, host: str, cmd: str | list[str], check: bool = True) -> str:
        return self.tb.ssh(host, cmd, check=check).stdout

    def deploy(self) -> tuple[str, float]:
        t0 = time.monotonic()
        res = self.lxcloud(
            "deploy", "--once", "--inventory", self.tb.inventory, "--api-url", self.url,
            "--disk-backend", "qcow2", "--runtime-dir", self.work / "runtime",
            "-e", f"@{self.work / 'deploy-vars.yml'}", timeout=600,
        )
        return res.stdout, time.monotonic() - t0


def _clean_hosts(farm: Farm, ids: list[int]) -> None:
    """Remove domains and files of VMs one-<id> this test may have left (an earlier run)."""
    for host in HOSTS:
        script = "; ".join(
            f"virsh -q destroy one-{i} >/dev/null 2>&1; "
            f"virsh -q undefine one-{i} >/dev/null 2>&1; rm -f {DISKS}/one-{i}.*"
            for i in ids
        )
        farm.ssh(host, script, check=False)


@contextlib.contextmanager
def farm_on_testbed(tb: Testbed, work: Path, vm_ids: list[int],
                    db: str | None = None) -> Iterator[Farm]:
    """A started :class:`Farm`; afterwards the domains and files of VMs ``vm_ids``, the staged
    image and what the hypervisor role installed in the shared root are removed."""
    installed_before = any(os.path.lexists(p) for p in SHARED_FILES)
    f = Farm(tb, work, db)
    _clean_hosts(f, vm_ids)
    f.start()
    try:
        yield f
    finally:
        f.stop()
        _clean_hosts(f, vm_ids)
        for h in HOSTS:
            f.ssh(h, f"rm -f /var/lib/lxcloud/images/{IMAGE}-* /etc/lxcloud/leases.csv",
                  check=False)
        if not installed_before:
            subprocess.run(["update-rc.d", "-f", "lxcloud-register", "remove"],
                           capture_output=True, check=False)
            subprocess.run(["rm", "-rf", "--", *SHARED_FILES], check=False)


@pytest.fixture(scope="module")
def farm(testbed_factory: Callable[[int], Testbed],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    with farm_on_testbed(testbed_factory(len(HOSTS)), tmp_path_factory.mktemp("farm"),
                         [1, 2, 3]) as f:
        yield f
    print(f"\nfarm figures: {json.dumps({k: round(v, 1) for k, v in FIGURES.items()})}")


def wait_for(what: str, fn: Callable[[], object], timeout: float, step: float = 0.5) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout} s")


def marker(farm: Farm, host: str, vm_id: int) -> str | None:
    log = farm.ssh(host, ["cat", f"{DISKS}/one-{vm_id}.console.log"], check=False)
    return next((ln for ln in log.splitlines() if "LXCLOUD-BOOTED" in ln), None)


def prepare(farm: Farm, leases: list[tuple[str, str, str, str]], hosts: list[str]) -> str:
    """Leases (ip, mac, name, host) imported, ``hosts`` registered by the hypervisors playbook,
    the test golden image built, captured, registered and staged on them with the chain
    strategy; returns the image version."""
    (farm.work / "leases.csv").write_text(
        "ip,mac,name,host\n" + "".join(f"{ip},{mac},{name},{h}\n" for ip, mac, name, h in leases))
    farm.lxcloud("lease", "import", farm.work / "leases.csv")

    # -- hosts register through the API (the hypervisor role)
    for h in hosts:  # a local lease file would override the control plane's lease table
        farm.ssh(h, "rm -f /etc/lxcloud/leases.csv")
    vars_file = farm.work / "hv-vars.json"
    vars_file.write_text(json.dumps({"hypervisor_api_url": farm.url,
                                     "hypervisor_api_session": farm.session,
                                     "hypervisor_apt_update_cache": False}))
    vars_file.chmod(0o600)
    t0 = time.monotonic()
    _run([BIN / "ansible-playbook", "-i", farm.tb.inventory, "-e", f"@{vars_file}",
          "--limit", ",".join(hosts), REPO / "playbooks" / "hypervisors.yml"],
         env=farm.env, timeout=600)
    FIGURES["hypervisors_playbook_s"] = time.monotonic() - t0
    out = farm.lxcloud("host", "list").stdout
    for h in hosts:
        assert re.search(rf"\b{h}\b", out), out

    # -- the golden image: build, capture, register, stage with the chain strategy
    _run([REPO / "images" / "build-test-image", IMAGE_DIR], timeout=300)
    repo = farm.work / "repo"
    version = (IMAGE_DIR / "golden.raw.sha256").read_text().split()[0][:12]
    meta = capture(str(IMAGE_DIR / "golden.raw"), IMAGE, version, str(repo))["meta"]
    register_image(api_params(farm.url, farm.session), meta)
    t0 = time.monotonic()
    res = farm.lxcloud("image", "stage", IMAGE, "--version", version, "--strategy", "chain",
                       "--inventory", farm.tb.inventory, "--limit", ",".join(hosts),
                       "--repo", repo, "--api-url", farm.url, "--quiet", "--port",
                       str(free_port("127.0.0.1")))
    FIGURES["stage_chain_s"] = time.monotonic() - t0
    assert f"{len(hosts)}/{len(hosts)} hosts hold the verified image" in res.stdout, res.stdout
    return version


def deploy_vars() -> dict[str, object]:
    """Playbook variables for VMs on the testbed: slirp networking, the test image's kernel."""
    return {
        "lxcloud_vm_network": "user",
        "lxcloud_vm_user_subnet": {"address": f"{NET}.0", "prefix": 24},
        "lxcloud_vm_gateway": f"{NET}.2",
        "lxcloud_vm_dns": f"{NET}.3",
        "lxcloud_vm_kernel": str(IMAGE_DIR / "vmlinuz"),
        "lxcloud_vm_initrd": str(IMAGE_DIR / "initrd.img"),
        "lxcloud_vm_cmdline": "console=ttyS0 root=/dev/vda rootfstype=ext4 quiet",
    }


def write_deploy_vars(farm: Farm) -> None:
    (farm.work / "deploy-vars.yml").write_text(json.dumps(deploy_vars()))


def test_farm_requests_place_deploy_boot_self_terminate_cleanup(farm: Farm) -> None:
    t_all = time.monotonic()
    version = prepare(farm, [(*LEASES[h], h) for h in HOSTS], HOSTS)

    # -- two requests, one short-lived; one scheduling cycle places them, one per host
    tpl = ('NAME = "{name}"\nCPU = 1\nVCPU = 1\nMEMORY = 256\nDISK = [ IMAGE = "' + IMAGE
           + '" ]\nLIFETIME = {life}\nCONTEXT = [ DRAIN_CHECK_INTERVAL = "1" ]\n')
    long_id = int(farm.call("one.vm.allocate", tpl.format(name="batch-long", life=3600), False))
    short_id = int(farm.call("one.vm.allocate", tpl.format(name="batch-short", life=5), False))
    assert (long_id, short_id) == (1, 2)  # the ids _clean_hosts cleans
    out = farm.lxcloud("schedule", "--once").stdout
    assert "2 placed" in out, out
    placed = {i: farm.vm(i) for i in (long_id, short_id)}
    assert {v["host"]["name"] for v in placed.values()} == set(HOSTS), out
    for v in placed.values():
        assert (v["state"], v["lcm_state"]) == (VMState.ACTIVE, LCMState.PROLOG)
        assert v["lease"]["ip"] == LEASES[v["host"]["name"]][0]

    # -- deploy: both RUNNING, both boot with their context
    write_deploy_vars(farm)
    out, FIGURES["deploy_2_vms_s"] = farm.deploy()
    t_deployed = time.monotonic()
    for i in (long_id, short_id):
        assert re.search(rf"^\s*{i}\s+batch-\w+\s+{PREFIX}\d\s+deploy\s+RUNNING\b", out, re.M), out
        v = farm.vm(i)
        assert (v["state"], v["lcm_state"]) == (VMState.ACTIVE, LCMState.RUNNING), v
        assert v["started"] and v["deadline"] == pytest.approx(v["started"] + v["lifetime"])
    assert "LXCLOUD_TOKEN" not in out and "token" not in out.lower()
    assert not list((farm.work / "runtime").iterdir()), "job directory left behind"
    for i, v in placed.items():
        host = v["host"]["name"]
        ip, mac, name = LEASES[host]
        line = str(wait_for(f"LXCLOUD-BOOTED of VM {i}",
                            lambda h=host, n=i: marker(farm, h, n), 90))
        assert f"name={name}" in line and f"ip={ip}" in line and f"mac={mac}" in line, line
        assert f"vmid={i}" in line, line
    FIGURES["deploy_to_both_markers_s"] = time.monotonic() - t_deployed

    # -- the short-lived VM asks to be terminated (its token, through the API)
    short_host = placed[short_id]["host"]["name"]
    long_host = placed[long_id]["host"]["name"]
    wait_for("VM 2 in ACTIVE/SHUTDOWN",
             lambda: farm.vm(short_id)["lcm_state"] == LCMState.SHUTDOWN, 90)
    t_shutdown = time.monotonic()
    FIGURES["deploy_to_self_terminate_s"] = t_shutdown - t_deployed
    assert farm.vm(long_id)["lcm_state"] == LCMState.RUNNING
    dom_id = farm.ssh(long_host, ["virsh", "domid", f"one-{long_id}"]).strip()

    # -- the next pass destroys it, marks it DONE, frees its lease; the other VM is untouched
    out, FIGURES["destroy_pass_s"] = farm.deploy()
    FIGURES["self_terminate_to_cleanup_s"] = time.monotonic() - t_shutdown
    assert re.search(rf"^\s*{short_id}\s+batch-short\s+{short_host}\s+destroy\s+DONE\b",
                     out, re.M), out
    assert "batch-long" not in out, out
    v = farm.vm(short_id)
    assert v["state"] == VMState.DONE and v["ended"], v
    with farm.store.transaction() as conn:
        assert lease_of_vm(conn, short_id) is None
    assert f"one-{short_id}" not in farm.ssh(short_host, ["virsh", "list", "--all", "--name"])
    left = farm.ssh(short_host, ["ls", "-A", DISKS]).split()
    assert not [f for f in left if f.startswith(f"one-{short_id}.")], left

    # -- another pass changes nothing: the running VM keeps its domain
    out, _ = farm.deploy()
    assert "pass: 0 VM(s)" in out, out
    assert farm.ssh(long_host, ["virsh", "domid", f"one-{long_id}"]).strip() == dom_id
    assert farm.vm(long_id)["lcm_state"] == LCMState.RUNNING

    # -- an operator terminates the other one: the same path cleans it up
    farm.lxcloud("vm", "terminate", str(long_id))
    out, _ = farm.deploy()
    assert farm.vm(long_id)["state"] == VMState.DONE, out
    assert f"one-{long_id}" not in farm.ssh(long_host, ["virsh", "list", "--all", "--name"])

    # -- the hosts lost the staged image behind the control plane's back: the clone fails, the VM
    # goes to PROLOG_FAILURE with the host's error; terminate cleans it up like any other
    for h in HOSTS:
        farm.ssh(h, f"rm -f /var/lib/lxcloud/images/{IMAGE}-{version}.raw")
    bad_id = int(farm.call("one.vm.allocate", tpl.format(name="batch-bad", life=0), False))
    assert bad_id == 3
    farm.lxcloud("schedule", "--once")
    assert farm.vm(bad_id)["lcm_state"] == LCMState.PROLOG
    res = farm.lxcloud("deploy", "--once", "--inventory", farm.tb.inventory, "--api-url",
                       farm.url, "--disk-backend", "qcow2", "--runtime-dir",
                       farm.work / "runtime", "-e", f"@{farm.work / 'deploy-vars.yml'}",
                       check=False)
    assert res.returncode == 1, res.stdout
    v = farm.vm(bad_id)
    assert (v["state"], v["lcm_state"]) == (VMState.ACTIVE, LCMState.PROLOG_FAILURE), res.stdout
    assert "does not exist" in v["sched_message"], v["sched_message"]
    farm.lxcloud("vm", "terminate", str(bad_id))
    out, _ = farm.deploy()
    assert farm.vm(bad_id)["state"] == VMState.DONE, out
    FIGURES["total_s"] = time.monotonic() - t_all
