"""api_client: credentials file, the OpenNebula reply convention, retries, <HOST> parsing.

The XML-RPC side is a real ``xmlrpc.server`` on loopback (in-process), so the client's
transport, timeouts and error mapping run for real.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from xmlrpc.server import SimpleXMLRPCServer

import pytest
from ansible_collections.lxcloud.cloud.plugins.module_utils import api_client as ac
from ansible_collections.lxcloud.cloud.plugins.module_utils import wire


def _write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_config_ini(tmp_path):
    text = "[api]\nurl = http://10.0.0.1:2633/RPC2\nsession = oneadmin:s%3cr:t\n"
    p = _write(tmp_path / "api.conf", text)
    assert ac.load_config(p) == {"url": "http://10.0.0.1:2633/RPC2", "session": "oneadmin:s%3cr:t"}


def test_config_key_value(tmp_path):
    p = _write(
        tmp_path / "api.conf",
        "# comment\nLXCLOUD_API_URL='http://h:2633/RPC2'\nLXCLOUD_API_SESSION=\"oneadmin:pw\"\n",
    )
    assert ac.load_config(p) == {"url": "http://h:2633/RPC2", "session": "oneadmin:pw"}


def test_config_must_be_private(tmp_path):
    p = _write(tmp_path / "api.conf", "url=http://h/RPC2\nsession=a:b\n", mode=0o644)
    with pytest.raises(ac.ApiConfigError, match="0600"):
        ac.load_config(p)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("url=http://h/RPC2\n", "no session"),
        ("session=a:b\n", "no url"),
        ("garbage\n", "KEY=value"),
    ],
)
def test_config_incomplete(tmp_path, text, error):
    p = _write(tmp_path / "api.conf", text)
    with pytest.raises(ac.ApiConfigError, match=error):
        ac.load_config(p)


def test_config_missing(tmp_path):
    with pytest.raises(ac.ApiConfigError, match="cannot read"):
        ac.load_config(str(tmp_path / "nope"))


def test_options_win_over_file(tmp_path):
    p = _write(tmp_path / "api.conf", "url=http://file/RPC2\nsession=file:pw\n")
    assert ac.resolve_credentials("http://opt/RPC2", None, p) == ("http://opt/RPC2", "file:pw")
    # Both options given: the file is not even read.
    assert ac.resolve_credentials("http://o/RPC2", "o:p", str(tmp_path / "none")) == (
        "http://o/RPC2",
        "o:p",
    )


@pytest.mark.parametrize(
    ("url", "session"), [("ftp://h/RPC2", "a:b"), ("", "a:b"), ("http://h/RPC2", "nocolon")]
)
def test_client_refuses_bad_endpoint(url, session):
    with pytest.raises(ac.ApiConfigError):
        ac.ApiClient(url, session)


class Server:
    def __init__(self) -> None:
        self.srv = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False, allow_none=True)
        self.calls: list[tuple] = []
        self.srv.register_function(self._ok, "one.system.version")
        self.srv.register_function(self._fail, "one.host.info")
        self.srv.register_function(self._slow, "lxcloud.host.heartbeat")
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/RPC2"
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def _ok(self, session):
        self.calls.append(("version", session))
        return [True, "6.8.0", 0]

    def _fail(self, session, host_id):
        self.calls.append(("info", session, host_id))
        return [False, f"[one.host.info] Error getting host [{host_id}].", 0x0400, host_id]

    def _slow(self, session, name, info):
        time.sleep(1.0)
        return [True, 1, 0]

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()
        self.thread.join()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    try:
        yield s
    finally:
        s.close()


def test_call_success_sends_session_first(server):
    c = ac.ApiClient(server.url, "oneadmin:pw")
    assert c.call("one.system.version") == "6.8.0"
    assert server.calls == [("version", "oneadmin:pw")]


def test_call_failure_raises_with_code(server):
    c = ac.ApiClient(server.url, "oneadmin:pw")
    with pytest.raises(ac.ApiError) as err:
        c.host_info(7)
    assert err.value.code == wire.NO_EXISTS
    assert "Error getting host [7]" in err.value.message
    assert "NO_EXISTS" in str(err.value)
    assert not isinstance(err.value, ac.ApiConnectionError)
    assert len(server.calls) == 1  # an answered failure is never retried


def test_unknown_method_is_a_fault_not_retried(server):
    c = ac.ApiClient(server.url, "oneadmin:pw", retries=3, sleep=lambda s: pytest.fail("retried"))
    with pytest.raises(ac.ApiError, match="fault"):
        c.call("one.nothing.here")


def test_private_method_names_refused():
    c = ac.ApiClient("http://127.0.0.1:9/RPC2", "a:b")
    with pytest.raises(ac.ApiError, match="refusing"):
        c.call("_private")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_retries_with_backoff():
    slept: list[float] = []
    c = ac.ApiClient(
        f"http://127.0.0.1:{_closed_port()}/RPC2", "a:b", retries=3, backoff=0.5,
        sleep=slept.append,
    )
    with pytest.raises(ac.ApiConnectionError, match="after 4 attempts") as err:
        c.call("one.system.version")
    assert slept == [0.5, 1.0, 2.0]
    assert err.value.code == ac.CONNECTION


def test_timeout_is_a_connection_error(server):
    c = ac.ApiClient(server.url, "a:b", timeout=0.2, retries=1, sleep=lambda s: None)
    t0 = time.monotonic()
    with pytest.raises(ac.ApiConnectionError, match="timed out"):
        c.host_heartbeat("h1", {})
    assert time.monotonic() - t0 < 1.5


def test_unpack_reply_malformed():
    with pytest.raises(ac.ApiError, match="malformed"):
        ac.unpack_reply("m", "just a string")
    assert ac.unpack_reply("m", [True, "<X/>", 0]) == "<X/>"


POOL = """<HOST_POOL>
<HOST><ID>0</ID><NAME>lxh1</NAME><STATE>2</STATE><IM_MAD>lxcloud</IM_MAD>
  <LAST_MON_TIME>1700000000</LAST_MON_TIME>
  <HOST_SHARE><TOTAL_CPU>200</TOTAL_CPU><TOTAL_MEM>2097152</TOTAL_MEM><TOTAL_DISK>51200</TOTAL_DISK></HOST_SHARE>
  <TEMPLATE><MACS>02:00:0A:D5:01:0B 02:00:0a:d5:01:0a</MACS></TEMPLATE></HOST>
