"""testbed/testbed.py without root: rates, layout, settings, and the files it generates."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("lxtestbed", REPO / "testbed" / "testbed.py")
assert _spec and _spec.loader
tbmod = importlib.util.module_from_spec(_spec)
sys.modules["lxtestbed"] = tbmod  # dataclasses look their module up
_spec.loader.exec_module(tbmod)
tbfiles = importlib.import_module("lxtb.files")  # testbed.py put its parts on the path


@pytest.fixture
def tb(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    for var in ("LXCLOUD_TESTBED_NET", "LXCLOUD_TESTBED_PREFIX", "LXCLOUD_TESTBED_BRIDGE"):
        monkeypatch.delenv(var, raising=False)
    # In the repository's cache: relocated by the testbed when the clone lies under /tmp.
    d = REPO / ".cache" / f"testbed-unit-{os.getpid()}"
    testbed = tbmod.Testbed(d)
    testbed.dir.mkdir(parents=True, exist_ok=True)
    yield testbed
    shutil.rmtree(testbed.dir, ignore_errors=True)
    if d.is_symlink():
        d.unlink()


@pytest.mark.parametrize(
    ("rate", "text", "bits"),
    [("100mbit", "100mbit", 10**8), ("1GBIT", "1gbit", 10**9), ("12.5mbps", "12.5mbps", 10**8)],
)
def test_parse_rate(rate: str, text: str, bits: int) -> None:
    assert tbmod.parse_rate(rate) == (text, bits)


@pytest.mark.parametrize("rate", ["100", "fast", "100 mbit", "1kbit", "10mbit;reboot", ""])
def test_parse_rate_rejects(rate: str) -> None:
    with pytest.raises(tbmod.TestbedError):
        tbmod.parse_rate(rate)


def test_host_layout(tb) -> None:
    h = tb.host(3)
    assert (h.name, h.ip, h.veth) == ("lxh3", "10.213.0.13", "tb-lxh3")
    assert tb.bridge_ip == "10.213.0.1"
    assert tb.api_url == "http://10.213.0.1:2633/RPC2"
    with pytest.raises(tbmod.TestbedError):
        tb.host(0)
    with pytest.raises(tbmod.TestbedError):
        tb.host(tb.max_hosts + 1)


def test_dir_under_a_replaced_path_is_relocated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hosts bind their own /tmp, /root, /run ...: a testbed asked for under one of them (a
    clone in /tmp) lives under RELOCATED_ROOT, reached through a link where it was asked for."""
    monkeypatch.delenv("LXCLOUD_TESTBED_NET", raising=False)
    asked = tmp_path / "clone" / ".testbed"
    assert str(asked).startswith("/tmp/")
    testbed = tbmod.Testbed(asked)
    try:
        assert testbed.dir.parent == tbmod.RELOCATED_ROOT
        assert asked.is_symlink() and asked.resolve() == testbed.dir
        assert tbmod.Testbed(asked).dir == testbed.dir  # the link is followed next time
    finally:
        shutil.rmtree(testbed.dir, ignore_errors=True)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    with pytest.raises(tbmod.TestbedError, match="every host replaces"):
        tbmod.Testbed(occupied)


def test_settings_of_a_running_testbed_win(tb, monkeypatch: pytest.MonkeyPatch) -> None:
    (tb.dir / "state.json").write_text(json.dumps(
        {"hosts": [1], "net": "10.99.0.0/24", "prefix": "lxq", "bridge": "lxqbr0"}))
    again = tbmod.Testbed(tb.dir)
    assert (again.host(1).name, again.host(1).ip, again.bridge) == ("lxq1", "10.99.0.11", "lxqbr0")
    monkeypatch.setenv("LXCLOUD_TESTBED_NET", "10.98.0.0/24")
    with pytest.raises(tbmod.TestbedError, match="down first"):
        tbmod.Testbed(tb.dir)


@pytest.mark.parametrize(("var", "value"), [("LXCLOUD_TESTBED_PREFIX", "a/b"),
                                            ("LXCLOUD_TESTBED_PREFIX", "lx h"),
                                            ("LXCLOUD_TESTBED_BRIDGE", "br;0"),
                                            ("LXCLOUD_TESTBED_NET", "10.1.0.0/28")])
def test_bad_settings_are_refused(tb, monkeypatch: pytest.MonkeyPatch, var: str,
                                  value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(tbmod.TestbedError):
        tbmod.Testbed(tb.dir)


def test_generated_inventory_ssh_config_and_hosts_files(tb) -> None:
    hosts = [tb.host(1), tb.host(2)]
    for h in hosts:
        (h.dir / "ssh").mkdir(parents=True)
        (h.dir / "ssh" / "ssh_host_ed25519_key.pub").write_text(
            f"ssh-ed25519 AAAAkey{h.index} root@{h.name}\n")
    tbfiles.write_client_files(tb, hosts)
    inv = tb.inventory.read_text()
    assert "[hypervisors]" in inv
    assert "lxh2 ansible_host=10.213.0.12" in inv
    for var in ("ansible_user=root", "ansible_python_interpreter=/usr/bin/python3",
                f"ansible_ssh_private_key_file={tb.key}", "hypervisor_state_dir=/var/lib/lxcloud",
                "hypervisor_images_dir=/var/lib/lxcloud/images",
                "hypervisor_api_url=http://10.213.0.1:2633/RPC2",
                f"ansible_ssh_common_args='-F {tb.ssh_config}'"):
        assert var in inv.splitlines(), var
    known = (tb.dir / "known_hosts").read_text().splitlines()
    assert known == [
        "lxh1,10.213.0.11 ssh-ed25519 AAAAkey1",
        "lxh2,10.213.0.12 ssh-ed25519 AAAAkey2",
    ]
    cfg = tb.ssh_config.read_text()
    assert "Host lxh2\n  HostName 10.213.0.12" in cfg
    assert "StrictHostKeyChecking yes" in cfg
    info = json.loads((tb.dir / "hosts.json").read_text())
    assert [h["ip"] for h in info["hosts"]] == ["10.213.0.11", "10.213.0.12"]

    # /etc/hosts is rewritten in place: a running host has it bind-mounted by inode.
    tbfiles.write_etc_hosts(tb, hosts[:1])
    ino = (hosts[0].dir / "hosts").stat().st_ino
    tbfiles.write_etc_hosts(tb, hosts)
    assert (hosts[0].dir / "hosts").stat().st_ino == ino
    assert "10.213.0.12\tlxh2" in (hosts[0].dir / "hosts").read_text()
