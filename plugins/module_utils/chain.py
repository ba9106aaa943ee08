# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The staging agent: lxcloud's pipelined chain relay, plus the per-host side of the other
distribution strategies.  Stdlib only; imported by the module ``lxcloud.cloud.image_relay``
(on each host) and by the control plane (``lxcloud_py.staging``: the chain's source and the
repository's torrent seeder run in-process there).

Modes (functions taking the options as attributes of ``params`` and a :class:`Reporter`,
returning the verdict as a dict)::

    run_relay    a chain member: listen on params.listen, receive into F.part, forward
    run_source   the repository end: send params.file down params.chain
    run_watch    scp targets: hash F.part as it grows, verify, rename
    run_torrent  an aria2c peer/seeder (params.torrent_hex: the .torrent file's bytes)

Every mode reports events through the Reporter: ``{"ev": "listening"}``, ``{"ev":
"progress", "bytes": n}`` (about twice a second), ``{"ev": "dead", "peer": "A:P", "reason":
...}`` (a downstream given up on), ``{"ev": "verified"|"done", "ok": true|false, "bytes": n,
"seconds": t, "sha256": ...}`` and ``{"ev": "error", "msg": ...}``.  On a host the Reporter
is a :class:`CoordinatorClient`: a TCP connection back to the coordinator that
``lxcloud image stage`` runs, carrying these events as JSON lines one way and commands
(``{"cmd": "stop"}``: torrent peers stop seeding, relays and watchers give up) the other way.
The connection opens with ``{"hello": HOST, "token": T, "pid": P}``.

Chain protocol (TCP, one connection per hop):
  upstream -> downstream: one JSON line ``{"size", "sha256", "chain": [rest...]}``;
  downstream -> upstream: ``{"offset": n}`` (bytes it already holds: a re-routed upstream
  resumes there), then heartbeats ``{"hb": n}`` every second and finally ``{"done": true}``
  once it holds the verified image AND its own downstream chain finished;
  upstream -> downstream: bytes ``[offset, size)``.
Each relay writes what arrives to ``F.part`` (hashing it in order), and a sender thread
forwards from that file (``sendfile``) as soon as bytes are on disk: the stream is pipelined,
so N hosts take about one link's time.  When a downstream dies (connect/send error, or no
heartbeat for ``timeout`` seconds) the sender reports it and connects to the next host of
the chain, which answers with its offset.  A relay that is re-routed to gets a new upstream and
drops the old one (``{"superseded": true}``).  At the end each relay checks sha256 and renames
``F.part`` to ``F`` (or deletes it on a mismatch).
"""

from __future__ import absolute_import, division, print_function

import contextlib
import hashlib
import json
import os
import re
import select
import socket
import subprocess
import threading
import time

CHUNK = 256 * 1024
BATCH = 64 * 1024


class Reporter(object):
    """Where a mode's events go (``callback(event_dict)``, or nowhere); ``stopped`` is set
    when the control plane asks the mode to stop."""

    def __init__(self, callback=None):
        self.callback = callback
        self.stopped = threading.Event()
        self.lost = None  # why the control plane can no longer be told anything
        self.lock = threading.Lock()

    def emit(self, **ev):
        if self.callback is not None:
            with self.lock:
                self.callback(ev)

    def stop(self):
        self.stopped.set()

    def close(self):
        pass


class CoordinatorClient(Reporter):
    """The side channel of a module on a host: events up to the coordinator of the staging
    run as JSON lines, commands (``{"cmd": "stop"}``) down.  A lost coordinator stops the
    mode: nobody is left to report to."""

    def __init__(self, address, token, host, timeout=10.0):
        super(CoordinatorClient, self).__init__()
        addr, port = parse_peer(address)
        self.sock = socket.create_connection((addr, port), timeout=timeout)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send({"hello": host, "token": token, "pid": os.getpid()})
        self.thread = threading.Thread(target=self._read, name="coordinator", daemon=True)
        self.thread.start()

    def emit(self, **ev):
        self._send(ev)

    def _send(self, msg):
        data = (json.dumps(msg, sort_keys=True) + "\n").encode()
        with self.lock:
            if self.lost is not None:
                return
            try:
                self.sock.sendall(data)
            except OSError as exc:
                self._lose("sending to the coordinator failed: %s" % exc)

    def _lose(self, why):
        if self.lost is None:
            self.lost = why
        self.stopped.set()

    def _read(self):
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError as exc:
                self._lose("the coordinator connection failed: %s" % exc)
                return
            if not data:
                if not self.stopped.is_set():
                    self._lose("the coordinator closed the connection")
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("cmd") == "stop":
                    self.stopped.set()

    def close(self):
        with self.lock:
            if self.lost is None:
                self.lost = "closed"
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()


def parse_peer(text):
    host, _sep, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError("peer must be ADDR:PORT, got %r" % text)
    return host.strip("[]"), int(port)


class Throttle:
    """Token bucket (bytes/s) for tests and for shaping without tc; 0 = unlimited."""

    def __init__(self, rate):
        self.rate = float(rate or 0)
        self.t = time.monotonic()
        self.tokens = 0.0

    def allow(self, want):
        if not self.rate:
            return want
        while True:
            now = time.monotonic()
            self.tokens = min(self.tokens + (now - self.t) * self.rate, self.rate / 10)
            self.t = now
            if self.tokens >= min(want, 16384):
                n = int(min(want, self.tokens))
                self.tokens -= n
                return n
            time.sleep(max(0.001, (min(want, 16384) - self.tokens) / self.rate))


class Image:
    """The local copy: bytes on disk so far, and the condition senders wait on."""

    def __init__(self, path, size, sha256, complete=False):
        self.path = path
        self.size = size
        self.sha256 = sha256
        self.cv = threading.Condition()
        self.have = size if complete else 0
        self.failed = None  # reason string once this node gives up
        self.hash = hashlib.sha256()

    def wait_for(self, off, timeout, batch=1, linger=0.05):
        """Block until at least ``batch`` bytes past ``off`` are on disk (or the image is
        complete), but no longer than ``linger`` once there is something to send and never
        longer than ``timeout``; returns have (or raises).  Batching keeps sends (and so TCP
        segments and the next hop's reads) large: small ones cost CPU at every hop."""
        with self.cv:
            now = time.monotonic()
            end = now + timeout
            soon = None
            want = min(off + batch, self.size)
            while self.have < want and self.failed is None:
                if self.have > off and soon is None:
                    soon = time.monotonic() + linger
                left = min(end, soon or end) - time.monotonic()
                if left <= 0:
                    return self.have
                self.cv.wait(min(left, 1.0))
            if self.failed is not None and self.have <= off:
                raise IOError("local copy failed: %s" % self.failed)
            return self.have


class Sender:
    """Forward the local copy down the chain, re-routing around dead hosts."""

    def __init__(self, image, chain, timeout, rate=0, sndbuf=0, me="", emit=None):
        self.emit = emit or Reporter().emit
        self.image = image
        self.chain = list(chain)
        self.timeout = timeout
        self.throttle = Throttle(rate)
        self.sndbuf = sndbuf
        self.me = me
        self.dead = []
        self.sent_to = []
        self.superseded = False
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self.run, name="sender", daemon=True)
        self.thread.start()

    def join(self):
        if self.thread:
            self.thread.join()

    def run(self):
        i = 0
        while i < len(self.chain) and not self.superseded:
            peer = self.chain[i]
            try:
                self._serve(peer, self.chain[i + 1:])
                self.sent_to.append(peer)
                return
            except _Superseded:
                self.superseded = True
                return
            except (OSError, ValueError) as exc:
                if self.image.failed is not None:
                    return
                self.dead.append(peer)
                self.emit(ev="dead", peer=peer, reason=str(exc) or type(exc).__name__, by=self.me)
                i += 1

    def _serve(self, peer, rest):
        addr, port = parse_peer(peer)
        s = socket.create_connection((addr, port), timeout=self.timeout)
        try:
            if self.sndbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
            hdr = {"size": self.image.size, "sha256": self.image.sha256, "chain": rest,
                   "from": self.me}
            # no Nagle: sends are batched already; a held-back tail would wait for a delayed ACK
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall((json.dumps(hdr) + "\n").encode())
            reader = _LineReader(s)
            reply = reader.line(self.timeout)
            while "offset" not in reply:
                if "error" in reply:
                    raise ValueError("%s refused: %s" % (peer, reply["error"]))
                reply = reader.line(self.timeout)
            off = int(reply["offset"])
            with open(self.image.path, "rb") as fh:
                while off < self.image.size:
                    have = self.image.wait_for(off, self.timeout, BATCH)
                    reader.poll()  # heartbeats, or superseded
                    if have <= off:
                        continue
                    n = self.throttle.allow(min(have - off, 4 << 20))
                    try:
                        sent = s.sendfile(fh, off, n)
                    except OSError:
                        reader.poll()
                        raise
                    if not sent:
                        raise IOError("connection closed by %s" % peer)
                    off += sent
            # all bytes sent: wait until the rest of the chain holds the image
            while True:
                msg = reader.line(self.timeout)
                if msg.get("done"):
                    return
        finally:
            s.close()


def _recv_line(conn, limit=65536):
    """One line from a socket, consuming nothing after it (the data that follows is read with
    recv_into, unbuffered)."""
    while True:
        data = conn.recv(limit, socket.MSG_PEEK)
        if not data:
            return b""
        i = data.find(b"\n")
        if i >= 0:
            return conn.recv(i + 1, socket.MSG_WAITALL)
        if len(data) >= limit:
            raise ValueError("header line too long")
        time.sleep(0.01)


class _Superseded(Exception):
    pass


class _LineReader:
    """JSON lines from the downstream; ``timeout`` between any two of them means dead."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _take(self):
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            if line.strip():
                msg = json.loads(line)
                if msg.get("superseded"):
                    raise _Superseded()
                return msg
        return None

    def poll(self):
        """Consume whatever arrived without blocking."""
        while True:
            r, _w, _x = select.select([self.sock], [], [], 0)
            if not r:
                return
            data = self.sock.recv(65536)
            if not data:
                raise IOError("connection closed by downstream")
            self.buf += data
            while self._take() is not None:
                pass

    def line(self, timeout):
        msg = self._take()
        if msg is not None:
            return msg
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise socket.timeout("no word from downstream for %ss" % timeout)
            r, _w, _x = select.select([self.sock], [], [], left)
            if not r:
                continue
            data = self.sock.recv(65536)
            if not data:
                raise IOError("connection closed by downstream")
            self.buf += data
            msg = self._take()
            if msg is not None:
                return msg


class Relay:
    """A chain member: receive into F.part, forward, verify, rename."""

    def __init__(self, args, reporter):
        self.args = args
        self.rep = reporter
        self.part = args.file + ".part"
        self.image = Image(self.part, args.size, args.sha256)
        self.lock = threading.Lock()
        self.wlock = threading.Lock()
        self.slock = threading.Lock()
        self.hb_ok = None
        self.upstream = None
        self.sender = None
        self.complete = threading.Event()
        self.ok = None
        self.mismatch = None
        self.t0 = None
        self.last_data = time.monotonic()

    def serve(self):
        a = self.args
        d = os.path.dirname(os.path.abspath(a.file))
        if not os.path.isdir(d):
            os.makedirs(d, 0o755)
        self.fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        addr, port = parse_peer(a.listen)
        ls = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((addr, port))
        ls.listen(8)
        self.rep.emit(ev="listening", addr=a.listen, pid=os.getpid())
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()
        threading.Thread(target=self._progress, daemon=True).start()
        threading.Thread(target=self._heartbeat, daemon=True).start()
        deadline = time.monotonic() + a.deadline if a.deadline else None
        while not self.complete.wait(0.5):
            idle = time.monotonic() - self.last_data
            if self.t0 is not None and idle > a.idle_timeout:
                self._fail("no data from any upstream for %ds" % a.idle_timeout)
                break
            if deadline and time.monotonic() > deadline:
                self._fail("deadline of %ds passed" % a.deadline)
                break
            if self.rep.stopped.is_set():
                self._fail("stopped by the control plane (%s)" % (self.rep.lost or "stop"))
                break
        if self.ok or self.mismatch:
            # every byte arrived (good or not): the rest of the chain still gets them and
            # judges for itself; the upstream learns that this part of the chain is done
            if self.sender:
                self.sender.join()
            self._send_upstream({"done": True})
            time.sleep(0.2)
        if self.mismatch:
            with contextlib.suppress(OSError):
                os.unlink(self.part)
        with contextlib.suppress(OSError):
            ls.close()
        verdict = dict(ok=bool(self.ok), bytes=self.image.have,
                       sha256=self.image.hash.hexdigest(),
                       seconds=round(time.monotonic() - (self.t0 or time.monotonic()), 3),
                       forwarded_to=(self.sender.sent_to if self.sender else []),
                       dead=(self.sender.dead if self.sender else []),
                       error=self.image.failed or self.mismatch)
        self.rep.emit(ev="done", **verdict)
        return verdict

    def _fail(self, reason):
        with self.image.cv:
            self.image.failed = reason
            self.image.cv.notify_all()
        self.ok = False
        with contextlib.suppress(OSError):
            os.unlink(self.part)
        self.complete.set()

    def _accept(self, ls):
        while True:
            try:
                conn, _peer = ls.accept()
            except OSError:
                return  # closed: the relay is done
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _send_upstream(self, msg):
        with self.lock:
            up = self.upstream
        if up is None:
            return
        with self.slock:
            if self.hb_ok is not up:  # the offset reply goes first
                return
            with contextlib.suppress(OSError):
                up.sendall((json.dumps(msg) + "\n").encode())

    def _heartbeat(self):
        while True:  # until exit: the upstream waits for our chain's "done"
            self._send_upstream({"hb": self.image.have})
            time.sleep(1.0)

    def _progress(self):
        while not self.complete.is_set():
            self.rep.emit(ev="progress", bytes=self.image.have)
            time.sleep(self.args.interval)

    def _handle(self, conn):
        conn.settimeout(self.args.timeout)
        try:
            hdr = json.loads(_recv_line(conn) or b"{}")
            if (int(hdr.get("size", -1)) != self.image.size
                    or hdr.get("sha256") != self.image.sha256):
                conn.sendall(b'{"error": "image mismatch"}\n')
                conn.close()
                return
        except (OSError, ValueError):
            conn.close()
            return
        with self.lock:
            old, self.upstream = self.upstream, conn
        if old is not None:
            with contextlib.suppress(OSError):
                old.sendall(b'{"superseded": true}\n')
            with contextlib.suppress(OSError):
                old.shutdown(socket.SHUT_RDWR)
        with self.wlock:  # the old upstream's writer has stopped once we hold this
            if self.upstream is not conn:
                return
            if self.sender is None and not self.complete.is_set():
                self.t0 = time.monotonic()
                self.sender = Sender(self.image, hdr.get("chain") or [], self.args.timeout,
                                     self.args.rate, self.args.sndbuf, me=self.args.listen,
                                     emit=self.rep.emit)
                self.sender.start()
            try:
                conn.settimeout(None)  # a silent upstream is superseded, not timed out
                with self.slock:
                    conn.sendall((json.dumps({"offset": self.image.have}) + "\n").encode())
                    self.hb_ok = conn
                self.rep.emit(ev="upstream", peer=str(hdr.get("from", "")), offset=self.image.have)
                self._receive(conn)
            except OSError:
                pass  # the upstream died: wait for a re-routed one

    def _receive(self, conn):
        buf = bytearray(CHUNK)
        mv = memoryview(buf)
        img = self.image
        while img.have < img.size and not self.complete.is_set():
            want = min(CHUNK, img.size - img.have)
            try:
                n = conn.recv_into(mv[:want])
            except OSError:
                return
            if not n:
                return
            data = mv[:n]
            off = 0
            while off < n:
                off += os.write(self.fd, data[off:])
            img.hash.update(data)
            with img.cv:
                img.have += n
                img.cv.notify_all()
            self.last_data = time.monotonic()
            if n < BATCH // 2 and img.have < img.size:
                # a trickle: let a batch gather instead of waking for every few segments
                # (SO_RCVLOWAT would, but can stall small receive buffers)
                time.sleep(0.004)
        if img.have >= img.size and not self.complete.is_set():
            self._finish()

    def _finish(self):
        # no fsync: the install step (lxcloud.cloud.image) verifies sha256 again before it
        # unpacks, and an fsync of every copy at the same moment costs seconds of disk time
        os.close(self.fd)
        digest = self.image.hash.hexdigest()
        if digest == self.image.sha256:
            os.rename(self.part, self.args.file)
            self.image.path = self.args.file  # the sender's open file stays valid
            self.ok = True
            self.rep.emit(ev="verified", ok=True, bytes=self.image.have, sha256=digest,
                          seconds=round(time.monotonic() - self.t0, 3))
        else:
            # F.part is removed once the sender has forwarded it
            self.mismatch = "sha256 mismatch: got %s, expected %s" % (digest, self.image.sha256)
            self.ok = False
            self.rep.emit(ev="verified", ok=False, bytes=self.image.have, sha256=digest,
                          error=self.mismatch, seconds=round(time.monotonic() - self.t0, 3))
        self.complete.set()


def run_relay(params, reporter):
    """A chain member (params: listen, file, size, sha256, timeout, idle_timeout, deadline,
    rate, sndbuf, interval); returns the verdict."""
    return Relay(params, reporter).serve()


def run_source(params, reporter):
    """The repository end of the chain (params: file, size, sha256, chain (a list of
    ADDR:PORT), timeout, rate, sndbuf); returns the verdict."""
    image = Image(params.file, params.size, params.sha256, complete=True)
    t0 = time.monotonic()
    sender = Sender(image, list(params.chain), params.timeout, params.rate, params.sndbuf,
                    me="source", emit=reporter.emit)
    sender.start()
    sender.join()
    verdict = dict(ok=bool(sender.sent_to), bytes=params.size,
                   seconds=round(time.monotonic() - t0, 3), forwarded_to=sender.sent_to,
                   dead=sender.dead)
    reporter.emit(ev="done", **verdict)
    return verdict


def _hash_growing(path, size, interval, idle_timeout, reporter, progress):
    """Hash a file while something else (scp, aria2c in order) writes it; return digest."""
    h = hashlib.sha256()
    done = 0
    last_change = time.monotonic()
    last_emit = 0.0
    fh = None
    try:
        while done < size:
            if fh is None:
                try:
                    fh = open(path, "rb")  # noqa: SIM115 - closed in finally
                except OSError:
                    fh = None
            if fh is not None:
                try:
                    cur = os.fstat(fh.fileno()).st_size
                    if os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino:
                        raise OSError("replaced")
                except OSError:
                    fh.close()
                    fh, h, done = None, hashlib.sha256(), 0
                    continue
                if cur < done:  # truncated and rewritten: start over
                    fh.seek(0)
                    h, done = hashlib.sha256(), 0
                while done < min(cur, size):
                    b = fh.read(min(CHUNK * 4, min(cur, size) - done))
                    if not b:
                        break
                    h.update(b)
                    done += len(b)
                    last_change = time.monotonic()
            now = time.monotonic()
            if progress and now - last_emit >= interval:
                reporter.emit(ev="progress", bytes=done)
                last_emit = now
            if done >= size:
                break
            if now - last_change > idle_timeout:
                raise IOError("no new bytes for %ds" % idle_timeout)
            if reporter.stopped.is_set():
                raise IOError("stopped by the control plane (%s)" % (reporter.lost or "stop"))
            time.sleep(0.05)
    finally:
        if fh is not None:
            fh.close()
    return h.hexdigest()


def holds(path, size, sha256):
    """Whether ``path`` is the complete image (``size`` bytes with this sha256)."""
    try:
        if os.path.getsize(path) != size:
            return False
    except OSError:
        return False
    try:
        return _hash_growing(path, size, 1.0, 0, Reporter(), False) == sha256
    except IOError:
        return False


def _mismatch(digest, expected):
    return "sha256 mismatch: got %s, expected %s" % (digest, expected)


def _ensure_dir(path):
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        os.makedirs(d, 0o755)
    return d


def run_watch(params, reporter):
    """scp writes F.part; hash it as it grows, then verify and rename to F (params: file,
    size, sha256, interval, idle_timeout); returns the verdict."""
    part = params.file + ".part"
    _ensure_dir(params.file)
    reporter.emit(ev="listening", pid=os.getpid())
    t0 = time.monotonic()
    try:
        digest = _hash_growing(part, params.size, params.interval, params.idle_timeout,
                               reporter, True)
    except IOError as exc:
        with contextlib.suppress(OSError):
            os.unlink(part)
        verdict = dict(ok=False, bytes=0, error=str(exc), seconds=round(time.monotonic() - t0, 3))
        reporter.emit(ev="done", **verdict)
        return verdict
    ok = digest == params.sha256
    if ok:
        os.rename(part, params.file)
    else:
        with contextlib.suppress(OSError):
            os.unlink(part)
    reporter.emit(ev="progress", bytes=params.size)
    verdict = dict(ok=ok, bytes=params.size, sha256=digest,
                   seconds=round(time.monotonic() - t0, 3),
                   error=None if ok else _mismatch(digest, params.sha256))
    reporter.emit(ev="done", **verdict)
    return verdict


_PROGRESS = re.compile(r"\[#\w+\s+(?:SEED\([^)]*\)|([\d.]+)([KMGT]?i?B)/([\d.]+)([KMGT]?i?B))")
_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def aria2c_argv(torrent, directory, extra=()):
    """aria2c as a BitTorrent peer: no DHT, no LPD, no peer exchange, seed until stopped."""
    return [
        "aria2c", "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
        "--enable-peer-exchange=false", "--seed-ratio=0.0", "--check-integrity=true",
        "--bt-hash-check-seed=true", "--file-allocation=none", "--allow-overwrite=true",
        "--summary-interval=1", "--console-log-level=warn", "--show-console-readout=false",
        "--bt-max-peers=55", "--bt-request-peer-speed-limit=100M", "--max-upload-limit=0",
        "--dir=" + directory, *extra, torrent,
    ]


def run_torrent(params, reporter):
    """Run aria2c (params: torrent_hex, file, size, sha256, listen_port, rate); report
    progress; once the file is complete, verify sha256 and keep seeding until the control
    plane says stop.  Returns the verdict."""
    directory = _ensure_dir(params.file)
    torrent = os.path.join(directory, os.path.basename(params.file) + ".torrent")
    with open(torrent, "wb") as fh:
        fh.write(bytes.fromhex(params.torrent_hex))
    extra = []
    if params.listen_port:
        extra.append("--listen-port=%d" % params.listen_port)
    if params.rate:
        extra.append("--max-overall-download-limit=%d" % int(params.rate))
    proc = subprocess.Popen(aria2c_argv(torrent, directory, extra), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    reporter.emit(ev="listening", pid=os.getpid(), aria2c_pid=proc.pid)
    t0 = time.monotonic()

    def stop_on_command():
        reporter.stopped.wait()
        if proc.poll() is None:
            proc.terminate()

    threading.Thread(target=stop_on_command, daemon=True).start()
    verdict = None
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace")
        m = _PROGRESS.search(line)
        if not m or verdict is not None:
            continue
        if m.group(1) is None:  # SEED(...): complete
            got = params.size
        else:
            got = int(float(m.group(1)) * _UNITS.get(m.group(2), 1))
            total = int(float(m.group(3)) * _UNITS.get(m.group(4), 1))
            if total and got >= total:
                got = params.size
        reporter.emit(ev="progress", bytes=min(got, params.size))
        if got >= params.size:
            digest = _hash_growing(params.file, params.size, 1.0, 30, Reporter(), False)
            ok = digest == params.sha256
            if not ok:
                with contextlib.suppress(OSError):
                    os.unlink(params.file)
            verdict = dict(ok=ok, bytes=params.size, sha256=digest,
                           seconds=round(time.monotonic() - t0, 3),
                           error=None if ok else _mismatch(digest, params.sha256))
            reporter.emit(ev="done", **verdict)
    rc = proc.wait()
    proc.stdout.close()
    with contextlib.suppress(OSError):
        os.unlink(torrent)  # written by us: leave nothing behind
    if verdict is None:
        why = ("stopped by the control plane (%s)" % (reporter.lost or "stop")
               if reporter.stopped.is_set() else
               "aria2c exited (rc=%d) before the download completed" % rc)
        verdict = dict(ok=False, bytes=0, seconds=round(time.monotonic() - t0, 3), error=why)
        reporter.emit(ev="done", **verdict)
    return verdict


class Params(object):
    """Options of a mode as attributes, with the defaults of every mode."""

    DEFAULTS = dict(interval=0.5, timeout=10.0, idle_timeout=120.0, deadline=0, rate=0,
                    sndbuf=0, listen=None, chain=(), torrent_hex=None, listen_port=0)

    def __init__(self, **options):
        values = dict(self.DEFAULTS)
        values.update((k, v) for k, v in options.items() if v is not None)
        for key in ("file", "size", "sha256"):
            if key not in values:
                raise ValueError("%s is required" % key)
        self.__dict__.update(values)


MODES = {"relay": run_relay, "source": run_source, "watch": run_watch, "torrent": run_torrent}


def run(mode, params, reporter):
    """Run ``mode`` with ``params`` (a :class:`Params`); errors become a failed verdict."""
    if mode not in MODES:
        raise ValueError("mode must be one of %s, got %r" % (", ".join(sorted(MODES)), mode))
    try:
        return MODES[mode](params, reporter)
    except (OSError, ValueError) as exc:
        msg = "%s: %s" % (type(exc).__name__, exc)
        reporter.emit(ev="error", msg=msg)
        return dict(ok=False, bytes=0, error=msg)
