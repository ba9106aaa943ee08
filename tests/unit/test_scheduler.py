"""Placement on both backends: lease pinning, capacity, image gating, allowed MACs, reasons,
packing vs striping, dispatch limit, lost races, config."""

from __future__ import annotations

from pathlib import Path

import pytest
import sched_rows as rows
from sqlalchemy import select, update

from lxcloud_py.cli import main
from lxcloud_py.config import load_config
from lxcloud_py.model import HostState, ImageState, InvalidInput, LCMState, VMState
from lxcloud_py.scheduler import Scheduler, SchedulerConfig
from lxcloud_py.store import Store, schema

IMG = "slc5-batch"


def cfg(**kw) -> SchedulerConfig:
    kw.setdefault("dispatch_limit", None)
    return SchedulerConfig(**kw)


def farm(conn, hosts: dict[str, int], image: str = IMG, **host_kw) -> dict[str, int]:
    """Hosts with the image verified and N free leases each; returns name -> host id."""
    img = rows.image(conn, image)
    ids, n = {}, 0
    for name, leases in hosts.items():
        ids[name] = rows.host(conn, name, **host_kw)
        rows.stage(conn, ids[name], img)
        for _ in range(leases):
            n += 1
            rows.lease(conn, 1000 * len(ids) + n, name)
    return ids


def place(store: Store, **kw):
    return Scheduler(store, cfg(**kw)).run_cycle()


def message(store: Store, vm_id: int) -> str | None:
    with store.transaction() as conn:
        return rows.vm_row(conn, vm_id).sched_message


def test_vm_lands_on_the_host_of_its_lease(store: Store) -> None:
    with store.transaction() as conn:
        ids = farm(conn, {"hv1": 0, "hv2": 1, "hv3": 0})
        vm = rows.vm(conn, "batch1")
    result = place(store)
    (p,) = result.placements
    assert (p.vm_id, p.host, p.host_id) == (vm, "hv2", ids["hv2"])
    with store.transaction() as conn:
        row = rows.vm_row(conn, vm)
        lease = rows.lease_of(conn, vm)
        hist = conn.execute(
            select(schema.history).where(
                schema.history.c.kind == "vm", schema.history.c.object_id == vm
            )
        ).one()
    assert (row.state, row.lcm_state, row.host_id) == (VMState.ACTIVE, LCMState.PROLOG, ids["hv2"])
    assert row.image_id is not None and row.sched_message is None
    assert (lease.host, lease.state, lease.ip, lease.mac) == ("hv2", "used", p.ip, p.mac)
    assert (hist.old_state, hist.new_state) == ("PENDING", "ACTIVE")
    assert "hv2" in hist.message and p.ip in hist.message
    # Nothing left: a second cycle has nothing to do.
    assert place(store).requests == 0


@pytest.mark.parametrize(
    ("resource", "ask", "fits"),
    [("cpu", 2, False), ("cpu", 1, True), ("memory_mb", 5000, False), ("memory_mb", 4096, True)],
)
def test_capacity_counts_live_vms(store: Store, resource: str, ask: float, fits: bool) -> None:
    with store.transaction() as conn:
        ids = farm(conn, {"hv1": 4}, cpu=4, memory_mb=8192)
        # Live VMs on the host: 3 cores, 4096 MB; ended ones do not count.
        rows.vm(
            conn,
            "run",
            cpu=2,
            memory_mb=2048,
            state=VMState.ACTIVE,
            lcm_state=LCMState.RUNNING,
            host_id=ids["hv1"],
        )
        rows.vm(conn, "off", cpu=1, memory_mb=2048, state=VMState.POWEROFF, host_id=ids["hv1"])
        rows.vm(conn, "gone", cpu=4, memory_mb=8192, state=VMState.DONE, host_id=ids["hv1"])
        vm = rows.vm(conn, "new", **{"cpu": 1, "memory_mb": 1024, resource: ask})
    result = place(store)
    assert [p.vm_id for p in result.placements] == ([vm] if fits else [])
    if not fits:
        name = "CpuFilter" if resource == "cpu" else "MemoryFilter"
        assert message(store, vm) == (
            f"No host with enough capacity (CPU {1 if resource != 'cpu' else ask}, MEMORY "
            f"{1024 if resource == 'cpu' else ask} MB): 1 host filtered out by {name}(1)"
        )


def test_capacity_fills_up_within_a_cycle(store: Store) -> None:
    with store.transaction() as conn:
        farm(conn, {"hv1": 10}, cpu=4, memory_mb=100000)
        vms = [rows.vm(conn, f"v{i}", cpu=1) for i in range(6)]
    result = place(store)
    assert [p.vm_id for p in result.placements] == vms[:4]
    assert [u.vm_id for u in result.unplaced] == vms[4:]
    assert "CpuFilter(1)" in result.unplaced[0].reason


