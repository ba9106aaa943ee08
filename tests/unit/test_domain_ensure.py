"""domain.ensure(DomainRequest) against libvirt's in-process test driver (test:///default):
the lifecycle logic — check mode, define, in-place update with the same UUID, pending restart,
restart on change, graceful stop, absent with storage — without a daemon or qemu."""

from __future__ import annotations

import uuid

import pytest
from ansible_collections.lxcloud.cloud.plugins.module_utils import domain as D

libvirt = pytest.importorskip("libvirt", reason="libvirt Python bindings missing")


@pytest.fixture
def conn():
    libvirt.registerErrorHandler(lambda *_: None, None)
    c = libvirt.open("test:///default")
    yield c
    for dom in c.listAllDomains():
        if dom.name().startswith("lxvm-"):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    c.close()


@pytest.fixture
def name() -> str:
    return "lxvm-" + uuid.uuid4().hex[:8]


def want(name, store, **kw):
    args = dict(name=name, disk=f"{store}/{name}.qcow2", context=f"{store}/{name}.iso",
                virt_type="qemu", memory_mb=256, network="user", mac="52:54:00:00:00:01",
                console_log=f"{store}/{name}.console.log")
    args.update(kw)
    return D.make_spec(**args)


def ensure(conn, name, wanted, state, check_mode=False, **options):
    return D.ensure(conn, D.DomainRequest(name, state, wanted, **options), check_mode=check_mode)


def test_request_is_one_value() -> None:
    r = D.DomainRequest("lxvm-x", "absent", storage_dir="/d")
    assert (r.wanted, r.shutdown_timeout, r.remove_storage_files, r.extra_paths) == (
        None, 60, True, ())
    with pytest.raises(TypeError):
        D.DomainRequest("lxvm-x")  # the state is required
    with pytest.raises(AttributeError):
        r.state = "running"  # frozen


def test_define_check_mode_then_real_then_no_change(conn, name, tmp_path) -> None:
    w = want(name, tmp_path)
    r = ensure(conn, name, w, "defined", check_mode=True)
    assert r["changed"] and r["changes"] == ["defined"] and r["state"] == "shutoff"
    assert D.lookup(conn, name) is None
    r = ensure(conn, name, w, "defined")
    assert r["changed"] and r["uuid"] == D.stable_uuid(name)
    assert D.lookup(conn, name).UUIDString() == D.stable_uuid(name)
    assert r["diff"]["before"] == "state: absent\n"
    assert f"<name>{name}</name>" in r["diff"]["after"]
    for check in (True, False):
        r = ensure(conn, name, w, "defined", check_mode=check)
        assert r["changed"] is False and r["changes"] == [], r


def test_update_in_place_keeps_uuid_and_reports_the_field(conn, name, tmp_path) -> None:
    ensure(conn, name, want(name, tmp_path), "defined")
    u = D.lookup(conn, name).UUIDString()
    r = ensure(conn, name, want(name, tmp_path, memory_mb=512, vcpus=2), "defined",
                 check_mode=True)
    assert r["changed"] and r["changes"] == ["memory_mb", "vcpus"]
    assert D.parse_xml(D.inactive_xml(D.lookup(conn, name)))["memory_mb"] == 256
    r = ensure(conn, name, want(name, tmp_path, memory_mb=512, vcpus=2), "defined")
    assert r["changed"] and r["uuid"] == u
    dom = D.lookup(conn, name)
    assert dom.UUIDString() == u
    assert D.parse_xml(D.inactive_xml(dom))["memory_mb"] == 512


def test_explicit_uuid_conflict_is_an_error(conn, name, tmp_path) -> None:
    ensure(conn, name, want(name, tmp_path), "defined")
    other = str(uuid.uuid4())
    with pytest.raises(D.DomainError, match="exists with uuid"):
        ensure(conn, name, want(name, tmp_path, uuid=other), "defined", uuid_given=True)


