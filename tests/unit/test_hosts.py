"""Hosts on both backends: idempotent registration, heartbeats, the staleness monitor
(MONITORED → ERROR → MONITORED), operator status, deletion, image reports."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select, update

from lxcloud_py import hosts, images
from lxcloud_py.config import Config, effective
from lxcloud_py.daemon import StageContext
from lxcloud_py.daemon.decisions import latest
from lxcloud_py.daemon.monitor import MonitorStage
from lxcloud_py.model import Conflict, HostState, InvalidInput, NotFound
from lxcloud_py.store import Store, schema

MACS = ["52:54:00:00:00:01", "52:54:00:00:00:02"]


def host_row(store: Store, name: str) -> dict:
    with store.transaction() as conn:
        return dict(
            conn.execute(select(schema.hosts).where(schema.hosts.c.name == name)).one()._mapping
        )


def history(store: Store, host_id: int) -> list[tuple[str | None, str | None, str | None]]:
    h = schema.history
    with store.transaction() as conn:
        return [
            (r.old_state, r.new_state, r.message)
            for r in conn.execute(
                select(h).where(h.c.kind == "host", h.c.object_id == host_id).order_by(h.c.id)
            )
        ]


def test_register_creates_then_updates_never_duplicates(store: Store) -> None:
    hid = hosts.register(store, "hv1", 4, 8192, 1000, MACS, {"libvirt_version": "9.0"})
    assert hosts.register(store, "hv1", 4, 8192, 1000, [m.upper() for m in MACS], None) == hid
    assert hosts.register(store, "hv1", 8.5, 16384, 2000, ["52:54:00:00:00:03", MACS[0]]) == hid
    with store.transaction() as conn:
        (host,) = hosts.list_hosts(conn)
        assert conn.execute(select(schema.hosts.c.id)).all() == [(hid,)]
    assert (host["cpu"], host["memory_mb"], host["disk_mb"]) == (8.5, 16384, 2000)
    assert host["macs"] == ["52:54:00:00:00:01", "52:54:00:00:00:03"]
    assert host["state"] == HostState.MONITORED
    msgs = [m for _, _, m in history(store, hid)]
    assert msgs[0].startswith("registered: 4 cores")
    assert "capacity: cpu 4 -> 8.5, memory_mb 8192 -> 16384, disk_mb 1000 -> 2000" in msgs
    assert "MACs: 1 added, 1 removed" in msgs


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("hv/1", 1, 1, 1, []), "host name"),
        (("hv1", -1, 1, 1, []), "cpu must be a non-negative"),
        (("hv1", 1, 1.5, 1, []), "memory_mb must be a whole number"),
        (("hv1", 1, 1, 1, ["nope", "52:54:00:00:00:01", "ff"]), "'nope', 'ff'"),
        (("hv1", 1, 1, 1, "52:54:00:00:00:01"), "array"),
    ],
)
def test_register_refuses_bad_input(store: Store, args: tuple, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        hosts.register(store, *args)


def test_stale_host_goes_to_error_and_back(store: Store) -> None:
    hid = hosts.register(store, "hv1", 2, 1024, 0, [])
    other = hosts.register(store, "hv2", 2, 1024, 0, [])
    hosts.set_status(store, other, hosts.STATUS_DISABLE)
    t = time.time()
    # Within the allowance: nothing happens.
    assert hosts.mark_stale(store, t + 25, interval=10, missed=3) == []
    assert host_row(store, "hv1")["state"] == HostState.MONITORED
    # Past it: ERROR, with a history record; a disabled host is left alone.
    assert hosts.mark_stale(store, t + 31, interval=10, missed=3) == [(hid, "hv1")]
    assert host_row(store, "hv1")["state"] == HostState.ERROR
    assert host_row(store, "hv2")["state"] == HostState.DISABLED
    old, new, msg = history(store, hid)[-1]
    assert (old, new) == ("MONITORED", "ERROR") and "3 intervals of 10 s" in (msg or "")
    # Marked once: a second pass does not record it again.
    assert hosts.mark_stale(store, t + 100, interval=10, missed=3) == []
    # It reports again: MONITORED.
    assert hosts.heartbeat(store, "hv1", {"domains": []}) == hid
    assert host_row(store, "hv1")["state"] == HostState.MONITORED
    assert history(store, hid)[-1][:2] == ("ERROR", "MONITORED")
    # Registration also recovers it.
    hosts.mark_stale(store, time.time() + 31, interval=10, missed=3)
    hosts.register(store, "hv1", 2, 1024, 0, [])
    assert host_row(store, "hv1")["state"] == HostState.MONITORED


def test_allocated_host_that_never_reports_goes_to_error(store: Store) -> None:
    hid = hosts.allocate(store, "hv3")
    assert host_row(store, "hv3")["state"] == HostState.INIT
    assert hosts.mark_stale(store, time.time() + 61, interval=20, missed=3) == [(hid, "hv3")]


def test_monitor_thread_marks_silent_hosts(store: Store) -> None:
    hid = hosts.register(store, "hv1", 2, 1024, 0, [])
    with store.transaction() as conn:
        conn.execute(
            update(schema.hosts).where(schema.hosts.c.id == hid).values(last_seen=time.time() - 10)
        )
    settings = effective(Config(), {"monitor_interval": "0.05", "missed_intervals": "2"}, {})
    stage = MonitorStage(StageContext(store, settings))
    stage.start()
    try:
        deadline = time.monotonic() + 5
        while host_row(store, "hv1")["state"] != HostState.ERROR:
            assert time.monotonic() < deadline, "the monitor did not mark the host"
            time.sleep(0.05)
    finally:
        stage.request_stop()
        assert stage.join(5)
    (decision,) = latest(store)
    assert (decision["action"], decision["host"], decision["ok"]) == ("host error", "hv1", False)


def test_operator_states_survive_reports(store: Store) -> None:
    hid = hosts.register(store, "hv1", 2, 1024, 0, [])
    hosts.set_status(store, hid, hosts.STATUS_OFFLINE)
    hosts.heartbeat(store, "hv1")
    hosts.register(store, "hv1", 2, 1024, 0, [])
    assert host_row(store, "hv1")["state"] == HostState.OFFLINE
    hosts.set_status(store, hid, hosts.STATUS_ENABLE)
    assert host_row(store, "hv1")["state"] == HostState.MONITORED
    with pytest.raises(InvalidInput):
        hosts.set_status(store, hid, 3)
    with pytest.raises(NotFound):
        hosts.set_status(store, hid + 100, 0)
    with pytest.raises(NotFound):
        hosts.heartbeat(store, "ghost")


def test_allocate_conflict_and_delete(store: Store) -> None:
    hid = hosts.allocate(store, "hv1", "lxcloud", "qemu")
    with pytest.raises(Conflict, match="already taken"):
        hosts.allocate(store, "hv1")
    hosts.register(store, "hv1", 1, 1, 1, MACS)
    assert hosts.delete_host(store, hid) == hid
    with store.transaction() as conn:
        assert conn.execute(select(schema.host_macs)).all() == []
    with pytest.raises(NotFound):
        hosts.delete_host(store, hid)


def test_image_reports(store: Store) -> None:
    sha = "0f" * 32
    iid = images.register(store, "golden", "2024.1", sha, 3 * 2**31, "qcow2", "zstd")
    assert images.register(store, "golden", "2024.1", sha.upper(), 3 * 2**31, "qcow2", "zstd") == (
        iid
    )
    with pytest.raises(Conflict):
        images.register(store, "golden", "2024.1", sha, 1, "qcow2", "zstd")
    hid = hosts.register(store, "hv1", 1, 1, 1, [])
    assert hosts.report_image(store, "hv1", "golden", "2024.1", sha, "verified") == hid
    assert hosts.report_image(store, "hv1", "golden", "2024.1", sha, "verified") == hid
    with pytest.raises(Conflict, match="registered image has"):
        hosts.report_image(store, "hv1", "golden", "2024.1", "1f" * 32, "verified")
    hosts.report_image(store, "hv1", "golden", "2024.1", "", "failed")
    with store.transaction() as conn:
        (host,) = hosts.list_hosts(conn)
    assert host["images"] == [{"name": "golden", "version": "2024.1", "state": "failed"}]
    h = schema.history
    with store.transaction() as conn:
        changes = conn.execute(
            select(h.c.old_state, h.c.new_state).where(h.c.kind == "image", h.c.object_id == iid)
        ).all()
    # registered, then verified, then failed: an unchanged report records nothing.
    assert [tuple(c) for c in changes] == [
        (None, "registered"),
        (None, "verified"),
        ("verified", "failed"),
    ]


def test_concurrent_first_registrations_make_one_host(store: Store) -> None:
    ids: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def worker() -> None:
        try:
            barrier.wait(5)
            ids.append(hosts.register(store, "hv-race", 2, 1024, 0, MACS))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(set(ids)) == 1 and len(ids) == 6
    with store.transaction() as conn:
        assert len(conn.execute(select(schema.hosts)).all()) == 1
        assert len(conn.execute(select(schema.host_macs)).all()) == 2


def test_register_retries_after_losing_the_insert_race(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic form of the race: another registration inserts the row between this
    one's lookup and its insert, which then hits the unique name; the retry updates."""
    from sqlalchemy.exc import IntegrityError

    real = hosts._register
    calls: list[str] = []

    def first_loses(*args: object, **kw: object) -> int:
        calls.append("call")
        if len(calls) == 1:
            real(*args, **kw)  # the competitor's registration
            raise IntegrityError("INSERT INTO hosts", {}, Exception("Duplicate entry"))
        return real(*args, **kw)

    monkeypatch.setattr(hosts, "_register", first_loses)
    hid = hosts.register(store, "hv1", 3, 1024, 0, MACS)
    assert calls == ["call", "call"]
    with store.transaction() as conn:
        assert conn.execute(select(schema.hosts.c.id)).all() == [(hid,)]
