"""domain.py: option validation, XML built with ElementTree, managed fields read back from
libvirt's expanded XML, change detection, and the stop-and-wait logic (fake clock)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from ansible_collections.lxcloud.cloud.plugins.module_utils import domain as D
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import InvalidName

EXPANDED = (Path(__file__).parent / "data" / "libvirt-expanded-domain.xml").read_text()


def spec(**kw):
    args = dict(
        name="lxvm-1", disk="/var/lib/lxcloud/disks/lxvm-1.qcow2",
        context="/var/lib/lxcloud/disks/lxvm-1.context.iso", virt_type="qemu",
        kernel="/boot/vmlinuz", initrd="/boot/initrd.img", cmdline="console=ttyS0 root=/dev/vda",
        mac="52:54:00:0A:00:0B", bridge="br0",
        console_log="/var/lib/lxcloud/disks/lxvm-1.console.log",
    )
    args.update(kw)
    return D.make_spec(**args)


def test_build_parse_round_trip() -> None:
    s = spec()
    assert D.parse_xml(D.build_xml(s)) == s
    u = spec(bridge=None, network="user", user_subnet={"address": "10.0.3.0", "prefix": 24})
    assert D.parse_xml(D.build_xml(u)) == u
    bare = spec(kernel=None, initrd=None, cmdline=None, context=None, bridge=None, mac=None,
                console_log=None, disk="/dev/vg0/lxvm-1", disk_format="raw")
    assert bare["disk"]["type"] == "block"
    assert D.parse_xml(D.build_xml(bare)) == bare
    kvm = spec(virt_type="kvm", cpu_mode="host-passthrough")
    assert D.parse_xml(D.build_xml(kvm)) == kvm
    assert '<cpu mode="host-passthrough" />' in D.build_xml(kvm)


def test_xml_shape() -> None:
    root = ET.fromstring(D.build_xml(spec(memory_mb=1024, vcpus=2)))  # noqa: S314
    assert root.get("type") == "qemu"
    assert root.find("features/acpi") is not None
    assert root.find("devices/graphics") is None
    assert root.findtext("memory") == "1024" and root.find("memory").get("unit") == "MiB"
    assert root.findtext("vcpu") == "2"
    vdb = next(d for d in root.findall("devices/disk") if d.find("target").get("dev") == "vdb")
    assert vdb.find("readonly") is not None and vdb.find("driver").get("type") == "raw"
    assert root.find("devices/interface/mac").get("address") == "52:54:00:0a:00:0b"
    assert root.find("devices/serial").get("type") == "file"
    assert root.find("devices/console/target").get("type") == "serial"


def test_hostile_text_is_escaped_not_injected() -> None:
    # cmdline is free text (validated for control characters); XML metacharacters stay text
    s = spec(cmdline="console=ttyS0 x=<devices><graphics type='vnc'/></devices> & y")
    root = ET.fromstring(D.build_xml(s))  # noqa: S314
    assert root.findtext("os/cmdline") == s["cmdline"]
    assert root.find("devices/graphics") is None and root.find("os/devices") is None


def test_managed_fields_of_libvirt_expanded_xml() -> None:
    got = D.parse_xml(EXPANDED)
    assert got["type"] == "qemu" and got["name"] == "lxvm-x"
    assert got["memory_mb"] == 512 and got["vcpus"] == 1
    assert got["disk"] == {"path": "/var/tmp/lxvm-manual/x.qcow2", "format": "qcow2",
                           "type": "file"}
    assert got["context"] == "/var/tmp/lxvm-manual/x.iso"
    assert got["nic"] == {"mode": "bridge", "mac": "52:54:00:2c:94:87", "bridge": "br0",
                          "subnet": None}
    assert got["console_log"] == "/var/tmp/lxvm-manual/lxvm-x.console.log"
    assert got["cpu_mode"] is None  # libvirt's <cpu mode='custom'> default model
    want = D.make_spec(
        name="lxvm-x", disk="/var/tmp/lxvm-manual/x.qcow2", context="/var/tmp/lxvm-manual/x.iso",
        virt_type="qemu", kernel="/boot/vmlinuz-6.1.0-56-amd64",
        cmdline="console=ttyS0 root=/dev/vda", bridge="br0",
        console_log="/var/tmp/lxvm-manual/lxvm-x.console.log",
    )
    # libvirt's additions (controllers, addresses, machine, boot dev, cpu) are not changes and
    # a NIC without a requested MAC accepts the generated one
    assert D.compare(got, want) == []
    assert D.compare(got, dict(want, memory_mb=1024)) == ["memory_mb"]
    fixed_mac = D.make_spec(**{**dict(
        name="lxvm-x", disk="/var/tmp/lxvm-manual/x.qcow2", context="/var/tmp/lxvm-manual/x.iso",
        virt_type="qemu", kernel="/boot/vmlinuz-6.1.0-56-amd64",
        cmdline="console=ttyS0 root=/dev/vda", bridge="br0",
        console_log="/var/tmp/lxvm-manual/lxvm-x.console.log"), "mac": "52:54:00:00:00:01"})
    assert D.compare(got, fixed_mac) == ["nic"]
    assert D.adopt_generated(got, want)["nic"]["mac"] == "52:54:00:2c:94:87"


def test_stable_uuid() -> None:
    assert spec()["uuid"] == spec()["uuid"] == D.stable_uuid("lxvm-1")
    assert spec(name="lxvm-2")["uuid"] != spec()["uuid"]
    assert spec(uuid="0E5B3B0C-1111-2222-3333-444455556666")["uuid"] == (
        "0e5b3b0c-1111-2222-3333-444455556666"
    )


@pytest.mark.parametrize(
    ("kw", "item"),
    [
        ({"name": "../etc"}, "vm name"),
        ({"name": "a b"}, "vm name"),
        ({"name": "x;reboot"}, "vm name"),
        ({"name": "x'"}, "vm name"),
        ({"name": "x\ny"}, "vm name"),
        ({"name": "$(id)"}, "vm name"),
        ({"disk": "/var/lib/../../etc/shadow"}, "disk"),
        ({"disk": "relative.qcow2"}, "disk"),
        ({"context": "/x/a b.iso"}, "context"),
        ({"kernel": "/boot/vm'linuz"}, "kernel"),
        ({"bridge": "br0;x"}, "bridge"),
        ({"bridge": "../br"}, "bridge"),
        ({"mac": "52:54:00:0a:00"}, "mac"),
        ({"cmdline": "console=ttyS0\nx"}, "cmdline"),
        ({"virt_type": "lxc"}, "virt_type"),
        ({"memory_mb": 1}, "memory_mb"),
        ({"vcpus": 0}, "vcpus"),
        ({"uuid": "nope"}, "uuid"),
        ({"cpu_mode": "host'"}, "cpu_mode"),
        ({"bridge": None, "network": "user", "user_subnet": {"address": "10.0.2"}},
         "user_subnet.address"),
        ({"console_log": "/tmp/x\0"}, "console_log"),
    ],
)
def test_bad_options_refused_naming_the_item(kw, item) -> None:
    with pytest.raises(InvalidName) as exc:
        spec(**kw)
    assert exc.value.what == item


def test_option_combinations() -> None:
    with pytest.raises(InvalidName, match="either bridge or network"):
        spec(network="user")
    with pytest.raises(InvalidName, match="need kernel"):
        spec(kernel=None)
    with pytest.raises(InvalidName, match="needs bridge or network"):
        spec(bridge=None)


def test_managed_files_only_under_storage_dir(tmp_path) -> None:
    store = tmp_path / "disks"
    store.mkdir()
    s = {"disk": {"path": str(store / "a.qcow2")}, "context": "/etc/passwd"}
    assert D.managed_files(s, str(store)) == [str(store / "a.qcow2")]
    assert D.managed_files({"disk": {"path": "/dev/vg0/x"}, "context": None}, str(store)) == []


class FakeDom:
    def __init__(self, states):
        self.states = list(states)
        self.calls: list[str] = []

    def state(self):
        return [self.states[0] if len(self.states) == 1 else self.states.pop(0), 0]

    def shutdown(self):
        self.calls.append("shutdown")

    def destroy(self):
        self.calls.append("destroy")
        self.states = [D.SHUTOFF]

    def name(self):
        return "lxvm-1"


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


@pytest.mark.skipif(not D.HAS_LIBVIRT, reason="libvirt bindings missing")
def test_stop_waits_for_graceful_shutdown() -> None:
    dom = FakeDom([1, 1, 1, 4, 4, D.SHUTOFF])
    clock = Clock()
    assert D.stop(dom, 10, poll=1, clock=clock, sleep=clock.sleep) is False
    assert dom.calls == ["shutdown"]
    assert clock.t < 10


@pytest.mark.skipif(not D.HAS_LIBVIRT, reason="libvirt bindings missing")
def test_stop_forces_off_after_timeout() -> None:
    dom = FakeDom([1])
    clock = Clock()
    assert D.stop(dom, 5, poll=1, clock=clock, sleep=clock.sleep) is True
    assert dom.calls == ["shutdown", "destroy"]
    assert clock.t >= 5


@pytest.mark.skipif(not D.HAS_LIBVIRT, reason="libvirt bindings missing")
def test_stop_of_stopped_domain_does_nothing() -> None:
    dom = FakeDom([D.SHUTOFF])
    assert D.stop(dom, 5) is False and dom.calls == []


@pytest.mark.skipif(not D.HAS_LIBVIRT, reason="libvirt bindings missing")
def test_stop_of_paused_domain_forces_at_once() -> None:
    dom = FakeDom([3])
    clock = Clock()
    assert D.stop(dom, 30, poll=1, clock=clock, sleep=clock.sleep) is True
    assert dom.calls == ["destroy"] and clock.t == 0
