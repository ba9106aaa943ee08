"""lxcloud.cloud.disk through Ansible, on real filesystems: qcow2 and copy on a temp dir, reflink
on btrfs and xfs (reflink=1) loop filesystems made here (lvm, which needs device-mapper, is
tested in the LVM guest: test_lvm.py).  Each backend: check mode, real, check again, second
real run (no change), absent, absent again.  Plus the module-level refusals (bad names, golden
images that reference a backing or data file)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
from libvirt_helpers import adhoc, adhoc_many

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, mounts)")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def make_base(path: str, size_mb: int = 16) -> None:
    """A raw image with some non-zero data (so copies and clones have something to share)."""
    with open(path, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
        f.seek(1024 * 1024)
        f.write(os.urandom(256 * 1024))


@pytest.fixture
def workdir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="lxvm-disk-", dir="/var/tmp")
    os.chmod(d, 0o755)  # noqa: S103 - qemu runs as libvirt-qemu and must traverse it
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def loop_fs(fstype: str, size_mb: int = 300) -> Iterator[str]:
    """A filesystem on a loop device over a sparse file, mounted; all removed afterwards."""
    tools = {"btrfs": ["mkfs.btrfs", "-q"], "xfs": ["mkfs.xfs", "-q", "-m", "reflink=1"]}
    mkfs = tools[fstype]
    if not shutil.which(mkfs[0]):
        pytest.skip(f"{mkfs[0]} not installed (scripts/bootstrap installs btrfs-progs xfsprogs)")
    top = tempfile.mkdtemp(prefix=f"lxvm-{fstype}-", dir="/var/tmp")
    img, mnt = os.path.join(top, "fs.img"), os.path.join(top, "mnt")
    os.mkdir(mnt)
    with open(img, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    loop = None
    mounted = False
    try:
        r = sh("losetup", "-f", "--show", img, check=False)
        if r.returncode != 0:
            pytest.skip(f"losetup failed: {r.stderr.strip()}")
        loop = r.stdout.strip()
        r = sh(*mkfs, loop, check=False)
        if r.returncode != 0:
            pytest.skip(f"{mkfs[0]} failed: {r.stderr.strip()}")
        r = sh("mount", "-t", fstype, loop, mnt, check=False)
        if r.returncode != 0:
            pytest.skip(f"mounting {fstype} failed: {r.stderr.strip()}")
        mounted = True
        os.chmod(mnt, 0o755)  # noqa: S103 - as above
        yield mnt
    finally:
        if mounted:
            sh("umount", mnt, check=False)
        if loop:
            sh("losetup", "-d", loop, check=False)
        shutil.rmtree(top, ignore_errors=True)


def lifecycle(backend: str, images: str, disks: str, name: str) -> dict:
    """check → real → check → real → absent(check) → absent → absent; returns the real result."""
    base = os.path.join(images, "golden.raw")
    make_base(base)
    args = {"name": name, "backend": backend, "base": "golden.raw", "image_dir": images,
            "dir": disks}
    path = os.path.join(disks, name)

    r = adhoc("lxcloud.cloud.disk", args, check=True, diff=True)
    assert not r.get("failed"), r
    assert r["changed"] is True and r["diff"]["before"] == {} and r["diff"]["after"]["path"] == path
    assert not os.path.exists(path), "check mode created the clone"

    r = adhoc("lxcloud.cloud.disk", args, diff=True)
    assert not r.get("failed"), r
    assert r["changed"] is True and r["path"] == path and r["base"] == base
    assert os.path.isfile(path)
    real = r

    r = adhoc("lxcloud.cloud.disk", args, check=True)
    assert r["changed"] is False, r
    r = adhoc("lxcloud.cloud.disk", args)
    assert r["changed"] is False, r
    assert r["clone"]["backend"] == backend and r["clone"]["base"] == base

    # no temp files left next to the clone
    assert not [f for f in os.listdir(disks) if ".tmp-" in f]

    gone = {"name": name, "backend": backend, "dir": disks, "state": "absent"}
    r = adhoc("lxcloud.cloud.disk", gone, check=True)
    assert r["changed"] is True and os.path.exists(path)
    r = adhoc("lxcloud.cloud.disk", gone)
    assert r["changed"] is True and not os.path.exists(path)
    assert [f for f in os.listdir(disks) if not f.startswith("golden")] == []
    r = adhoc("lxcloud.cloud.disk", gone)
    assert r["changed"] is False
    return real


def test_qcow2_overlay(workdir: str) -> None:
    lifecycle("qcow2", workdir, workdir, "lxvm-d1.qcow2")


def test_qcow2_overlay_content_and_backing(workdir: str) -> None:
    base = os.path.join(workdir, "golden.raw")
    make_base(base)
    r = adhoc("lxcloud.cloud.disk", {"name": "c.qcow2", "base": base, "dir": workdir})
    assert r["changed"] and r["format"] == "qcow2"
    info = json.loads(sh("qemu-img", "info", "--output=json", r["path"]).stdout)
    assert info["format"] == "qcow2"
    assert info["full-backing-filename"] == base
    assert info["backing-filename-format"] == "raw"
    sh("qemu-img", "compare", "-f", "raw", "-F", "qcow2", base, r["path"])


def test_plain_copy(workdir: str) -> None:
    real = lifecycle("copy", workdir, workdir, "lxvm-d2.raw")
    assert real["format"] == "raw"


def test_copy_is_sparse_and_identical(workdir: str) -> None:
    base = os.path.join(workdir, "golden.raw")
    make_base(base, size_mb=64)
    r = adhoc("lxcloud.cloud.disk", {"name": "c.raw", "base": base, "dir": workdir,
                                     "backend": "copy"})
    assert r["changed"], r
    st = os.stat(r["path"])
    assert st.st_size == 64 * 1024 * 1024
    assert st.st_blocks * 512 < 8 * 1024 * 1024, "the copy is not sparse"
    sh("cmp", base, r["path"])


@pytest.mark.parametrize("fstype", ["btrfs", "xfs"])
def test_reflink(fstype: str) -> None:
    with loop_fs(fstype) as mnt:
        images, disks = os.path.join(mnt, "images"), os.path.join(mnt, "disks")
        os.mkdir(images)
        os.mkdir(disks)
        lifecycle("reflink", images, disks, f"lxvm-{fstype}.raw")


def test_reflink_refused_on_a_filesystem_without_reflinks(workdir: str) -> None:
    fs = sh("stat", "-f", "-c", "%T", workdir).stdout.strip()
    if fs in ("btrfs", "xfs"):
        pytest.skip(f"{workdir} is on {fs}, which may reflink")
    base = os.path.join(workdir, "golden.raw")
    make_base(base)
    r = adhoc("lxcloud.cloud.disk", {"name": "c.raw", "base": base, "dir": workdir,
                                     "backend": "reflink"})
    assert r.get("failed"), r
    assert "must support reflinks" in r["msg"]
    assert sorted(os.listdir(workdir)) == ["golden.raw"]


def test_clone_of_another_base_is_reported_not_kept(workdir: str) -> None:
    a, b = os.path.join(workdir, "a.raw"), os.path.join(workdir, "b.raw")
    make_base(a)
    make_base(b)
    args = {"name": "c.qcow2", "base": a, "dir": workdir}
    assert adhoc("lxcloud.cloud.disk", args)["changed"]
    r = adhoc("lxcloud.cloud.disk", dict(args, base=b))
    assert r.get("failed") and f"is a clone of {a}, not of {b}" in r["msg"], r
    r = adhoc("lxcloud.cloud.disk", dict(args, base=b, force=True))
    assert r["changed"] and r["clone"]["base"] == b, r
    r = adhoc("lxcloud.cloud.disk", dict(args, backend="copy"))
    assert r.get("failed") and "is a qcow2 clone, not copy" in r["msg"], r


@pytest.mark.parametrize("kind", ["backing", "data"])
def test_golden_image_with_backing_or_data_file_is_refused(workdir: str, kind: str) -> None:
    golden = os.path.join(workdir, "golden.qcow2")
    if kind == "backing":
        make_base(os.path.join(workdir, "under.raw"))
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.join(workdir, "under.raw"),
           "-F", "raw", golden)
    else:
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-o",
           f"data_file={os.path.join(workdir, 'data.raw')}", golden, "16M")
    before = sorted(os.listdir(workdir))
    for backend in ("qcow2", "copy"):
        r = adhoc("lxcloud.cloud.disk", {"name": f"c-{backend}", "base": golden, "dir": workdir,
                                         "backend": backend})
        assert r.get("failed"), r
        assert "golden image references a backing or data file" in r["msg"]
    # declared raw but qemu-img says qcow2 with a backing file: still refused
    r = adhoc("lxcloud.cloud.disk", {"name": "c-raw", "base": golden, "dir": workdir,
                                     "backend": "copy", "base_format": "raw"})
    assert r.get("failed") and "golden image references" in r["msg"], r
    assert sorted(os.listdir(workdir)) == before


BAD_NAMES = ["../escape.qcow2", "a/b", "x y", "x'q", 'x"q', "x\ny", "x;rm -rf ~", "$(reboot)",
             "a|b", "a&b", "`id`", "\u00fcml", "", "x" * 64, ".."]


def test_bad_names_refused_before_any_path_or_command(workdir: str) -> None:
    make_base(os.path.join(workdir, "golden.raw"))
    results = adhoc_many("lxcloud.cloud.disk", [
        {"name": bad, "base": "golden.raw", "image_dir": workdir, "dir": workdir}
        for bad in BAD_NAMES
    ])
    for bad, r in zip(BAD_NAMES, results, strict=True):
        assert r.get("failed") and r["item"] == "disk name", (bad, r)
    assert sorted(os.listdir(workdir)) == ["golden.raw"]
    assert not os.path.exists("/var/tmp/escape.qcow2")
