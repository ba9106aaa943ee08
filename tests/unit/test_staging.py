"""Installing a golden image on a hypervisor: plugins/module_utils/staging.py and the module."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from ansible_collections.lxcloud.cloud.plugins.module_utils import staging
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import InvalidName

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MiB = 1 << 20


def _raw(size: int, seed: int = 1) -> bytes:
    # half pseudo-random (incompressible) and half zeros: like a real disk image
    rnd = hashlib.sha256(str(seed).encode()).digest() * (size // 64)
    return rnd[: size // 2] + b"\0" * (size - size // 2)


def _pack(tmp: Path, data: bytes, compression: str = "zstd", name: str = "img") -> tuple[Path, str]:
    raw = tmp / f"{name}.raw"
    raw.write_bytes(data)
    if compression == "zstd":
        out = tmp / f"{name}.raw.zst"
        subprocess.run(["zstd", "-q", "-f", "-o", str(out), str(raw)], check=True)
    elif compression == "gzip":
        out = tmp / f"{name}.raw.gz"
        out.write_bytes(gzip.compress(data, compresslevel=1))
    else:
        out = raw
    return out, hashlib.sha256(out.read_bytes()).hexdigest()


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    return d


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_stage_unpacks_verifies_and_records(tmp_path: Path, store_dir: Path, compression: str):
    data = _raw(3 * MiB)
    src, sha = _pack(tmp_path, data, compression)
    res = staging.stage(str(src), "golden", "1.0", sha, str(store_dir), compression=compression,
                        now=1700000000)
    assert res["changed"] is True
    target = store_dir / "golden-1.0.raw"
    assert res["path"] == str(target)
    assert target.read_bytes() == data
    meta = json.loads((store_dir / "golden-1.0.json").read_text())
    assert meta == res["meta"]
    assert meta["sha256"] == sha
    assert meta["size"] == len(data)
    assert meta["compressed_size"] == src.stat().st_size
    assert (meta["format"], meta["compression"], meta["state"]) == ("raw", compression, "verified")
    assert meta["verified_at"] == "2023-11-14T22:13:20Z"
    assert _leftovers(store_dir) == []
    # same verified version present: no change, nothing read
    again = staging.stage("/nonexistent/never-opened.zst", "golden", "1.0", sha, str(store_dir),
                          compression=compression)
    assert again["changed"] is False
    assert again["meta"] == meta


def test_check_mode_changes_nothing(tmp_path: Path, store_dir: Path):
    src, sha = _pack(tmp_path, _raw(MiB))
    res = staging.stage(str(src), "golden", "1.0", sha, str(store_dir), check_mode=True)
    assert res["changed"] is True
    assert list(store_dir.iterdir()) == []
    staging.stage(str(src), "golden", "1.0", sha, str(store_dir))
    res = staging.stage(str(src), "golden", "1.0", sha, str(store_dir), check_mode=True)
    assert res["changed"] is False


def test_changed_file_under_the_sidecar_is_reinstalled(tmp_path: Path, store_dir: Path):
    data = _raw(MiB)
    src, sha = _pack(tmp_path, data)
    staging.stage(str(src), "golden", "1.0", sha, str(store_dir))
    with open(store_dir / "golden-1.0.raw", "ab") as fh:
        fh.write(b"x")  # size no longer matches the record
    res = staging.stage(str(src), "golden", "1.0", sha, str(store_dir))
    assert res["changed"] is True
    assert (store_dir / "golden-1.0.raw").read_bytes() == data


def test_bad_checksum_installs_nothing_and_keeps_the_old_version(tmp_path: Path, store_dir: Path):
    old, old_sha = _pack(tmp_path, _raw(MiB, seed=1), name="old")
    staging.stage(str(old), "golden", "1", old_sha, str(store_dir))
    before = sorted(p.name for p in store_dir.iterdir())
    new, _sha = _pack(tmp_path, _raw(MiB, seed=2), name="new")
    with pytest.raises(staging.ChecksumMismatch, match="sha256 mismatch"):
        staging.stage(str(new), "golden", "2", "0" * 64, str(store_dir))
    assert sorted(p.name for p in store_dir.iterdir()) == before
    assert (store_dir / "golden-1.raw").read_bytes() == _raw(MiB, seed=1)


def test_bad_checksum_over_an_installed_same_version_keeps_it(tmp_path: Path, store_dir: Path):
    src, sha = _pack(tmp_path, _raw(MiB))
    staging.stage(str(src), "golden", "1", sha, str(store_dir))
    with pytest.raises(staging.ChecksumMismatch):
        staging.stage(str(src), "golden", "1", "f" * 64, str(store_dir))
    assert (store_dir / "golden-1.raw").read_bytes() == _raw(MiB)
    assert json.loads((store_dir / "golden-1.json").read_text())["sha256"] == sha


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_truncated_stream_fails_the_unpack_and_leaves_nothing(
    tmp_path: Path, store_dir: Path, compression: str
):
    src, _ = _pack(tmp_path, _raw(2 * MiB), compression)
    cut = tmp_path / "cut"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    sha = hashlib.sha256(cut.read_bytes()).hexdigest()  # the checksum passes, the stream is short
    with pytest.raises(staging.UnpackError, match="unpacking failed"):
        staging.stage(str(cut), "golden", "1", sha, str(store_dir), compression=compression)
    assert list(store_dir.iterdir()) == []


def test_corrupt_stream_fails_the_unpack(tmp_path: Path, store_dir: Path):
    src, _ = _pack(tmp_path, _raw(MiB))
    bad = bytearray(src.read_bytes())
    bad[0:4] = b"XXXX"  # no zstd magic
    src.write_bytes(bytes(bad))
    with pytest.raises(staging.UnpackError):
        staging.stage(str(src), "golden", "1", hashlib.sha256(bad).hexdigest(), str(store_dir))
    assert list(store_dir.iterdir()) == []


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A 2 MiB tmpfs (needs root); unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_disk_full_leaves_no_partial_file(tmp_path: Path, tiny_fs: Path, compression: str):
    small, small_sha = _pack(tmp_path, _raw(MiB // 2), compression, name="small")
    staging.stage(str(small), "golden", "1", small_sha, str(tiny_fs), compression=compression)
    src, sha = _pack(tmp_path, _raw(4 * MiB, seed=3), compression, name="big")
    with pytest.raises(staging.DiskFull, match="no space left"):
        staging.stage(str(src), "golden", "2", sha, str(tiny_fs), compression=compression)
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["golden-1.json", "golden-1.raw"]
    assert (tiny_fs / "golden-1.raw").read_bytes() == _raw(MiB // 2)


def test_known_size_larger_than_free_space_is_refused_up_front(tmp_path: Path, tiny_fs: Path):
    src, sha = _pack(tmp_path, _raw(MiB))
    with pytest.raises(staging.DiskFull, match="not enough space"):
        staging.stage(str(src), "golden", "1", sha, str(tiny_fs), size=64 * MiB)
    assert list(tiny_fs.iterdir()) == []


def _qcow2(tmp_path: Path, *opts: str) -> Path:
    out = tmp_path / "q.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *opts, str(out), "1M"], check=True)
    return out


@pytest.mark.parametrize(
    "opts,match",
    [
        (("-b", "/etc/passwd", "-F", "raw"), "backing file"),
        (("-o", "data_file=DATA"), "data file"),
    ],
)
def test_images_referencing_other_files_are_refused(
    tmp_path: Path, store_dir: Path, opts: tuple[str, ...], match: str
):
    if "data_file=DATA" in opts:
        opts = ("-o", f"data_file={tmp_path / 'data.raw'}")
    q = _qcow2(tmp_path, *opts)
    src, sha = _pack(tmp_path, q.read_bytes(), "zstd", name="q")
    with pytest.raises(staging.RefusedImage, match=match):
        staging.stage(str(src), "golden", "1", sha, str(store_dir), fmt="qcow2")
    assert list(store_dir.iterdir()) == []


def test_a_qcow2_is_refused_where_raw_is_expected_and_accepted_as_qcow2(
    tmp_path: Path, store_dir: Path
):
    q = _qcow2(tmp_path)
    src, sha = _pack(tmp_path, q.read_bytes(), "zstd", name="q")
    with pytest.raises(staging.RefusedImage, match="format is 'qcow2', expected 'raw'"):
        staging.stage(str(src), "golden", "1", sha, str(store_dir))
    res = staging.stage(str(src), "golden", "1", sha, str(store_dir), fmt="qcow2")
    assert res["path"] == str(store_dir / "golden-1.qcow2")


@pytest.mark.parametrize(
    "name,version", [("../etc", "1"), ("a b", "1"), ("img", "1;rm"), ("img", ""), ("img", "a/b")]
)
def test_bad_names_are_refused(store_dir: Path, name: str, version: str):
    with pytest.raises(InvalidName):
        staging.stage("/x.zst", name, version, "0" * 64, str(store_dir))


def test_bad_sha_and_relative_src_are_refused(store_dir: Path):
    with pytest.raises(staging.StagingError, match="64 hex"):
        staging.stage("/x.zst", "img", "1", "abc", str(store_dir))
    with pytest.raises(staging.StagingError, match="absolute path"):
        staging.stage("x.zst", "img", "1", "0" * 64, str(store_dir))


def test_file_url_source(tmp_path: Path, store_dir: Path):
    data = _raw(MiB)
    src, sha = _pack(tmp_path, data)
    staging.stage(src.as_uri(), "golden", "1", sha, str(store_dir))
    assert (store_dir / "golden-1.raw").read_bytes() == data


def test_http_url_source_and_a_missing_one(tmp_path: Path, store_dir: Path):
    data = _raw(MiB)
    src, sha = _pack(tmp_path, data)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            base = f"http://127.0.0.1:{server.server_address[1]}/"
            staging.stage(base + src.name, "golden", "1", sha, str(store_dir))
            with pytest.raises(staging.StagingError, match=r"cannot fetch .*/nothing\.zst.*404"):
                staging.stage(base + "nothing.zst", "golden", "2", sha, str(store_dir))
        finally:
            server.shutdown()
    assert (store_dir / "golden-1.raw").read_bytes() == data
    assert not (store_dir / "golden-2.raw").exists()


class FakeLVM:
    """Records commands; lvcreate/lvrename/lvremove act on plain files under dev_root so the
    real ``dd`` and ``qemu-img`` run against them."""

    def __init__(self, dev_root: Path, vg: str):
        self.vgdir = dev_root / vg
        self.vgdir.mkdir(parents=True)
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        if argv[0] == "lvcreate":
            (self.vgdir / argv[argv.index("--name") + 1]).write_bytes(b"")
            return 0, "", ""
        if argv[0] == "lvrename":
            os.rename(self.vgdir / argv[2], self.vgdir / argv[3])
            return 0, "", ""
        if argv[0] == "lvremove":
            (self.vgdir / argv[2].split("/")[1]).unlink(missing_ok=True)
            return 0, "", ""
        if argv[0] == "qemu-img":
            p = subprocess.run(argv, capture_output=True, text=True)
            return p.returncode, p.stdout, p.stderr
        raise AssertionError(argv)


def test_lvm_backend_exact_commands(tmp_path: Path, store_dir: Path):
    data = _raw(2 * MiB)
    src, sha = _pack(tmp_path, data)
    dev = tmp_path / "dev"
    lvm = FakeLVM(dev, "vmvg")
    res = staging.stage(str(src), "golden", "1.0", sha, str(store_dir), backend="lvm",
                        vg="vmvg", size=len(data), run=lvm, dev_root=str(dev))
    tmp_dev = f"{dev}/vmvg/golden-1.0-staging"
    assert lvm.calls == [
        ["lvcreate", "--yes", "--name", "golden-1.0-staging", "--size", f"{len(data)}b", "vmvg"],
        ["qemu-img", "info", "--output=json", tmp_dev],
        ["lvrename", "vmvg", "golden-1.0-staging", "golden-1.0"],
    ]
    assert staging.lvm_commands(staging.Plan("golden", "1.0", sha, str(store_dir),
                                             backend="lvm", vg="vmvg", size=len(data)))[
        "write"
    ] == ["dd", "of=/dev/vmvg/golden-1.0-staging", "bs=4M", "iflag=fullblock", "conv=fsync",
          "status=none"]
    assert res["path"] == f"{dev}/vmvg/golden-1.0"
    assert (dev / "vmvg" / "golden-1.0").read_bytes() == data
    assert json.loads((store_dir / "golden-1.0.json").read_text())["backend"] == "lvm"
    lvm.calls.clear()
    again = staging.stage(str(src), "golden", "1.0", sha, str(store_dir), backend="lvm",
                          vg="vmvg", size=len(data), run=lvm, dev_root=str(dev))
    assert again["changed"] is False and lvm.calls == []


def test_lvm_backend_removes_the_temporary_lv_on_bad_checksum(tmp_path: Path, store_dir: Path):
    data = _raw(MiB)
    src, _sha = _pack(tmp_path, data)
    dev = tmp_path / "dev"
    lvm = FakeLVM(dev, "vg0")
    with pytest.raises(staging.ChecksumMismatch):
        staging.stage(str(src), "golden", "2", "1" * 64, str(store_dir), backend="lvm",
                      vg="vg0", size=len(data), run=lvm, dev_root=str(dev))
    assert lvm.calls[-1] == ["lvremove", "--yes", "vg0/golden-2-staging"]
    assert list((dev / "vg0").iterdir()) == []
    assert list(store_dir.iterdir()) == []


def test_lvm_needs_vg_and_size(store_dir: Path):
    with pytest.raises(staging.StagingError, match="needs vg"):
        staging.Plan("g", "1", "0" * 64, str(store_dir), backend="lvm", size=1)
    with pytest.raises(staging.StagingError, match="needs size"):
        staging.Plan("g", "1", "0" * 64, str(store_dir), backend="lvm", vg="vg0")


# -- the module, through ansible, against this machine -------------------------------------


def _module(args: dict, check: bool = False, module: str = "lxcloud.cloud.image") -> dict:
    argv = [str(BIN / "ansible"), "localhost", "-c", "local", "-m", module,
            "-a", json.dumps(args), "-o", "-e", f"ansible_python_interpreter={sys.executable}"]
    if check:
        argv.append("--check")
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               ANSIBLE_LOCALHOST_WARNING="False", ANSIBLE_INVENTORY_UNPARSED_WARNING="False")
    p = subprocess.run(argv, capture_output=True, text=True, env=env)
    out = p.stdout
    head, _, body = out.partition(" => ")
    assert body, out + p.stderr
    res = json.loads(body)
    res["_status"] = head.split("|")[1].strip()
    return res


@pytest.mark.slow
def test_module_check_real_check_real(tmp_path: Path, store_dir: Path):
    if shutil.which("ansible") is None and not (BIN / "ansible").exists():
        pytest.skip("ansible is not installed")
    data = _raw(MiB)
    src, sha = _pack(tmp_path, data)
    args = {"name": "golden", "version": "1", "src": str(src), "sha256": sha,
            "storage_dir": str(store_dir)}
    r = _module(args, check=True)
    assert r["changed"] is True and list(store_dir.iterdir()) == []
    r = _module(args)
    assert r["changed"] is True and r["image"]["sha256"] == sha
    assert r["path"] == str(store_dir / "golden-1.raw")
    assert _module(args, check=True)["changed"] is False
    assert _module(args)["changed"] is False
    bad = _module({**args, "version": "2", "sha256": "0" * 64})
    assert bad["_status"] == "FAILED!" and "sha256 mismatch" in bad["msg"]
    assert bad["error"] == "ChecksumMismatch"
    assert sorted(p.name for p in store_dir.iterdir()) == ["golden-1.json", "golden-1.raw"]
