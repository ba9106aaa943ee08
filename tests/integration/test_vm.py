"""lxcloud.cloud.vm (with disk and context) through Ansible against the real libvirtd/qemu of
this machine: the test image boots from a qcow2 clone with its context ISO (software
emulation), the definition is updated in place, the domain is stopped for real and removed
with its storage.  Domain names start with ``lxvm-``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

import pytest
from libvirt_helpers import REPO, adhoc, adhoc_many, libvirt_uri  # noqa: F401 - fixture

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

IMAGE_DIR = os.path.join(REPO, ".cache", "test-image")
# iputils ping is not in the bootstrap list; busybox-static (for the test image) has one
PING = ["ping"] if shutil.which("ping") else ["busybox", "ping"]
BUILD = os.path.join(REPO, "images", "build-test-image")


@pytest.fixture(scope="module")
def test_image() -> dict[str, str]:
    """kernel, initrd and golden.raw of the test image (built, cached, by images/)."""
    if os.path.exists(BUILD):
        r = subprocess.run([BUILD, IMAGE_DIR], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            pytest.fail(f"images/build-test-image failed:\n{r.stderr[-2000:]}")
    paths = {k: os.path.join(IMAGE_DIR, f) for k, f in
             (("kernel", "vmlinuz"), ("initrd", "initrd.img"), ("golden", "golden.raw"))}
    missing = [p for p in paths.values() if not os.path.exists(p)]
    if missing:
        pytest.skip(f"test image missing ({missing}) and images/build-test-image not found")
    return paths


@pytest.fixture
def store() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="lxvm-store-", dir="/var/tmp")
    os.chmod(d, 0o755)  # noqa: S103 - qemu runs as libvirt-qemu and must traverse it
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def domain(uri: str, name: str):
    import libvirt

    conn = libvirt.open(uri)
    try:
        return conn.lookupByName(name).XMLDesc(0), conn.lookupByName(name).state()[0]
    except libvirt.libvirtError:
        return None, None
    finally:
        conn.close()


def wait_for(path: str, marker: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                text = f.read()
            for line in text.splitlines():
                if marker in line:
                    return line
        time.sleep(0.5)
    raise AssertionError(f"{marker!r} not in {path} after {timeout} s:\n{text[-3000:]}")


def test_vm_lifecycle(libvirt_uri: str, test_image: dict[str, str], store: str) -> None:  # noqa: F811
    import libvirt

    name = "lxvm-" + uuid.uuid4().hex[:8]
    mac = "52:54:00:6c:78:01"
    disk = adhoc("lxcloud.cloud.disk", {"name": f"{name}.qcow2", "base": test_image["golden"],
                                        "dir": store})
    assert disk["changed"], disk
    ctx = adhoc("lxcloud.cloud.context", {"name": f"{name}.context.iso", "dir": store,
                                          "variables": {"NAME": name, "ETH0_IP": "10.0.2.15",
                                                        "ETH0_MASK": "255.255.255.0",
                                                        "ETH0_GATEWAY": "10.0.2.2",
                                                        "ETH0_MAC": mac, "VMID": 4242},
                                          "secret_variables": {"LXCLOUD_TOKEN": "s3cret-t0k"}})
    assert ctx["changed"], ctx
    assert "s3cret-t0k" not in json.dumps(ctx), "the secret leaked into the module result"
    iso = subprocess.run(["isoinfo", "-R", "-i", ctx["path"], "-x", "/context.sh"],
                         capture_output=True, text=True, check=True).stdout
    assert "LXCLOUD_TOKEN='s3cret-t0k'" in iso and f"NAME='{name}'" in iso
    vm = {"name": name, "uri": libvirt_uri, "virt_type": "qemu", "memory_mb": 256,
          "disk": disk["path"], "disk_format": disk["format"], "context": ctx["path"],
          "kernel": test_image["kernel"], "initrd": test_image["initrd"],
          "cmdline": "console=ttyS0 root=/dev/vda panic=-1", "network": "user", "mac": mac,
          "storage_dir": store, "shutdown_timeout": 2}

    # check mode: reports the change, defines nothing
    r = adhoc("lxcloud.cloud.vm", dict(vm, state="running"), check=True, diff=True)
    assert not r.get("failed"), r
    assert r["changed"] and "defined" in r["changes"] and "started" in r["changes"]
    assert "<memory unit=\"MiB\">256</memory>" in r["diff"]["after"]
    assert domain(libvirt_uri, name) == (None, None)

    # real run: defined and running
    r = adhoc("lxcloud.cloud.vm", dict(vm, state="running", return_xml=True))
    assert not r.get("failed"), r
    assert r["changed"] and r["state"] == "running" and r["uuid"]
    xml, state = domain(libvirt_uri, name)
    assert state == libvirt.VIR_DOMAIN_RUNNING
    assert "<graphics" not in xml and "<acpi/>" in xml and mac in xml
    assert "type='qemu'" in xml or 'type="qemu"' in xml

    # check mode again and a second real run: no change
    r = adhoc("lxcloud.cloud.vm", dict(vm, state="running"), check=True)
    assert r["changed"] is False, r
    r = adhoc("lxcloud.cloud.vm", dict(vm, state="running"))
    assert r["changed"] is False, r

    # the guest boots from the clone and reads its context
    line = wait_for(os.path.join(store, f"{name}.console.log"), "LXCLOUD-BOOTED")
    assert f"name={name}" in line and "ip=10.0.2.15" in line and f"mac={mac}" in line
    assert "vmid=4242" in line

    # vm_info reports what runs, with the managed fields
    info = adhoc("lxcloud.cloud.vm_info", {"uri": libvirt_uri, "names": [name]})
    (dom,) = info["domains"]
    assert dom["state"] == "running" and dom["nic"]["mac"] == mac and info["changed"] is False
    assert dom["disk"]["path"] == disk["path"] and dom["context"] == ctx["path"]

    # defined with more memory: the existing domain is updated in place (same uuid)
    uuid_before = r["uuid"]
    r = adhoc("lxcloud.cloud.vm", dict(vm, state="defined", memory_mb=320), diff=True)
    assert r["changed"] and r["changes"] == ["memory_mb"], r
    assert r["pending_restart"] is True and r["uuid"] == uuid_before
    assert "320" in r["diff"]["after"] and "256" in r["diff"]["before"]
    conn = libvirt.open(libvirt_uri)
    try:
        dom = conn.lookupByName(name)
        assert dom.UUIDString() == uuid_before
        inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert "<memory unit='KiB'>327680</memory>" in inactive
        assert dom.isActive()
    finally:
        conn.close()
    r = adhoc("lxcloud.cloud.vm", dict(vm, state="defined", memory_mb=320))
    assert r["changed"] is False and r["pending_restart"] is True, r

    # stopped: really off (the test image ignores ACPI, so it is forced after the timeout)
    r = adhoc("lxcloud.cloud.vm", {"name": name, "uri": libvirt_uri, "state": "stopped",
                                   "shutdown_timeout": 2})
    assert r["changed"] and r["state"] == "shutoff", r
    assert domain(libvirt_uri, name)[1] == libvirt.VIR_DOMAIN_SHUTOFF
    r = adhoc("lxcloud.cloud.vm", {"name": name, "uri": libvirt_uri, "state": "stopped"})
    assert r["changed"] is False, r

    # absent: check mode keeps everything; real removes domain, clone and context
    gone = {"name": name, "uri": libvirt_uri, "state": "absent", "storage_dir": store}
    r = adhoc("lxcloud.cloud.vm", gone, check=True)
    assert r["changed"] and os.path.exists(disk["path"]) and domain(libvirt_uri, name)[0]
    r = adhoc("lxcloud.cloud.vm", gone)
    assert r["changed"] and sorted(r["removed"]) == sorted([disk["path"], ctx["path"]]), r
    assert domain(libvirt_uri, name) == (None, None)
    assert not os.path.exists(disk["path"]) and not os.path.exists(ctx["path"])
    assert os.path.exists(test_image["golden"]), "the golden image must never be removed"
    r = adhoc("lxcloud.cloud.vm", gone)
    assert r["changed"] is False, r


def test_running_vm_restarts_on_change_when_asked(libvirt_uri: str, test_image: dict[str, str],  # noqa: F811
                                                  store: str) -> None:
    import libvirt

    name = "lxvm-" + uuid.uuid4().hex[:8]
    disk = adhoc("lxcloud.cloud.disk", {"name": f"{name}.qcow2", "base": test_image["golden"],
                                        "dir": store})
    vm = {"name": name, "uri": libvirt_uri, "virt_type": "qemu", "memory_mb": 256,
          "disk": disk["path"], "kernel": test_image["kernel"], "initrd": test_image["initrd"],
          "cmdline": "console=ttyS0 root=/dev/vda", "network": "user",
          "user_subnet": {"address": "10.0.3.0", "prefix": 24},
          "storage_dir": store, "shutdown_timeout": 1}
    try:
        r = adhoc("lxcloud.cloud.vm", vm)
        assert r["changed"] and r["state"] == "running", r
        # no mac given: libvirt generates one and a second run accepts it
        assert adhoc("lxcloud.cloud.vm", vm)["changed"] is False
        r = adhoc("lxcloud.cloud.vm", dict(vm, memory_mb=288, restart_on_change=True))
        assert r["changed"] and "restarted" in r["changes"] and r["state"] == "running", r
        assert r["pending_restart"] is False
        conn = libvirt.open(libvirt_uri)
        try:
            live = conn.lookupByName(name).XMLDesc(0)
        finally:
            conn.close()
        assert "<memory unit='KiB'>294912</memory>" in live
        assert "address='10.0.3.0'" in live
    finally:
        r = adhoc("lxcloud.cloud.vm", {"name": name, "uri": libvirt_uri, "state": "absent",
                                       "storage_dir": store})
        assert not r.get("failed"), r
    assert not os.path.exists(disk["path"])


BAD_NAMES = ["../lxvm-x", "lxvm x", "lxvm'x", 'lxvm"x', "lxvm\nx", "lxvm;reboot",
             "$(touch /tmp/lxvm-pwned)", "lxvm/x", "lxvm`id`", "lxvm&x", "\u00fcml", ""]


def test_bad_names_never_reach_libvirt(libvirt_uri: str, store: str) -> None:  # noqa: F811
    results = adhoc_many("lxcloud.cloud.vm", [
        {"name": bad, "uri": libvirt_uri, "virt_type": "qemu",
         "disk": os.path.join(store, "x.qcow2"), "network": "user", "storage_dir": store,
         "state": state}
        for bad, state in [(b, "defined") for b in BAD_NAMES] + [(BAD_NAMES[0], "absent"),
                                                                 (BAD_NAMES[5], "running")]
    ])
    for r in results:
        assert r.get("failed") and r["item"] == "vm name", r
    assert not os.path.exists("/tmp/lxvm-pwned")
    assert os.listdir(store) == []


def test_bad_paths_and_options_are_refused(libvirt_uri: str, store: str) -> None:  # noqa: F811
    base = {"name": "lxvm-badopts", "uri": libvirt_uri, "virt_type": "qemu", "network": "user",
            "storage_dir": store, "state": "defined"}
    cases = [
        ({"disk": "/var/tmp/../../etc/shadow"}, "disk"),
        ({"disk": os.path.join(store, "x.qcow2"), "context": "/var/tmp/a b.iso"}, "context"),
        ({"disk": os.path.join(store, "x.qcow2"), "mac": "52:54:00:zz:00:01"}, "mac"),
        ({"disk": os.path.join(store, "x.qcow2"), "kernel": "/boot/x",
          "cmdline": "console=ttyS0\nroot=/dev/vda"}, "cmdline"),
    ]
    for extra, item in cases:
        r = adhoc("lxcloud.cloud.vm", dict(base, **extra))
        assert r.get("failed") and r["item"] == item, (extra, r)
    assert domain(libvirt_uri, "lxvm-badopts") == (None, None)


@pytest.fixture
def bridge() -> Iterator[tuple[str, str]]:
    """A bridge with no uplink in the root namespace (host side 10.213.199.1/24): traffic
    stays between this machine and the VM."""
    name = "lxvmbr" + uuid.uuid4().hex[:6]
    r = subprocess.run(["ip", "link", "add", name, "type", "bridge"], capture_output=True,
                       text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot create a bridge: {r.stderr.strip()}")
    try:
        subprocess.run(["ip", "addr", "add", "10.213.199.1/24", "dev", name], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield name, "10.213.199.1"
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


def test_bridged_nic_answers_on_the_lease_address(libvirt_uri: str,  # noqa: F811
                                                  test_image: dict[str, str], store: str,
                                                  bridge: tuple[str, str]) -> None:
    """The production NIC: the lease's MAC on a host bridge; the guest takes ETH0_IP from its
    context and answers ping from the host over the bridge."""
    br, host_ip = bridge
    name = "lxvm-" + uuid.uuid4().hex[:8]
    mac, ip = "52:54:00:d5:c7:0a", "10.213.199.10"
    disk = adhoc("lxcloud.cloud.disk", {"name": f"{name}.qcow2", "base": test_image["golden"],
                                        "dir": store})
    ctx = adhoc("lxcloud.cloud.context", {"name": f"{name}.context.iso", "dir": store,
                                          "variables": {"NAME": name, "ETH0_IP": ip,
                                                        "ETH0_MASK": "255.255.255.0",
                                                        "ETH0_GATEWAY": host_ip,
                                                        "ETH0_MAC": mac}})
    vm = {"name": name, "uri": libvirt_uri, "virt_type": "qemu", "memory_mb": 256,
          "disk": disk["path"], "context": ctx["path"], "kernel": test_image["kernel"],
          "initrd": test_image["initrd"], "cmdline": "console=ttyS0 root=/dev/vda",
          "bridge": br, "mac": mac, "storage_dir": store}
    try:
        r = adhoc("lxcloud.cloud.vm", vm)
        assert r["changed"] and r["state"] == "running", r
        assert adhoc("lxcloud.cloud.vm", vm)["changed"] is False
        line = wait_for(os.path.join(store, f"{name}.console.log"), "LXCLOUD-BOOTED")
        assert f"ip={ip}" in line and f"mac={mac}" in line
        deadline = time.monotonic() + 30
        while True:
            ping = subprocess.run([*PING, "-c", "1", "-W", "1", "-I", br, ip],
                                  capture_output=True, text=True, check=False)
            if ping.returncode == 0 or time.monotonic() > deadline:
                break
        assert ping.returncode == 0, ping.stdout + ping.stderr
        neigh = subprocess.run(["ip", "neigh", "show", ip, "dev", br], capture_output=True,
                               text=True, check=False).stdout
        assert mac in neigh.lower(), neigh
    finally:
        r = adhoc("lxcloud.cloud.vm", {"name": name, "uri": libvirt_uri, "state": "absent",
                                       "storage_dir": store})
        assert not r.get("failed"), r