def test_running_pending_restart_and_restart_on_change(conn, name, tmp_path) -> None:
    r = ensure(conn, name, want(name, tmp_path), "running")
    assert r["changed"] and r["changes"] == ["defined", "started"] and r["state"] == "running"
    assert ensure(conn, name, want(name, tmp_path), "running")["changed"] is False
    r = ensure(conn, name, want(name, tmp_path, memory_mb=384), "running")
    assert r["changed"] and r["pending_restart"] and r["state"] == "running"
    # the persistent definition now matches: no change, but still pending
    r = ensure(conn, name, want(name, tmp_path, memory_mb=384), "running")
    assert r["changed"] is False and r["pending_restart"] is True
    r = ensure(conn, name, want(name, tmp_path, memory_mb=384), "running",
                 restart_on_change=True, shutdown_timeout=5)
    assert r["changed"] and "restarted" in r["changes"] and not r["pending_restart"]
    assert D.parse_xml(D.live_xml(D.lookup(conn, name)))["memory_mb"] == 384


def test_stopped_waits_for_graceful_shutdown(conn, name, tmp_path) -> None:
    ensure(conn, name, want(name, tmp_path), "running")
    r = ensure(conn, name, None, "stopped", check_mode=True, shutdown_timeout=5)
    assert r["changed"] and D.lookup(conn, name).isActive()
    r = ensure(conn, name, None, "stopped", shutdown_timeout=5)
    assert r["changed"] and r["state"] == "shutoff" and r["forced_off"] is False
    assert not D.lookup(conn, name).isActive()
    assert ensure(conn, name, None, "stopped")["changed"] is False
    r = ensure(conn, name, None, "running")
    assert r["changed"] and r["changes"] == ["started"]


def test_running_without_definition_needs_options(conn, name) -> None:
    with pytest.raises(D.DomainError, match="does not exist; give disk"):
        ensure(conn, name, None, "running")


def test_absent_removes_domain_and_only_managed_storage(conn, name, tmp_path) -> None:
    store = tmp_path / "disks"
    store.mkdir()
    outside = tmp_path / "golden.raw"
    outside.write_text("golden")
    w = want(name, store, context=str(outside))
    for f in (f"{name}.qcow2", f".{name}.qcow2.lxclone", f"{name}.console.log"):
        (store / f).write_text("x")
    ensure(conn, name, w, "running")
    r = ensure(conn, name, None, "absent", check_mode=True, storage_dir=str(store))
    assert r["changed"] and D.lookup(conn, name) is not None and (store / f"{name}.qcow2").exists()
    r = ensure(conn, name, None, "absent", storage_dir=str(store))
    assert r["changed"] and r["state"] == "absent" and r["forced_off"] is True
    assert r["removed"] == [str(store / f"{name}.qcow2")]
    assert D.lookup(conn, name) is None
    assert outside.read_text() == "golden", "a file outside storage_dir was removed"
    assert sorted(p.name for p in store.iterdir()) == [f"{name}.console.log"]
    r = ensure(conn, name, None, "absent", storage_dir=str(store), remove_console_log=True,
                 console_log=str(store / f"{name}.console.log"))
    assert r["changed"] and list(store.iterdir()) == []
    assert ensure(conn, name, None, "absent", storage_dir=str(store))["changed"] is False


def test_running_resumes_a_paused_domain(conn, name, tmp_path) -> None:
    ensure(conn, name, want(name, tmp_path), "running")
    D.lookup(conn, name).suspend()
    r = ensure(conn, name, want(name, tmp_path), "running", check_mode=True)
    assert r["changed"] and r["changes"] == ["resumed"]
    assert D.lookup(conn, name).state()[0] == libvirt.VIR_DOMAIN_PAUSED
    r = ensure(conn, name, want(name, tmp_path), "running")
    assert r["changed"] and r["state"] == "running"
    assert D.lookup(conn, name).state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_list_domains_reports_managed_fields_and_state(conn, name, tmp_path) -> None:
    ensure(conn, name, want(name, tmp_path), "running")
    other = name + "-b"
    ensure(conn, other, want(other, tmp_path, mac="52:54:00:00:00:02"), "defined")
    got = D.list_domains(conn, prefix=name)
    assert [d["name"] for d in got] == [name, other]
    assert got[0]["state"] == "running" and got[0]["active"] and got[0]["persistent"]
    assert got[1]["state"] == "shutoff" and not got[1]["active"]
    assert got[0]["nic"]["mac"] == "52:54:00:00:00:01"
    assert got[0]["disk"]["path"] == f"{tmp_path}/{name}.qcow2"
    assert D.list_domains(conn, names=[other, "lxvm-nope"])[0]["name"] == other
    assert len(D.list_domains(conn, names=[other, "lxvm-nope"])) == 1
    with pytest.raises(D.InvalidName):
        D.list_domains(conn, names=["../x"])
