"""The API's HTTP front: an asyncio server that reads whole requests before any worker sees them.

Idle and slow clients cost a file descriptor and a few kilobytes, never a worker thread:

* accepting never waits on a worker; at most ``max_connections`` connections in all and
  ``max_per_ip`` from one address (over either: ``503`` and close, logged with the address);
* a request's head and body must arrive within ``request_deadline`` seconds of its first byte
  (slowloris: ``408`` and close); the head is capped at ``MAX_HEAD_BYTES``; the body at
  ``max_request_bytes`` (``413``), announced by a Content-Length (``411`` without, ``400`` when
  malformed), identity-encoded (``415``);
* a keep-alive connection idle for ``idle_timeout`` seconds is closed;
* only ``POST /RPC2`` is served by default (``404``/``405`` otherwise; the EC2 front serves
  ``GET`` and ``POST /``); complete requests go to a pool of
  ``max_threads`` worker threads (each may hold a database connection), queued when all are busy.

The XML is (un)marshalled with the standard library (:func:`lxcloud_py.api.server.marshaled`);
the :class:`~lxcloud_py.api.server.Dispatcher` does names, authentication and error codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

log = logging.getLogger("lxcloud.api.http")

MAX_HEAD_BYTES = 16 * 1024
REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 411: "Length Required", 413: "Payload Too Large",
    415: "Unsupported Media Type", 431: "Request Header Fields Too Large",
    503: "Service Unavailable", 505: "HTTP Version Not Supported",
}


class _Refuse(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _response(status: int, body: bytes, content_type: str, keep_alive: bool) -> bytes:
    head = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        "Server: lxcloud",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: " + ("keep-alive" if keep_alive else "close"),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


@dataclass(frozen=True)
class Request:
    """A whole request as the front read it (header names lower-cased)."""

    method: str
    target: str  # path and query string as sent
    headers: dict[str, str]
    body: bytes
    ip: str

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


class HttpFront:
    """Serves ``handle(body, client_ip) -> reply`` (run in a worker thread) at ``path``.

    A subclass may override :meth:`respond` to see the whole :class:`Request` and choose the
    status and content type; ``methods`` are the HTTP methods served at ``path`` (a GET needs
    no Content-Length).
    """

    def __init__(
        self,
        address: tuple[str, int],
        handle: Callable[[bytes, str], bytes],
        *,
        path: str = "/RPC2",
        methods: tuple[str, ...] = ("POST",),
        max_request_bytes: int,
        max_threads: int,
        request_deadline: float = 10.0,
        idle_timeout: float = 15.0,
        max_connections: int = 4096,
        max_per_ip: int = 256,
        backlog: int = 1024,
    ) -> None:
        self.handle = handle
        self.path = path
        self.methods = methods
        self.max_request_bytes = max_request_bytes
        self.request_deadline = request_deadline
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(backlog)
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        self.workers = ThreadPoolExecutor(max_threads, thread_name_prefix="api")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._per_ip: Counter[str] = Counter()
        self._open = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._refusals: Counter[str] = Counter()
        self._last_refusal_log = 0.0

    # -- lifecycle (socketserver-like, so the CLI, tests and benches drive it the same way) ------
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until :meth:`shutdown`; ``poll_interval`` is accepted for compatibility."""
        try:
            asyncio.run(self._serve())
        finally:
            self._stopped.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(
            self._client, sock=self.socket, limit=MAX_HEAD_BYTES, start_serving=True
        )
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=2.0)
            # connections still open are cut; requests already in a worker finish there
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    def shutdown(self) -> None:
        """Stop serving (from any thread but the server's); returns when it stopped."""
        if not self._started.wait(5) or self._loop is None or self._stop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            self._loop.call_soon_threadsafe(self._stop.set)
        self._stopped.wait(10)

    def server_close(self) -> None:
        """Close the listening socket; waits for requests in flight in the workers."""
        self.socket.close()
        self.workers.shutdown(wait=True)

    # -- one connection -------------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        ip = str(peer[0])
        if self._open >= self.max_connections or self._per_ip[ip] >= self.max_per_ip:
            why = "server" if self._open >= self.max_connections else "address"
            self._note_refusal(ip, why)
            with contextlib.suppress(Exception):
                writer.write(_response(503, b"Too many connections\n", "text/plain", False))
                await asyncio.wait_for(writer.drain(), 1.0)
            writer.close()
            return
        self._open += 1
        self._per_ip[ip] += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while await self._one_request(reader, writer, ip):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        except asyncio.CancelledError:
            pass  # shutdown: the connection is cut (a request in a worker still finishes there)
        finally:
            if task is not None:
                self._tasks.discard(task)
            self._open -= 1
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    def _note_refusal(self, ip: str, why: str) -> None:
        self._refusals[ip] += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= 5.0:  # one line per 5 s, naming the addresses
            top = ", ".join(f"{a} x{n}" for a, n in self._refusals.most_common(5))
            log.warning(
                "refused connections (503, limit per %s; open %d, max %d, per address %d): %s",
                why, self._open, self.max_connections, self.max_per_ip, top,
            )
            self._refusals.clear()
            self._last_refusal_log = now

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ip: str
    ) -> bool:
        """Serve one request; True to wait for another on this connection."""
        try:
            first = await asyncio.wait_for(reader.read(1), self.idle_timeout)
        except TimeoutError:
            return False  # idle keep-alive connection
        if not first:
            return False
        deadline = time.monotonic() + self.request_deadline
        try:
            request, keep = await asyncio.wait_for(
                self._read_request(first, reader, ip), self.request_deadline
            )
        except TimeoutError:
            log.info("closed a connection from %s: request not complete in %g s",
                     ip, self.request_deadline)
            with contextlib.suppress(Exception):
                writer.write(_response(408, b"Request Timeout\n", "text/plain", False))
                await asyncio.wait_for(writer.drain(), 1.0)
            return False
        except _Refuse as exc:
            if exc.status == 413:
                log.warning("refused a request from %s: %s", ip, exc.message)
            writer.write(_response(exc.status, (exc.message + "\n").encode(), "text/plain",
                                   False))
            await asyncio.wait_for(writer.drain(), max(1.0, deadline - time.monotonic()))
            return False
        assert self._loop is not None
        status, reply, content_type = await self._loop.run_in_executor(
            self.workers, self.respond, request
        )
        writer.write(_response(status, reply, content_type, keep))
        await asyncio.wait_for(writer.drain(), self.request_deadline)
        return keep

    def respond(self, request: Request) -> tuple[int, bytes, str]:
        """(status, body, content type) for a whole request, in a worker thread."""
        return 200, self.handle(request.body, request.ip), "text/xml"

    async def _read_request(
        self, first: bytes, reader: asyncio.StreamReader, ip: str
    ) -> tuple[Request, bool]:
        try:
            head = first + await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _Refuse(431, "Request head too large") from None
        except asyncio.IncompleteReadError:
            raise ConnectionResetError from None
        if len(head) > MAX_HEAD_BYTES:
            raise _Refuse(431, "Request head too large")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            raise _Refuse(400, "Bad request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _Refuse(505, "HTTP version not supported")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise _Refuse(400, "Bad header line")
            headers[name.strip().lower()] = value.strip()
        # a query string only where GET is served (the XML-RPC path is exact)
        if (target.partition("?")[0] if "GET" in self.methods else target) != self.path:
            raise _Refuse(404, "Not Found")
        if method not in self.methods:
            raise _Refuse(405, "Only " + ", ".join(self.methods))
        raw = headers.get("content-length")
        if raw is None and method == "GET" and "chunked" not in headers.get(
            "transfer-encoding", ""
        ).lower():
            raw = "0"
        if raw is None:
            raise _Refuse(411, "Length Required")
        if not raw.isascii() or not raw.isdigit():
            raise _Refuse(400, "Bad Content-Length")
        length = int(raw)
        if length > self.max_request_bytes:
            raise _Refuse(413, f"Request larger than {self.max_request_bytes} bytes")
        if headers.get("content-encoding", "identity").lower() != "identity":
            raise _Refuse(415, "Content-Encoding not supported")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise _Refuse(411, "Length Required (no chunked bodies)")
        body = await reader.readexactly(length)
        conn = headers.get("connection", "").lower()
        keep = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
        return Request(method, target, headers, body, ip), keep
