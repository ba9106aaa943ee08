"""The XML-RPC API through a real ``xmlrpc.client.ServerProxy`` over a loopback socket, on
both backends (SQLite and the private MariaDB, one database per backend for the module):
every method's happy path and error codes,
authentication, token scoping, refused method names and request size bounds."""

# ruff: noqa: S314 - parsing the replies of our own test server

from __future__ import annotations

import http.client
import logging
import threading
import time
import uuid
import xml.etree.ElementTree as ET
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from ansible_collections.lxcloud.cloud.plugins.module_utils import api_client
from sqlalchemy import insert, select, update

from lxcloud_py import leases, users, vms
from lxcloud_py.api import ApiServer
from lxcloud_py.model import HostState, LCMState, VMState
from lxcloud_py.store import Store, now, schema

PW = "s3cret:with:colons"
ADMIN = f"oneadmin:{PW}"
SHA = "ab" * 32
LIMIT = 64 * 1024

AUTHENTICATION, AUTHORIZATION, NO_EXISTS = 0x0100, 0x0200, 0x0400
ACTION, XML_RPC_API, INTERNAL, ALLOCATE = 0x0800, 0x1000, 0x2000, 0x4000


@dataclass
class Api:
    url: str
    proxy: xmlrpc.client.ServerProxy
    server: ApiServer
    store: Store

    def call(self, method: str, *args: Any, session: str = ADMIN) -> Any:
        """The body of a successful reply (asserting success)."""
        reply = getattr(self.proxy, method)(session, *args)
        assert reply[0] is True, reply
        assert reply[2] == 0
        return reply[1]

    def fail(self, method: str, *args: Any, session: str = ADMIN) -> tuple[int, str, int]:
        """(code, message, object id) of a failed reply (asserting failure)."""
        reply = getattr(self.proxy, method)(session, *args)
        assert reply[0] is False, reply
        assert len(reply) == 4
        return reply[2], reply[1], reply[3]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def backend_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """One database per backend for the module (creating and dropping a MariaDB database per
    test costs ~2 s); :func:`api` empties it before each test."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('api') / 'lxcloud.db'}"
        drop = None
    else:
        import pymysql
        from sqlalchemy.engine import make_url

        server = make_url(request.getfixturevalue("mysql_server_url"))
        name = "lxapi_" + uuid.uuid4().hex[:12]
        conn = pymysql.connect(
            host=server.host,
            port=server.port or 3306,
            user=server.username,
            password=server.password or "",
            autocommit=True,
        )
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        url = f"{server.render_as_string(hide_password=False)}/{name}"

        def drop() -> None:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.close()

    store = Store(url)
    store.create_schema()
    users.ensure_admin(store, PW)
    try:
        yield store
    finally:
        store.dispose()
        if drop:
            drop()


def _empty(store: Store) -> None:
    """Delete every row but the schema version and the admin."""
    with store.transaction() as conn:
        for table in reversed(schema.metadata.sorted_tables):
            if table.name in ("lxcloud_meta", "users"):
                continue
            conn.execute(table.delete())


@pytest.fixture
def api(backend_store: Store) -> Iterator[Api]:
    store = backend_store
    _empty(store)
    server = ApiServer(store, ("127.0.0.1", 0), max_request_bytes=LIMIT)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    url = f"http://127.0.0.1:{server.port}/RPC2"
    proxy = xmlrpc.client.ServerProxy(url)
    try:
        yield Api(url, proxy, server, store)
    finally:
        proxy("close")()  # the API keeps HTTP/1.1 connections alive
        server.shutdown()
        server.server_close()
        thread.join(10)


def vm_xml(api: Api, vm_id: int, session: str = ADMIN) -> ET.Element:
    return ET.fromstring(api.call("one.vm.info", vm_id, session=session))


def add_leases(store: Store, host: str, n: int, base: int = 10) -> None:
    with store.transaction() as conn:
        conn.execute(
            insert(schema.leases),
            [
                dict(
                    ip=f"10.0.0.{base + i}",
                    mac=f"52:54:00:00:00:{base + i:02x}",
                    name=f"{host}-vm{i}.farm",
                    host=host,
                    state="free",
                    updated=now(),
                )
                for i in range(n)
            ],
        )


def make_running(store: Store, vm_id: int, host_id: int, lcm: LCMState = LCMState.RUNNING) -> None:
    """What the scheduler and executor do: bind a lease and the host, run it."""
    with store.transaction() as conn:
        lease_id = conn.execute(
            select(schema.leases.c.id)
            .where(schema.leases.c.vm_id.is_(None))
            .order_by(schema.leases.c.id)
            .limit(1)
        ).scalar_one()
        assert leases.claim_lease(conn, lease_id, vm_id)
        conn.execute(
            update(schema.vms)
            .where(schema.vms.c.id == vm_id)
            .values(state=int(VMState.ACTIVE), lcm_state=int(lcm), host_id=host_id, started=now())
        )


def register_host(api: Api, name: str = "hv1", cpu: float = 4.0, macs: Any = None) -> int:
    macs = ["52:54:00:00:00:0a", "52:54:00:00:00:0b"] if macs is None else macs
    return int(
        api.call(
            "lxcloud.host.register",
            name,
            {"cpu": cpu, "memory_mb": 8192, "disk_mb": 50000},
            macs,
            {"libvirt_version": "9.0.0", "hypervisor": "qemu", "domains": ["a"]},
        )
    )


TEMPLATE = """
NAME = "worker"
CPU = 0.5
VCPU = 2
MEMORY = 256
DISK = [ IMAGE = "golden" ]
CONTEXT = [ ROLE = "batch", NOTE = "a \\"quoted\\" value" ]
LIFETIME = 3600
QUEUE = "short"
"""


# -- basics -------------------------------------------------------------------------------------
def test_version_and_log_line(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lxcloud.api"):
        assert api.call("one.system.version")
    lines = [r.getMessage() for r in caplog.records if r.name == "lxcloud.api"]
    assert any(
        line.startswith("one.system.version user=oneadmin ip=127.0.0.1 code=0x0000")
        and "ms" in line
        for line in lines
    ), lines


@pytest.mark.parametrize(
    "session",
    [
        "oneadmin:wrong",
        "nobody:" + PW,
        "oneadmin",  # no secret
        "",
        ":" + PW,
        "oneadmin:",
        "vm-1:not-the-token",
        "vm-x:token",
        "a b:c",
    ],
)
def test_authentication_failures(api: Api, session: str) -> None:
    code, message, _ = api.fail("one.system.version", session=session)
    assert code == AUTHENTICATION
    assert "authenticated" in message


def test_authentication_failures_odd_arguments(api: Api) -> None:
    for args in ((), (42,), ([ADMIN],)):
        reply = api.proxy.one.hostpool.info(*args)
        assert reply[0] is False and reply[2] == AUTHENTICATION, (args, reply)


def test_private_and_unknown_methods_are_refused(api: Api) -> None:
    for name in (
        "_dispatch",
        "one.vm._own",
        "one.vm.__init__",
        "one.vm.store",  # an attribute, not an exposed method
        "one.vm.nope",
        "system.listMethods",
        "one.system.version.__class__",
        "__class__.__init__",
    ):
        with pytest.raises(xmlrpc.client.Fault) as exc:
            getattr(api.proxy, name)(ADMIN)
        assert exc.value.faultCode == -506, name
        assert "Traceback" not in exc.value.faultString


def test_paths_other_than_rpc2_are_404(api: Api) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.server.port, timeout=5)
    try:
        body = xmlrpc.client.dumps((ADMIN,), "one.system.version")
        conn.request("POST", "/other", body, {"Content-Type": "text/xml"})
        assert conn.getresponse().status == 404
    finally:
        conn.close()


def test_oversized_request_is_refused(api: Api) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.server.port, timeout=5)
    try:
        # Announce a body over the limit: refused before a byte of it is read.
        conn.putrequest("POST", "/RPC2")
        conn.putheader("Content-Type", "text/xml")
        conn.putheader("Content-Length", str(LIMIT + 1))
        conn.endheaders()
        assert conn.getresponse().status == 413
    finally:
        conn.close()
    # Through the client: refused (413), or the connection is cut while sending.
    big = "x" * (LIMIT * 2)
    with pytest.raises((xmlrpc.client.ProtocolError, ConnectionError)) as exc:
        api.proxy.one.vm.allocate(ADMIN, big)
    if isinstance(exc.value, xmlrpc.client.ProtocolError):
        assert exc.value.errcode == 413
    # The server still serves.
    assert api.call("one.system.version")


def test_gzip_and_missing_length_are_refused(api: Api) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.server.port, timeout=5)
    try:
        body = xmlrpc.client.dumps((ADMIN,), "one.system.version").encode()
        conn.request("POST", "/RPC2", body, {"Content-Encoding": "gzip"})
        assert conn.getresponse().status == 415
    finally:
        conn.close()


def test_internal_errors_are_logged_not_leaked(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    vm_id = api.call("one.vm.allocate", TEMPLATE)

    def boom(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("secret detail of the server")

    monkeypatch.setattr(vms, "get", boom)
    with caplog.at_level(logging.ERROR, logger="lxcloud.api"):
        code, message, obj = api.fail("one.vm.info", vm_id)
    assert code == INTERNAL and obj == vm_id
    assert "secret detail" not in message and "Traceback" not in message
    assert any(r.exc_info and "secret detail" in str(r.exc_info[1]) for r in caplog.records)


def test_bad_arguments(api: Api) -> None:
    assert api.fail("one.vm.info", "1")[0] == XML_RPC_API
    assert api.fail("one.vm.info", True)[0] == XML_RPC_API
    assert api.fail("one.vm.info")[0] == XML_RPC_API  # too few
    assert api.fail("one.vm.info", 1, False, 3)[0] == XML_RPC_API  # too many
    assert api.fail("one.host.status", 1, "x")[0] == XML_RPC_API
    assert api.fail("one.vm.action", "explode", 1)[0] == ACTION  # as oned


def test_concurrent_calls(api: Api) -> None:
    register_host(api)
    errors: list[Any] = []

    def worker() -> None:
        with xmlrpc.client.ServerProxy(api.url) as proxy:
            for _ in range(5):
                reply = proxy.lxcloud.host.heartbeat(ADMIN, "hv1", {})
                if reply[0] is not True:
                    errors.append(reply)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []


# -- hosts --------------------------------------------------------------------------------------
def test_host_allocate_info_status_delete(api: Api) -> None:
    hid = api.call("one.host.allocate", "hv9", "lxcloud", "kvm", -1)
    # OpenNebula 4.x's form with a vnm_mad before the cluster id works too.
    assert api.call("one.host.allocate", "hv8", "lxcloud", "kvm", "dummy", -1) == hid + 1
    assert api.call("one.host.delete", hid + 1) == hid + 1
    code, message, _ = api.fail("one.host.allocate", "hv9", "lxcloud", "kvm", -1)
    assert code == ALLOCATE and "already taken" in message
    assert api.fail("one.host.allocate", "bad/name", "lxcloud", "kvm", -1)[0] == ALLOCATE
    host = ET.fromstring(api.call("one.host.info", hid))
    assert host.tag == "HOST"
    assert host.findtext("NAME") == "hv9"
    assert host.findtext("STATE") == str(int(HostState.INIT))
    assert host.findtext("VM_MAD") == "kvm" and host.findtext("IM_MAD") == "lxcloud"
    assert api.call("one.host.status", hid, 1) == hid
    assert ET.fromstring(api.call("one.host.info", hid)).findtext("STATE") == "4"
    assert api.call("one.host.status", hid, 2) == hid
    assert ET.fromstring(api.call("one.host.info", hid)).findtext("STATE") == "8"
    assert api.call("one.host.status", hid, 0) == hid
    assert ET.fromstring(api.call("one.host.info", hid)).findtext("STATE") == "0"
    assert api.fail("one.host.status", hid, 7)[0] == XML_RPC_API
    code, _, obj = api.fail("one.host.info", 999)
    assert (code, obj) == (NO_EXISTS, 999)
    assert api.fail("one.host.status", 999, 0)[0] == NO_EXISTS
    assert api.call("one.host.delete", hid) == hid
    assert api.fail("one.host.delete", hid)[0] == NO_EXISTS
    assert ET.fromstring(api.call("one.hostpool.info")).findall("HOST") == []


def test_host_delete_refused_with_live_vms(api: Api) -> None:
    hid = register_host(api)
    add_leases(api.store, "hv1", 1)
    vm_id = api.call("one.vm.allocate", TEMPLATE)
    make_running(api.store, vm_id, hid)
    code, message, _ = api.fail("one.host.delete", hid)
    assert code == ACTION and "live VM" in message


def test_host_register_is_idempotent_and_updates(api: Api) -> None:
    hid = register_host(api)
    assert register_host(api) == hid
    assert register_host(api, cpu=8.0, macs=["52:54:00:00:00:0c"]) == hid
    pool = ET.fromstring(api.call("one.hostpool.info"))
    assert pool.tag == "HOST_POOL"
    (host,) = pool.findall("HOST")
    share = host.find("HOST_SHARE")
    assert share is not None
    assert share.findtext("MAX_CPU") == "800"  # cores x 100
    assert share.findtext("MAX_MEM") == str(8192 * 1024)  # KiB
    assert share.findtext("MAX_DISK") == "50000"  # MiB
    assert share.findtext("RUNNING_VMS") == "0"
    assert host.findtext("TEMPLATE/MACS") == "52:54:00:00:00:0c"
    assert host.findtext("TEMPLATE/LIBVIRT_VERSION") == "9.0.0"
    assert host.findtext("STATE") == str(int(HostState.MONITORED))
    assert int(host.findtext("LAST_MON_TIME") or 0) > 0
    # The hypervisor side's parser (plugins/module_utils/api_client.py) reads it back.
    (parsed,) = api_client.parse_host_pool(api.call("one.hostpool.info"))
    assert parsed["cpu"] == 8.0 and parsed["memory_mb"] == 8192 and parsed["disk_mb"] == 50000
    assert parsed["macs"] == ["52:54:00:00:00:0c"]
    with api.store.transaction() as conn:
        n = conn.execute(select(schema.hosts.c.id)).all()
    assert len(n) == 1


def test_host_register_bad_input(api: Api) -> None:
    cap = {"cpu": 2.0, "memory_mb": 1024}
    assert api.fail("lxcloud.host.register", "hv1", cap, ["zz:00"], {})[0] == XML_RPC_API
    assert api.fail("lxcloud.host.register", "hv1", {"cpu": 2.0}, [], {})[0] == XML_RPC_API
    assert api.fail("lxcloud.host.register", "../x", cap, [], {})[0] == XML_RPC_API
    assert api.fail("lxcloud.host.register", "hv1", {**cap, "gpu": 1}, [], {})[0] == XML_RPC_API
    assert (
        api.fail("lxcloud.host.register", "hv1", {"cpu": -1, "memory_mb": 1}, [], {})[0]
        == XML_RPC_API
    )


def test_heartbeat_brings_error_host_back(api: Api) -> None:
    hid = register_host(api)
    assert api.fail("lxcloud.host.heartbeat", "ghost", {})[0] == NO_EXISTS
    with api.store.transaction() as conn:
        conn.execute(
            update(schema.hosts).where(schema.hosts.c.id == hid).values(state=HostState.ERROR)
        )
    assert api.call("lxcloud.host.heartbeat", "hv1", {"disk_free_mb": 100}) == hid
    host = ET.fromstring(api.call("one.host.info", hid))
    assert host.findtext("STATE") == str(int(HostState.MONITORED))
    assert host.findtext("HOST_SHARE/FREE_DISK") == "100"


def test_images_and_host_image_reports(api: Api) -> None:
    big = float(5 * 2**30)  # over XML-RPC's 32-bit int: sent as a double
    iid = api.call("lxcloud.image.register", "golden", "v1", SHA, big, "raw", "zstd")
    assert api.call("lxcloud.image.register", "golden", "v1", SHA, big, "raw", "zstd") == iid
    code, message, _ = api.fail("lxcloud.image.register", "golden", "v1", "cd" * 32, 1, "raw", "")
    assert code == ALLOCATE and "other metadata" in message
    assert api.fail("lxcloud.image.register", "g", "v1", "xyz", 1, "raw", "zstd")[0] == XML_RPC_API
    assert api.fail("lxcloud.image.register", "g", "v1", SHA, 1, "vmdk", "zstd")[0] == XML_RPC_API
    with api.store.transaction() as conn:
        size = conn.execute(select(schema.images.c.size)).scalar_one()
    assert size == 5 * 2**30
    hid = register_host(api)
    assert api.call("lxcloud.host.image", "hv1", "golden", "v1", SHA, "verified") == hid
    host = ET.fromstring(api.call("one.host.info", hid))
    assert host.findtext("TEMPLATE/IMAGE/NAME") == "golden"
    assert host.findtext("TEMPLATE/IMAGE/STATE") == "verified"
    assert api.fail("lxcloud.host.image", "hv1", "golden", "v1", "cd" * 32, "verified")[0] == (
        ACTION
    )
    assert api.fail("lxcloud.host.image", "hv1", "nope", "v1", SHA, "verified")[0] == NO_EXISTS
    assert api.fail("lxcloud.host.image", "hv2", "golden", "v1", SHA, "verified")[0] == NO_EXISTS
    assert api.fail("lxcloud.host.image", "hv1", "golden", "v1", SHA, "great")[0] == XML_RPC_API
    assert api.call("lxcloud.host.image", "hv1", "golden", "v1", "", "absent") == hid


def test_lease_list(api: Api) -> None:
    add_leases(api.store, "hv1", 2)
    add_leases(api.store, "hv2", 1, base=50)
    everything = api.call("lxcloud.lease.list", "")
    assert [x["ip"] for x in everything] == ["10.0.0.10", "10.0.0.11", "10.0.0.50"]
    mine = api.call("lxcloud.lease.list", "hv2")
    assert mine == [
        {
            "ip": "10.0.0.50",
            "mac": "52:54:00:00:00:32",
            "name": "hv2-vm0.farm",
            "host": "hv2",
            "state": "free",
            "vm_id": -1,
        }
    ]
    assert api.fail("lxcloud.lease.list", "bad name")[0] == XML_RPC_API


# -- VMs ----------------------------------------------------------------------------------------
def test_vm_allocate_and_info_document(api: Api) -> None:
    vm_id = api.call("one.vm.allocate", TEMPLATE)
    vm = vm_xml(api, vm_id)
    assert vm.tag == "VM"
    assert vm.findtext("ID") == str(vm_id)
    assert vm.findtext("NAME") == "worker"
    assert vm.findtext("STATE") == "1" and vm.findtext("LCM_STATE") == "0"
    assert int(vm.findtext("STIME") or 0) > 0 and vm.findtext("ETIME") == "0"
    assert vm.findtext("TEMPLATE/CPU") == "0.5"
    assert vm.findtext("TEMPLATE/VCPU") == "2"
    assert vm.findtext("TEMPLATE/MEMORY") == "256"
    assert vm.findtext("TEMPLATE/DISK/IMAGE") == "golden"
    assert vm.findtext("TEMPLATE/CONTEXT/ROLE") == "batch"
    assert vm.findtext("TEMPLATE/CONTEXT/NOTE") == 'a "quoted" value'
    assert vm.findtext("USER_TEMPLATE/LIFETIME") == "3600"
    assert vm.findtext("USER_TEMPLATE/QUEUE") == "short"
    assert vm.find("HISTORY_RECORDS") is not None
    assert vm.find("TEMPLATE/NIC") is None


def test_vm_allocate_xml_template_hold_and_default_name(api: Api) -> None:
    vm_id = api.call(
        "one.vm.allocate",
        "<TEMPLATE><MEMORY>128</MEMORY><DISK><IMAGE>golden</IMAGE></DISK></TEMPLATE>",
        True,
    )
    vm = vm_xml(api, vm_id)
    assert vm.findtext("STATE") == str(int(VMState.HOLD))
    assert vm.findtext("NAME") == f"one-{vm_id}"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('NAME = "ok"\nCPU = [ A = 1 ]\n', "CPU must be a single value"),
        ("MEMORY = lots\n", "MEMORY must be a whole number"),
        ("CPU = 0\n", "CPU must be greater than 0"),
        ("NAME = a\n\nDISK = [ IMAGE = x ]\nDISK = [ IMAGE = y ]\n", "one DISK"),
        ('NAME = "../etc"\n', "NAME"),
        ("NIC = [ NETWORK = x ]\n", "NIC is assigned by lxcloud"),
        ('NAME = "ok"\nBROKEN\n', "line 2"),
    ],
)
def test_vm_allocate_bad_templates(api: Api, text: str, words: str) -> None:
    code, message, _ = api.fail("one.vm.allocate", text)
    assert code == ALLOCATE
    assert words in message


def test_vm_actions_and_state_rules(api: Api) -> None:
    hid = register_host(api)
    add_leases(api.store, "hv1", 2)
    a = api.call("one.vm.allocate", TEMPLATE)
    # PENDING: hold/release cycle; resume and poweroff are wrong-state.
    assert api.call("one.vm.action", "hold", a) == a
    assert vm_xml(api, a).findtext("STATE") == "2"
    code, message, obj = api.fail("one.vm.action", "hold", a)
    assert (code, obj) == (ACTION, a) and "HOLD" in message
    assert api.call("one.vm.action", "release", a) == a
    assert vm_xml(api, a).findtext("STATE") == "1"
    assert api.fail("one.vm.action", "release", a)[0] == ACTION
    assert api.fail("one.vm.action", "resume", a)[0] == ACTION
    assert api.fail("one.vm.action", "poweroff", a)[0] == ACTION
    # Running on hv1 with a lease.
    make_running(api.store, a, hid)
    vm = vm_xml(api, a)
    assert vm.findtext("TEMPLATE/NIC/IP") == "10.0.0.10"
    assert vm.findtext("TEMPLATE/NIC/MAC") == "52:54:00:00:00:0a"
    assert vm.findtext("HISTORY_RECORDS/HISTORY/HOSTNAME") == "hv1"
    assert vm.findtext("DEPLOY_ID") == f"one-{a}"
    host = ET.fromstring(api.call("one.host.info", hid))
    assert host.findtext("VMS/ID") == str(a)
    assert host.findtext("HOST_SHARE/CPU_USAGE") == "50"
    assert host.findtext("HOST_SHARE/MEM_USAGE") == str(256 * 1024)
    assert api.call("one.vm.action", "reboot", a) == a
    assert api.fail("one.vm.action", "resume", a)[0] == ACTION
    assert api.fail("one.vm.action", "hold", a)[0] == ACTION
    assert api.call("one.vm.action", "poweroff", a) == a
    assert vm_xml(api, a).findtext("LCM_STATE") == str(int(LCMState.SHUTDOWN_POWEROFF))
    # The executor finishes the power-off; then resume.
    with api.store.transaction() as conn:
        conn.execute(
            update(schema.vms)
            .where(schema.vms.c.id == a)
            .values(state=int(VMState.POWEROFF), lcm_state=0)
        )
    assert api.fail("one.vm.action", "reboot", a)[0] == ACTION
    assert api.call("one.vm.action", "resume", a) == a
    vm = vm_xml(api, a)
    assert (vm.findtext("STATE"), vm.findtext("LCM_STATE")) == ("3", "20")
    # terminate an ACTIVE VM: SHUTDOWN for the executor; repeating it is harmless.
    assert api.call("one.vm.action", "terminate-hard", a) == a
    assert api.call("one.vm.action", "terminate", a) == a
    vm = vm_xml(api, a)
    assert (vm.findtext("STATE"), vm.findtext("LCM_STATE")) == ("3", str(int(LCMState.SHUTDOWN)))
    # terminate a PENDING VM: DONE at once.
    b = api.call("one.vm.allocate", TEMPLATE)
    assert api.call("one.vm.action", "terminate", b) == b
    vm = vm_xml(api, b)
    assert vm.findtext("STATE") == str(int(VMState.DONE))
    assert int(vm.findtext("ETIME") or 0) > 0
    assert api.fail("one.vm.action", "terminate", b)[0] == ACTION
    assert api.fail("one.vm.action", "terminate", 999)[0] == NO_EXISTS
    with api.store.transaction() as conn:
        hist = conn.execute(
            select(schema.history.c.message).where(
                schema.history.c.kind == "vm", schema.history.c.object_id == a
            )
        ).all()
    assert [m for (m,) in hist] == [
        "allocated",
        "hold",
        "release",
        "reboot requested",
        "poweroff",
        "resume",
        "terminate-hard",
    ]


def test_terminate_pending_vm_frees_its_lease(api: Api) -> None:
    add_leases(api.store, "hv1", 1)
    vm_id = api.call("one.vm.allocate", TEMPLATE)
    with api.store.transaction() as conn:  # a resubmitted VM: PENDING and holding its lease
        lease_id = conn.execute(select(schema.leases.c.id)).scalar_one()
        assert leases.claim_lease(conn, lease_id, vm_id)
    assert api.call("lxcloud.lease.list", "hv1")[0]["vm_id"] == vm_id
    assert api.call("one.vm.action", "terminate", vm_id) == vm_id
    (lease,) = api.call("lxcloud.lease.list", "hv1")
    assert (lease["state"], lease["vm_id"]) == ("free", -1)


def test_sched_message_in_user_template(api: Api) -> None:
    vm_id = api.call("one.vm.allocate", TEMPLATE)
    with api.store.transaction() as conn:
        conn.execute(
            update(schema.vms)
            .where(schema.vms.c.id == vm_id)
            .values(sched_message="No host with enough capacity")
        )
    assert (
        vm_xml(api, vm_id).findtext("USER_TEMPLATE/SCHED_MESSAGE") == "No host with enough capacity"
    )


def test_vmpool_filters(api: Api) -> None:
    ids = [api.call("one.vm.allocate", TEMPLATE) for _ in range(4)]
    api.call("one.vm.action", "terminate", ids[0])
    api.call("one.vm.action", "hold", ids[1])

    def pool(*args: int) -> list[int]:
        root = ET.fromstring(api.call("one.vmpool.info", *args))
        assert root.tag == "VM_POOL"
        return [int(v.findtext("ID") or -1) for v in root.findall("VM")]

    assert pool(-2, -1, -1, -2) == ids
    assert pool(-2, -1, -1, -1) == ids[1:]  # not DONE
    assert pool(-2, -1, -1, int(VMState.HOLD)) == [ids[1]]
    assert pool(-2, ids[1], ids[2], -2) == ids[1:3]
    assert pool(-2, ids[2], -1, -2) == ids[2:]
    uid = users.user_id(api.store)
    assert pool(-3, -1, -1, -2) == ids  # mine
    assert pool(uid, -1, -1, -2) == ids
    assert pool(uid + 1, -1, -1, -2) == []
    assert pool(-2) == ids[1:]  # defaults: open range, not DONE
    assert pool(-4, -1, -1, -2) == ids  # <= -3: mine
    assert pool(-2, 1, -2, -2) == ids[1:3]  # pagination: offset 1, page size 2
    assert pool(-2, 0, -3, -1) == ids[1:4]
    assert api.fail("one.vmpool.info", -2, -1, -1, -7)[::2] == (XML_RPC_API, -1)
    assert api.fail("one.vmpool.info", -2, -1, -5, -1)[0] == XML_RPC_API


# -- VM tokens ----------------------------------------------------------------------------------
def test_vm_token_scoping(api: Api) -> None:
    hid = register_host(api)
    add_leases(api.store, "hv1", 2)
    a = api.call("one.vm.allocate", TEMPLATE)
    b = api.call("one.vm.allocate", TEMPLATE)
    make_running(api.store, a, hid)
    token = api.call("lxcloud.vm.token", a)
    me = f"vm-{a}:{token}"
    # Its own VM: info works.
    assert vm_xml(api, a, session=me).findtext("ID") == str(a)
    # Another VM, other methods, other actions: AUTHORIZATION.
    code, _, obj = api.fail("one.vm.info", b, session=me)
    assert (code, obj) == (AUTHORIZATION, b)
    assert api.fail("one.vm.action", "terminate", b, session=me)[0] == AUTHORIZATION
    assert api.fail("one.vm.action", "hold", a, session=me)[0] == AUTHORIZATION
    assert api.fail("one.vm.action", "resume", a, session=me)[0] == AUTHORIZATION
    for method, args in (
        ("one.hostpool.info", ()),
        ("one.host.info", (hid,)),
        ("one.vm.allocate", (TEMPLATE,)),
        ("one.vmpool.info", (-2, -1, -1, -1)),
        ("lxcloud.vm.token", (a,)),
        ("lxcloud.host.heartbeat", ("hv1", {})),
        ("one.system.version", ()),
    ):
        assert api.fail(method, *args, session=me)[0] == AUTHORIZATION, method
    # Someone else's token, or this token under another VM id: AUTHENTICATION.
    assert api.fail("one.vm.info", b, session=f"vm-{b}:{token}")[0] == AUTHENTICATION
    assert api.fail("one.vm.info", 999, session=f"vm-999:{token}")[0] == AUTHENTICATION
    # Its own terminate works (and poweroff would have, from RUNNING).
    assert api.call("one.vm.action", "terminate", a, session=me) == a
    assert vm_xml(api, a).findtext("LCM_STATE") == str(int(LCMState.SHUTDOWN))
    # Re-issuing the token retires the old one.
    new = api.call("lxcloud.vm.token", a)
    assert new != token
    assert api.fail("one.vm.info", a, session=me)[0] == AUTHENTICATION
    assert vm_xml(api, a, session=f"vm-{a}:{new}").findtext("ID") == str(a)
    assert api.fail("lxcloud.vm.token", 999)[0] == NO_EXISTS


def test_vm_token_from_allocation(api: Api) -> None:
    vm_id, token = vms.allocate(api.store, TEMPLATE, users.user_id(api.store))
    assert vm_xml(api, vm_id, session=f"vm-{vm_id}:{token}").findtext("ID") == str(vm_id)
    me = f"vm-{vm_id}:{token}"
    # An action the token may ask for, in a state that does not allow it: ACTION, not 0x0200.
    assert api.fail("one.vm.action", "poweroff-hard", vm_id, session=me)[0] == ACTION
    assert api.call("one.vm.action", "terminate-hard", vm_id, session=me) == vm_id
    assert vm_xml(api, vm_id).findtext("STATE") == str(int(VMState.DONE))
    # the token died with its VM
    assert api.fail("one.vm.info", vm_id, session=me)[0] == AUTHENTICATION
    assert api.fail("one.vm.action", "terminate", vm_id, session=me)[0] == AUTHENTICATION


def test_legacy_shutdown_is_terminate(api: Api) -> None:
    """OpenNebula 1.x-4.x images end themselves with "shutdown" (renamed terminate in 5.0)."""
    vm_id, token = vms.allocate(api.store, TEMPLATE, users.user_id(api.store))
    assert api.call("one.vm.action", "shutdown", vm_id, session=f"vm-{vm_id}:{token}") == vm_id
    assert vm_xml(api, vm_id).findtext("STATE") == str(int(VMState.DONE))
    other, _ = vms.allocate(api.store, TEMPLATE, users.user_id(api.store))
    assert api.call("one.vm.action", "shutdown-hard", other) == other


def test_failed_logins_are_throttled_and_logged_with_the_address(
    api: Api, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lxcloud_py import auth

    checks = [0]
    real = auth.verify_password

    def counting(password: str, stored: str) -> bool:
        checks[0] += 1
        return real(password, stored)

    monkeypatch.setattr(auth, "verify_password", counting)
    caplog.set_level(logging.WARNING, "lxcloud.api")
    for _ in range(6):  # 5 free failures, the 6th locks the address and the user out
        assert api.fail("one.system.version", session="oneadmin:guess")[0] == AUTHENTICATION
    hashed = checks[0]
    # now even the right password is refused, unchecked, for a while
    assert api.fail("one.system.version", session=ADMIN)[0] == AUTHENTICATION
    assert checks[0] == hashed, "a throttled request must not cost a password hash"
    assert "from 127.0.0.1" in caplog.text and "'oneadmin'" in caplog.text
    assert "too many failed logins" in caplog.text
    time.sleep(1.2)  # the first lock-out is 1 s
    assert api.call("one.system.version")  # and a success clears the count


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("DESCRIPTION = \"{{ lookup('pipe','id') }}\"", "DESCRIPTION"),
        ('CONTEXT = [ X = "{% raw %}" ]', "CONTEXT/X"),
        ('LXCLOUD_TOKEN = "t"', "LXCLOUD_TOKEN"),
        ('CONTEXT = [ ETH0_IP = "10.0.0.9" ]', "CONTEXT/ETH0_IP"),
        ('VMID = "3"', "VMID"),
        ("MEMORY = 1000000000000", "MEMORY"),
        ("MEMORY = \u0664\u0660", "MEMORY"),
        ("\n".join(f"A{i}=1" for i in range(1_100)), "attributes"),
    ],
)
def test_bad_templates_are_refused_at_allocate(api: Api, extra: str, named: str) -> None:
    code, message, _ = api.fail("one.vm.allocate", 'NAME = "ok"\n' + extra)
    assert code == ALLOCATE and named in message  # OpenNebula: allocate errors are ALLOCATE
    assert "Traceback" not in message and "class" not in message
    assert api.call("one.vmpool.info", -2, -1, -1, -1).count("<VM>") == 0  # nothing stored


def test_concurrent_handlers_are_bounded(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from lxcloud_py import hosts

    server = ApiServer(api.store, ("127.0.0.1", 0), max_threads=2)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    lock = threading.Lock()
    now_running, peak = [0], [0]

    def slow_heartbeat(store: Store, name: str, info: Any = None) -> int:
        with lock:
            now_running[0] += 1
            peak[0] = max(peak[0], now_running[0])
        time.sleep(0.1)
        with lock:
            now_running[0] -= 1
        return 7

    monkeypatch.setattr(hosts, "heartbeat", slow_heartbeat)
    replies: list[Any] = []

    def client() -> None:
        with xmlrpc.client.ServerProxy(f"http://127.0.0.1:{server.port}/RPC2") as proxy:
            replies.append(proxy.lxcloud.host.heartbeat(ADMIN, "hv1", {}))

    try:
        clients = [threading.Thread(target=client) for _ in range(6)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(30)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert replies == [[True, 7, 0]] * 6
    assert peak[0] == 2


# -- exit reasons and pools ---------------------------------------------------------------------
def test_vm_exit_through_its_own_token(api: Api) -> None:
    hid = register_host(api)
    add_leases(api.store, "hv1", 2)
    a = api.call("one.vm.allocate", TEMPLATE)
    b = api.call("one.vm.allocate", TEMPLATE)
    make_running(api.store, a, hid)
    make_running(api.store, b, hid)
    me = f"vm-{a}:{api.call('lxcloud.vm.token', a)}"
    assert api.fail("lxcloud.vm.exit", b, 100, "not mine", session=me)[0] == AUTHORIZATION
    code, message, _ = api.fail("lxcloud.vm.exit", a, 250, "odd", session=me)
    assert code == XML_RPC_API and "exit code must be one of 100, 200" in message
    assert api.fail("lxcloud.vm.exit", a, "300", "", session=me)[0] == XML_RPC_API
    assert api.call("lxcloud.vm.exit", a, 300, "no more work in the queue", session=me) == a
    doc = vm_xml(api, a, session=me)
    assert doc.findtext("LCM_STATE") == str(int(LCMState.SHUTDOWN))
    assert doc.findtext("USER_TEMPLATE/LXCLOUD_EXIT_CODE") == "300"
    assert doc.findtext("USER_TEMPLATE/LXCLOUD_EXIT_MESSAGE") == "no more work in the queue"
    assert int(doc.findtext("USER_TEMPLATE/LXCLOUD_EXIT_TIME") or 0) > 0
    # a lost reply retried: accepted, the first code stays
    assert api.call("lxcloud.vm.exit", a, 200, "again", session=me) == a
    assert vm_xml(api, a).findtext("USER_TEMPLATE/LXCLOUD_EXIT_CODE") == "300"
    assert vm_xml(api, b).find("USER_TEMPLATE/LXCLOUD_EXIT_CODE") is None
    assert api.fail("lxcloud.vm.exit", 999, 100, "")[0] == NO_EXISTS


POOL = {"name": "batch", "image": "golden", "cpu": 0.5, "memory": 128, "target": 2,
        "lifetime": 600, "hosts": ["hv1"]}


def test_pool_allocate_info_update_delete(api: Api) -> None:
    from lxcloud_py.pools import PoolManager

    pid = api.call("lxcloud.pool.allocate", POOL)
    code, message, _ = api.fail("lxcloud.pool.allocate", POOL)
    assert code == ALLOCATE and "exists" in message
    code, message, _ = api.fail("lxcloud.pool.allocate", {"name": "x", "image": "g", "size": 1})
    assert code == ALLOCATE and "unknown pool field(s): size" in message
    doc = ET.fromstring(api.call("lxcloud.pool.info", "batch"))
    assert doc.tag == "POOL" and doc.findtext("ID") == str(pid)
    assert (doc.findtext("TARGET"), doc.findtext("LIFETIME")) == ("2", "600")
    assert [h.text for h in doc.findall("HOSTS/HOST")] == ["hv1"]
    assert doc.findtext("TEMPLATE/DISK/IMAGE") == "golden"
    assert doc.findtext("TEMPLATE/CPU") == "0.5"
    assert ET.fromstring(api.call("lxcloud.pool.info", pid)).findtext("NAME") == "batch"
    assert api.fail("lxcloud.pool.info", "nope")[0] == NO_EXISTS
    assert api.fail("lxcloud.pool.info", 1.5)[0] == XML_RPC_API
    # merge update: only the target changes; the decision shows in info
    assert api.call("lxcloud.pool.update", "batch", {"target": 1}) == pid
    doc = ET.fromstring(api.call("lxcloud.pool.info", "batch"))
    assert (doc.findtext("TARGET"), doc.findtext("LIFETIME")) == ("1", "600")
    PoolManager(api.store).cycle()
    doc = ET.fromstring(api.call("lxcloud.pool.info", "batch"))
    assert doc.findtext("ACTIVE") == "1" and doc.findtext("PENDING") == "1"
    assert doc.findtext("DECISIONS/DECISION/ACTION") == "refill"
    # a VM of the pool shows it in its USER_TEMPLATE
    vm_id = int(ET.fromstring(api.call("one.vmpool.info", -2, -1, -1, -1)).findtext("VM/ID"))
    assert vm_xml(api, vm_id).findtext("USER_TEMPLATE/POOL") == "batch"
    # replace update: fields not given take defaults
    api.call("lxcloud.pool.update", "batch", {"template": TEMPLATE.replace('NAME = "worker"', "")
                                             .replace("LIFETIME = 3600", "")}, False)
    doc = ET.fromstring(api.call("lxcloud.pool.info", "batch"))
    assert (doc.findtext("TARGET"), doc.findtext("LIFETIME")) == ("0", "0")
    assert api.fail("lxcloud.pool.update", "batch", {"name": "other"})[0] == XML_RPC_API
    assert api.fail("lxcloud.pool.update", "batch", {"target": -1})[0] == XML_RPC_API
    pools_doc = ET.fromstring(api.call("lxcloud.poolpool.info"))
    assert [p.findtext("NAME") for p in pools_doc.findall("POOL")] == ["batch"]
    assert api.fail("lxcloud.pool.delete", "batch")[0] == ACTION  # a live VM
    assert api.call("lxcloud.pool.delete", "batch", True) == pid
    assert api.fail("lxcloud.pool.delete", "batch")[0] == NO_EXISTS


def test_pool_methods_are_admin_only(api: Api) -> None:
    vm_id, token = vms.allocate(api.store, TEMPLATE, users.user_id(api.store))
    me = f"vm-{vm_id}:{token}"
    for method, args in (
        ("lxcloud.pool.allocate", (POOL,)),
        ("lxcloud.pool.info", ("batch",)),
        ("lxcloud.pool.update", ("batch", {"target": 3})),
        ("lxcloud.pool.delete", ("batch",)),
        ("lxcloud.poolpool.info", ()),
    ):
        assert api.fail(method, *args, session=me)[0] == AUTHORIZATION, method
