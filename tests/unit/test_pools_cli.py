"""``lxcloud pool`` (set, list, show, delete, apply) and the exit reason in ``lxcloud vm show``,
through the CLI entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from lxcloud_py import pools, vms
from lxcloud_py.cli import main
from lxcloud_py.model import LCMState, VMState
from lxcloud_py.store import Store, schema

TPL = 'CPU = 0.5\nMEMORY = 256\nDISK = [ IMAGE = "golden" ]\n'


@pytest.fixture
def db(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    args = ["--db", sqlite_url]
    assert main([*args, "db", "init", "--admin-password", "pw"]) == 0
    capsys.readouterr()
    return args


def out_of(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out


def test_set_list_show_delete(db: list[str], tmp_path: Path, capsys) -> None:
    tpl = tmp_path / "batch.tpl"
    tpl.write_text(TPL)
    assert main([*db, "pool", "set", "batch", "--template", str(tpl), "--count", "3",
                 "--lifetime", "600"]) == 0
    assert out_of(capsys) == "pool batch created: target 3, lifetime 600 s\n"
    assert main([*db, "pool", "set", "svc", "--image", "golden", "--memory", "128",
                 "--priority", "5", "--hosts", "h1,h2"]) == 0
    capsys.readouterr()
    assert main([*db, "pool", "set", "batch", "--count", "1", "--hard"]) == 0
    assert out_of(capsys) == "pool batch: target 3 -> 1; drain graceful -> hard\n"
    assert main([*db, "pool", "set", "batch", "--count", "1", "--hard"]) == 0
    assert out_of(capsys) == "pool batch: unchanged\n"
    assert main([*db, "pool", "list"]) == 0
    lines = out_of(capsys).splitlines()
    assert lines[0].split()[:5] == ["id", "name", "target", "active", "pending"]
    assert lines[2].split()[:3] == ["2", "svc", "0"]  # higher priority first
    assert lines[3].split()[:3] == ["1", "batch", "1"]
    assert lines[-1] == "2 pools"
    store = Store(db[1])
    try:
        done = pools.PoolManager(store).cycle()
    finally:
        store.dispose()
    assert [d.action for d in done] == ["refill"]
    assert main([*db, "pool", "show", "batch"]) == 0
    text = out_of(capsys)
    assert "drain mode : hard" in text and "active     : 1 (1 pending)" in text
    assert "refill" in text and "1 active" not in text.split("decisions")[0]
    assert 'IMAGE = "golden"' in text or "IMAGE = golden" in text
    assert main([*db, "pool", "show", "batch", "--xml"]) == 0
    assert out_of(capsys).startswith("<POOL><ID>1</ID><NAME>batch</NAME>")
    assert main([*db, "pool", "delete", "batch"]) == 1  # a live VM
    assert "still has 1 live VM" in capsys.readouterr().err
    assert main([*db, "pool", "delete", "svc"]) == 0
    assert main([*db, "pool", "show", "svc"]) == 1
    assert main([*db, "pool", "set", "new"]) == 1  # no template, no image
    assert "give template" in capsys.readouterr().err
    assert main([*db, "pool", "set", "ctx", "--image", "golden", "--context", "VM_EXIT_CODE=300",
                 "--context", "NOTE=a b"]) == 0
    store = Store(db[1])
    try:
        with store.transaction() as conn:
            tpl = vms.parse_spec(pools.get_spec(conn, "ctx").template).template
    finally:
        store.dispose()
    assert tpl.vectors("CONTEXT") == [{"VM_EXIT_CODE": "300", "NOTE": "a b"}]
    assert main([*db, "pool", "set", "ctx2", "--image", "golden", "--context", "NOEQUALS"]) == 1
    assert "--context takes KEY=VALUE" in capsys.readouterr().err


def test_apply_prune_and_errors(db: list[str], tmp_path: Path, capsys) -> None:
    f = tmp_path / "pools.yml"
    f.write_text(
        "pools:\n"
        "  - name: batch\n"
        "    image: golden\n"
        "    memory: 128\n"
        "    target: 4\n"
        "    lifetime: 300\n"
        "  - name: service\n"
        "    template: |\n"
        "      CPU = 1\n"
        "      MEMORY = 64\n"
        "    target: 2\n"
        "    priority: 10\n"
    )
    assert main([*db, "pool", "apply", str(f), "--dry-run"]) == 0
    assert "would create batch" in out_of(capsys)
    assert main([*db, "pool", "apply", str(f)]) == 0
    assert out_of(capsys).splitlines()[-1] == "2 pool(s), 2 changed"
    assert main([*db, "pool", "apply", str(f)]) == 0
    assert out_of(capsys).splitlines()[-1] == "2 pool(s), 0 changed"
    f.write_text(f.read_text().replace("target: 4", "target: 1").split("  - name: service")[0])
    assert main([*db, "pool", "apply", str(f)]) == 0
    assert out_of(capsys).splitlines() == ["update batch: target 4 -> 1", "1 pool(s), 1 changed"]
    assert main([*db, "pool", "apply", str(f), "--prune"]) == 0
    assert "delete service" in out_of(capsys)
    # errors name the file and the line of the offending field
    bad = tmp_path / "bad.yml"
    bad.write_text("pools:\n  - name: a\n    image: golden\n    target: -2\n  - name: b\n"
                   "    image: golden\n    colour: red\n")
    assert main([*db, "pool", "apply", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:4: pool a: target must be between 0 and 100000, got -2" in err
    assert f"{bad}:7: unknown pool field(s): colour" in err
    bad.write_text("pools:\n  - name: a\n    image: [unclosed\n")
    assert main([*db, "pool", "apply", str(bad)]) == 1
    assert f"{bad}:4: not valid YAML" in capsys.readouterr().err
    bad.write_text("pools:\n  - name: a\n    image: g\n  - name: a\n    image: g\n")
    assert main([*db, "pool", "apply", str(bad)]) == 1
    assert f"{bad}:4: pool a declared twice (first at line 2)" in capsys.readouterr().err


def test_prune_drains_a_pool_with_live_vms(db: list[str], tmp_path: Path, capsys) -> None:
    assert main([*db, "pool", "set", "old", "--image", "golden", "--count", "2"]) == 0
    store = Store(db[1])
    try:
        pools.PoolManager(store).cycle()
        f = tmp_path / "empty.yml"
        f.write_text("pools: []\n")
        capsys.readouterr()
        assert main([*db, "pool", "apply", str(f), "--prune"]) == 0
        assert "drain old: target 2 -> 0" in out_of(capsys)
        pools.PoolManager(store).cycle()  # PENDING VMs: terminated at once
        assert main([*db, "pool", "apply", str(f), "--prune"]) == 0
        assert "delete old" in out_of(capsys)
    finally:
        store.dispose()


def test_vm_show_prints_exit_and_pool(db: list[str], capsys) -> None:
    assert main([*db, "pool", "set", "batch", "--image", "golden", "--count", "1"]) == 0
    store = Store(db[1])
    try:
        (d,) = pools.PoolManager(store).cycle()
        with store.transaction() as conn:
            conn.execute(
                schema.vms.update()
                .where(schema.vms.c.id == d.vm_id)
                .values(state=int(VMState.ACTIVE), lcm_state=int(LCMState.RUNNING))
            )
        vms.exit_vm(store, d.vm_id, 300, "queue empty")
    finally:
        store.dispose()
    capsys.readouterr()
    assert main([*db, "vm", "show", str(d.vm_id)]) == 0
    text = out_of(capsys)
    assert "pool          : batch (1)" in text
    assert 'exit          : 300 (no more work available from the task queue) "queue empty" at ' \
        in text
    assert main([*db, "vm", "show", str(d.vm_id), "--xml"]) == 0
    assert "<LXCLOUD_EXIT_CODE>300</LXCLOUD_EXIT_CODE>" in out_of(capsys)


def test_help_has_no_side_effects(tmp_path: Path, capsys) -> None:
    db = tmp_path / "none.db"
    for sub in ("set", "list", "show", "delete", "apply"):
        with pytest.raises(SystemExit) as exc:
            main(["--db", f"sqlite:///{db}", "pool", sub, "--help"])
        assert exc.value.code == 0
    assert not db.exists()