<HOST><ID>1</ID><NAME>lxh2</NAME><STATE>3</STATE>
  <HOST_SHARE><MAX_CPU>150</MAX_CPU><MAX_MEM>1048576</MAX_MEM><MAX_DISK>100</MAX_DISK></HOST_SHARE>
  <TEMPLATE><MAC>02:00:00:00:00:02</MAC><MAC>02:00:00:00:00:01</MAC></TEMPLATE></HOST>
<HOST><ID>2</ID><NAME>lxh3</NAME><STATE>0</STATE><TEMPLATE/></HOST>
</HOST_POOL>"""


def test_parse_host_pool():
    h1, h2, h3 = ac.parse_host_pool(POOL)
    assert h1 == {
        "id": 0,
        "name": "lxh1",
        "state": 2,
        "cpu": 2.0,
        "memory_mb": 2048,
        "disk_mb": 51200,
        "macs": ["02:00:0a:d5:01:0a", "02:00:0a:d5:01:0b"],
        "last_seen": 1700000000.0,
    }
    assert (h2["cpu"], h2["memory_mb"], h2["disk_mb"], h2["state"]) == (1.5, 1024, 100, 3)
    assert h2["macs"] == ["02:00:00:00:00:01", "02:00:00:00:00:02"]
    assert h3["cpu"] is None and h3["macs"] == []


def test_parse_single_host_document():
    (h,) = ac.parse_host_pool("<HOST><ID>4</ID><NAME>x</NAME></HOST>")
    assert (h["id"], h["name"]) == (4, "x")


def test_registration_changes():
    want = ac.registration_view(2, 2048, 51200, ["02:00:0A:D5:01:0B", "02:00:0a:d5:01:0a"])
    (h1, h2, _) = ac.parse_host_pool(POOL)
    changed, before, after = ac.registration_changes(h1, want)
    assert not changed and before == after
    changed, before, after = ac.registration_changes(h2, want)
    assert changed and before["cpu"] == 1.5 and after["cpu"] == 2.0
    assert ac.registration_changes(None, want) == (True, {}, want)
    # Only the MAC set differs.
    less = ac.registration_view(2, 2048, 51200, ["02:00:0a:d5:01:0a"])
    assert ac.registration_changes(h1, less)[0]
