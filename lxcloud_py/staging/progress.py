"""Live per-host progress of a staging run, and the final table."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

from lxcloud_py.table import render

MB = 1_000_000


@dataclass
class HostProgress:
    name: str
    bytes: int = 0
    state: str = "waiting"  # waiting, receiving, verified, failed, dead
    started: float | None = None
    finished: float | None = None
    checksum: str = "-"  # ok, MISMATCH, -
    error: str | None = None
    reported_by: str | None = None


class Progress:
    """Thread-safe per-host byte counters and verdicts; times are relative to ``t0``."""

    def __init__(self, hosts: list[str], total: int, out: TextIO | None = None,
                 interval: float = 1.0) -> None:
        self.total = total
        self.hosts = {h: HostProgress(h) for h in hosts}
        self.order = list(hosts)
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.out = out
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = 0

    # -- updates --------------------------------------------------------------------------
    def update(self, host: str, nbytes: int) -> None:
        with self.lock:
            hp = self.hosts[host]
            if hp.state in ("verified", "failed", "dead"):
                return
            if nbytes > 0 and hp.started is None:
                hp.started = time.monotonic()
            if nbytes > 0:
                hp.state = "receiving"
            hp.bytes = max(hp.bytes, min(nbytes, self.total))

    def verified(self, host: str) -> None:
        with self.lock:
            hp = self.hosts[host]
            if hp.state in ("verified", "failed", "dead"):
                return
            hp.state, hp.checksum, hp.bytes = "verified", "ok", self.total
            hp.finished = time.monotonic()

    def failed(self, host: str, error: str, *, mismatch: bool = False, dead: bool = False,
               by: str | None = None) -> None:
        with self.lock:
            hp = self.hosts[host]
            if hp.state in ("verified", "failed", "dead"):
                return
            hp.state = "dead" if dead else "failed"
            hp.checksum = "MISMATCH" if mismatch else "-"
            hp.error = error
            hp.reported_by = by
            hp.finished = time.monotonic()

    def pending(self) -> list[str]:
        with self.lock:
            return [h for h in self.order
                    if self.hosts[h].state not in ("verified", "failed", "dead")]

    def verified_hosts(self) -> list[str]:
        with self.lock:
            return [h for h in self.order if self.hosts[h].state == "verified"]

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    # -- display --------------------------------------------------------------------------
    def start(self) -> None:
        if self.out is None:
            return
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
            self._draw()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    def line(self) -> str:
        with self.lock:
            parts = []
            for h in self.order:
                hp = self.hosts[h]
                mark = {"verified": "ok", "failed": "FAIL", "dead": "DEAD"}.get(hp.state)
                parts.append(f"{h}:{mark or f'{100 * hp.bytes // max(self.total, 1)}%'}")
            done = sum(1 for hp in self.hosts.values() if hp.state == "verified")
        return f"[{self.elapsed():6.1f}s] {done}/{len(self.order)} verified  " + " ".join(parts)

    def _draw(self) -> None:
        assert self.out is not None
        tty = hasattr(self.out, "isatty") and self.out.isatty()
        if not tty:
            self.out.write(self.line() + "\n")
            self.out.flush()
            return
        rows = []
        now = time.monotonic()
        with self.lock:
            for h in self.order:
                hp = self.hosts[h]
                pct = 100 * hp.bytes / max(self.total, 1)
                bar = "#" * int(pct / 5)
                t = (hp.finished or now) - self.t0
                rows.append([h, hp.state, f"{hp.bytes / MB:.1f}", f"{pct:.0f}%", f"{bar:<20}",
                             f"{t:.1f}"])
        text = render(["host", "state", "MB", "done", "progress", "s"], rows)
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
        self.out.write(text + "\n")
        self._drawn = text.count("\n") + 1
        self.out.flush()

    # -- results --------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        out = []
        with self.lock:
            for h in self.order:
                hp = self.hosts[h]
                t = None if hp.finished is None else hp.finished - self.t0
                rate = (self.total / MB / t) if (t and hp.state == "verified") else None
                first = None if hp.started is None else hp.started - self.t0
                out.append({"host": h, "state": hp.state, "seconds": t, "rate_mb_s": rate,
                            "first_byte": first,
                            "checksum": hp.checksum, "error": hp.error,
                            "reported_by": hp.reported_by})
        return out

    def table(self) -> str:
        rows = []
        for r in self.rows():
            note = r["error"] or ""
            if r["reported_by"]:
                note = f"{note} (reported by {r['reported_by']})".strip()
            rows.append([
                r["host"],
                r["state"],
                "-" if r["seconds"] is None else f"{r['seconds']:.1f}",
                "-" if r["rate_mb_s"] is None else f"{r['rate_mb_s']:.1f}",
                r["checksum"],
                note,
            ])
        return render(["host", "state", "time s", "rate MB/s", "checksum", "note"], rows)


def default_out() -> TextIO:
    return sys.stdout
