"""Failed-login throttling, per client address and per user name.

Each key (``ip:ADDRESS``, ``user:NAME``) may fail ``free`` times; every failure after that
locks the key out for ``base * 2**(failures - free - 1)`` seconds, capped at ``cap``. While a
key is locked out its requests are refused at once, before any password hash is computed (a
throttled guess costs the server nothing). A success clears the user's key and the address's.
Failures older than ``forget`` seconds are forgotten. Memory is bounded: at most ``max_keys``
keys, the least recently failed dropped first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Entry:
    failures: int = 0
    last: float = 0.0
    locked_until: float = 0.0


class LoginThrottle:
    def __init__(
        self,
        *,
        free: int = 5,
        base: float = 1.0,
        cap: float = 300.0,
        forget: float = 900.0,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free, self.base, self.cap, self.forget = free, base, cap, forget
        self.max_keys = max_keys
        self.clock = clock
        self._keys: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def keys(ip: str | None, user: str | None) -> list[str]:
        out = []
        if ip:
            out.append(f"ip:{ip}")
        if user:
            out.append(f"user:{user}")
        return out

    def retry_after(self, ip: str | None, user: str | None) -> float:
        """Seconds until these may try again (0: now)."""
        now = self.clock()
        wait = 0.0
        with self._lock:
            for key in self.keys(ip, user):
                e = self._keys.get(key)
                if e is not None and e.locked_until > now:
                    wait = max(wait, e.locked_until - now)
        return wait

    def failed(self, ip: str | None, user: str | None) -> int:
        """Record a failure; returns the highest failure count among the keys."""
        now = self.clock()
        worst = 0
        with self._lock:
            for key in self.keys(ip, user):
                e = self._keys.pop(key, None) or _Entry()
                if now - e.last > self.forget:
                    e = _Entry()
                e.failures += 1
                e.last = now
                over = e.failures - self.free
                if over > 0:
                    e.locked_until = now + min(self.cap, self.base * 2 ** min(over - 1, 30))
                self._keys[key] = e  # most recent last
                worst = max(worst, e.failures)
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        return worst

    def succeeded(self, ip: str | None, user: str | None) -> None:
        with self._lock:
            for key in self.keys(ip, user):
                self._keys.pop(key, None)
