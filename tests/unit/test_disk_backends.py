"""disk_backends: exact commands for lvm (no device-mapper here), golden-image checks, file
clone bookkeeping with a recording fake of run_command."""

from __future__ import annotations

import json
import os

import pytest
from ansible_collections.lxcloud.cloud.plugins.module_utils import disk_backends as db
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import InvalidName

LVS_CLASSIC = json.dumps(
    {
        "report": [
            {
                "lv": [
                    {"lv_name": "golden", "vg_name": "vg0", "origin": "", "pool_lv": "",
                     "segtype": "linear", "lv_size": "4294967296", "lv_attr": "owi-a-----"},
                    {"lv_name": "other", "vg_name": "vg0", "origin": "", "pool_lv": "",
                     "segtype": "linear", "lv_size": "1073741824", "lv_attr": "-wi-a-----"},
                ]
            }
        ]
    }
)


def lvs_json(*lvs: dict) -> str:
    return json.dumps({"report": [{"lv": list(lvs)}]})


class FakeRun:
    """Records argument lists; answers from a list of (predicate, (rc, out, err))."""

    def __init__(self, answers=()):
        self.calls: list[list[str]] = []
        self.answers = list(answers)

    def __call__(self, argv):
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), argv
        self.calls.append(list(argv))
        for pred, ans in self.answers:
            if pred(argv):
                return ans(argv) if callable(ans) else ans
        raise AssertionError(f"unexpected command {argv}")


def is_lvs(argv):
    return argv[0] == "lvs"


def test_parse_lvs_report() -> None:
    lvs = db.parse_lvs(LVS_CLASSIC)
    assert [lv["lv_name"] for lv in lvs] == ["golden", "other"]
    assert lvs[0]["segtype"] == "linear"
    with pytest.raises(db.DiskError, match="no JSON"):
        db.parse_lvs("  WARNING: something\n")


def test_lvs_command_line() -> None:
    run = FakeRun([(is_lvs, (0, LVS_CLASSIC, ""))])
    db.lvs(run, "vg0")
    assert run.calls == [
        ["lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", db.LVS_FIELDS, "vg0"]
    ]


def test_lvm_classic_snapshot_exact_command() -> None:
    state = {"lvs": LVS_CLASSIC}
    run = FakeRun(
        [
            (is_lvs, lambda a: (0, state["lvs"], "")),
            (lambda a: a[0] == "lvcreate", (0, "", "")),
        ]
    )
    spec = db.CloneSpec("lxvm-1", "lvm", "golden", vg="vg0", size="2G")
    changed, before, _after = db.ensure_present(run, spec)
    assert changed and before is None
    assert ["lvcreate", "-s", "-n", "lxvm-1", "-L", "2G", "vg0/golden"] in run.calls
    assert spec.path == "/dev/vg0/lxvm-1"


def test_lvm_thin_snapshot_exact_command() -> None:
    thin = lvs_json(
        {"lv_name": "pool", "vg_name": "vg0", "origin": "", "pool_lv": "", "segtype": "thin-pool"},
        {"lv_name": "tgold", "vg_name": "vg0", "origin": "", "pool_lv": "pool", "segtype": "thin"},
    )
    run = FakeRun([(is_lvs, (0, thin, "")), (lambda a: a[0] == "lvcreate", (0, "", ""))])
    spec = db.CloneSpec("lxvm-2", "lvm", "tgold", vg="vg0")
    db.ensure_present(run, spec)
    assert ["lvcreate", "-s", "-ay", "-K", "-n", "lxvm-2", "vg0/tgold"] in run.calls


def test_lvm_classic_needs_size() -> None:
    run = FakeRun([(is_lvs, (0, LVS_CLASSIC, ""))])
    spec = db.CloneSpec("lxvm-1", "lvm", "golden", vg="vg0", lvm_snapshot="classic")
    with pytest.raises(db.DiskError, match="needs size"):
        db.ensure_present(run, spec)
    assert not [c for c in run.calls if c[0] == "lvcreate"]


def test_lvm_existing_snapshot_of_same_origin_is_no_change() -> None:
    lvs = lvs_json(
        {"lv_name": "golden", "origin": "", "segtype": "linear"},
        {"lv_name": "lxvm-1", "origin": "golden", "segtype": "linear"},
    )
    run = FakeRun([(is_lvs, (0, lvs, ""))])
    changed, before, after = db.ensure_present(
        run, db.CloneSpec("lxvm-1", "lvm", "golden", vg="vg0", size="2G")
    )
    assert not changed and before == after
    assert all(c[0] == "lvs" for c in run.calls)


def test_lvm_existing_snapshot_of_other_origin_fails_clearly() -> None:
    lvs = lvs_json(
        {"lv_name": "golden", "origin": "", "segtype": "linear"},
        {"lv_name": "lxvm-1", "origin": "older", "segtype": "linear"},
    )
    run = FakeRun([(is_lvs, (0, lvs, ""))])
    with pytest.raises(db.DiskError, match="clone of older, not of golden"):
        db.ensure_present(run, db.CloneSpec("lxvm-1", "lvm", "golden", vg="vg0", size="2G"))


