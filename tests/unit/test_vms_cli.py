"""``lxcloud vm`` and ``lxcloud host`` tables (through the CLI entry point)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lxcloud_py import hosts
from lxcloud_py.cli import main
from lxcloud_py.store import Store


def test_vm_and_host_commands(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ["--db", sqlite_url]
    assert main([*db, "db", "init", "--admin-password", "pw"]) == 0
    store = Store(sqlite_url)
    try:
        hosts.register(store, "hv1", 4, 8192, 100, ["52:54:00:00:00:01"])
    finally:
        store.dispose()
    tpl = tmp_path / "worker.tpl"
    tpl.write_text('NAME = "worker"\nCPU = 0.5\nMEMORY = 256\nDISK = [ IMAGE = "golden" ]\n')
    capsys.readouterr()
    assert main([*db, "vm", "create", str(tpl)]) == 0
    assert main([*db, "vm", "create", str(tpl), "--hold", "--print-token"]) == 0
    out = capsys.readouterr().out
    assert "VM 1 created (PENDING)" in out and "VM 2 created (HOLD)" in out
    assert "token: " in out
    assert main([*db, "vm", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "id",
        "name",
        "state",
        "host",
        "ip",
        "cpu",
        "mem_mb",
        "image",
        "created",
        "message",
    ]
    assert out[2].split()[:3] == ["1", "worker", "PENDING"]
    assert out[3].split()[:3] == ["2", "worker", "HOLD"]
    assert out[-1] == "2 VMs"
    assert main([*db, "vm", "show", "2"]) == 0
    out = capsys.readouterr().out
    assert "state         : HOLD" in out and "IMAGE = golden" in out
    assert main([*db, "vm", "show", "2", "--xml"]) == 0
    assert capsys.readouterr().out.startswith("<VM><ID>2</ID>")
    assert main([*db, "vm", "terminate", "1", "2", "9"]) == 1
    captured = capsys.readouterr()
    assert "VM 1: DONE" in captured.out and "VM 2: DONE" in captured.out
    assert "VM 9" in captured.err
    assert main([*db, "vm", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0 VMs"
    assert main([*db, "vm", "list", "--all"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 VMs"
    assert main([*db, "vm", "show", "9"]) == 1
    bad = tmp_path / "bad.tpl"
    bad.write_text('NAME = "x"\nCPU = [\n')
    assert main([*db, "vm", "create", str(bad)]) == 1
    assert "line 2" in capsys.readouterr().err
    # hosts
    assert main([*db, "host", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "id",
        "name",
        "state",
        "cpu",
        "mem_mb",
        "vms",
        "macs",
        "images",
        "last_seen",
    ]
    assert out[2].split()[:7] == ["1", "hv1", "MONITORED", "0/4", "0/8192", "0", "1"]
    assert main([*db, "host", "disable", "hv1"]) == 0
    assert "hv1: DISABLED" in capsys.readouterr().out
    assert main([*db, "host", "enable", "1"]) == 0
    assert "1: MONITORED" in capsys.readouterr().out
    assert main([*db, "host", "offline", "ghost"]) == 1
