"""Distribution strategies: deliver the repository's compressed image to every host, verified.

Every host runs the module ``lxcloud.cloud.image_relay`` (agent logic in
``plugins/module_utils/chain.py``), started through the runner adapter by the ``relay`` play of
the playbook ``lxcloud.cloud.stage_image``; the relays report progress live over a side
channel, a TCP connection to the run's :class:`~.coordinator.Coordinator` in this process, and
verify sha256 on the host.  The image lands in ``IMAGE_DIR/incoming/FILE`` (``FILE.part``
while incomplete); the install step (module ``lxcloud.cloud.image``) unpacks it from there.

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

from ansible_collections.lxcloud.cloud.plugins.module_utils import chain as agent

from lxcloud_py.runner import PlaybookRunner, RunResult, playbook

from .coordinator import Coordinator
from .hosts import SSH_OPTS, Host, RepoImage, StagingFailed, local_address_towards
from .progress import Progress

log = logging.getLogger(__name__)

REPO = "repository"
#: SO_SNDBUF of chain hops (the kernel doubles it): ~10 ms of queue at 100 Mbit/s per hop.
CHAIN_SNDBUF = 64 * 1024
#: how long Ansible may take to start every relay (ssh, the module on the host)
START_TIMEOUT = 120.0
RELAY_ACTION = "image_relay"


class Strategy:
    name: ClassVar[str] = ""
    #: the mode of lxcloud.cloud.image_relay on the hosts
    mode: ClassVar[str] = "watch"

    def __init__(self, image: RepoImage, hosts: list[Host], progress: Progress, *,
                 inventory: str, timeout: float = 10.0, deadline: float = 3600.0,
                 port: int = 7420, peer_key: str | None = None,
                 repo_address: str | None = None, sndbuf: int = 0, rate: float = 0,
                 runtime_dir: str | None = None,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.image = image
        self.hosts = hosts
        self.by_name = {h.name: h for h in hosts}
        self.progress = progress
        self.inventory = inventory
        self.timeout = timeout
        self.deadline = deadline
        self.port = port
        self.peer_key = peer_key
        self.repo_address = repo_address
        self.sndbuf = sndbuf
        self.rate = rate
        self.runtime_dir = runtime_dir
        self.hook = on_event
        self.cv = threading.Condition()
        self.listening: set[str] = set()
        self.ended: set[str] = set()  # hosts whose relay task is over
        self.coordinator: Coordinator | None = None
        self.runner: PlaybookRunner | None = None
        self.job: threading.Thread | None = None
        self.job_result: RunResult | None = None
        self.job_error: BaseException | None = None
        self.repo_threads: list[threading.Thread] = []
        self.repo_reporter = agent.Reporter(lambda ev: self.on_event(REPO, ev))

    # -- events ---------------------------------------------------------------------------
    def on_event(self, host: str, ev: dict[str, Any]) -> None:
        if self.hook is not None:
            self.hook(host, ev)
        kind = ev.get("ev")
        if host == REPO:
            if kind == "dead":
                self._dead(ev)
            return
        if kind == "listening":
            with self.cv:
                self.listening.add(host)
        elif kind == "progress":
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
        with self.cv:
            self.cv.notify_all()

    def _runner_event(self, event: dict[str, Any]) -> None:
        """The relay task's outcome per host, from the runner's event stream."""
        kind = event.get("event")
        data = event.get("event_data") or {}
        host = str(data.get("host", ""))
        if (kind not in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable")
                or host not in self.by_name
                or str(data.get("task_action", "")).rpartition(".")[2] != RELAY_ACTION):
            return
        res = data.get("res") or {}
        if kind == "runner_on_unreachable":
            self.on_event(host, {"ev": "error", "msg": f"unreachable: {res.get('msg')}"})
        elif "verified" in res:
            self.on_event(host, {"ev": "done", "ok": bool(res["verified"]),
                                 "error": res.get("msg")})
        else:
            self.on_event(host, {"ev": "error", "msg": f"relay failed: {res.get('msg')}"})
        with self.cv:
            self.ended.add(host)
            self.cv.notify_all()

    def _dead(self, ev: dict[str, Any]) -> None:
        peer = str(ev.get("peer", ""))
        by = self._peer_host(str(ev.get("by", ""))) or REPO
        name = self._peer_host(peer)
        if name:
            hp = self.progress.hosts[name]
            if hp.state == "failed":  # its relay's failure arrived first: upgrade to dead
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

    # -- the relays, through the playbook -------------------------------------------------
    def relay_options(self) -> dict[str, Any]:
        """Options of lxcloud.cloud.image_relay common to every host of this strategy."""
        return {"mode": self.mode, "size": self.image.compressed_size,
                "sha256": self.image.sha256, "interval": 0.5, "timeout": self.timeout}

    def host_options(self, h: Host) -> dict[str, Any]:
        return {"file": h.incoming(self.image.filename)}

    def control_address(self) -> str:
        """This machine's address as the hosts reach it (coordinator, tracker)."""
        return self.repo_address or local_address_towards(self.hosts[0].address)

    def start_relays(self) -> list[Host]:
        """Start lxcloud.cloud.image_relay on every host (the ``relay`` play of
        lxcloud.cloud.stage_image, one runner job in a thread); return the hosts whose relay
        is listening, in order."""
        self.coordinator = Coordinator(self.control_address(), self.by_name, self.on_event)
        variables = {
            "stage_hosts": "all",
            "image_name": self.image.name,
            "image_version": self.image.version,
            "stage_relay": {**self.relay_options(), "coordinator": self.coordinator.address},
            "stage_relay_hosts": {h.name: self.host_options(h) for h in self.hosts},
        }
        self.runner = PlaybookRunner(self.inventory, self.runtime_dir,
                                     forks=max(50, len(self.hosts)),
                                     timeout=int(self.deadline + START_TIMEOUT))

        def job() -> None:
            assert self.runner is not None and self.coordinator is not None
            try:
                self.job_result = self.runner.run(
                    playbook("stage_image"), variables, {"stage_token": self.coordinator.token},
                    self._runner_event, limit=list(self.by_name), tags=["relay"])
            except BaseException as exc:  # reported by start_relays, never lost
                self.job_error = exc
            finally:
                with self.cv:
                    self.ended.update(self.by_name)
                    self.cv.notify_all()

        self.job = threading.Thread(target=job, name="stage-relays", daemon=True)
        self.job.start()
        end = time.monotonic() + START_TIMEOUT
        with self.cv:
            while set(self.by_name) - self.listening - self.ended:
                if time.monotonic() > end:
                    break
                self.cv.wait(0.2)
        if self.job_error is not None:
            raise StagingFailed(f"starting the relays failed: {self.job_error}")
        ready = []
        for h in self.hosts:
            if h.name in self.listening and h.name not in self.ended:
                ready.append(h)
            elif h.name in self.progress.pending():
                self.progress.failed(h.name, self._why_not_started(h.name))
        return ready

    def _why_not_started(self, host: str) -> str:
        if host not in self.ended:
            return f"relay did not start within {START_TIMEOUT:.0f}s"
        if self.job_result is not None and not self.job_result.ok:
            return f"relay did not start (runner: {self.job_result.status}): " + \
                self.job_result.stdout_tail[-300:].strip()
        return "relay did not start"

    def wait_all(self, hosts: list[str] | None = None) -> None:
        names = set(hosts or self.by_name)
        end = self.progress.t0 + self.deadline
        with self.cv:
            while names & set(self.progress.pending()):
                if time.monotonic() > end:
                    for n in names & set(self.progress.pending()):
                        self.progress.failed(n, f"not done after {self.deadline:.0f}s")
                    return
                for n in names & set(self.progress.pending()) & self.ended:
                    self.progress.failed(n, "relay ended without a verdict")
                self.cv.wait(0.5)

    def wait_host(self, name: str, limit: float) -> None:
        end = time.monotonic() + limit
        with self.cv:
            while name in self.progress.pending():
                if time.monotonic() > end:
                    self.progress.failed(name, f"not verified {limit:.0f}s after its copy ended")
                    return
                self.cv.wait(0.5)

    def stop_relays(self) -> None:
        """Tell every relay to stop (torrent peers stop seeding), wait for the relay job."""
        self.repo_reporter.stop()
        if self.coordinator is not None:
            self.coordinator.stop_all()
        if self.job is not None:
            self.job.join(30)
            if self.job.is_alive() and self.runner is not None:
                self.runner.cancel()
                self.job.join(30)
        for t in self.repo_threads:
            t.join(30)
        if self.coordinator is not None:
            self.coordinator.close()

    def run_at_repository(self, mode: str, **options: Any) -> None:
        """The repository's end of the run (chain source, torrent seeder) in this process."""
        params = agent.Params(**options)
        t = threading.Thread(target=agent.run, args=(mode, params, self.repo_reporter),
                             name=f"repository-{mode}", daemon=True)
        self.repo_threads.append(t)
        t.start()

    def run(self) -> None:
        try:
            self.distribute()
        finally:
            self.stop_relays()
            self.cleanup()

    def distribute(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        pass

    def scp_argv(self, target: Host, src_path: str, key: str | None) -> list[str]:
        argv = ["scp", "-q", *SSH_OPTS, "-P", str(target.port)]
        if key:
            argv += ["-i", key]
        return [*argv, src_path, f"{target.target}:{target.incoming(self.image.filename)}.part"]


class Sequential(Strategy):
    """scp from the repository to each host in turn."""

    name = "sequential"

    def relay_options(self) -> dict[str, Any]:
        return {**super().relay_options(), "idle_timeout": int(self.deadline)}

    def distribute(self) -> None:
        ready = self.start_relays()
        for h in ready:
            if h.name not in self.progress.pending():
                continue
            p = subprocess.run(self.scp_argv(h, str(self.image.path), h.key),
                               capture_output=True, text=True, check=False)
            if p.returncode != 0:
                self.progress.failed(h.name, f"scp failed rc={p.returncode}: {p.stderr.strip()}")
                continue
            self.wait_host(h.name, 60)


class Wave(Sequential):
    """scp-wave: every host that holds the verified image sends it on."""

    name = "wave"

    def copy_argv(self, sender: Host | None, target: Host) -> list[str]:
        if sender is None:
            return self.scp_argv(target, str(self.image.path), target.key)
        key = self.peer_key or target.key
        inner = self.scp_argv(target, sender.incoming(self.image.filename), key)
        return [*sender.ssh_argv(), shlex.join(inner)]

    def distribute(self) -> None:
        ready = self.start_relays()
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
    mode = "torrent"
    tracker_port = 6969
    piece_log2 = 18  # 256 KiB pieces

    def relay_options(self) -> dict[str, Any]:
        extra = {"rate": self.rate} if self.rate else {}
        return {**super().relay_options(), "torrent_hex": self.torrent_hex, **extra}

    def host_options(self, h: Host) -> dict[str, Any]:
        return {**super().host_options(h), "listen_port": h.relay_port or 6881}

    def distribute(self) -> None:
        for tool in ("aria2c", "mktorrent", "opentracker"):
            if shutil.which(tool) is None:
                raise StagingFailed(f"{tool} is not installed (scripts/bootstrap installs it)")
        addr = self.control_address()
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
        self.torrent_hex = torrent.read_bytes().hex()
        # the repository seeds (aria2c checks the file against the pieces, then uploads)
        self.run_at_repository("torrent", file=str(self.image.path),
                               size=self.image.compressed_size, sha256=self.image.sha256,
                               torrent_hex=self.torrent_hex, listen_port=6881)
        self.start_relays()
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
    mode = "relay"

    def shaping(self) -> dict[str, Any]:
        # small send buffers: bytes queued in a socket are latency added at every hop
        return {"sndbuf": self.sndbuf or CHAIN_SNDBUF, **({"rate": self.rate} if self.rate else {})}

    def relay_options(self) -> dict[str, Any]:
        return {**super().relay_options(), "deadline": int(self.deadline), **self.shaping()}

    def host_options(self, h: Host) -> dict[str, Any]:
        return {**super().host_options(h), "listen": self.endpoint(h)}

    def distribute(self) -> None:
        ready = self.start_relays()
        if not ready:
            return
        source = self.repo_threads
        self.run_at_repository("source", file=str(self.image.path),
                               size=self.image.compressed_size, sha256=self.image.sha256,
                               chain=[self.endpoint(h) for h in ready], timeout=self.timeout,
                               **self.shaping())
        self.wait_all([h.name for h in ready])
        source[-1].join(max(5.0, self.timeout * 2))


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


def stage(image: RepoImage, hosts: list[Host], strategy: str, *, inventory: str,
          out: TextIO | None = None, **opts: Any) -> Progress:
    """Distribute ``image`` to ``hosts`` (of ``inventory``) with ``strategy``; returns the
    finished Progress."""
    if strategy not in STRATEGIES:
        raise StagingFailed(f"unknown strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
    progress = Progress([h.name for h in hosts], image.compressed_size, out=out)
    runner = STRATEGIES[strategy](image, hosts, progress, inventory=inventory, **opts)
    progress.start()
    try:
        runner.run()
    finally:
        progress.stop()
    return progress