def test_lvm_force_replaces_other_origin() -> None:
    lvs = lvs_json(
        {"lv_name": "golden", "origin": "", "segtype": "linear"},
        {"lv_name": "lxvm-1", "origin": "older", "segtype": "linear"},
    )
    mutate = (lambda a: a[0] in ("lvremove", "lvcreate"), (0, "", ""))
    run = FakeRun([(is_lvs, (0, lvs, "")), mutate])
    db.ensure_present(run, db.CloneSpec("lxvm-1", "lvm", "golden", vg="vg0", size="2G"), force=True)
    cmds = [c for c in run.calls if c[0] != "lvs"]
    assert cmds == [
        ["lvremove", "-f", "vg0/lxvm-1"],
        ["lvcreate", "-s", "-n", "lxvm-1", "-L", "2G", "vg0/golden"],
    ]


def test_lvm_check_mode_runs_no_mutation() -> None:
    run = FakeRun([(is_lvs, (0, LVS_CLASSIC, ""))])
    changed, _, after = db.ensure_present(
        run, db.CloneSpec("lxvm-1", "lvm", "golden", vg="vg0", size="2G"), check_mode=True
    )
    assert changed and after["path"] == "/dev/vg0/lxvm-1"
    assert all(c[0] == "lvs" for c in run.calls)


def test_lvm_failed_create_removes_partial_lv_and_reports_output() -> None:
    lvs_after = lvs_json(
        {"lv_name": "golden", "origin": "", "segtype": "linear"},
        {"lv_name": "lxvm-1", "origin": "golden", "segtype": "linear"},
    )
    seq = iter([LVS_CLASSIC, LVS_CLASSIC, lvs_after])
    err = (
        "  /dev/mapper/control: open failed\n"
        "  Failure to communicate with kernel device-mapper driver."
    )
    run = FakeRun(
        [
            (is_lvs, lambda a: (0, next(seq), "")),
            (lambda a: a[0] == "lvcreate", (5, "", err)),
            (lambda a: a[0] == "lvremove", (0, "", "")),
        ]
    )
    with pytest.raises(db.DiskError) as exc:
        db.ensure_present(run, db.CloneSpec("lxvm-1", "lvm", "golden", vg="vg0", size="2G"))
    assert "device-mapper" in exc.value.msg
    assert exc.value.result["rc"] == 5 and exc.value.result["stderr"] == err
    assert ["lvremove", "-f", "vg0/lxvm-1"] in run.calls


def test_lvm_missing_base() -> None:
    run = FakeRun([(is_lvs, (0, LVS_CLASSIC, ""))])
    with pytest.raises(db.DiskError, match="vg0/nope does not exist"):
        db.ensure_present(run, db.CloneSpec("x", "lvm", "nope", vg="vg0", size="1G"))


def test_lvm_absent() -> None:
    lvs = lvs_json({"lv_name": "lxvm-1", "origin": "golden", "segtype": "linear"})
    run = FakeRun([(is_lvs, (0, lvs, "")), (lambda a: a[0] == "lvremove", (0, "", ""))])
    spec = db.CloneSpec("lxvm-1", "lvm", "golden", vg="vg0")
    changed, before, after = db.ensure_absent(run, spec)
    assert changed and before["base"] == "golden" and after is None
    assert run.calls[-1] == ["lvremove", "-f", "vg0/lxvm-1"]
    run2 = FakeRun([(is_lvs, (0, LVS_CLASSIC, ""))])
    assert db.ensure_absent(run2, spec) == (False, None, None)


@pytest.mark.parametrize(
    "info",
    [
        {"format": "qcow2", "backing-filename": "/etc/shadow",
         "full-backing-filename": "/etc/shadow"},
        {"format": "qcow2", "format-specific": {"type": "qcow2", "data": {"data-file": "d.raw"}}},
    ],
)
def test_golden_with_backing_or_data_file_is_refused(info, tmp_path) -> None:
    base = tmp_path / "golden.qcow2"
    base.write_bytes(b"x")
    run = FakeRun([(lambda a: a[:2] == ["qemu-img", "info"], (0, json.dumps(info), ""))])
    spec = db.CloneSpec("c.qcow2", "qcow2", str(base), directory=str(tmp_path))
    with pytest.raises(db.DiskError, match="golden image references a backing or data file"):
        db.ensure_present(run, spec)
    assert not [c for c in run.calls if c[1] == "create"]
    assert sorted(os.listdir(tmp_path)) == ["golden.qcow2"]


def test_golden_format_must_match_declared(tmp_path) -> None:
    base = tmp_path / "g.raw"
    base.write_bytes(b"x")
    run = FakeRun([(lambda a: a[:2] == ["qemu-img", "info"], (0, '{"format": "qcow2"}', ""))])
    spec = db.CloneSpec("c", "copy", str(base), directory=str(tmp_path), base_format="raw")
    with pytest.raises(db.DiskError, match="is qcow2, not the declared base_format raw"):
        db.ensure_present(run, spec)


