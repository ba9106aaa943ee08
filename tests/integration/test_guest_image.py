"""The tiny test golden image boots under libvirt/qemu (TCG), honours its context and calls back.

Real parts only: ``images/build-test-image`` builds the image from Debian packages, a local
libvirtd runs the domain (``<domain type='qemu'>``, direct kernel boot, qcow2 overlay of
golden.raw, context ISO on vdb, user-mode networking on a non-default slirp subnet), and a real
XML-RPC server on 127.0.0.1 stands in for ``lxcloud serve``: the guest reaches it through the
slirp host address (NET.2), which slirp maps to the host's loopback.

If no libvirtd answers on ``qemu:///system``, ``libvirt_helpers.ensure_libvirtd`` starts
``virtlogd -d`` and ``libvirtd -d`` (and makes /dev/kvm root:kvm 0660); they are stopped again at
the end unless other people's domains are running on them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import pytest

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

libvirt = pytest.importorskip("libvirt")

from libvirt_helpers import (  # noqa: E402
    URI,
    cleanup_domains,
    ensure_libvirtd,
    fix_kvm_permissions,
    release_libvirtd,
)
from testbed_helpers import shared_testbed_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BUILDER = REPO / "images" / "build-test-image"
SLIRP_NET = "10.213.7.0"  # slirp subnet: host (gateway, maps to host loopback) .2, DNS .3
GUEST_IP = "10.213.7.50"
GATEWAY = "10.213.7.2"
DOMAIN_PREFIX = "lxtest-guest-"
CMDLINE = "console=ttyS0 root=/dev/vda rootfstype=ext4 quiet"


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def test_image() -> Path:
    out = REPO / ".cache" / "test-image"
    for tool in ("mke2fs", "cpio", "gzip", "genisoimage", "qemu-img"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (scripts/bootstrap installs it)")
    t0 = time.monotonic()
    _run([str(BUILDER), str(out)], timeout=300)
    print(f"build-test-image: {time.monotonic() - t0:.2f} s")
    return out


@pytest.fixture(scope="module")
def conn() -> Iterator[object]:
    """A connection to the local system libvirtd (started for this module if none answers;
    stopped again only if no one else's domains exist: see libvirt_helpers)."""
    started = ensure_libvirtd()
    print(f"libvirtd: started {started or 'nothing (already running)'}; {fix_kvm_permissions()}")
    c = libvirt.open(URI)
    try:
        yield c
    finally:
        c.close()
        cleanup_domains(DOMAIN_PREFIX)
        release_libvirtd(started, (DOMAIN_PREFIX,))


class FakeOneAPI:
    """A real XML-RPC server on loopback that records one.vm.action calls.

    Replies from ``replies`` in order (the last one repeats): each is the OpenNebula-shaped
    ``[success, body, error_code]``.
    """

    def __init__(self, replies: list[list[object]], host: str = "127.0.0.1") -> None:
        self.calls: list[tuple[object, ...]] = []
        self.replies = replies
        self.server = SimpleXMLRPCServer(
            (host, 0),
            requestHandler=SimpleXMLRPCRequestHandler,
            logRequests=False,
            allow_none=False,
        )
        self.server.register_function(self._action, "one.vm.action")
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def _action(self, session: str, action: str, vm_id: int) -> list[object]:
        self.calls.append((session, action, vm_id, time.monotonic()))
        return self.replies[min(len(self.calls), len(self.replies)) - 1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _context_iso(workdir: Path, values: dict[str, str]) -> Path:
    src = workdir / "context"
    src.mkdir()
    (src / "context.sh").write_text("".join(f"{k}='{v}'\n" for k, v in values.items()))
    iso = workdir / "context.iso"
    _run(["genisoimage", "-quiet", "-V", "CONTEXT", "-J", "-R", "-o", str(iso), str(src)])
    return iso


def _domain_xml(name: str, image: Path, work: Path, iso: Path, mac: str) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>192</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{work / "vmlinuz"}</kernel>
    <initrd>{work / "initrd.img"}</initrd>
    <cmdline>{CMDLINE}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{work / "disk.qcow2"}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{iso}'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    <interface type='user'>
      <mac address='{mac}'/>
      <ip family='ipv4' address='{SLIRP_NET}' prefix='24'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='{work / "serial.log"}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>"""


def _wait_for(pred, timeout: float, what: str, log: Path) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.2)
    text = log.read_text(errors="replace") if log.exists() else "(no serial log)"
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; serial log:\n{text}")


class Guest:
    """One test-image domain under the local libvirtd, its context pointing at ``api``."""

    def __init__(self, test_image: Path, conn, api: FakeOneAPI, **context: str) -> None:  # type: ignore[no-untyped-def]
        # a 0755 dir, not pytest's 0700 tmp: qemu runs as libvirt-qemu and must reach the files
        self.work = Path(tempfile.mkdtemp(prefix="lxtest-guest-", dir="/tmp"))
        self.work.chmod(0o755)
        self.name = f"{DOMAIN_PREFIX}{uuid.uuid4().hex[:8]}"
        self.vm_id = 4000 + secrets.randbelow(1000)
        self.token = secrets.token_urlsafe(24)
        self.mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        self.log = self.work / "serial.log"
        self.dom = None
        self.image, self.conn, self.api, self.context = test_image, conn, api, context

    def start(self) -> float:
        """Define and start the domain; the seconds until the guest's boot marker."""
        work = self.work
        for f in ("vmlinuz", "initrd.img"):
            shutil.copy(self.image / f, work / f)
        # the overlay's backing file is a private copy so libvirt's relabelling never touches
        # the shared cache
        shutil.copy(self.image / "golden.raw", work / "golden.raw")
        _run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                str(work / "golden.raw"),
                "-F",
                "raw",
                str(work / "disk.qcow2"),
            ]
        )
        iso = _context_iso(
            work,
            {
                "NAME": self.name,
                "ETH0_IP": GUEST_IP,
                "ETH0_MASK": "255.255.255.0",
                "ETH0_GATEWAY": GATEWAY,
                "ETH0_MAC": self.mac,
                "ETH0_DNS": "10.213.7.3",
                "LIFETIME": "5",
                "LXCLOUD_API": f"http://{GATEWAY}:{self.api.port}/RPC2",
                "VMID": str(self.vm_id),
                "LXCLOUD_TOKEN": self.token,
                "DRAIN_CHECK_INTERVAL": "1",
                # a hostile value the guest must carry without breaking (never sourced)
                "EVIL": "$(poweroff -f)`reboot -f`",
                **self.context,
            },
        )
        self.dom = self.conn.defineXML(_domain_xml(self.name, self.image, work, iso, self.mac))
        t_start = time.monotonic()
        self.dom.create()
        marker = f"LXCLOUD-BOOTED name={self.name} ip={GUEST_IP} mac={self.mac} vmid={self.vm_id}"

        def booted() -> bool:
            return self.log.exists() and marker in self.log.read_text(errors="replace")

        _wait_for(booted, 120, "the boot marker", self.log)
        return time.monotonic() - t_start

    def wait_shut_off(self) -> str:
        """Wait until the domain is off; the serial log."""

        def shut_off() -> bool:
            state, _reason = self.dom.state()
            return state == libvirt.VIR_DOMAIN_SHUTOFF

        _wait_for(shut_off, 120, "the domain to shut off after the callback", self.log)
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        self.api.close()
        if self.dom is not None:
            try:
                if self.dom.isActive():
                    self.dom.destroy()
            finally:
                self.dom.undefine()
        shutil.rmtree(self.work, ignore_errors=True)