@pytest.mark.parametrize("how", ["failed", "absent", "not staged", "wrong sha256"])
def test_image_must_be_staged_and_verified(store: Store, how: str) -> None:
    with store.transaction() as conn:
        img = rows.image(conn, IMG, sha="a" * 64)
        hid = rows.host(conn, "hv1")
        rows.lease(conn, 1, "hv1")
        if how in ("failed", "absent"):
            rows.stage(
                conn,
                hid,
                img,
                state={"failed": ImageState.FAILED, "absent": ImageState.ABSENT}[how],
            )
        elif how == "wrong sha256":
            rows.stage(conn, hid, img, sha="b" * 64)
        vm = rows.vm(conn, "v")
        other = rows.vm(conn, "no-image", image_name=None)  # asks for no image: placed
    result = place(store)
    assert [p.vm_id for p in result.placements] == [other]
    assert message(store, vm) == (
        f"Image '{IMG}' is not staged and verified on any enabled host: "
        "1 host filtered out by ImageFilter(1)"
    )
    with store.transaction() as conn:
        assert rows.vm_row(conn, vm).state == VMState.PENDING
        assert rows.lease_of(conn, vm) is None


def test_newest_verified_version_is_bound(store: Store) -> None:
    with store.transaction() as conn:
        old = rows.image(conn, IMG, version="2024.1")
        new = rows.image(conn, IMG, version="2024.2", sha="c" * 64)
        newer = rows.image(conn, IMG, version="2024.3", sha="d" * 64)
        hid = rows.host(conn, "hv1")
        rows.stage(conn, hid, old)
        rows.stage(conn, hid, new, sha="c" * 64)
        rows.stage(conn, hid, newer, state=ImageState.FAILED)
        rows.lease(conn, 1, "hv1")
        vm = rows.vm(conn, "v")
    assert [p.image_id for p in place(store).placements] == [new]
    with store.transaction() as conn:
        assert rows.vm_row(conn, vm).image_id == new


def test_allowed_macs(store: Store) -> None:
    with store.transaction() as conn:
        img = rows.image(conn, IMG)
        h1 = rows.host(conn, "hv1", macs=["52:54:00:00:00:aa"])
        h2 = rows.host(conn, "hv2", macs=["52:54:00:00:00:bb", "52:54:00:00:00:cc"])
        for h in (h1, h2):
            rows.stage(conn, h, img)
        rows.lease(conn, 1, "hv1", mac="52:54:00:00:00:01")  # not allowed on hv1
        rows.lease(conn, 2, "hv2", mac="52:54:00:00:00:cc")  # allowed on hv2
        a, b = rows.vm(conn, "a"), rows.vm(conn, "b")
    result = place(store)
    assert [(p.vm_id, p.host, p.mac) for p in result.placements] == [
        (a, "hv2", "52:54:00:00:00:cc")
    ]
    assert message(store, b) == (
        f"No free lease pinned to any host holding image '{IMG}': "
        "2 hosts filtered out by LeaseFilter(2)"
    )


def test_unplaceable_reasons(store: Store) -> None:
    with store.transaction() as conn:
        lonely = rows.vm(conn, "lonely")
    place(store)
    assert message(store, lonely) == "No hosts registered"
    with store.transaction() as conn:
        img = rows.image(conn, IMG)
        off = rows.host(conn, "hv-off", state=HostState.DISABLED)
        err = rows.host(conn, "hv-err", state=HostState.ERROR)
        for h in (off, err):
            rows.stage(conn, h, img)
            rows.lease(conn, h, "hv-off" if h == off else "hv-err")
    place(store)
    assert message(store, lonely) == ("No enabled host: 2 hosts filtered out by HostStateFilter(2)")
    with store.transaction() as conn:
        rows.host(conn, "hv-noimg")  # enabled, no image
        rows.stage(conn, rows.host(conn, "hv-nolease"), img)  # image, no lease
    place(store)
    assert message(store, lonely) == (
        f"No free lease pinned to any host holding image '{IMG}': 4 hosts filtered out by "
        "HostStateFilter(2), ImageFilter(1), LeaseFilter(1)"
    )
    with store.transaction() as conn:
        rows.lease(conn, 99, "hv-nolease")
        hold = rows.vm(conn, "held", state=VMState.HOLD)
    result = place(store)
    assert [p.vm_id for p in result.placements] == [lonely]  # HOLD is not asking
    assert message(store, lonely) is None
    with store.transaction() as conn:
        assert rows.vm_row(conn, hold).state == VMState.HOLD


