"""The API's HTTP front (lxcloud_py/api/front.py) over real loopback sockets: whole requests are
read before a worker sees them, slow and idle clients are cut by deadlines and cost no worker,
connection caps answer 503, every malformed request gets its status; and the XML-RPC layer
never answers with a Python class name or a traceback."""

from __future__ import annotations

import logging
import socket
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lxcloud_py import users
from lxcloud_py.api import ApiServer
from lxcloud_py.api.front import HttpFront
from lxcloud_py.store import Store

PW = "front-pw"
ADMIN = f"oneadmin:{PW}"


class Front:
    def __init__(self, **options: Any) -> None:
        self.calls: list[bytes] = []
        self.in_worker = threading.Event()
        options.setdefault("max_request_bytes", 4096)
        options.setdefault("max_threads", 1)
        self.server = HttpFront(("127.0.0.1", 0), self._handle, **options)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.port = self.server.server_address[1]

    def _handle(self, body: bytes, ip: str) -> bytes:
        self.calls.append(body)
        return b"echo:" + body

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", self.port))
        return s

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def front() -> Iterator[Front]:
    f = Front(request_deadline=1.0, idle_timeout=1.5, max_per_ip=4, max_connections=8)
    yield f
    f.close()


def request(body: bytes = b"<x/>", *, path: str = "/RPC2", method: str = "POST",
            headers: dict[str, str] | None = None, length: bool = True) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: x"]
    if length:
        head.append(f"Content-Length: {len(body)}")
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def read_response(s: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        return 0, b""
    status = int(head.split(b" ", 2)[1])
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body


def test_a_request_is_answered_and_the_connection_kept(front: Front) -> None:
    with front.connect() as s:
        for i in range(3):
            s.sendall(request(f"<call{i}/>".encode()))
            assert read_response(s) == (200, f"echo:<call{i}/>".encode())
    assert len(front.calls) == 3


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (request(path="/other"), 404),
        (request(method="GET"), 405),
        (request(method="GET", length=False), 405),
        (request(path="/RPC2?x=1"), 404),  # the XML-RPC path is exact (no query string)
        (request(length=False), 411),
        (request(headers={"Content-Length": "12x"}, length=False), 400),
        (request(headers={"Content-Length": "-1"}, length=False), 400),
        (request(headers={"Content-Length": "٣"}, length=False), 400),  # a non-ASCII digit
        (request(headers={"Content-Length": "5000"}, length=False), 413),
        (request(headers={"Content-Encoding": "gzip"}), 415),
        (b"NONSENSE\r\n\r\n", 400),
        (b"POST /RPC2 HTTP/2.0\r\nContent-Length: 0\r\n\r\n", 505),
        (b"POST /RPC2 HTTP/1.1\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ],
)
def test_malformed_requests_get_their_status(front: Front, raw: bytes, status: int) -> None:
    with front.connect() as s:
        s.sendall(raw)
        assert read_response(s)[0] == status
        assert s.recv(10) == b""  # and the connection is closed
    assert front.calls == []  # no worker saw any of them


def test_slowloris_is_cut_at_the_deadline_without_a_worker(front: Front) -> None:
    raw = request(b"<slow/>")
    t0 = time.monotonic()
    with front.connect() as slow, front.connect() as fast:
        slow.sendall(raw[:10])
        time.sleep(0.3)
        # the one worker is free: another client is served while the slow one dribbles
        fast.sendall(request(b"<fast/>"))
        assert read_response(fast) == (200, b"echo:<fast/>")
        for byte in raw[10:20]:
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.2)
        status, _ = read_response(slow)
    assert status == 408
    assert time.monotonic() - t0 < 5
    assert front.calls == [b"<fast/>"]


def test_idle_keep_alive_connections_are_closed(front: Front) -> None:
    with front.connect() as s:
        s.sendall(request())
        assert read_response(s)[0] == 200
        t0 = time.monotonic()
        assert s.recv(10) == b""  # closed by the server after idle_timeout
        assert 1.0 < time.monotonic() - t0 < 5


