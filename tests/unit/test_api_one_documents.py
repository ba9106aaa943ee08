"""The documents added for OpenNebula's clients follow OpenNebula's schemas (OpenNebula/one
share/doc/xsd/vmtemplate.xsd, cluster.xsd, image.xsd, vnet.xsd, datastore.xsd): element
names and the order of the schemas' sequences, as in test_api_documents.py; and the VM and
host documents carry what community.general's modules read."""

# ruff: noqa: S314 - parsing documents this test builds

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from test_api_documents import in_schema_order, vm

from lxcloud_py.api import documents, one_documents
from lxcloud_py.template import Template

PERMISSIONS_ORDER = [
    "OWNER_U", "OWNER_M", "OWNER_A", "GROUP_U", "GROUP_M", "GROUP_A", "OTHER_U", "OTHER_M",
    "OTHER_A",
]  # fmt: skip
VMTEMPLATE_ORDER = [
    "ID", "UID", "GID", "UNAME", "GNAME", "NAME", "LOCK", "PERMISSIONS", "REGTIME", "TEMPLATE",
]  # fmt: skip
CLUSTER_ORDER = ["ID", "NAME", "HOSTS", "DATASTORES", "VNETS", "TEMPLATE", "PLAN"]
IMAGE_ORDER = [
    "ID", "UID", "GID", "UNAME", "GNAME", "NAME", "LOCK", "PERMISSIONS", "TYPE", "DISK_TYPE",
    "PERSISTENT", "REGTIME", "MODTIME", "SOURCE", "PATH", "FORMAT", "FS", "SIZE", "STATE",
    "PREV_STATE", "RUNNING_VMS", "CLONING_OPS", "CLONING_ID", "TARGET_SNAPSHOT",
    "DATASTORE_ID", "DATASTORE", "VMS", "CLONES", "APP_CLONES", "TEMPLATE", "SNAPSHOTS",
    "BACKUP_INCREMENTS", "BACKUP_DISK_IDS",
]  # fmt: skip
VNET_ORDER = [
    "ID", "UID", "GID", "UNAME", "GNAME", "NAME", "LOCK", "PERMISSIONS", "CLUSTERS", "BRIDGE",
    "BRIDGE_TYPE", "STATE", "PREV_STATE", "PARENT_NETWORK_ID", "TEMPLATE_ID", "VN_MAD",
    "PHYDEV", "VLAN_ID", "OUTER_VLAN_ID", "VLAN_ID_AUTOMATIC", "OUTER_VLAN_ID_AUTOMATIC",
    "USED_LEASES", "VROUTERS", "UPDATED_VMS", "OUTDATED_VMS", "UPDATING_VMS", "ERROR_VMS",
    "TEMPLATE", "AR_POOL",
]  # fmt: skip
AR_ORDER = [
    "AR_ID", "CVLANS", "GLOBAL_PREFIX", "IP", "MAC", "NEXT_INDEX", "PARENT_NETWORK_AR_ID",
    "SHARED", "SIZE", "TYPE", "VLAN_ID", "ULA_PREFIX", "VN_MAD", "MAC_END", "IP_END",
    "IP6_ULA", "IP6_ULA_END", "IP6_GLOBAL", "IP6_GLOBAL_END", "IP6", "IP6_END", "PORT_START",
    "PORT_SIZE", "USED_LEASES", "LEASES",
]  # fmt: skip
LEASE_ORDER = ["IP", "IP6", "IP6_GLOBAL", "IP6_LINK", "IP6_ULA", "MAC", "VM", "VNET", "VROUTER"]
DATASTORE_ORDER = [
    "ID", "UID", "GID", "UNAME", "GNAME", "NAME", "PERMISSIONS", "DS_MAD", "TM_MAD",
    "BASE_PATH", "TYPE", "DISK_TYPE", "STATE", "CLUSTERS", "TOTAL_MB", "FREE_MB", "USED_MB",
    "IMAGES", "TEMPLATE",
]  # fmt: skip
SNAPSHOTS_ORDER = ["ALLOW_ORPHANS", "CURRENT_BASE", "NEXT_SNAPSHOT", "SNAPSHOT"]


def parse(text: str) -> ET.Element:
    return ET.fromstring(text)


def test_vmtemplate_and_pool() -> None:
    tpl: dict[str, Any] = dict(
        id=4, owner_id=1, owner="oneadmin", name="batch", permissions=0o604, created=1.7e9,
        template='CPU = 0.5\nCONTEXT = [ A = "x & y" ]\n',
    )  # fmt: skip
    root = parse(one_documents.template_document(tpl))
    in_schema_order(root, VMTEMPLATE_ORDER)
    perms = root.find("PERMISSIONS")
    assert perms is not None
    in_schema_order(perms, PERMISSIONS_ORDER)
    assert [int(e.text or "") for e in perms] == [1, 1, 0, 0, 0, 0, 1, 0, 0]
    assert root.findtext("TEMPLATE/CONTEXT/A") == "x & y"
    pool = parse(one_documents.template_pool_document([tpl, {**tpl, "id": 5}]))
    assert pool.tag == "VMTEMPLATE_POOL" and [e.findtext("ID") for e in pool] == ["4", "5"]