def test_guest_boots_with_context_and_terminates_itself(test_image: Path, conn) -> None:  # type: ignore[no-untyped-def]
    # an API without lxcloud.vm.exit (a fault): the callback falls back to one.vm.action
    api = FakeOneAPI([[False, "[one.vm.action] try again", 0x0800], [True, 0, 0]])
    guest = Guest(test_image, conn, api)
    try:
        t_start = time.monotonic()
        boot_s = guest.start()
        print(f"boot-to-marker (TCG, libvirt start included): {boot_s:.2f} s")
        text = guest.wait_shut_off()
        total_s = time.monotonic() - t_start
        print(f"start-to-shutoff with LIFETIME=5 and one refused call: {total_s:.2f} s")
        vm_id, token = guest.vm_id, guest.token
        assert "LXCLOUD-CALLBACK terminate requested" in text
        assert "LXCLOUD-CALLBACK error API refused" in text
        assert f"LXCLOUD-CALLBACK ok vmid={vm_id}" in text
        # first call refused, the retry succeeded, and nothing after success
        assert [c[:3] for c in api.calls] == [(f"vm-{vm_id}:{token}", "terminate", vm_id)] * 2
        assert api.calls[1][3] - api.calls[0][3] >= 1.5, "retry must back off"
        state, reason = guest.dom.state()
        assert (state, reason) == (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN)
    finally:
        guest.close()


class ExitAPI(FakeOneAPI):
    """Also lxcloud.vm.exit (recorded in ``exits``)."""

    def __init__(self) -> None:
        super().__init__([[True, 0, 0]])
        self.exits: list[tuple[object, ...]] = []
        self.server.register_function(self._exit, "lxcloud.vm.exit")

    def _exit(self, session: str, vm_id: int, code: int, message: str) -> list[object]:
        self.exits.append((session, vm_id, code, message))
        return [True, vm_id, 0]


