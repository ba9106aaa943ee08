"""Golden image staging on the testbed: every strategy delivers a verified image to 4 hosts
(relays started by the playbook lxcloud.cloud.stage_image through the runner, live progress
over the coordinator) and installs it; a corrupted image is refused everywhere while the old
version keeps serving; a host killed mid-transfer does not stop the others and is reported
(chain, torrent); the playbook run by hand (by FQCN, from an empty directory) does the same."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.lxcloud.cloud.plugins.module_utils.capture import capture
from testbed_helpers import REPO, Testbed

from lxcloud_py.staging import find_image, load_inventory, stage

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

NAME = "stagetest"
MB = 1_000_000
IMAGES = "/var/lib/lxcloud/images"


@pytest.fixture(scope="module")
def tb(testbed_factory: Callable[[int], Testbed]) -> Testbed:
    return testbed_factory(4)


@pytest.fixture(scope="module")
def hosts4(tb: Testbed) -> Iterator[list[str]]:
    names = [h.name for h in tb.hosts[:4]]
    yield names
    _clean(tb, names)  # the shared testbed keeps nothing of these tests


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A repository with NAME 1: 40 MB raw (24 MB random), ~24 MB zstd."""
    d = tmp_path_factory.mktemp("repo")
    raw = os.urandom(24 * MB) + bytes(16 * MB)
    src = d / "golden.raw"
    src.write_bytes(raw)
    capture(str(src), NAME, "1", str(d / "repo"))
    src.unlink()
    return d / "repo", raw


def _clean(tb: Testbed, hosts: list[str], version: str | None = None) -> None:
    pattern = f"{NAME}-{version}" if version else NAME
    for h in hosts:
        tb.ssh(h, f"rm -f {IMAGES}/{pattern}* {IMAGES}/incoming/{pattern}*")


def _cli(tb: Testbed, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REPO / ".venv" / "bin" / "lxcloud"), "image", *args],
                          capture_output=True, text=True, env=tb.ansible_env(), timeout=600)


def _assert_live_progress(out: str, hosts: list[str]) -> None:
    """The live lines (one a second, not a TTY): every host with its percentage while the run
    goes on, and a last line with every host verified."""
    pat = re.compile(r"^\[\s*(\d+\.\d)s\] (\d)/4 verified  (.*)$")
    lines = [m for m in map(pat.match, out.splitlines()) if m]
    assert len(lines) >= 2, out
    first = dict(p.split(":") for p in lines[0].group(3).split())
    assert list(first) == hosts and all(re.fullmatch(r"\d+%|ok", v) for v in first.values()), out
    assert any(v.endswith("%") for v in first.values()), out  # a line before the end
    last = dict(p.split(":") for p in lines[-1].group(3).split())
    assert lines[-1].group(2) == "4" and set(last.values()) == {"ok"}, out
    assert [float(m.group(1)) for m in lines] == sorted(float(m.group(1)) for m in lines)


def _installed_sha(tb: Testbed, host: str, version: str) -> str:
    out = tb.ssh(host, f"sha256sum {IMAGES}/{NAME}-{version}.raw", check=False).stdout
    return out.split()[0] if out else ""


