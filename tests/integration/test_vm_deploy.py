"""playbooks/vm_deploy.yml and vm_destroy.yml on a testbed host, over SSH, with the host's own
libvirtd and Debian's /usr/bin/python3 + python3-libvirt: the test image boots from a qcow2
clone with its context (software emulation, user networking on the slirp subnet
10.213.7.0/24 as docs/context.md says), a second run changes nothing, a VM whose image is
missing fails alone, and destroy removes domain, clone, context and console log."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest
from libvirt_helpers import REPO, playbook, task_results
from testbed_helpers import shared_testbed_dir

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

IMAGE_DIR = Path(REPO) / ".cache" / "test-image"
BUILD = Path(REPO) / "images" / "build-test-image"
DEPLOY = str(Path(REPO) / "playbooks" / "vm_deploy.yml")
DESTROY = str(Path(REPO) / "playbooks" / "vm_destroy.yml")


@pytest.fixture(scope="module")
def tbhost(request: pytest.FixtureRequest) -> dict:
    """One host of the testbed: the shared ``testbed`` fixture if there is one, else a
    testbed that is already up (testbed/up N)."""
    try:
        tb = request.getfixturevalue("testbed")
        tb = tb(1) if callable(tb) else tb
        tb_dir = Path(getattr(tb, "dir", shared_testbed_dir()))
        inventory = Path(getattr(tb, "inventory", tb_dir / "inventory.ini"))
    except pytest.FixtureLookupError:
        tb_dir = shared_testbed_dir()
        inventory = tb_dir / "inventory.ini"
        if not inventory.exists():
            pytest.skip("no testbed fixture and no testbed up (run testbed/up 1)")
    ssh_config = tb_dir / "ssh_config"
    host = "lxh1"
    r = subprocess.run(["ssh", "-F", str(ssh_config), host, "--", "true"], capture_output=True,
                       text=True, timeout=30, check=False)
    if r.returncode != 0:
        pytest.skip(f"testbed host {host} unreachable: {r.stderr.strip()}")
    if BUILD.exists():
        r = subprocess.run([str(BUILD), str(IMAGE_DIR)], capture_output=True, text=True,
                           check=False)
        assert r.returncode == 0, r.stderr[-2000:]
    if not (IMAGE_DIR / "golden.raw").exists():
        pytest.skip("test image missing (images/build-test-image)")
    return {"host": host, "inventory": str(inventory), "ssh_config": str(ssh_config)}


def ssh(tb: dict, *argv: str, check: bool = True) -> str:
    r = subprocess.run(["ssh", "-F", tb["ssh_config"], tb["host"], "--", *argv],
                       capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert r.returncode == 0, r.stderr
    return r.stdout


def wait_for_marker(tb: dict, log: str, marker: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = ssh(tb, "cat", log, check=False)
        for line in out.splitlines():
            if marker in line:
                return line
        time.sleep(1)
    raise AssertionError(f"{marker} not in {log} after {timeout} s:\n{out[-3000:]}")


def items(doc: dict, host: str, task: str) -> dict[str, dict]:
    for name, res in task_results(doc, host):
        if name == task:
            return {r["vm"]["name"]: r for r in res.get("results", [])}
    ran = [n for n, _ in task_results(doc, host)]
    raise AssertionError(f"task {task!r} not run on {host}: {ran}")


def test_deploy_boot_rerun_destroy(tbhost: dict) -> None:
    tb = tbhost
    tag = uuid.uuid4().hex[:6]
    name, bad = f"lxvm-{tag}", f"lxvm-{tag}-bad"
    image = f"lxvm-golden-{tag}"
    disks = "/var/lib/lxcloud/disks"
    mac = "52:54:00:d5:07:2a"
    ssh(tb, "mkdir", "-p", "/var/lib/lxcloud/images", disks)
    ssh(tb, "cp", "--sparse=always", str(IMAGE_DIR / "golden.raw"),
        f"/var/lib/lxcloud/images/{image}.raw")
    extra = {
        "lxcloud_vms": [
            {"name": name, "host": tb["host"], "image": image,
             "lease": {"ip": "10.213.7.42", "mac": mac, "name": f"wn-{tag}",
                       "gateway": "10.213.7.2", "dns": "10.213.7.3"},
             "vcpus": 1, "memory_mb": 256, "disk": "qcow2", "lifetime": 3600,
             "context": {"VMID": 42, "LXCLOUD_API": "http://10.213.0.1:2633/RPC2",
                         "LXCLOUD_TOKEN": "t0ken"}},
            {"name": bad, "host": tb["host"], "image": f"{image}-missing",
             "lease": {"ip": "10.213.7.43", "mac": "52:54:00:d5:07:2b", "name": "wn-bad"}},
            {"name": f"lxvm-{tag}-elsewhere", "host": "no-such-host", "image": image,
             "lease": {"ip": "10.213.7.44", "mac": "52:54:00:d5:07:2c", "name": "x"}},
        ],
        "lxcloud_vm_network": "user",
        "lxcloud_vm_user_subnet": {"address": "10.213.7.0", "prefix": 24},
        "lxcloud_vm_kernel": str(IMAGE_DIR / "vmlinuz"),
        "lxcloud_vm_initrd": str(IMAGE_DIR / "initrd.img"),
        "lxcloud_vm_cmdline": "console=ttyS0 root=/dev/vda",
    }
    limit = ("--limit", tb["host"])
    try:
        # check mode first: reports the changes, creates nothing
        doc = playbook(DEPLOY, extra, check=True, inventory=tb["inventory"], extra_args=limit)
        assert items(doc, tb["host"], "Define and start the VM")[name]["changed"] is True
        assert name not in ssh(tb, "virsh", "list", "--all", "--name")
        assert not [f for f in ssh(tb, "ls", "-A", disks).split() if name in f]

        t0 = time.monotonic()
        doc = playbook(DEPLOY, extra, inventory=tb["inventory"], extra_args=limit)
        deploy_s = time.monotonic() - t0
        assert doc["rc"] != 0, "the VM with a missing image must fail the run"
        result = items(doc, tb["host"], "VM result")
        assert set(result) == {name, bad}, "a VM of another host was deployed here"
        assert not result[name].get("failed"), result[name]
        assert result[bad].get("failed") and "does not exist" in result[bad]["msg"], result[bad]
        assert items(doc, tb["host"], "Define and start the VM")[name]["changed"] is True

        assert name in ssh(tb, "virsh", "list", "--name", "--state-running")
        line = wait_for_marker(tb, f"{disks}/{name}.console.log", "LXCLOUD-BOOTED")
        assert f"name=wn-{tag}" in line and "ip=10.213.7.42" in line and f"mac={mac}" in line
        assert "vmid=42" in line

        # check mode again, then a second real run: nothing changes for the deployed VM
        for check in (True, False):
            doc2 = playbook(DEPLOY, extra, check=check, inventory=tb["inventory"],
                            extra_args=limit)
            for task in ("Clone the golden image", "Write the context disk",
                         "Define and start the VM"):
                assert items(doc2, tb["host"], task)[name]["changed"] is False, (check, task)
            assert doc2["stats"][tb["host"]]["changed"] == 0, (check, doc2["stats"])

        # destroy: domain, clone, context and console log gone; a second destroy is no change
        t0 = time.monotonic()
        doc3 = playbook(DESTROY, extra, inventory=tb["inventory"], extra_args=limit)
        destroy_s = time.monotonic() - t0
        assert doc3["rc"] == 0, doc3["stderr"][-2000:]
        assert items(doc3, tb["host"], "Remove the domain with its clone and context")[name][
            "changed"] is True
        assert name not in ssh(tb, "virsh", "list", "--all", "--name")
        left = ssh(tb, "ls", "-A", disks).split()
        assert not [f for f in left if name in f], left
        doc4 = playbook(DESTROY, extra, inventory=tb["inventory"], extra_args=limit)
        assert doc4["rc"] == 0 and doc4["stats"][tb["host"]]["changed"] == 0, doc4["stats"]
        print(f"\nvm_deploy.yml 2 VMs {deploy_s:.1f} s, vm_destroy.yml {destroy_s:.1f} s")
    finally:
        playbook(DESTROY, extra, inventory=tb["inventory"], extra_args=limit)
        ssh(tb, "rm", "-f", f"/var/lib/lxcloud/images/{image}.raw", check=False)
