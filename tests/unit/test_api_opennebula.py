"""OpenNebula's own Python client, pyone, drives the methods added for OpenNebula's clients
(issue 18) over a real socket, on SQLite and MariaDB: VM templates, one.vmpool.infoextended,
one.vm.update/updateconf/chown/chmod/action, one.host.update, clusters, and the image,
network and datastore views. pyone parses every document with bindings generated from
OpenNebula's XSDs, so a document it cannot read fails here."""

# ruff: noqa: SIM300 - pyone's upper-case attributes (vm.ID) look like constants to ruff

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyone
import pytest
from sqlalchemy import select

from lxcloud_py import hosts, images, leases, users, vms
from lxcloud_py.api import ApiServer
from lxcloud_py.api.server import Dispatcher
from lxcloud_py.model import LCMState, VMState
from lxcloud_py.scheduler.core import run_cycle
from lxcloud_py.store import Store, schema
from lxcloud_py.users import Principal

PW = "pw-for-pyone"
SHA = "cd" * 32


@pytest.fixture
def one(store: Store) -> Iterator[Any]:
    users.ensure_admin(store, PW)
    server = ApiServer(store, ("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield pyone.OneServer(f"http://127.0.0.1:{server.port}/RPC2", session=f"oneadmin:{PW}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def farm(store: Store, tmp: Path, n_leases: int = 4) -> int:
    """A registered host hv1 with ``n_leases`` leases pinned to it; returns its id."""
    hid = hosts.register(store, "hv1", 8.0, 16384, 20000, [], {"disk_free_mb": 15000})
    csv = tmp / "leases.csv"
    csv.write_text(
        "ip,mac,name,host\n"
        + "".join(
            f"10.9.0.{10 + i},52:54:00:09:00:{10 + i:02x},w{i}.farm,hv1\n" for i in range(n_leases)
        )
    )
    leases.import_leases(store, csv)
    return hid


TEMPLATE = 'NAME = "batch"\nCPU = 0.5\nMEMORY = 256\nCONTEXT = [ ROLE = "worker" ]\n'


def test_templates(one: Any, store: Store) -> None:
    tid = one.template.allocate(TEMPLATE)
    tpl = one.template.info(tid)
    assert (tpl.ID, tpl.NAME, tpl.UNAME, tpl.GID) == (tid, "batch", "oneadmin", 0)
    assert tpl.TEMPLATE["CPU"] == "0.5" and tpl.TEMPLATE["CONTEXT"]["ROLE"] == "worker"
    assert "NAME" not in tpl.TEMPLATE  # the name is the object's, as in OpenNebula
    assert (tpl.PERMISSIONS.OWNER_U, tpl.PERMISSIONS.OWNER_M, tpl.PERMISSIONS.OTHER_U) == (1, 1, 0)

    # the pool with its filter arguments (community.general sends a 4th one)
    assert [t.NAME for t in one.templatepool.info(-2, -1, -1, -1).VMTEMPLATE] == ["batch"]
    assert [t.ID for t in one.templatepool.info(-3, -1, -1).VMTEMPLATE] == [tid]
    assert one.templatepool.info(-2, tid + 1, -1).VMTEMPLATE == []

    # allocate-time validation as one.vm.allocate's, and names are unique per owner
    for bad, words in (
        ('NAME = "x"\nCPU = -1\n', "CPU"),
        ('NAME = "x"\nNIC = [ NETWORK = "n" ]\n', "NIC"),
        ("CPU = 1\n", "NAME"),
        (TEMPLATE, "already taken"),
    ):
        with pytest.raises(pyone.OneException, match=words):
            one.template.allocate(bad)

    # update: merge (1) then replace (0); a NAME in the update is ignored
    assert one.template.update(tid, 'MEMORY = 512\nLABELS = "a,b"\n', 1) == tid
    merged = one.template.info(tid).TEMPLATE
    assert (merged["MEMORY"], merged["CPU"], merged["LABELS"]) == ("512", "0.5", "a,b")
    one.template.update(tid, {"TEMPLATE": {"CPU": "2", "MEMORY": "128"}}, 0)  # pyone's XML form
    assert one.template.info(tid).TEMPLATE == {"CPU": "2", "MEMORY": "128"}
    with pytest.raises(pyone.OneApiException, match="VCPU"):
        one.template.update(tid, "VCPU = 0\n", 1)
    with pytest.raises(pyone.OneApiException, match="type"):
        one.template.update(tid, "CPU = 1\n", 2)

    # clone, instantiate with an extra template merged over it
    copy = one.template.clone(tid, "batch-copy")
    assert one.template.info(copy).NAME == "batch-copy"
    vm_id = one.template.instantiate(tid, "job-1", False, 'MEMORY = 64\nLABELS = "x"\n', False)
    vm = one.vm.info(vm_id)
    assert (vm.NAME, vm.STATE) == ("job-1", VMState.PENDING)
    assert vm.TEMPLATE["TEMPLATE_ID"] == str(tid) and vm.TEMPLATE["MEMORY"] == "64"
    assert vm.TEMPLATE["CPU"] == "2" and vm.USER_TEMPLATE["LABELS"] == "x"
    held = one.template.instantiate(tid, "", True, "", False)
    assert one.vm.info(held).STATE == VMState.HOLD and one.vm.info(held).NAME == f"one-{held}"
    with store.transaction() as conn:  # a token, like every VM (the in-VM callback uses it)
        assert conn.execute(
            select(schema.vms.c.token_hash).where(schema.vms.c.id == vm_id)
        ).scalar_one()
    with pytest.raises(pyone.OneException, match="MEMORY"):
        one.template.instantiate(tid, "", False, "MEMORY = lots\n", False)
    with pytest.raises(pyone.OneActionException, match="persistent"):
        one.template.instantiate(tid, "", False, "", True)

    # delete; a missing template is NO_EXISTS with OpenNebula's message
    assert one.template.delete(copy) == copy
    with pytest.raises(pyone.OneNoExistsException, match=rf"Error getting VM template \[{copy}\]"):
        one.template.info(copy)
    with pytest.raises(pyone.OneNoExistsException):
        one.template.instantiate(copy, "", False, "", False)


def test_vmpool_infoextended_after_placement(one: Any, store: Store, tmp_path: Path) -> None:
    hid = farm(store, tmp_path)
    tid = one.template.allocate(TEMPLATE)
    ids = [
        one.template.instantiate(tid, f"w-{i}", False, 'LABELS = "farm"\n', False) for i in (1, 2)
    ]
    pending = one.vmpool.infoextended(-2, -1, -1, -1).VM
    assert [v.ID for v in pending] == ids and all("NIC" not in v.TEMPLATE for v in pending)
    assert one.vmpool.infoextended(-2, -1, -1, 3).VM == []  # nothing ACTIVE yet

    run_cycle(store)
    active = one.vmpool.infoextended(-2, -1, -1, 3).VM  # what the inventory plugin asks
    assert [v.ID for v in active] == ids
    for v in active:
        nic = v.TEMPLATE["NIC"]
        assert nic["IP"].startswith("10.9.0.") and nic["MAC"].startswith("52:54:00:09:00:")
        assert v.USER_TEMPLATE["LABELS"] == "farm"
        assert v.HISTORY_RECORDS.HISTORY[-1].HOSTNAME == "hv1"
        assert v.HISTORY_RECORDS.HISTORY[-1].HID == hid
    assert len({v.TEMPLATE["NIC"]["IP"] for v in active}) == 2
    # the same filters as one.vmpool.info: by id range, by page
    assert [v.ID for v in one.vmpool.infoextended(-2, ids[1], -1, -1).VM] == ids[1:]
    assert [v.ID for v in one.vmpool.infoextended(-2, 0, -1, -1).VM[:1]] == ids[:1]


def test_vm_update_updateconf_chown_chmod_actions(one: Any, store: Store) -> None:
    vm_id = one.vm.allocate('NAME = "v"\nCONTEXT = [ A = "1" ]\nLIFETIME = 600\nNOTE = "n"\n')
    # update: the user template, merge then replace; what lxcloud acts on is refused
    one.vm.update(vm_id, 'LABELS = "a,b"\n', 1)
    assert one.vm.info(vm_id).USER_TEMPLATE["LABELS"] == "a,b"
    assert one.vm.info(vm_id).USER_TEMPLATE["NOTE"] == "n"
    one.vm.update(vm_id, 'LABELS = "c"\n', 0)
    user = one.vm.info(vm_id).USER_TEMPLATE
    assert user["LABELS"] == "c" and "NOTE" not in user and user["LIFETIME"] == "600"
    with pytest.raises(pyone.OneApiException, match="CPU, LIFETIME cannot be set"):
        one.vm.update(vm_id, "CPU = 4\nLIFETIME = 1\n", 1)

    # updateconf: CONTEXT before deployment; other sections refused with ACTION
    one.vm.updateconf(vm_id, 'CONTEXT = [ B = "2" ]\n', 1)
    assert one.vm.info(vm_id).TEMPLATE["CONTEXT"] == {"A": "1", "B": "2"}
    one.vm.updateconf(vm_id, 'CONTEXT = [ C = "3" ]\n', 0)
    assert one.vm.info(vm_id).TEMPLATE["CONTEXT"] == {"C": "3"}
    with pytest.raises(pyone.OneActionException, match="GRAPHICS"):
        one.vm.updateconf(vm_id, 'GRAPHICS = [ TYPE = "vnc" ]\n', 1)
    with pytest.raises(pyone.OneApiException, match="NIC cannot be updated"):
        one.vm.updateconf(vm_id, 'NIC = [ IP = "1.2.3.4" ]\n', 1)

    # chmod / chown
    one.vm.chmod(vm_id, -1, -1, 1, 1, -1, -1, 1, -1, -1)
    perms = one.vm.info(vm_id).PERMISSIONS
    assert (perms.OWNER_U, perms.OWNER_M, perms.OWNER_A, perms.GROUP_U, perms.OTHER_U) == (
        1, 1, 1, 1, 1
    )  # fmt: skip
    with pytest.raises(pyone.OneApiException, match="nine"):
        one.vm.chmod(vm_id, 1, 1)
    admin = users.user_id(store)
    with store.transaction() as conn:
        bob = conn.execute(
            schema.users.insert().values(name="bob", password_hash="x", is_admin=False, created=0)
        ).inserted_primary_key[0]
    assert one.vm.chown(vm_id, bob, -1) == vm_id
    assert one.vm.info(vm_id).UID == bob and one.vm.info(vm_id).UNAME == "bob"
    with pytest.raises(pyone.OneNoExistsException, match="user"):
        one.vm.chown(vm_id, 9999, -1)
    with pytest.raises(pyone.OneNoExistsException, match="group"):
        one.vm.chown(vm_id, -1, 5)
    one.vm.chown(vm_id, admin, 0)

    # actions: what lxcloud does, OpenNebula's other actions refused with ACTION, not a crash
    for action in ("undeploy", "stop", "suspend", "reboot-hard", "resched", "explode"):
        with pytest.raises(pyone.OneActionException, match="not supported"):
            one.vm.action(action, vm_id)
    with pytest.raises(pyone.OneActionException, match="cannot resume"):
        one.vm.action("resume", vm_id)
    assert one.vm.action("hold", vm_id) == vm_id
    assert one.vm.action("release", vm_id) == vm_id
    assert one.vm.action("terminate-hard", vm_id) == vm_id
    assert one.vm.info(vm_id).STATE == VMState.DONE
    with pytest.raises(pyone.OneActionException, match="PENDING or HOLD"):
        one.vm.updateconf(vm_id, 'CONTEXT = [ D = "4" ]\n', 1)


def test_owner_checks_for_users(store: Store) -> None:
    """A user acts on its own VMs and templates only (the dispatcher lets only the admin in
    today; the methods check ownership themselves)."""
    users.ensure_admin(store, PW)
    with store.transaction() as conn:
        row = schema.users.insert().values(name="bob", password_hash="x", is_admin=False, created=0)
        bob = int(conn.execute(row).inserted_primary_key[0])
    admin_vm, _ = vms.allocate(store, "CPU = 1\n", users.user_id(store))
    bob_vm, _ = vms.allocate(store, "CPU = 1\n", bob)
    d = Dispatcher(store)
    as_bob = Principal("bob", user_id=bob)
    _ns, fn, _sig = d._methods["one.vm.update"]
    assert fn(as_bob, bob_vm, 'X = "1"\n', 1) == bob_vm
    from lxcloud_py.api import ApiFailure

    with pytest.raises(ApiFailure) as refused:
        fn(as_bob, admin_vm, 'X = "1"\n', 1)
    assert refused.value.code == 0x0200 and f"VM [{admin_vm}]" in refused.value.message
    chown = d._methods["one.vm.chown"][1]
    with pytest.raises(ApiFailure) as refused:
        chown(as_bob, bob_vm, users.user_id(store), -1)
    assert refused.value.code == 0x0200


def test_host_update_and_clusters(one: Any, store: Store, tmp_path: Path) -> None:
    hid = farm(store, tmp_path)
    host = one.host.info(hid)
    assert (host.CLUSTER_ID, host.CLUSTER) == (0, "default")
    one.host.update(hid, {"TEMPLATE": {"LABELS": "rack1, ssd"}}, 1)
    one.host.update(hid, 'NOTE = "x"\n', 1)
    tpl = one.hostpool.info().HOST[0].TEMPLATE
    assert (tpl["LABELS"], tpl["NOTE"], tpl["DISK_FREE_MB"]) == ("rack1, ssd", "x", "15000")
    one.host.update(hid, 'NOTE = "y"\n', 0)
    tpl = one.host.info(hid).TEMPLATE
    assert tpl["NOTE"] == "y" and "LABELS" not in tpl and "REGISTERED" in tpl
    with pytest.raises(pyone.OneApiException, match="MACS"):
        one.host.update(hid, 'MACS = "x"\n', 1)
    with pytest.raises(pyone.OneNoExistsException):
        one.host.update(hid + 1, 'NOTE = "y"\n', 1)

    (cluster,) = one.clusterpool.info().CLUSTER
    assert (cluster.ID, cluster.NAME, cluster.HOSTS.ID) == (0, "default", [hid])
    assert one.cluster.info(0).DATASTORES.ID == [0] and one.cluster.info(0).VNETS.ID == [0]
    assert one.cluster.addhost(0, hid) == 0 and one.cluster.delhost(0, hid) == 0
    with pytest.raises(pyone.OneNoExistsException, match="cluster"):
        one.cluster.addhost(100, hid)
    with pytest.raises(pyone.OneNoExistsException, match="host"):
        one.cluster.addhost(0, hid + 1)


def test_image_network_and_datastore_views(one: Any, store: Store, tmp_path: Path) -> None:
    farm(store, tmp_path, n_leases=3)
    iid = images.register(store, "golden", "v1", SHA, 300 * 1024 * 1024 + 1, "qcow2", "zstd")
    hosts.report_image(store, "hv1", "golden", "v1", SHA, "verified")
    vm_id = one.vm.allocate('NAME = "g"\nDISK = [ IMAGE = "golden" ]\n')
    assert one.vm.info(vm_id).TEMPLATE["DISK"]["SIZE"] == "301"  # MiB, before placement
    run_cycle(store)

    (image,) = one.imagepool.info(-2, -1, -1, -1).IMAGE
    assert (image.ID, image.NAME, image.SIZE, image.FORMAT) == (iid, "golden", 301, "qcow2")
    assert (image.STATE, image.RUNNING_VMS, image.VMS.ID) == (2, 1, [vm_id])  # USED
    assert image.TEMPLATE["VERSION"] == "v1" and image.TEMPLATE["VERIFIED_HOSTS"] == "hv1"
    assert one.image.info(iid).DATASTORE_ID == 1
    with pytest.raises(pyone.OneNoExistsException):
        one.image.info(iid + 1)
    for call in (
        lambda: one.image.allocate('NAME = "x"\nPATH = "/x"\n', 1),
        lambda: one.image.delete(iid),
        lambda: one.image.persistent(iid, True),
    ):
        with pytest.raises(pyone.OneActionException, match=r"read-only.*lxcloud\.image\.register"):
            call()

    (vnet,) = one.vnpool.info(-2, -1, -1).VNET
    assert (vnet.ID, vnet.NAME, vnet.USED_LEASES) == (0, "lxcloud", 1)
    assert vnet.TEMPLATE["TYPE"] == "FIXED"
    ars = one.vn.info(0).AR_POOL.AR
    assert [a.IP for a in ars] == ["10.9.0.10", "10.9.0.11", "10.9.0.12"]
    used = [a for a in ars if a.LEASES.LEASE]
    assert len(used) == 1 and used[0].LEASES.LEASE[0].VM == vm_id
    assert used[0].IP == one.vm.info(vm_id).TEMPLATE["NIC"]["IP"]
    with pytest.raises(pyone.OneNoExistsException):
        one.vn.info(1)
    with pytest.raises(pyone.OneActionException, match="lxcloud lease import"):
        one.vn.allocate('NAME = "n"\n', -1)

    system, golden = one.datastorepool.info().DATASTORE
    assert (system.ID, system.NAME, system.TYPE) == (0, "system", 1)
    assert (system.TOTAL_MB, system.FREE_MB, system.USED_MB) == (20000, 15000, 5000)
    assert (golden.ID, golden.TYPE, golden.IMAGES.ID) == (1, 0, [iid])
    assert one.datastore.info(0).NAME == "system"
    with pytest.raises(pyone.OneNoExistsException):
        one.datastore.info(2)


def test_vm_actions_on_a_deployed_vm(one: Any, store: Store, tmp_path: Path) -> None:
    farm(store, tmp_path)
    vm_id = one.vm.allocate('NAME = "r"\n')
    run_cycle(store)
    vms.executor_transition(store, vm_id, "deployed", "test")
    vm = one.vm.info(vm_id)
    assert (vm.STATE, vm.LCM_STATE) == (VMState.ACTIVE, LCMState.RUNNING)
    with pytest.raises(pyone.OneActionException, match="RUNNING"):
        one.vm.updateconf(vm_id, 'CONTEXT = [ A = "1" ]\n', 1)
    assert one.vm.action("poweroff", vm_id) == vm_id
    assert one.vm.info(vm_id).LCM_STATE == LCMState.SHUTDOWN_POWEROFF
