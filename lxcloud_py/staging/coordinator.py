"""The coordinator of a staging run: the side channel of the ``lxcloud.cloud.image_relay``
modules on the hosts.

A module cannot stream to Ansible while it runs, so each relay connects back to this TCP
server (started in-process by ``lxcloud image stage``), says ``{"hello": HOST, "token": T,
"pid": P}`` and then sends its events as JSON lines (the protocol of
``plugins/module_utils/chain.py``); the coordinator sends commands the other way
(``{"cmd": "stop"}``).  A connection with a wrong token or an unknown host is dropped.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import secrets
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0


class Coordinator:
    """TCP server for the relays of one run; ``on_event(host, event)`` gets every event."""

    def __init__(self, bind: str, hosts: Iterable[str],
                 on_event: Callable[[str, dict[str, Any]], None]) -> None:
        self.hosts = set(hosts)
        self.on_event = on_event
        self.token = secrets.token_hex(16)
        self.conns: dict[str, socket.socket] = {}
        self.lock = threading.Lock()
        self.closed = False
        self.server = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET)
        self.server.bind((bind, 0))
        self.server.listen(128)
        self.address = f"{bind}:{self.server.getsockname()[1]}"
        self.thread = threading.Thread(target=self._accept, name="coordinator", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        host = None
        try:
            conn.settimeout(HELLO_TIMEOUT)
            reader = conn.makefile("rb")
            hello = json.loads(reader.readline() or b"{}")
            host = str(hello.get("hello", ""))
            if not (hmac.compare_digest(str(hello.get("token", "")), self.token)
                    and host in self.hosts):
                log.warning("staging coordinator: refused a connection for %r", host)
                host = None
                return
            conn.settimeout(None)
            with self.lock:
                old = self.conns.get(host)
                self.conns[host] = conn
                stop = self.closed
            if old is not None:
                with contextlib.suppress(OSError):
                    old.close()
            if stop:
                self._send(conn, {"cmd": "stop"})
            for raw in reader:
                try:
                    ev = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(ev, dict):
                    self.on_event(host, ev)
        except (OSError, ValueError):
            pass
        finally:
            if host is not None:
                with self.lock:
                    if self.conns.get(host) is conn:
                        del self.conns[host]
            with contextlib.suppress(OSError):
                conn.close()

    @staticmethod
    def _send(conn: socket.socket, msg: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            conn.sendall((json.dumps(msg) + "\n").encode())

    def stop_all(self) -> None:
        """Tell every relay (also those connecting later) to stop."""
        with self.lock:
            self.closed = True
            conns = list(self.conns.values())
        for c in conns:
            self._send(c, {"cmd": "stop"})

    def close(self) -> None:
        self.stop_all()
        with contextlib.suppress(OSError):
            self.server.close()
        with self.lock:
            conns = list(self.conns.values())
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