def test_qcow2_create_command_and_atomic_rename(tmp_path) -> None:
    base = tmp_path / "g.raw"
    base.write_bytes(b"x")
    created = []

    def create(argv):
        open(argv[-1], "w").close()
        created.append(argv)
        return (0, "", "")

    infos = {str(base): {"format": "raw"}}

    def info(argv):
        return (0, json.dumps(infos.get(argv[-1], {"format": "qcow2",
                "backing-filename": str(base), "backing-filename-format": "raw"})), "")

    run = FakeRun([(lambda a: a[:2] == ["qemu-img", "info"], info),
                   (lambda a: a[:2] == ["qemu-img", "create"], create)])
    spec = db.CloneSpec("c.qcow2", "qcow2", str(base), directory=str(tmp_path))
    changed, _, after = db.ensure_present(run, spec)
    assert changed
    (argv,) = created
    tmp = argv[-1]
    assert argv == ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", tmp]
    assert os.path.dirname(tmp) == str(tmp_path)
    assert os.path.basename(tmp).startswith(".c.qcow2.tmp-")
    assert not os.path.exists(tmp) and (tmp_path / "c.qcow2").exists()
    assert after["base"] == str(base) and after["backend"] == "qcow2"


def test_failed_create_leaves_nothing(tmp_path) -> None:
    base = tmp_path / "g.raw"
    base.write_bytes(b"x")

    def create(argv):
        with open(argv[-1], "w") as f:
            f.write("partial")
        return (1, "", "No space left on device")

    run = FakeRun([(lambda a: a[:2] == ["qemu-img", "info"], (0, '{"format": "raw"}', "")),
                   (lambda a: a[:2] == ["qemu-img", "create"], create)])
    with pytest.raises(db.DiskError, match="No space left") as exc:
        db.ensure_present(run, db.CloneSpec("c.qcow2", "qcow2", str(base), directory=str(tmp_path)))
    assert exc.value.result["rc"] == 1
    assert sorted(os.listdir(tmp_path)) == ["g.raw"]


def test_reflink_failure_explains_filesystem(tmp_path) -> None:
    base = tmp_path / "g.raw"
    base.write_bytes(b"x")
    run = FakeRun([(lambda a: a[:2] == ["qemu-img", "info"], (0, '{"format": "raw"}', "")),
                   (lambda a: a[0] == "cp",
                    (1, "", "cp: failed to clone: Operation not supported"))])
    with pytest.raises(db.DiskError, match="must support reflinks"):
        db.ensure_present(run, db.CloneSpec("c.raw", "reflink", str(base), directory=str(tmp_path)))
    assert run.calls[-1][:2] == ["cp", "--reflink=always"]
    assert sorted(os.listdir(tmp_path)) == ["g.raw"]


def test_unknown_existing_file_is_not_adopted(tmp_path) -> None:
    base = tmp_path / "g.raw"
    base.write_bytes(b"x")
    (tmp_path / "c.raw").write_bytes(b"y")
    run = FakeRun([(lambda a: a[:2] == ["qemu-img", "info"], (0, '{"format": "raw"}', ""))])
    with pytest.raises(db.DiskError, match="not a clone lxcloud made"):
        db.ensure_present(run, db.CloneSpec("c.raw", "copy", str(base), directory=str(tmp_path)))


@pytest.mark.parametrize("name", ["../x", "a/b", "x y", "x;rm", "x'", "x\n", ".."])
def test_clone_spec_refuses_bad_names(name, tmp_path) -> None:
    with pytest.raises(InvalidName, match="disk name"):
        db.CloneSpec(name, "qcow2", str(tmp_path / "g"), directory=str(tmp_path))


def test_clone_spec_refuses_bad_vg_and_base() -> None:
    with pytest.raises(InvalidName, match="volume group"):
        db.CloneSpec("x", "lvm", "golden", vg="vg0;x")
    with pytest.raises(InvalidName, match="base logical volume"):
        db.CloneSpec("x", "lvm", "../golden", vg="vg0")
    with pytest.raises(InvalidName, match="base image"):
        db.CloneSpec("x", "qcow2", "/img/a b.raw", directory="/d")
    with pytest.raises(InvalidName, match="backend"):
        db.CloneSpec("x", "zfs", "/img/a.raw", directory="/d")


def test_stale_temps_of_an_interrupted_run_are_removed(tmp_path) -> None:
    base = tmp_path / "g.raw"
    base.write_bytes(b"x")
    (tmp_path / ".c.raw.tmp-abc123").write_bytes(b"partial")
    (tmp_path / ".c.raw.tmp-dir").mkdir()
    (tmp_path / ".other.tmp-1").write_bytes(b"keep")

    def cp(argv):
        with open(argv[-1], "wb") as f:
            f.write(b"x")
        return (0, "", "")

    run = FakeRun([(lambda a: a[:2] == ["qemu-img", "info"], (0, '{"format": "raw"}', "")),
                   (lambda a: a[0] == "cp", cp)])
    spec = db.CloneSpec("c.raw", "copy", str(base), directory=str(tmp_path))
    db.ensure_present(run, spec)
    assert sorted(os.listdir(tmp_path)) == [".c.raw.lxclone", ".other.tmp-1", "c.raw", "g.raw"]
