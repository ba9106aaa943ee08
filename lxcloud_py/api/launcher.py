"""Run ``lxcloud serve`` as a child process and wait until it answers.

For whatever needs the real API server over a socket next to it: the demo, the benchmarks and
the integration tests. The server logs to a file; ``start`` fails with the log's tail when the
server exits early or does not listen in time.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """``lxcloud --db DB serve --listen HOST:PORT [ARGS]`` with its output in ``log``.

    Without ``--stages`` in ``args`` it runs the API and the host monitor only (the callers
    that want the daemon's other stages say so)."""

    def __init__(
        self,
        db: str,
        log: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.db, self.log_path, self.host = db, Path(log), host
        self.port = port or free_port(host)
        self.args, self.env = list(args), None if env is None else dict(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/RPC2"

    def start(self, timeout: float = 30) -> ServeProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open as long as the server runs
        stages = [] if "--stages" in self.args else ["--stages", "api,monitor"]
        argv = [sys.executable, "-m", "lxcloud_py", "--db", self.db, "serve",
                "--listen", f"{self.host}:{self.port}", *stages, *self.args]  # fmt: skip
        self.proc = subprocess.Popen(argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"lxcloud serve exited early:\n{self.log_tail()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"lxcloud serve did not listen within {timeout:.0f} s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (the server finishes in-flight calls), SIGKILL after ``timeout``."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
