"""Distribution strategies: deliver the repository's compressed image to every host, verified.

Each host runs the staging agent (``plugins/module_utils/chain.py``, shipped over ssh), which
reports progress and verifies sha256 on the host.  The image lands in
``IMAGE_DIR/incoming/FILE`` (``FILE.part`` while incomplete); the install step (module
``lxcloud.cloud.image``) unpacks it from there.

- ``sequential``: scp from the repository to each host in turn (the original baseline).
- ``wave``: scp-wave; every host holding the verified image sends it on (greedy: a sender
  takes the next host as soon as it is free), so the holders double each round: log2(N)
  rounds.  Hosts ssh to each other with ``peer_key`` (the testbed key works host to host).
- ``torrent``: opentracker + mktorrent on the repository, aria2c everywhere (DHT, LPD and peer
  exchange off): the repository seeds, every host downloads and seeds until all are done.
- ``chain``: lxcloud's pipelined chain: repository -> host1 -> host2 ... each host writes and
  forwards as bytes arrive; dead hosts are routed around and reported.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TextIO

from .hosts import SSH_OPTS, Host, RepoImage, StagingFailed, agent_argv, local_address_towards
from .progress import Progress

log = logging.getLogger(__name__)

REPO = "repository"
#: SO_SNDBUF of chain hops (the kernel doubles it): ~10 ms of queue at 100 Mbit/s per hop.
CHAIN_SNDBUF = 64 * 1024


class Agent:
    """One staging agent process (over ssh, or local); its JSON lines go to ``on_event``."""

    def __init__(self, name: str, argv: list[str],
                 on_event: Callable[[str, dict[str, Any]], None]) -> None:
        import json

        self.name = name
        self._json = json
        self.on_event = on_event
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr)
        self.listening = threading.Event()
        self.verdict: dict[str, Any] | None = None
        self.final = threading.Event()
        self.thread = threading.Thread(target=self._read, name=f"agent-{name}", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                ev = self._json.loads(raw)
            except ValueError:
                continue
            if ev.get("ev") == "listening":
                self.listening.set()
            if ev.get("ev") in ("verified", "done", "error") and self.verdict is None:
                self.verdict = ev
            self.on_event(self.name, ev)
        rc = self.proc.wait()
        self.listening.set()
        if self.verdict is None:
            self.on_event(self.name, {"ev": "exit", "rc": rc, "stderr": self.stderr_tail()})
        self.final.set()

    def stderr_tail(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self.stderr.seek(0)
            return self.stderr.read().decode("utf-8", "replace").strip()[-500:]
        return ""

    def stop(self, grace: float = 3.0) -> None:
        if self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


class Strategy:
    name: ClassVar[str] = ""

    def __init__(self, image: RepoImage, hosts: list[Host], progress: Progress, *,
                 timeout: float = 10.0, deadline: float = 3600.0, port: int = 7420,
                 peer_key: str | None = None, repo_address: str | None = None,
                 sndbuf: int = 0, rate: float = 0,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.image = image
        self.hosts = hosts
        self.by_name = {h.name: h for h in hosts}
        self.progress = progress
        self.timeout = timeout
        self.deadline = deadline
        self.port = port
        self.peer_key = peer_key
        self.repo_address = repo_address
        self.sndbuf = sndbuf
        self.rate = rate
        self.hook = on_event
        self.agents: dict[str, Agent] = {}
        self.cv = threading.Condition()

    # -- shared plumbing ------------------------------------------------------------------
    def common_args(self, host: Host | None) -> list[str]:
        f = str(self.image.path) if host is None else host.incoming(self.image.filename)
        return ["--file", f, "--size", str(self.image.compressed_size), "--sha256",
                self.image.sha256, "--interval", "0.5", "--timeout", str(self.timeout)]

    def on_event(self, host: str, ev: dict[str, Any]) -> None:
        if self.hook is not None:
            self.hook(host, ev)
        kind = ev.get("ev")
        if host == REPO:
            if kind == "dead":
                self._dead(ev)
            return
        if kind == "progress":
            self.progress.update(host, int(ev.get("bytes", 0)))
        elif kind in ("verified", "done"):
            if ev.get("ok"):
                self.progress.verified(host)
            else:
                err = str(ev.get("error") or "failed")
                self.progress.failed(host, err, mismatch="sha256 mismatch" in err)
        elif kind == "dead":
            self._dead(ev)
        elif kind == "error":
            self.progress.failed(host, str(ev.get("msg")))
        elif kind == "exit":
            self.progress.failed(host, f"agent exited rc={ev.get('rc')}: {ev.get('stderr')}")
        with self.cv:
            self.cv.notify_all()

    def _dead(self, ev: dict[str, Any]) -> None:
        peer = str(ev.get("peer", ""))
        by = self._peer_host(str(ev.get("by", ""))) or REPO
        name = self._peer_host(peer)
        if name:
            hp = self.progress.hosts[name]
            if hp.state == "failed":  # its agent exit arrived first: upgrade to dead
                hp.state = "waiting"
            self.progress.failed(name, f"unreachable: {ev.get('reason')}", dead=True, by=by)
        with self.cv:
            self.cv.notify_all()

    def _peer_host(self, peer: str) -> str | None:
        for h in self.hosts:
            if peer == self.endpoint(h):
                return h.name
        return None

    def endpoint(self, h: Host) -> str:
        return f"{h.address}:{h.relay_port or self.port}"

    def start_agents(self, mode_args: Callable[[Host], list[str]],
                     wait_listening: float = 30.0) -> list[Host]:
        """Start one agent per host; return the hosts whose agent is ready."""
        for h in self.hosts:
            self.agents[h.name] = Agent(h.name, agent_argv(h, mode_args(h)), self.on_event)
        end = time.monotonic() + wait_listening
        ready = []
        for h in self.hosts:
            a = self.agents[h.name]
            a.listening.wait(max(0.0, end - time.monotonic()))
            if a.listening.is_set() and a.proc.poll() is None:
                ready.append(h)
            elif self.progress.hosts[h.name].state not in ("failed", "dead"):
                self.progress.failed(h.name, "agent did not start: " + a.stderr_tail())
        return ready

    def wait_all(self, hosts: list[str] | None = None) -> None:
        names = set(hosts or self.by_name)
        end = self.progress.t0 + self.deadline
        with self.cv:
            while names & set(self.progress.pending()):
                if time.monotonic() > end:
                    for n in names & set(self.progress.pending()):
                        self.progress.failed(n, f"not done after {self.deadline:.0f}s")
                    return
                self.cv.wait(0.5)

    def wait_host(self, name: str, limit: float) -> None:
        end = time.monotonic() + limit
        with self.cv:
            while name in self.progress.pending():
                if time.monotonic() > end:
                    self.progress.failed(name, f"not verified {limit:.0f}s after its copy ended")
                    return
                self.cv.wait(0.5)

    def stop_agents(self) -> None:
        threads = [threading.Thread(target=a.stop) for a in self.agents.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def run(self) -> None:
        try:
            self.distribute()
        finally:
            self.stop_agents()
            self.cleanup()

    def distribute(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        pass

    def watch_args(self, h: Host) -> list[str]:
        return ["watch", *self.common_args(h), "--idle-timeout", str(int(self.deadline))]

    def scp_argv(self, target: Host, src_path: str, key: str | None) -> list[str]:
        argv = ["scp", "-q", *SSH_OPTS, "-P", str(target.port)]
        if key:
            argv += ["-i", key]
        return [*argv, src_path, f"{target.target}:{target.incoming(self.image.filename)}.part"]


class Sequential(Strategy):
    """scp from the repository to each host in turn."""

    name = "sequential"

    def distribute(self) -> None:
        ready = self.start_agents(self.watch_args)
        for h in ready:
            if h.name not in self.progress.pending():
                continue
            p = subprocess.run(self.scp_argv(h, str(self.image.path), h.key),
                               capture_output=True, text=True, check=False)
            if p.returncode != 0:
                self.progress.failed(h.name, f"scp failed rc={p.returncode}: {p.stderr.strip()}")
                continue
            self.wait_host(h.name, 60)


class Wave(Strategy):
    """scp-wave: every host that holds the verified image sends it on."""

    name = "wave"

    def copy_argv(self, sender: Host | None, target: Host) -> list[str]:
        if sender is None:
            return self.scp_argv(target, str(self.image.path), target.key)
        key = self.peer_key or target.key
        inner = self.scp_argv(target, sender.incoming(self.image.filename), key)
        return [*sender.ssh_argv(), shlex.join(inner)]

    def distribute(self) -> None:
        ready = self.start_agents(self.watch_args)
        free: list[Host | None] = [None]
        pending = list(ready)
        inflight = 0
        self.rounds: list[tuple[str, str]] = []

        def copy(sender: Host | None, target: Host) -> None:
            nonlocal inflight
            p = subprocess.run(self.copy_argv(sender, target), capture_output=True, text=True,
                               check=False)
            if p.returncode != 0:
                self.progress.failed(target.name,
                                     f"scp failed rc={p.returncode}: {p.stderr.strip()}")
            else:
                self.wait_host(target.name, 60)
            with self.cv:
                if sender is None or sender.name in self.progress.verified_hosts():
                    free.append(sender)
                if target.name in self.progress.verified_hosts():
                    free.append(target)
                inflight -= 1
                self.cv.notify_all()

        end = self.progress.t0 + self.deadline
        with self.cv:
            while pending or inflight:
                while free and pending:
                    s, t = free.pop(0), pending.pop(0)
                    inflight += 1
                    self.rounds.append((s.name if s else REPO, t.name))
                    threading.Thread(target=copy, args=(s, t), daemon=True).start()
                if pending and not free and not inflight:
                    for t in pending:
                        self.progress.failed(t.name, "no host holds the image to send it on")
                    break
                if time.monotonic() > end:
                    break
                self.cv.wait(0.5)


class Torrent(Strategy):
    """BitTorrent: opentracker + mktorrent on the repository, aria2c on every host."""

    name = "torrent"
    tracker_port = 6969
    piece_log2 = 18  # 256 KiB pieces

    def distribute(self) -> None:
        for tool in ("aria2c", "mktorrent", "opentracker"):
            if shutil.which(tool) is None:
                raise StagingFailed(f"{tool} is not installed (scripts/bootstrap installs it)")
        addr = self.repo_address or local_address_towards(self.hosts[0].address)
        self.workdir = Path(tempfile.mkdtemp(prefix="lxcloud-torrent-"))
        self.workdir.chmod(0o755)  # opentracker chroots here and drops to nobody
        torrent = self.workdir / (self.image.filename + ".torrent")
        announce = f"http://{addr}:{self.tracker_port}/announce"
        subprocess.run(["mktorrent", "-a", announce, "-l", str(self.piece_log2), "-o",
                        str(torrent), str(self.image.path)], check=True, capture_output=True)
        (self.workdir / "whitelist.txt").write_text(info_hash(torrent.read_bytes()) + "\n")
        self.tracker = subprocess.Popen(
            ["opentracker", "-i", addr, "-p", str(self.tracker_port), "-P",
             str(self.tracker_port), "-d", str(self.workdir), "-w", "whitelist.txt"],
            cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        blob = torrent.read_bytes().hex()
        # the repository seeds (aria2c checks the file against the pieces, then uploads)
        self.agents[REPO] = Agent(REPO, agent_argv(None, [
            "torrent", *self.common_args(None), "--torrent-hex", blob,
            "--listen-port", "6881"]), self.on_event)
        rate = ["--rate", str(self.rate)] if self.rate else []
        self.start_agents(lambda h: ["torrent", *self.common_args(h), "--torrent-hex", blob,
                                     "--listen-port", str(h.relay_port or 6881), *rate])
        self.wait_all()

    def cleanup(self) -> None:
        tr = getattr(self, "tracker", None)
        if tr is not None and tr.poll() is None:
            tr.terminate()
            try:
                tr.wait(5)
            except subprocess.TimeoutExpired:
                tr.kill()
                tr.wait()
        if getattr(self, "workdir", None):
            shutil.rmtree(self.workdir, ignore_errors=True)


class Chain(Strategy):
    """lxcloud's pipelined chain: every host writes and forwards as bytes arrive."""

    name = "chain"

    def distribute(self) -> None:
        # small send buffers: bytes queued in a socket are latency added at every hop
        extra = ["--sndbuf", str(self.sndbuf or CHAIN_SNDBUF)]
        if self.rate:
            extra += ["--rate", str(self.rate)]
        ready = self.start_agents(lambda h: [
            "relay", *self.common_args(h), "--listen", self.endpoint(h),
            "--deadline", str(int(self.deadline)), *extra])
        if not ready:
            return
        chain = ",".join(self.endpoint(h) for h in ready)
        self.agents[REPO] = Agent(REPO, agent_argv(None, [
            "source", *self.common_args(None), "--chain", chain, *extra]), self.on_event)
        self.wait_all([h.name for h in ready])
        self.agents[REPO].final.wait(max(5.0, self.timeout * 2))


STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (Sequential, Wave, Torrent, Chain)
}


def info_hash(torrent: bytes) -> str:
    """sha1 of the bencoded ``info`` dictionary, as opentracker's whitelist wants it (hex)."""

    def skip(i: int) -> int:
        c = torrent[i:i + 1]
        if c == b"i":
            return torrent.index(b"e", i) + 1
        if c in (b"l", b"d"):
            i += 1
            while torrent[i:i + 1] != b"e":
                i = skip(i)
            return i + 1
        colon = torrent.index(b":", i)
        return colon + 1 + int(torrent[i:colon])

    if torrent[:1] != b"d":
        raise ValueError("not a torrent file")
    i = 1
    while torrent[i:i + 1] != b"e":
        key_end = skip(i)
        colon = torrent.index(b":", i)
        key = torrent[colon + 1:key_end]
        val_end = skip(key_end)
        if key == b"info":
            return hashlib.sha1(torrent[key_end:val_end]).hexdigest()  # noqa: S324 - BitTorrent v1
        i = val_end
    raise ValueError("torrent has no info dictionary")


def stage(image: RepoImage, hosts: list[Host], strategy: str, *, out: TextIO | None = None,
          **opts: Any) -> Progress:
    """Distribute ``image`` to ``hosts`` with ``strategy``; returns the finished Progress."""
    if strategy not in STRATEGIES:
        raise StagingFailed(f"unknown strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
    progress = Progress([h.name for h in hosts], image.compressed_size, out=out)
    runner = STRATEGIES[strategy](image, hosts, progress, **opts)
    progress.start()
    try:
        runner.run()
    finally:
        progress.stop()
    return progress
