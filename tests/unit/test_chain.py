"""The chain relay (plugins/module_utils/chain.py) as real processes on 127.0.0.1 ports, the
coordinator side channel, and the control-plane side (lxcloud_py.staging) starting the relays
through the playbook lxcloud.cloud.stage_image on local-connection hosts."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ansible_collections.lxcloud.cloud.plugins.module_utils import chain

from lxcloud_py.staging import Progress, load_inventory, stage
from lxcloud_py.staging.coordinator import Coordinator
from lxcloud_py.staging.hosts import RepoImage
from lxcloud_py.staging.strategies import info_hash

MiB = 1 << 20
MODE = Path(__file__).with_name("chain_mode.py")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, str]:
    data = os.urandom(16 * MiB)
    p = tmp_path / "golden-1.raw.zst"
    p.write_bytes(data)
    return p, hashlib.sha256(data).hexdigest()


class Proc:
    """An agent process whose JSON lines are collected by a thread."""

    def __init__(self, mode: str, options: dict) -> None:
        self.p = subprocess.Popen([sys.executable, str(MODE), mode, json.dumps(options)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL)
        self.events: list[dict] = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.events.append(json.loads(line))

    def wait_for(self, kind: str, timeout: float = 10, **match: object) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for e in list(self.events):
                if e["ev"] == kind and all(e.get(k) == v for k, v in match.items()):
                    return e
            time.sleep(0.02)
        raise AssertionError(f"no {kind} {match} in {self.events}")

    def bytes(self) -> int:
        return max([e["bytes"] for e in self.events if e["ev"] == "progress"] + [0])

    def finish(self, timeout: float = 30) -> int:
        try:
            rc = self.p.wait(timeout)
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait()
            self.t.join(5)
            assert self.p.stderr is not None
            self.p.stderr.close()
            assert self.p.stdout is not None
            self.p.stdout.close()
        return rc


def _chain(tmp_path: Path, image: tuple[Path, str], n: int = 4, extra: dict | None = None,
           sha: str | None = None) -> tuple[list[Proc], list[str], list[Path]]:
    src, good_sha = image
    sha = sha or good_sha
    size = src.stat().st_size
    ports = _free_ports(n)
    peers = [f"127.0.0.1:{p}" for p in ports]
    files = [tmp_path / f"h{i}" / "incoming" / src.name for i in range(n)]
    relays = [Proc("relay", {"listen": peer, "file": str(f), "size": size, "sha256": sha,
                             "interval": 0.1, **(extra or {})})
              for peer, f in zip(peers, files, strict=True)]
    for r in relays:
        r.wait_for("listening")
    return relays, peers, files


def _source(image: tuple[Path, str], peers: list[str], extra: dict | None = None,
            sha: str | None = None) -> Proc:
    src, good_sha = image
    return Proc("source", {"file": str(src), "size": src.stat().st_size,
                           "sha256": sha or good_sha, "chain": peers, **(extra or {})})


def test_four_relays_all_get_the_verified_image(tmp_path: Path, image: tuple[Path, str]):
    relays, peers, files = _chain(tmp_path, image)
    source = _source(image, peers)
    assert source.finish() == 0
    for r in relays:
        assert r.finish() == 0
    for i, (r, f) in enumerate(zip(relays, files, strict=True)):
        assert f.read_bytes() == image[0].read_bytes()
        assert not Path(str(f) + ".part").exists()
        v = r.wait_for("verified")
        assert v["ok"] is True and v["sha256"] == image[1]
        done = r.wait_for("done")
        assert done["forwarded_to"] == peers[i + 1:i + 2]
        assert done["dead"] == []
    assert source.wait_for("done")["forwarded_to"] == [peers[0]]


def test_killed_relay_is_routed_around_and_reported(tmp_path: Path, image: tuple[Path, str]):
    rate = {"rate": 8 * MiB, "timeout": 3}  # 16 MiB take ~2 s: time to kill one
    relays, peers, files = _chain(tmp_path, image, extra=rate)
    source = _source(image, peers, extra=rate)
    victim = relays[1]
    end = time.monotonic() + 10
    while victim.bytes() < 2 * MiB and time.monotonic() < end:
        time.sleep(0.02)
    got_before = relays[2].bytes()
    victim.p.send_signal(signal.SIGKILL)
    assert source.finish() == 0
    dead = relays[0].wait_for("dead")
    assert dead["peer"] == peers[1] and dead["by"] == peers[0]
    # the next host resumed from what it had, from the dead host's upstream
    up = relays[2].wait_for("upstream", peer=peers[0])
    assert up["offset"] >= got_before > 0
    for i in (0, 2, 3):
        assert relays[i].finish() == 0
        assert files[i].read_bytes() == image[0].read_bytes()
    assert relays[0].wait_for("done")["dead"] == [peers[1]]
    assert victim.finish() != 0
    assert not files[1].exists()


def test_silent_relay_times_out_and_is_routed_around(tmp_path: Path, image: tuple[Path, str]):
    """A host that stops answering (veth down, frozen) is declared dead after --timeout."""
    rate = {"rate": 8 * MiB, "timeout": 2, "sndbuf": 65536}
    relays, peers, files = _chain(tmp_path, image, n=3, extra=rate)
    source = _source(image, peers, extra=rate)
    victim = relays[1]
    while victim.bytes() < MiB:
        time.sleep(0.02)
    victim.p.send_signal(signal.SIGSTOP)
    try:
        assert source.finish(timeout=40) == 0
        assert relays[0].wait_for("dead")["peer"] == peers[1]
        for i in (0, 2):
            assert relays[i].finish() == 0
            assert files[i].read_bytes() == image[0].read_bytes()
    finally:
        victim.p.send_signal(signal.SIGKILL)
        victim.p.send_signal(signal.SIGCONT)
        victim.finish()


def test_corrupt_image_is_detected_everywhere_and_leaves_nothing(
    tmp_path: Path, image: tuple[Path, str]
):
    wrong = hashlib.sha256(b"the registered image").hexdigest()
    relays, peers, files = _chain(tmp_path, image, n=3, sha=wrong)
    source = _source(image, peers, sha=wrong)
    source.finish()
    for r, f in zip(relays, files, strict=True):
        assert r.finish() == 1
        v = r.wait_for("done")
        assert v["ok"] is False and "sha256 mismatch" in v["error"]
        assert not f.exists() and not Path(str(f) + ".part").exists()


def test_relay_refuses_a_different_image(tmp_path: Path, image: tuple[Path, str]):
    relays, peers, _ = _chain(tmp_path, image, n=1, extra={"deadline": 1})
    with socket.create_connection(("127.0.0.1", int(peers[0].split(":")[1]))) as s:
        s.sendall(json.dumps({"size": 1, "sha256": "0" * 64, "chain": []}).encode() + b"\n")
        assert json.loads(s.makefile().readline()) == {"error": "image mismatch"}
    assert relays[0].finish() == 1


def test_coordinator_carries_events_and_stop_and_refuses_strangers(tmp_path: Path,
                                                                   image: tuple[Path, str]):
    """A watcher reports over the side channel; a wrong token or host is dropped; stop ends a
    watcher that waits for a file that never comes, and it leaves nothing behind."""
    src, sha = image
    events: list[tuple[str, dict]] = []
    coord = Coordinator("127.0.0.1", ["h1", "h2"], lambda h, ev: events.append((h, ev)))
    try:
        bad = chain.CoordinatorClient(coord.address, "0" * 32, "h1")  # wrong token
        bad.emit(ev="progress", bytes=1)
        stranger = chain.CoordinatorClient(coord.address, coord.token, "not-in-the-run")
        stranger.emit(ev="progress", bytes=2)
        for dropped in (bad, stranger):  # the coordinator closed the connection
            assert dropped.stopped.wait(5) and "closed" in str(dropped.lost)
            dropped.close()
        dst = tmp_path / "h1" / "incoming" / src.name
        dst.parent.mkdir(parents=True)
        rep1 = chain.CoordinatorClient(coord.address, coord.token, "h1")
        params = chain.Params(file=str(dst), size=src.stat().st_size, sha256=sha,
                              interval=0.1)
        t = threading.Thread(target=lambda: events.append(
            ("verdict", chain.run("watch", params, rep1))))
        t.start()
        shutil.copyfile(src, str(dst) + ".part")
        t.join(20)
        assert events[-1][1]["ok"] is True and dst.read_bytes() == src.read_bytes()
        assert next(e["ev"] for h, e in events if h == "h1") == "listening"
        assert ("h1", {"ev": "progress", "bytes": src.stat().st_size}) in events
        assert not [h for h, _ in events if h not in ("h1", "verdict")]
        rep1.close()
        # stop: a watcher of h2 whose file never comes gives up at once, leaving nothing
        rep2 = chain.CoordinatorClient(coord.address, coord.token, "h2")
        dst2 = tmp_path / "h2" / "incoming" / src.name
        params2 = chain.Params(file=str(dst2), size=10, sha256=sha, interval=0.1)
        out: list[dict] = []
        t2 = threading.Thread(target=lambda: out.append(chain.run("watch", params2, rep2)))
        t2.start()
        end = time.monotonic() + 5
        while not any(h == "h2" for h, _ in events) and time.monotonic() < end:
            time.sleep(0.02)
        coord.stop_all()
        t2.join(10)
        assert out and out[0]["ok"] is False and "stopped" in out[0]["error"]
        assert list((tmp_path / "h2" / "incoming").iterdir()) == []
        rep2.close()
    finally:
        coord.close()


def _local_inventory(tmp_path: Path, n: int) -> Path:
    """n hosts on this machine (connection local), each with its own relay port and dir."""
    inv = tmp_path / "inventory.ini"
    inv.write_text("[hypervisors]\n" + "".join(
        f"h{i} ansible_connection=local ansible_host=127.0.0.1 "
        f"ansible_python_interpreter={sys.executable} lxcloud_image_dir={tmp_path / f'h{i}'} "
        f"lxcloud_stage_relay_port={p}\n"
        for i, p in enumerate(_free_ports(n), 1)))
    return inv


def _repo_image(image: tuple[Path, str]) -> RepoImage:
    src, sha = image
    size = src.stat().st_size
    return RepoImage("golden", "1", sha, size, size, "raw", "zstd", src)


def _stage(tmp_path: Path, inv: Path, image: tuple[Path, str], strategy: str,
           **opts: object) -> Progress:
    hosts = load_inventory(str(inv))
    return stage(_repo_image(image), hosts, strategy, inventory=str(inv),
                 repo_address="127.0.0.1", runtime_dir=str(tmp_path / "runtime"), **opts)


@pytest.mark.slow
def test_chain_strategy_progress_and_table(tmp_path: Path, image: tuple[Path, str]):
    """The relays run as lxcloud.cloud.image_relay, started by the playbook's relay play
    through the runner; live progress lines come through the coordinator."""
    inv = _local_inventory(tmp_path, 4)
    hosts = load_inventory(str(inv))
    out = io.StringIO()
    progress = _stage(tmp_path, inv, image, "chain", out=out, rate=4 * MiB)
    rows = progress.rows()
    assert [r["state"] for r in rows] == ["verified"] * 4
    assert all(r["checksum"] == "ok" and r["rate_mb_s"] > 0 for r in rows)
    for h in hosts:
        assert (Path(h.image_dir) / "incoming" / image[0].name).read_bytes() == \
            image[0].read_bytes()
    table = progress.table().splitlines()
    assert table[0].split() == ["host", "state", "time", "s", "rate", "MB/s", "checksum", "note"]
    assert [line.split()[:2] for line in table[2:]] == [[h.name, "verified"] for h in hosts]
    lines = out.getvalue().splitlines()
    assert "4/4 verified" in lines[-1]
    # live: lines while the bytes flowed (4 MiB/s: 16 MiB take 4 s), with per-host percentages
    partial = [ln for ln in lines if re.search(r"h\d:([1-9]\d?)%", ln)]
    assert partial, lines


@pytest.mark.slow
def test_chain_strategy_reports_a_host_that_cannot_start(tmp_path: Path,
                                                         image: tuple[Path, str]):
    inv = _local_inventory(tmp_path, 3)
    hosts = load_inventory(str(inv))
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", hosts[1].relay_port or 0))  # its port is taken
    blocker.listen()
    try:
        progress = _stage(tmp_path, inv, image, "chain", timeout=3)
    finally:
        blocker.close()
    states = {r["host"]: r for r in progress.rows()}
    assert states["h1"]["state"] == states["h3"]["state"] == "verified"
    assert states["h2"]["state"] == "failed" and "Address already in use" in states["h2"]["error"]


@pytest.mark.slow
@pytest.mark.skipif(not all(shutil.which(t) for t in ("aria2c", "mktorrent", "opentracker")),
                    reason="aria2c, mktorrent and opentracker are needed")
def test_torrent_strategy_on_loopback(tmp_path: Path, image: tuple[Path, str]):
    inv = _local_inventory(tmp_path, 3)
    hosts = load_inventory(str(inv))
    progress = _stage(tmp_path, inv, image, "torrent", deadline=60)
    assert [r["state"] for r in progress.rows()] == ["verified"] * 3
    for h in hosts:
        assert (Path(h.image_dir) / "incoming" / image[0].name).read_bytes() == \
            image[0].read_bytes()


def test_info_hash_matches_aria2c(tmp_path: Path, image: tuple[Path, str]):
    if not (shutil.which("aria2c") and shutil.which("mktorrent")):
        pytest.skip("aria2c and mktorrent are needed")
    t = tmp_path / "x.torrent"
    subprocess.run(["mktorrent", "-a", "http://127.0.0.1:1/announce", "-l", "18", "-o", str(t),
                    str(image[0])], check=True, capture_output=True)
    shown = subprocess.run(["aria2c", "-S", str(t)], capture_output=True, text=True,
                           check=True).stdout
    assert f"Info Hash: {info_hash(t.read_bytes())}" in shown


def test_progress_line_and_verdicts():
    p = Progress(["a", "b", "c"], 1000)
    p.update("a", 500)
    p.verified("b")
    p.failed("c", "sha256 mismatch", mismatch=True)
    line = p.line()
    assert "1/3 verified" in line and "a:50%" in line and "b:ok" in line and "c:FAIL" in line
    p.failed("a", "unreachable", dead=True, by="b")
    rows = {r["host"]: r for r in p.rows()}
    assert rows["a"]["state"] == "dead" and rows["a"]["reported_by"] == "b"
    assert rows["c"]["checksum"] == "MISMATCH"
    assert "(reported by b)" in p.table()
    assert p.pending() == []


@pytest.mark.slow
def test_relay_module_check_mode_and_bad_input(tmp_path: Path, image: tuple[Path, str]):
    """lxcloud.cloud.image_relay through ansible: check mode receives nothing and reports a
    change unless the verified file is there; bad input and an unreachable coordinator fail
    with a message naming them."""
    from test_staging import _module as module

    def _module(args: dict, check: bool = False) -> dict:
        return module(args, check, "lxcloud.cloud.image_relay")

    src, sha = image
    dst = tmp_path / "incoming" / src.name
    (port,) = _free_ports(1)
    args = {"mode": "watch", "file": str(dst), "size": src.stat().st_size, "sha256": sha,
            "coordinator": f"127.0.0.1:{port}", "token": "t" * 32, "host_name": "h1"}
    r = _module(args, check=True)
    assert (r["changed"], r["verified"]) == (True, False) and not dst.parent.exists()
    dst.parent.mkdir()
    shutil.copyfile(src, dst)
    r = _module(args, check=True)
    assert (r["changed"], r["verified"]) == (False, True)
    r = _module({**args, "sha256": "X" * 64})
    assert r["_status"] == "FAILED!" and "sha256 must be 64 lowercase hex" in r["msg"]
    r = _module({**args, "mode": "relay"})
    assert r["_status"] == "FAILED!" and "listen" in r["msg"]
    r = _module(args)  # nobody listens on the coordinator's port
    assert r["_status"] == "FAILED!" and f"cannot reach the coordinator at 127.0.0.1:{port}" \
        in r["msg"]
    assert "t" * 32 not in json.dumps(r)  # the token is no_log