@pytest.mark.parametrize("strategy", ["sequential", "wave", "torrent", "chain"])
def test_strategy_delivers_verified_image_to_4_hosts_and_installs_it(
    tb: Testbed, hosts4: list[str], repo: tuple[Path, bytes], strategy: str, tmp_path: Path
) -> None:
    repo_dir, raw = repo
    _clean(tb, hosts4)
    out = tmp_path / "result.json"
    res = _cli(tb, "stage", NAME, "--version", "1", "--strategy", strategy, "-i",
               str(tb.inventory), "--limit", ",".join(hosts4), "--repo", str(repo_dir),
               "--no-report", "--json", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads(out.read_text())
    assert [(r["host"], r["state"], r["checksum"]) for r in result["hosts"]] == [
        (h, "verified", "ok") for h in hosts4
    ]
    assert "4/4 hosts hold the verified image" in res.stdout
    _assert_live_progress(res.stdout, hosts4)
    want = hashlib.sha256(raw).hexdigest()
    img = find_image(repo_dir, NAME, "1")
    for h in hosts4:
        assert _installed_sha(tb, h, "1") == want, h
        side = json.loads(tb.ssh(h, f"cat {IMAGES}/{NAME}-1.json").stdout)
        assert (side["sha256"], side["state"], side["size"]) == (img.sha256, "verified", len(raw))
        left = tb.ssh(h, f"ls {IMAGES}/incoming/ | grep {NAME} || true").stdout.split()
        assert left == []  # installed and removed, the .torrent too


def test_corrupted_image_is_not_installed_and_the_old_version_still_serves(
    tb: Testbed, hosts4: list[str], repo: tuple[Path, bytes], tmp_path: Path
) -> None:
    repo_dir, raw = repo
    _clean(tb, hosts4)
    assert _cli(tb, "stage", NAME, "--version", "1", "--strategy", "chain", "-i",
                str(tb.inventory), "--limit", ",".join(hosts4), "--repo",
                str(repo_dir), "--no-report").returncode == 0
    # version 2, corrupted in the repository after its checksum was recorded
    bad_repo = tmp_path / "repo"
    bad_repo.mkdir()
    src = tmp_path / "v2.raw"
    src.write_bytes(os.urandom(8 * MB))
    meta = capture(str(src), NAME, "2", str(bad_repo))["meta"]
    f = bad_repo / meta["file"]
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    out = tmp_path / "result.json"
    res = _cli(tb, "stage", NAME, "--version", "2", "--strategy", "chain", "-i",
               str(tb.inventory), "--limit", ",".join(hosts4), "--repo", str(bad_repo),
               "--no-report", "--json", str(out))
    assert res.returncode == 1, res.stdout + res.stderr
    rows = json.loads(out.read_text())["hosts"]
    assert [(r["state"], r["checksum"]) for r in rows] == [("failed", "MISMATCH")] * 4
    assert "MISMATCH" in res.stdout
    want = hashlib.sha256(raw).hexdigest()
    for h in hosts4:
        assert _installed_sha(tb, h, "1") == want  # the old version still serves
        left = tb.ssh(h, f"ls {IMAGES} {IMAGES}/incoming | grep {NAME}-2 || true").stdout
        assert left.strip() == "", left  # nothing of version 2, not even a partial file


def _stage_and_kill(tb: Testbed, hosts4: list[str], repo_dir: Path, strategy: str,
                    pid_key: str) -> dict[str, dict[str, Any]]:
    """Stage at a throttled rate; kill the second host's agent (its relay / aria2c) once it
    has some of the image; return the rows."""
    hosts = load_inventory(str(tb.inventory), limit=hosts4)
    image = find_image(repo_dir, NAME, "1")
    victim = hosts[1].name
    pids: dict[str, int] = {}
    got: dict[str, int] = {}
    killed = threading.Event()

    def hook(host: str, ev: dict[str, Any]) -> None:
        if ev.get("ev") == "listening" and pid_key in ev:
            pids[host] = int(ev[pid_key])
        if ev.get("ev") == "progress":
            got[host] = int(ev["bytes"])
        if (host == victim and not killed.is_set() and got.get(victim, 0) > 3 * MB
                and victim in pids):
            killed.set()
            tb.ssh(victim, ["kill", "-9", str(pids[victim])])

    progress = stage(image, hosts, strategy, inventory=str(tb.inventory), out=sys.stdout,
                     rate=4 * MB, timeout=5, deadline=120, on_event=hook)
    assert killed.is_set(), f"the transfer ended before the kill: {got}"
    return {r["host"]: r for r in progress.rows()}


def test_chain_routes_around_a_host_killed_mid_transfer(
    tb: Testbed, hosts4: list[str], repo: tuple[Path, bytes]
) -> None:
    repo_dir, _ = repo
    _clean(tb, hosts4)
    t0 = time.monotonic()
    rows = _stage_and_kill(tb, hosts4, repo_dir, "chain", "pid")
    victim = hosts4[1]
    assert rows[victim]["state"] == "dead", rows
    assert rows[victim]["reported_by"] == hosts4[0]
    for h in hosts4[:1] + hosts4[2:]:
        assert rows[h]["state"] == "verified" and rows[h]["checksum"] == "ok", rows
    assert time.monotonic() - t0 < 60


def test_torrent_survives_a_peer_killed_mid_transfer(
    tb: Testbed, hosts4: list[str], repo: tuple[Path, bytes]
) -> None:
    repo_dir, _ = repo
    _clean(tb, hosts4)
    rows = _stage_and_kill(tb, hosts4, repo_dir, "torrent", "aria2c_pid")
    victim = hosts4[1]
    assert rows[victim]["state"] == "failed" and "aria2c exited" in rows[victim]["error"], rows
    for h in hosts4[:1] + hosts4[2:]:
        assert rows[h]["state"] == "verified" and rows[h]["checksum"] == "ok", rows


def test_stage_image_playbook_distributes_installs_and_is_idempotent(
    tb: Testbed, hosts4: list[str], repo: tuple[Path, bytes], tmp_path: Path
) -> None:
    repo_dir, raw = repo
    two = hosts4[:2]
    _clean(tb, two)
    argv = [str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", str(tb.inventory),
            "lxcloud.cloud.stage_image", "-l", ",".join(["localhost", *two]),
            "-e", f"image_name={NAME}", "-e", "image_version=1", "-e", f"image_repo={repo_dir}",
            "-e", "stage_strategy=chain", "-e", "stage_report=false"]
    first = subprocess.run(argv, capture_output=True, text=True, env=tb.ansible_env(),
                           timeout=300, cwd=tmp_path)  # by FQCN, from an empty directory
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2/2 hosts hold the verified image" in first.stdout
    for h in two:
        assert f"{h}" in first.stdout and _installed_sha(tb, h, "1") == hashlib.sha256(
            raw).hexdigest()
        assert f"{h}" + " " * (27 - len(h)) + ": ok=1    changed=1" in first.stdout
    second = subprocess.run(argv, capture_output=True, text=True, env=tb.ansible_env(),
                            timeout=300, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    for h in two:  # the install step: same verified version present, no change
        assert f"{h}" + " " * (27 - len(h)) + ": ok=1    changed=0" in second.stdout
