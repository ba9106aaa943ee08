"""The XML documents follow OpenNebula's schemas (OpenNebula/one share/doc/xsd/vm.xsd and
host.xsd): element names, and the order of the schemas' sequences."""

# ruff: noqa: S314 - parsing documents this test builds

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

from lxcloud_py.api import documents

#: xs:sequence of VM in vm.xsd (5.x/6.x), the elements lxcloud emits among them.
VM_ORDER = [
    "ID", "UID", "GID", "UNAME", "GNAME", "NAME", "PERMISSIONS", "LAST_POLL", "STATE",
    "LCM_STATE", "PREV_STATE", "PREV_LCM_STATE", "RESCHED", "STIME", "ETIME", "DEPLOY_ID",
    "MONITORING", "SCHED_ACTIONS", "TEMPLATE", "USER_TEMPLATE", "HISTORY_RECORDS",
]  # fmt: skip
HISTORY_ORDER = [
    "OID", "SEQ", "HOSTNAME", "HID", "CID", "STIME", "ETIME", "VM_MAD", "TM_MAD", "DS_ID",
    "PSTIME", "PETIME", "RSTIME", "RETIME", "ESTIME", "EETIME", "ACTION",
]  # fmt: skip
HOST_ORDER = [
    "ID", "NAME", "STATE", "PREV_STATE", "IM_MAD", "VM_MAD", "VN_MAD", "LAST_MON_TIME",
    "CLUSTER_ID", "CLUSTER", "HOST_SHARE", "VMS", "TEMPLATE",
]  # fmt: skip
HOST_SHARE_ORDER = [
    "DISK_USAGE", "MEM_USAGE", "CPU_USAGE", "TOTAL_MEM", "TOTAL_CPU", "MAX_DISK", "MAX_MEM",
    "MAX_CPU", "FREE_DISK", "FREE_MEM", "FREE_CPU", "USED_DISK", "USED_MEM", "USED_CPU",
    "RUNNING_VMS",
]  # fmt: skip


def in_schema_order(elem: ET.Element, order: list[str]) -> list[str]:
    tags = [c.tag for c in elem]
    assert all(t in order for t in tags), set(tags) - set(order)
    assert tags == sorted(tags, key=order.index)
    return tags


def vm(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        id=7, owner_id=1, owner="oneadmin", name="w<1>", state=3, lcm_state=3,
        created=1700000000.5, started=1700000100.0, ended=None, deadline=None, cpu=0.5, vcpu=2,
        memory_mb=256, sched_message=None,
        template='NAME = w\nDISK = [ IMAGE = golden ]\nCONTEXT = [ A = "x & <y>" ]\nQ = "\u00e9"\n',
        lease={"ip": "10.0.0.9", "mac": "52:54:00:00:00:09", "name": "w.farm"},
        host={"id": 3, "name": "hv3", "vmm_mad": "kvm"},
        image={"id": 4, "name": "golden", "version": "v1"},
    )  # fmt: skip
    base.update(kw)
    return base


def test_vm_document_shape() -> None:
    root = ET.fromstring(documents.vm_document(vm()))
    tags = in_schema_order(root, VM_ORDER)
    assert tags[:3] == ["ID", "UID", "GID"] and tags[-3:] == [
        "TEMPLATE", "USER_TEMPLATE", "HISTORY_RECORDS"
    ]  # fmt: skip
    assert root.findtext("NAME") == "w<1>"  # escaped by ElementTree, read back intact
    assert root.findtext("TEMPLATE/CONTEXT/A") == "x & <y>"
    assert root.findtext("USER_TEMPLATE/Q") == "\u00e9"
    assert root.findtext("STIME") == "1700000000"
    assert root.findtext("TEMPLATE/DISK/IMAGE_ID") == "4"
    (hist,) = root.findall("HISTORY_RECORDS/HISTORY")
    in_schema_order(hist, HISTORY_ORDER)
    assert hist.findtext("HOSTNAME") == "hv3" and hist.findtext("STIME") == "1700000100"


def test_vm_document_pending_without_host_or_lease() -> None:
    root = ET.fromstring(
        documents.vm_document(vm(state=1, lcm_state=0, lease=None, host=None, image=None))
    )
    assert root.findtext("DEPLOY_ID") == ""
    assert root.find("TEMPLATE/NIC") is None
    assert root.findall("HISTORY_RECORDS/HISTORY") == []


def test_host_document_shape_and_units() -> None:
    host = dict(
        id=3, name="hv3", state=2, im_mad="lxcloud", vmm_mad="kvm", last_seen=1700000000.0,
        registered=1690000000.0, cpu=12.5, memory_mb=2048, disk_mb=9000, max_dispatch=None,
        info=json.dumps({"libvirt_version": "9.0.0", "bad key": 1, "domains": ["x"],
                         "disk_free_mb": 4000, "note": "a\x01b"}),
        cpu_used=1.5, memory_used=512, vms=[5, 6], macs=["52:54:00:00:00:01"],
        images=[{"name": "golden", "version": "v1", "state": "verified"}],
    )  # fmt: skip
    root = ET.fromstring(documents.host_document(host))
    in_schema_order(root, HOST_ORDER)
    share = root.find("HOST_SHARE")
    assert share is not None
    in_schema_order(share, HOST_SHARE_ORDER)
    got = {c.tag: c.text for c in share}
    assert got["MAX_CPU"] == "1250" and got["CPU_USAGE"] == "150" and got["FREE_CPU"] == "1100"
    assert got["MAX_MEM"] == str(2048 * 1024) and got["MEM_USAGE"] == str(512 * 1024)
    assert got["MAX_DISK"] == "9000" and got["FREE_DISK"] == "4000" and got["USED_DISK"] == "5000"
    assert got["RUNNING_VMS"] == "2"
    assert [e.text for e in root.findall("VMS/ID")] == ["5", "6"]
    assert root.findtext("TEMPLATE/LIBVIRT_VERSION") == "9.0.0"
    assert root.find("TEMPLATE/DOMAINS") is None  # lists are not template values
    assert root.findtext("TEMPLATE/NOTE") == "a\ufffdb"  # no control characters in XML
    assert all(" " not in e.tag for e in root.iter())
