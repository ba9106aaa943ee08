"""Capture into the image repository (module_utils/capture.py, role image_repo, playbook)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from xmlrpc.server import SimpleXMLRPCServer

import pytest
from ansible_collections.lxcloud.cloud.plugins.module_utils import capture, staging
from ansible_collections.lxcloud.cloud.plugins.module_utils.api_client import api_params

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MiB = 1 << 20


def _golden(tmp_path: Path, size: int = 3 * MiB) -> tuple[Path, bytes]:
    data = (hashlib.sha256(b"golden").digest() * (size // 64))[: size // 3] + b"\0" * (
        size - size // 3
    )
    p = tmp_path / "golden.raw"
    p.write_bytes(data)
    return p, data


@pytest.mark.parametrize("compression,suffix", [("zstd", ".zst"), ("pigz", ".gz"),
                                                ("gzip", ".gz")])
def test_capture_writes_compressed_image_and_metadata(tmp_path: Path, compression: str,
                                                      suffix: str):
    src, data = _golden(tmp_path)
    repo = tmp_path / "repo"
    res = capture.capture(str(src), "golden", "1.0", str(repo), compression=compression)
    out = repo / f"golden-1.0.raw{suffix}"
    assert res["changed"] is True and res["path"] == str(out)
    meta = json.loads((repo / "golden-1.0.json").read_text())
    assert meta == res["meta"]
    assert meta["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (meta["size"], meta["format"], meta["file"]) == (len(data), "raw", out.name)
    assert meta["compressed_size"] == out.stat().st_size < len(data)
    assert meta["compression"] == ("gzip" if compression == "pigz" else compression)
    assert [p.name for p in repo.iterdir() if p.name.endswith(".tmp")] == []
    # what the repository holds is exactly what a hypervisor installs
    st = staging.stage(str(out), "golden", "1.0", meta["sha256"], str(tmp_path / "host"),
                       compression=meta["compression"], size=meta["size"])
    assert Path(st["path"]).read_bytes() == data
    # versions are immutable: no change the second time
    again = capture.capture(str(src), "golden", "1.0", str(repo), compression=compression)
    assert again["changed"] is False and again["meta"] == meta


def test_compressor_commands():
    assert capture.compressor_argv("zstd") == ["zstd", "-q", "-c", "-T0", "-3"]
    assert capture.compressor_argv("pigz", threads=4) == ["pigz", "-p", "4", "-c", "-6"]
    assert capture.compressor_argv("gzip", level=1) == ["gzip", "-c", "-1"]
    assert capture.dd_argv("/dev/vg/golden") == ["dd", "if=/dev/vg/golden", "bs=4M",
                                                 "status=none"]
    with pytest.raises(staging.StagingError):
        capture.compressor_argv("xz")


def test_capture_refuses_a_source_with_a_backing_file(tmp_path: Path):
    q = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F",
                    "raw", str(q)], check=True)
    with pytest.raises(staging.RefusedImage, match="backing file"):
        capture.capture(str(q), "golden", "1", str(tmp_path / "repo"))
    assert not (tmp_path / "repo").exists()


def test_capture_check_mode_and_missing_source(tmp_path: Path):
    src, _ = _golden(tmp_path, MiB)
    res = capture.capture(str(src), "golden", "1", str(tmp_path / "repo"), check_mode=True)
    assert res["changed"] is True and not (tmp_path / "repo").exists()
    with pytest.raises(staging.StagingError, match="does not exist"):
        capture.capture(str(tmp_path / "nope"), "golden", "1", str(tmp_path / "repo"))


def test_capture_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    src, _ = _golden(tmp_path, MiB)
    repo = tmp_path / "repo"
    # the volume becomes unreadable between the format probe and the dd: dd fails
    monkeypatch.setattr(capture, "dd_argv", lambda s: ["dd", f"if={tmp_path / 'gone'}"])
    with pytest.raises(staging.StagingError, match=r"capture failed \(dd rc=1"):
        capture.capture(str(src), "golden", "1", str(repo))
    assert list(repo.iterdir()) == []


class FakeAPI:
    """A real XML-RPC endpoint on loopback recording lxcloud.image.register and
    lxcloud.host.image calls (unknown hosts get OpenNebula's NO_EXISTS)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.server = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False, allow_none=True)

        def register(*args: object) -> list:
            self.calls.append(args)
            return [True, 7, 0]

        def host_image(*args: object) -> list:
            self.calls.append(args)
            if args[1] != "lxh1":
                return [False, f"host {args[1]} does not exist", 0x0400]
            return [True, 1, 0]

        self.server.register_function(register, "lxcloud.image.register")
        self.server.register_function(host_image, "lxcloud.host.image")
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/RPC2"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[FakeAPI]:
    a = FakeAPI()
    yield a
    a.close()


def test_register_sends_the_metadata(api: FakeAPI):
    meta = {"name": "g", "version": "1", "sha256": "a" * 64, "size": 5 * 2**30,
            "format": "raw", "compression": "zstd"}
    params = api_params(api.url, "oneadmin:pw", api_config="/nonexistent", api_retries=0)
    assert capture.register(params, meta) == 7
    assert api.calls == [("oneadmin:pw", "g", "1", "a" * 64, 5.0 * 2**30, "raw", "zstd")]


def test_staging_reports_the_hosts_copy(api: FakeAPI):
    params = api_params(api.url, "oneadmin:pw", api_config="/nonexistent", api_retries=0)
    assert staging.report(params, "lxh1", "g", "1", "b" * 64, "verified") == 1
    assert api.calls == [("oneadmin:pw", "lxh1", "g", "1", "b" * 64, "verified")]
    with pytest.raises(staging.ReportError, match=r"reporting g 1 \(failed\).*lxh9 does not exist"):
        staging.report(params, "lxh9", "g", "1", "b" * 64, "failed")


@pytest.mark.slow
def test_capture_playbook_registers_and_is_idempotent(tmp_path: Path, api: FakeAPI):
    src, _ = _golden(tmp_path, MiB)
    repo = tmp_path / "repo"
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               ANSIBLE_LOCALHOST_WARNING="False", ANSIBLE_INVENTORY_UNPARSED_WARNING="False")
    argv = [str(BIN / "ansible-playbook"), str(REPO / "playbooks" / "image_capture.yml"),
            "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}",
            "-e", "image_name=golden", "-e", "image_version=1", "-e", f"image_source={src}",
            "-e", f"image_repo={repo}", "-e", f"image_api_url={api.url}",
            "-e", "image_api_session=oneadmin:pw"]
    first = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "changed=2" in first.stdout  # the directory and the capture
    meta = json.loads((repo / "golden-1.json").read_text())
    second = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert second.returncode == 0 and "changed=0" in second.stdout, second.stdout
    assert [c[1:4] for c in api.calls] == [("golden", "1", meta["sha256"])] * 2