def test_oldest_first(store: Store) -> None:
    with store.transaction() as conn:
        farm(conn, {"hv1": 1})
        young = rows.vm(conn, "young", created=200)
        old = rows.vm(conn, "old", created=100)
    result = place(store)
    assert [p.vm_id for p in result.placements] == [old]
    assert [u.vm_id for u in result.unplaced] == [young]


@pytest.mark.parametrize("strategy", ["packing", "striping"])
def test_packing_vs_striping(store: Store, strategy: str) -> None:
    with store.transaction() as conn:
        ids = farm(conn, {"hv1": 4, "hv2": 4, "hv3": 4}, cpu=8, memory_mb=16384)
        # hv2 is the fullest, hv3 the emptiest.
        rows.vm(
            conn,
            "r1",
            cpu=4,
            memory_mb=8192,
            state=VMState.ACTIVE,
            lcm_state=LCMState.RUNNING,
            host_id=ids["hv2"],
        )
        rows.vm(
            conn,
            "r2",
            cpu=2,
            memory_mb=4096,
            state=VMState.ACTIVE,
            lcm_state=LCMState.RUNNING,
            host_id=ids["hv1"],
        )
        for i in range(3):
            rows.vm(conn, f"v{i}", cpu=1, memory_mb=2048)
    result = place(store, strategy=strategy, weighers=["CapacityWeigher"])
    hosts = [p.host for p in result.placements]
    if strategy == "packing":
        assert hosts == ["hv2", "hv2", "hv2"]  # fill the fullest first
    else:
        assert hosts == ["hv3", "hv3", "hv1"]  # the emptiest, then spread


def test_free_leases_weigher_breaks_ties(store: Store) -> None:
    with store.transaction() as conn:
        farm(conn, {"hv1": 1, "hv2": 3})
        rows.vm(conn, "v")
    (p,) = place(store).placements
    assert p.host == "hv2"  # same load everywhere: the host with more leases left


def test_dispatch_limit(store: Store) -> None:
    with store.transaction() as conn:
        ids = farm(conn, {"hv1": 6, "hv2": 6})
        conn.execute(
            update(schema.hosts).where(schema.hosts.c.id == ids["hv2"]).values(max_dispatch=3)
        )
        # Already deploying on hv1: one in PROLOG, one in BOOT; a RUNNING one does not count.
        for lcm in (LCMState.PROLOG, LCMState.BOOT, LCMState.RUNNING):
            rows.vm(
                conn,
                "busy",
                state=VMState.ACTIVE,
                lcm_state=lcm,
                host_id=ids["hv1"],
                image_name=None,
            )
        vms = [rows.vm(conn, f"v{i}") for i in range(8)]
    result = place(store, dispatch_limit=2)
    placed = [p.host for p in result.placements]
    assert placed.count("hv1") == 0 and placed.count("hv2") == 3
    assert len(result.unplaced) == 5
    assert message(store, vms[-1]) == (
        "Every candidate host reached its dispatch limit (VMs in PROLOG/BOOT): "
        "2 hosts filtered out by DispatchLimitFilter(2)"
    )
    # VMs leaving PROLOG/BOOT free dispatch slots for the next cycle.
    with store.transaction() as conn:
        conn.execute(
            update(schema.vms)
            .where(schema.vms.c.state == VMState.ACTIVE)
            .values(lcm_state=LCMState.RUNNING)
        )
    result = place(store, dispatch_limit=2)
    assert sorted(p.host for p in result.placements) == ["hv1", "hv1", "hv2", "hv2", "hv2"]


def test_resubmitted_vm_keeps_its_lease_and_host(store: Store) -> None:
    with store.transaction() as conn:
        ids = farm(conn, {"hv1": 3})
        ids["hv2"] = rows.host(conn, "hv2", cpu=1)
        rows.stage(conn, ids["hv2"], 1)
        rows.lease(conn, 1, "hv2")
        # Back to PENDING after a failed boot: it still holds its lease and names its host,
        # which has room for exactly this VM (it must not count against it twice).
        vm = rows.vm(conn, "again", cpu=1, host_id=ids["hv2"])
        lid = conn.execute(
            select(schema.leases.c.id).where(schema.leases.c.host == "hv2")
        ).scalar_one()
        conn.execute(
            update(schema.leases).where(schema.leases.c.id == lid).values(vm_id=vm, state="used")
        )
    (p,) = place(store).placements
    assert (p.host, p.lease_id) == ("hv2", lid)