def wait_open(front: Front, n: int) -> None:
    """Until the server counts n open connections (accepting is asynchronous)."""
    deadline = time.monotonic() + 5
    while front.server._open != n:
        assert time.monotonic() < deadline, f"{front.server._open} open, not {n}"
        time.sleep(0.01)


def test_per_address_and_global_caps_answer_503(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "lxcloud.api.http")
    front = Front(idle_timeout=60, max_per_ip=4, max_connections=8)
    held = [front.connect("127.0.0.2") for _ in range(4)]
    wait_open(front, 4)
    try:
        with front.connect("127.0.0.2") as extra:
            assert read_response(extra)[0] == 503
        # another address is still served
        with front.connect("127.0.0.3") as other:
            other.sendall(request())
            assert read_response(other)[0] == 200
        wait_open(front, 4)  # "other" is gone
        held += [front.connect(f"127.0.0.{i}") for i in (4, 5, 6, 7)]
        wait_open(front, 8)
        with front.connect("127.0.0.9") as over:
            assert read_response(over)[0] == 503
    finally:
        for s in held:
            s.close()
        front.close()
    assert "127.0.0.2" in caplog.text  # the refusal names the address


def test_many_idle_connections_do_not_stall_a_client() -> None:
    f = Front(max_per_ip=2000, max_connections=2000, idle_timeout=30)
    idle = []
    try:
        for i in range(300):
            idle.append(f.connect(f"127.0.1.{i % 250 + 1}"))
        t0 = time.monotonic()
        with f.connect() as s:
            s.sendall(request(b"<ping/>"))
            assert read_response(s) == (200, b"echo:<ping/>")
        assert time.monotonic() - t0 < 2
    finally:
        for s in idle:
            s.close()
        f.close()


# -- the XML-RPC layer: nothing a client sends is answered with internals --------------------
@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[ApiServer, str]]:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.create_schema()
    users.ensure_admin(store, PW)
    server = ApiServer(store, ("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.port}/RPC2"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        store.dispose()


def raw_call(port: int, body: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request(body))
        status, reply = read_response(s)
    assert status == 200
    return reply


@pytest.mark.parametrize("body", [
    b"not xml at all",
    b"<?xml version='1.0'?><methodCall><methodName>one.vm.info",
    b"<methodCall><methodName>one.vm.info</methodName><params><param><value><int>x</int>"
    b"</value></param></params></methodCall>",
    b"<methodCall><params></params></methodCall>",
])
def test_garbage_is_a_parse_fault_without_internals(api: tuple[ApiServer, str],
                                                    body: bytes) -> None:
    reply = raw_call(api[0].port, body)
    with pytest.raises(xmlrpc.client.Fault) as exc:
        xmlrpc.client.loads(reply)
    assert exc.value.faultCode == -32700
    for leak in (b"class", b"Traceback", b"Error'", b"expat"):
        assert leak not in reply


@pytest.mark.parametrize("tag,value", [("i8", 2**63), ("i4", 2**40), ("int", -(2**70)),
                                       ("i8", -(2**63) - 1), ("i4", "\u0663")])
def test_out_of_range_integers_are_refused_plainly(api: tuple[ApiServer, str], tag: str,
                                                   value: object) -> None:
    body = (
        "<?xml version='1.0'?><methodCall><methodName>one.vm.info</methodName><params>"
        f"<param><value><string>{ADMIN}</string></value></param>"
        f"<param><value><{tag}>{value}</{tag}></value></param>"
        "</params></methodCall>"
    ).encode()
    reply = raw_call(api[0].port, body)
    (answer,), _ = xmlrpc.client.loads(reply)
    assert answer[0] is False and "out of range" in answer[1]
    assert answer[2] == 0x1000  # XML_RPC_API
    assert b"class" not in reply and b"Overflow" not in reply


def test_replies_that_cannot_be_marshalled_are_internal_without_details(
    api: tuple[ApiServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, url = api
    monkeypatch.setattr(server.dispatcher, "_call", lambda *a: [True, 2**70, 0])
    with xmlrpc.client.ServerProxy(url) as proxy:
        reply = proxy.one.system.version(ADMIN)
    assert reply[0] is False and reply[2] == 0x2000  # INTERNAL, no class name
    assert "Overflow" not in reply[1]