def test_cluster() -> None:
    root = parse(
        one_documents.cluster_document(
            {"id": 0, "name": "default", "hosts": [1, 2], "datastores": [0], "vnets": [0]}
        )
    )
    in_schema_order(root, CLUSTER_ORDER)
    assert [e.text for e in root.findall("HOSTS/ID")] == ["1", "2"]


def test_image() -> None:
    image = dict(
        id=3, name="golden", version="v2", sha256="ab" * 32, size=5 * 2**30 + 1, format="raw",
        compression="zstd", created=1.7e9, vms=[7], hosts=["hv1", "hv2"],
    )  # fmt: skip
    root = parse(one_documents.image_document(image))
    in_schema_order(root, IMAGE_ORDER)
    snaps = root.find("SNAPSHOTS")
    assert snaps is not None
    in_schema_order(snaps, SNAPSHOTS_ORDER)
    assert root.findtext("SIZE") == str(5 * 1024 + 1)  # MiB, rounded up
    assert (root.findtext("STATE"), root.findtext("RUNNING_VMS")) == ("2", "1")
    assert root.findtext("TEMPLATE/VERIFIED_HOSTS") == "hv1 hv2"
    idle = parse(one_documents.image_document({**image, "vms": []}))
    assert idle.findtext("STATE") == "1"  # READY


def test_vnet_info_and_pool() -> None:
    leases = [
        {"ip": "10.0.0.1", "mac": "52:54:00:00:00:01", "vm_id": None},
        {"ip": "10.0.0.2", "mac": "52:54:00:00:00:02", "vm_id": 9},
    ]
    root = parse(one_documents.vnet_document(leases))
    in_schema_order(root, VNET_ORDER)
    ars = root.findall("AR_POOL/AR")
    for ar in ars:
        in_schema_order(ar, AR_ORDER)
    assert root.findtext("USED_LEASES") == "1"
    assert ars[0].find("LEASES") is not None and ars[0].find("LEASES/LEASE") is None
    (lease,) = ars[1].findall("LEASES/LEASE")
    in_schema_order(lease, LEASE_ORDER)
    assert (lease.findtext("IP"), lease.findtext("VM")) == ("10.0.0.2", "9")
    pool = parse(one_documents.vnet_pool_document(leases))
    assert pool.find("VNET/AR_POOL/AR/LEASES") is None  # the pool omits leases
    assert len(parse(one_documents.vnet_pool_document(leases, listed=False))) == 0


def test_datastores() -> None:
    hosts = [
        {"disk_mb": 1000, "info": '{"disk_free_mb": 600}'},
        {"disk_mb": 500, "info": None},
        {"disk_mb": 0, "info": "not json"},
    ]
    pool = parse(one_documents.datastore_pool_document(hosts, [3, 4]))
    system, golden = pool.findall("DATASTORE")
    for ds in (system, golden):
        in_schema_order(ds, DATASTORE_ORDER)
    assert (system.findtext("TYPE"), golden.findtext("TYPE")) == ("1", "0")
    assert [system.findtext(t) for t in ("TOTAL_MB", "FREE_MB", "USED_MB")] == [
        "1500", "1100", "400"
    ]  # fmt: skip
    assert [e.text for e in golden.findall("IMAGES/ID")] == ["3", "4"]


def test_vm_document_carries_what_one_vm_reads() -> None:
    root = parse(
        documents.vm_document(
            vm(
                template='DISK = [ IMAGE = golden ]\nTEMPLATE_ID = 4\nLABELS = "a,b"\n',
                disk_size_mb=301,
                permissions=0o660,
            )
        )
    )
    assert root.findtext("TEMPLATE/TEMPLATE_ID") == "4"
    assert root.find("USER_TEMPLATE/TEMPLATE_ID") is None
    assert root.findtext("TEMPLATE/DISK/SIZE") == "301"
    assert root.findtext("USER_TEMPLATE/LABELS") == "a,b"
    assert root.findtext("PERMISSIONS/GROUP_M") == "1"
    t = root.find("TEMPLATE")
    assert t is not None
    tags = [c.tag for c in t]
    assert tags == sorted(tags)  # OpenNebula writes TEMPLATE's attributes sorted
    sized = parse(documents.vm_document(vm(template="DISK = [ IMAGE = golden, SIZE = 9 ]\n")))
    assert [e.text for e in sized.findall("TEMPLATE/DISK/SIZE")] == ["9"]


def test_host_document_adds_the_operators_template() -> None:
    host: dict[str, Any] = dict(
        id=3, name="hv3", state=2, im_mad="lxcloud", vmm_mad="kvm", last_seen=None,
        registered=None, cpu=1, memory_mb=1, disk_mb=1, max_dispatch=None,
        info='{"hypervisor": "kvm"}',
        template=Template([("LABELS", "rack1, ssd"), ("HYPERVISOR", "qemu")]),
    )  # fmt: skip
    root = parse(documents.host_document(host))
    assert root.findtext("TEMPLATE/LABELS") == "rack1, ssd"
    assert [e.text for e in root.findall("TEMPLATE/HYPERVISOR")] == ["qemu"]