@pytest.mark.slow
def test_api_action_group_sets_the_api_options(tmp_path: Path, api: FakeAPI):
    """meta/runtime.yml's action group lxcloud.cloud.api: module_defaults for the group reach
    image_capture (the API options are nowhere else)."""
    src, _ = _golden(tmp_path, MiB)
    repo = tmp_path / "repo"
    play = tmp_path / "play.yml"
    play.write_text(json.dumps([{
        "name": "Capture with the API options from module_defaults",
        "hosts": "localhost",
        "gather_facts": False,
        "module_defaults": {"group/lxcloud.cloud.api": {"api_url": api.url,
                                                        "api_session": "oneadmin:pw",
                                                        "api_config": str(tmp_path / "none")}},
        "tasks": [{"name": "Capture", "lxcloud.cloud.image_capture": {
            "name": "golden", "version": "1", "source": str(src), "repo_dir": str(repo)}}],
    }]))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               ANSIBLE_LOCALHOST_WARNING="False", ANSIBLE_INVENTORY_UNPARSED_WARNING="False")
    res = subprocess.run([str(BIN / "ansible-playbook"), str(play), "-c", "local",
                          "-e", f"ansible_python_interpreter={sys.executable}"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    meta = json.loads((repo / "golden-1.json").read_text())
    assert [c[1:4] for c in api.calls] == [("golden", "1", meta["sha256"])]