def test_guest_ends_itself_with_the_exit_code_of_its_context(test_image: Path, conn) -> None:  # type: ignore[no-untyped-def]
    api = ExitAPI()
    guest = Guest(test_image, conn, api, VM_EXIT_CODE="300", VM_EXIT_MESSAGE="no work left")
    try:
        guest.start()
        text = guest.wait_shut_off()
        assert f"LXCLOUD-CALLBACK ok vmid={guest.vm_id} exit=300" in text
        assert api.exits == [(f"vm-{guest.vm_id}:{guest.token}", guest.vm_id, 300, "no work left")]
        assert api.calls == []
    finally:
        guest.close()


TESTBED = REPO / "testbed"
BRIDGE_IP = "10.213.0.1"


def _testbed_has_hosts() -> bool:
    try:
        return bool(json.loads((shared_testbed_dir() / "state.json").read_text()).get("hosts"))
    except (OSError, ValueError):
        return False


def _virsh(host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TESTBED / "ssh"), host, "virsh", "-q", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


@pytest.mark.testbed
def test_guest_on_testbed_host_calls_the_api_on_the_bridge(test_image: Path) -> None:
    """The networking convention of docs/context.md on a real testbed host: the guest runs under
    lxh1's own libvirtd (in lxh1's namespaces) with slirp subnet 10.213.7.0/24, and reaches the
    API on the testbed bridge (10.213.0.1, outside the slirp subnet) through slirp's NAT and
    lxh1's veth."""
    if os.geteuid() != 0 or not (TESTBED / "up").exists():
        pytest.skip("the testbed needs root and testbed/up")
    created = not _testbed_has_hosts()
    _run([str(TESTBED / "up"), "1"], timeout=300)  # re-runnable; never removes hosts
    api = FakeOneAPI([[True, 0, 0]], host=BRIDGE_IP)
    # the host's /tmp is private to its mount namespace: use the shared repository cache
    work = Path(tempfile.mkdtemp(prefix="lxtest-guest-tb-", dir=REPO / ".cache"))
    work.chmod(0o755)
    name = f"{DOMAIN_PREFIX}tb-{uuid.uuid4().hex[:8]}"
    vm_id = 5000 + secrets.randbelow(1000)
    token = secrets.token_urlsafe(24)
    mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
    defined = False
    try:
        for f in ("vmlinuz", "initrd.img", "golden.raw"):
            shutil.copy(test_image / f, work / f)
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(work / "golden.raw"),
              "-F", "raw", str(work / "disk.qcow2")])  # fmt: skip
        iso = _context_iso(
            work,
            {
                "NAME": name,
                "ETH0_IP": GUEST_IP,
                "ETH0_MASK": "255.255.255.0",
                "ETH0_GATEWAY": GATEWAY,
                "ETH0_MAC": mac,
                "LIFETIME": "3",
                "LXCLOUD_API": f"http://{BRIDGE_IP}:{api.port}/RPC2",
                "VMID": str(vm_id),
                "LXCLOUD_TOKEN": token,
                "DRAIN_CHECK_INTERVAL": "1",
            },
        )
        (work / "domain.xml").write_text(_domain_xml(name, test_image, work, iso, mac))
        _virsh("lxh1", "define", str(work / "domain.xml"))
        defined = True
        t0 = time.monotonic()
        _virsh("lxh1", "start", name)
        log = work / "serial.log"
        marker = f"LXCLOUD-BOOTED name={name} ip={GUEST_IP} mac={mac} vmid={vm_id}"
        _wait_for(lambda: log.exists() and marker in log.read_text(errors="replace"), 120,
                  "the boot marker", log)  # fmt: skip
        print(f"boot-to-marker on testbed host lxh1: {time.monotonic() - t0:.2f} s")
        _wait_for(lambda: bool(api.calls), 120, "the callback on the bridge address", log)
        assert [c[:3] for c in api.calls] == [(f"vm-{vm_id}:{token}", "terminate", vm_id)]

        def shut_off() -> bool:
            return _virsh("lxh1", "domstate", name, check=False).stdout.strip() == "shut off"

        _wait_for(shut_off, 60, "the domain to shut off", log)
        print(f"start-to-shutoff on lxh1 (LIFETIME=3): {time.monotonic() - t0:.2f} s")
    finally:
        api.close()
        if defined:
            _virsh("lxh1", "destroy", name, check=False)
            _virsh("lxh1", "undefine", name, check=False)
        shutil.rmtree(work, ignore_errors=True)
        if created:
            subprocess.run([str(TESTBED / "down")], capture_output=True, timeout=300, check=False)