# -- lost races: the claim re-checks the database ------------------------------------------------
def _before_first_claim(monkeypatch: pytest.MonkeyPatch, hook) -> None:
    original = Scheduler._claim
    calls = []

    def claim(self, req, host):
        if not calls:
            calls.append(1)
            hook(self.store, req, host)
        return original(self, req, host)

    monkeypatch.setattr(Scheduler, "_claim", claim)


def test_lease_taken_meanwhile_takes_the_next(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with store.transaction() as conn:
        farm(conn, {"hv1": 2})
        vm = rows.vm(conn, "v")
        thief = rows.vm(conn, "thief", state=VMState.HOLD)

    def steal(store, req, host):
        with store.transaction() as conn:
            conn.execute(
                update(schema.leases)
                .where(schema.leases.c.id == host.free_leases[0].id)
                .values(vm_id=thief, state="used")
            )

    _before_first_claim(monkeypatch, steal)
    (p,) = place(store).placements
    with store.transaction() as conn:
        assert rows.lease_of(conn, vm).id == p.lease_id
        assert rows.lease_of(conn, thief).id != p.lease_id


def test_host_filled_meanwhile_goes_elsewhere(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with store.transaction() as conn:
        ids = farm(conn, {"hv1": 2, "hv2": 2}, cpu=2)
        vm = rows.vm(conn, "v", cpu=2)

    def fill(store, req, host):
        with store.transaction() as conn:
            rows.vm(
                conn,
                "other",
                cpu=2,
                state=VMState.ACTIVE,
                lcm_state=LCMState.RUNNING,
                host_id=host.id,
                image_name=None,
            )

    _before_first_claim(monkeypatch, fill)
    result = place(store)
    (p,) = result.placements
    assert result.conflicts == 1 and p.vm_id == vm
    with store.transaction() as conn:
        for hid in ids.values():
            used = (
                conn.execute(
                    select(schema.vms.c.cpu).where(
                        schema.vms.c.host_id == hid, schema.vms.c.state == VMState.ACTIVE
                    )
                )
                .scalars()
                .all()
            )
            assert sum(used) == 2


def test_vm_taken_meanwhile_rolls_back(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with store.transaction() as conn:
        farm(conn, {"hv1": 2})
        vm = rows.vm(conn, "v")

    def hold(store, req, host):
        with store.transaction() as conn:
            conn.execute(update(schema.vms).where(schema.vms.c.id == vm).values(state=VMState.HOLD))

    _before_first_claim(monkeypatch, hold)
    result = place(store)
    assert result.placements == [] and result.skipped == [vm]
    with store.transaction() as conn:
        assert rows.lease_of(conn, vm) is None  # the lease claim was rolled back
        assert rows.vm_row(conn, vm).state == VMState.HOLD


# -- config and CLI ------------------------------------------------------------------------------
def test_config_file(tmp_path: Path) -> None:
    p = tmp_path / "lxcloud.yaml"
    p.write_text(
        "scheduler:\n  filters: [HostStateFilter, LeaseFilter]\n  strategy: striping\n"
        "  weigher_multipliers: {FreeLeasesWeigher: 2}\n  dispatch_limit: null\napi: {port: 1}\n"
    )
    c = load_config(p)
    assert c.scheduler.filters == ["HostStateFilter", "LeaseFilter"]
    assert c.scheduler.strategy == "striping" and c.scheduler.dispatch_limit is None
    assert c.scheduler.multiplier("FreeLeasesWeigher") == 2
    assert c.scheduler.multiplier("CapacityWeigher") == 1.0
    assert c.section("api") == {"port": 1}
    assert load_config(None).scheduler == SchedulerConfig()
    for bad, match in [
        ("scheduler: {filters: [NoSuchFilter]}", "unknown filter 'NoSuchFilter'"),
        ("scheduler: {strategy: random}", "strategy"),
        ("scheduler: {dispatch_limt: 3}", "unknown key"),
        ("scheduler: {dispatch_limit: 0}", "positive integer"),
        ("scheduler: {weigher_multipliers: {CapacityWeigher: x}}", "not a number"),
        ("scheduler: [", "not valid YAML"),
    ]:
        p.write_text(bad)
        with pytest.raises(InvalidInput, match=match):
            load_config(p)


def test_filters_are_enabled_by_name(store: Store) -> None:
    with store.transaction() as conn:
        hid = rows.host(conn, "hv1")
        rows.lease(conn, 1, "hv1")
        rows.vm(conn, "v")  # image not staged anywhere
    assert place(store).placements == []
    only = ["HostStateFilter", "LeaseFilter", "CpuFilter", "MemoryFilter"]
    (p,) = place(store, filters=only).placements
    assert p.host_id == hid and p.image_id is None


def test_cli_schedule_once(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with store.transaction() as conn:
        farm(conn, {"hv1": 1})
        a = rows.vm(conn, "batch-a")
        b = rows.vm(conn, "batch-b")
    conf = tmp_path / "c.yaml"
    conf.write_text("scheduler: {strategy: striping}\n")
    assert main(["--db", store.url, "schedule", "--once", "--config", str(conf)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["vm", "name", "host", "ip", "mac", "lease", "name", "result"]
    assert out[2].split()[:3] == [str(a), "batch-a", "hv1"] and out[2].endswith("placed")
    assert out[3].split()[:2] == [str(b), "batch-b"] and "No free lease" in out[3]
    assert out[-1].startswith("1 placed, 1 unplaced of 2 pending on 1 hosts")


@pytest.mark.parametrize("change", ["lease re-pinned", "MACs restricted"])
def test_lease_or_macs_changed_meanwhile(
    store: Store, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    with store.transaction() as conn:
        farm(conn, {"hv1": 1, "hv2": 1})
        vm = rows.vm(conn, "v")

    def meddle(store, req, host):
        with store.transaction() as conn:
            if change == "lease re-pinned":  # an import moved the free lease to another host
                conn.execute(
                    update(schema.leases)
                    .where(schema.leases.c.id == host.free_leases[0].id)
                    .values(host="hv9")
                )
            else:  # the host registered again, allowing other MACs only
                conn.execute(
                    schema.host_macs.insert().values(host_id=host.id, mac="52:54:00:ff:ff:ff")
                )
        meddled.append(host.name)

    meddled: list[str] = []
    _before_first_claim(monkeypatch, meddle)
    result = place(store)
    (p,) = result.placements
    assert p.host != meddled[0] and result.conflicts == 1
    with store.transaction() as conn:
        lease = rows.lease_of(conn, vm)
        host_name = conn.execute(
            select(schema.hosts.c.name).where(schema.hosts.c.id == rows.vm_row(conn, vm).host_id)
        ).scalar_one()
    assert lease.host == host_name == p.host



def test_settings_are_handed_in_not_imported_from_config(store: Store) -> None:
    """No import circle: the scheduler never imports lxcloud_py.config; the config reads its
    ``scheduler`` section through the scheduler's own settings, checked against the
    scheduler's registries."""
    import subprocess
    import sys

    code = (
        "import sys, lxcloud_py.scheduler; "
        "sys.exit('scheduler imported config' if 'lxcloud_py.config' in sys.modules else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    from lxcloud_py.scheduler import settings_from

    assert settings_from(None) == SchedulerConfig()
    with pytest.raises(InvalidInput, match=r"here\.weighers: unknown weigher 'Nope'"):
        settings_from({"weighers": ["Nope"]}, "here")
    with pytest.raises(InvalidInput, match="unknown filter 'Nope'"):
        Scheduler(store, SchedulerConfig(filters=["Nope"]))


# -- SCHED_REQUIREMENTS (pools with a host constraint write it) ---------------------------------
def test_requirements_pin_the_host(store: Store) -> None:
    with store.transaction() as conn:
        farm(conn, {"hv1": 3, "hv2": 3, "hv3": 3})
        a = rows.vm(conn, "a")
        conn.execute(update(schema.vms).where(schema.vms.c.id == a).values(
            template='SCHED_REQUIREMENTS = "HOSTNAME = \\"hv3\\" | HOSTNAME = \\"hv2\\""\n'))
        b = rows.vm(conn, "b")
        conn.execute(update(schema.vms).where(schema.vms.c.id == b).values(
            template='SCHED_REQUIREMENTS = "HOSTNAME = \\"hv9\\""\n'))
        c = rows.vm(conn, "c")
        conn.execute(update(schema.vms).where(schema.vms.c.id == c).values(
            template='SCHED_REQUIREMENTS = "FREE_CPU > 50"\n'))
    result = place(store)
    assert {p.vm_id: p.host for p in result.placements}[a] in ("hv2", "hv3")
    assert {p.vm_id for p in result.placements} == {a}
    assert "No host allowed by SCHED_REQUIREMENTS (hv9)" in (message(store, b) or "")
    assert "is not understood" in (message(store, c) or "")


def test_requirement_hosts_subset() -> None:
    from lxcloud_py.scheduler.state import requirement_hosts

    assert requirement_hosts('HOSTNAME = "a" | HOSTNAME=b') == frozenset({"a", "b"})
    assert requirement_hosts('HOSTNAME = "a" & CPU > 1') == frozenset()
    assert requirement_hosts('HOSTNAME = "a;rm"') == frozenset()
