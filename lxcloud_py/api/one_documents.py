"""OpenNebula documents of the objects added for OpenNebula's clients (issue 18):
``<VMTEMPLATE>``, ``<CLUSTER>``, ``<IMAGE>``, ``<VNET>``, ``<DATASTORE>`` and their pools.

Element names and order follow OpenNebula's schemas (``share/doc/xsd/vmtemplate.xsd``,
``cluster.xsd``, ``image.xsd``, ``vnet.xsd``, ``datastore.xsd`` in OpenNebula/one), which
pyone's bindings are generated from. Images, the network and the datastores are views of what
lxcloud has: golden images (one IMAGE per registered name and version, in the synthetic image
datastore 1), the lease table (one FIXED network, id 0, one address range of size 1 per lease)
and a synthetic system datastore 0.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from lxcloud_py import clusters
from lxcloud_py.template import parse

from .documents import GROUP, _epoch, _sub, permissions, to_string

SYSTEM_DS_NAME = "system"
IMAGE_DS_ID, IMAGE_DS_NAME = 1, "golden"
VNET_NAME = "lxcloud"
#: OpenNebula IMAGE STATE values used here.
IMAGE_READY, IMAGE_USED = 1, 2


def _owner(root: ET.Element, uid: int, uname: str) -> None:
    _sub(root, "UID", uid)
    _sub(root, "GID", 0)
    _sub(root, "UNAME", uname)
    _sub(root, "GNAME", GROUP)


def _ids(parent: ET.Element, tag: str, ids: Iterable[int]) -> None:
    elem = _sub(parent, tag)
    for i in ids:
        _sub(elem, "ID", i)


def _pool(tag: str, elements: Iterable[ET.Element]) -> str:
    root = ET.Element(tag)
    root.extend(elements)
    return to_string(root)


# -- VMTEMPLATE ---------------------------------------------------------------------------------
def template_element(tpl: dict[str, Any]) -> ET.Element:
    """``tpl`` as returned by :func:`lxcloud_py.templates.list_templates`."""
    root = ET.Element("VMTEMPLATE")
    _sub(root, "ID", tpl["id"])
    _owner(root, tpl["owner_id"], tpl.get("owner", ""))
    _sub(root, "NAME", tpl["name"])
    permissions(root, tpl["permissions"])
    _sub(root, "REGTIME", _epoch(tpl["created"]))
    parse(tpl["template"]).to_xml(_sub(root, "TEMPLATE"))
    return root


def template_document(tpl: dict[str, Any]) -> str:
    return to_string(template_element(tpl))


def template_pool_document(tpls: Iterable[dict[str, Any]]) -> str:
    return _pool("VMTEMPLATE_POOL", (template_element(t) for t in tpls))


# -- CLUSTER ------------------------------------------------------------------------------------
def cluster_element(cluster: dict[str, Any]) -> ET.Element:
    root = ET.Element("CLUSTER")
    _sub(root, "ID", cluster["id"])
    _sub(root, "NAME", cluster["name"])
    _ids(root, "HOSTS", cluster["hosts"])
    _ids(root, "DATASTORES", cluster["datastores"])
    _ids(root, "VNETS", cluster["vnets"])
    t = _sub(root, "TEMPLATE")
    _sub(t, "RESERVED_CPU", "")
    _sub(t, "RESERVED_MEM", "")
    return root


def cluster_document(cluster: dict[str, Any]) -> str:
    return to_string(cluster_element(cluster))


def cluster_pool_document(found: Iterable[dict[str, Any]]) -> str:
    return _pool("CLUSTER_POOL", (cluster_element(c) for c in found))


# -- IMAGE --------------------------------------------------------------------------------------
def image_element(image: dict[str, Any]) -> ET.Element:
    """``image``: an images row plus ``vms`` (ids of the live VMs cloned from it) and
    ``hosts`` (names of the hosts that verified it)."""
    root = ET.Element("IMAGE")
    _sub(root, "ID", image["id"])
    _owner(root, 0, "oneadmin")
    _sub(root, "NAME", image["name"])
    permissions(root, 0o640)
    _sub(root, "TYPE", 0)  # OS
    _sub(root, "DISK_TYPE", 0)  # FILE
    _sub(root, "PERSISTENT", 0)
    _sub(root, "REGTIME", _epoch(image["created"]))
    _sub(root, "SOURCE", "")
    _sub(root, "PATH", "")
    _sub(root, "FORMAT", image["format"])
    _sub(root, "FS", "")
    _sub(root, "SIZE", -(-int(image["size"]) // (1024 * 1024)))  # MiB, rounded up
    vms = image.get("vms", [])
    _sub(root, "STATE", IMAGE_USED if vms else IMAGE_READY)
    _sub(root, "PREV_STATE", IMAGE_READY)
    _sub(root, "RUNNING_VMS", len(vms))
    _sub(root, "CLONING_OPS", 0)
    _sub(root, "CLONING_ID", -1)
    _sub(root, "TARGET_SNAPSHOT", -1)
    _sub(root, "DATASTORE_ID", IMAGE_DS_ID)
    _sub(root, "DATASTORE", IMAGE_DS_NAME)
    _ids(root, "VMS", vms)
    _sub(root, "CLONES")
    _sub(root, "APP_CLONES")
    t = _sub(root, "TEMPLATE")
    _sub(t, "VERSION", image["version"])
    _sub(t, "SHA256", image["sha256"])
    _sub(t, "COMPRESSION", image["compression"])
    _sub(t, "VERIFIED_HOSTS", " ".join(image.get("hosts", [])))
    snaps = _sub(root, "SNAPSHOTS")
    _sub(snaps, "ALLOW_ORPHANS", "NO")
    _sub(snaps, "CURRENT_BASE", -1)
    _sub(snaps, "NEXT_SNAPSHOT", 0)
    return root


def image_document(image: dict[str, Any]) -> str:
    return to_string(image_element(image))


def image_pool_document(images: Iterable[dict[str, Any]]) -> str:
    return _pool("IMAGE_POOL", (image_element(i) for i in images))


# -- VNET ---------------------------------------------------------------------------------------
def vnet_element(leases: list[dict[str, Any]], with_leases: bool) -> ET.Element:
    """The lease table as one network; ``leases`` as :func:`lxcloud_py.leases.list_leases`
    returns them. OpenNebula's pool omits the ARs' LEASES (``with_leases`` False)."""
    root = ET.Element("VNET")
    _sub(root, "ID", clusters.VNET_ID)
    _owner(root, 0, "oneadmin")
    _sub(root, "NAME", VNET_NAME)
    permissions(root, 0o640)
    _ids(root, "CLUSTERS", [clusters.DEFAULT_ID])
    _sub(root, "BRIDGE", "")
    _sub(root, "BRIDGE_TYPE", "linux")
    _sub(root, "STATE", 1)  # READY
    _sub(root, "PREV_STATE", 1)
    _sub(root, "PARENT_NETWORK_ID", "")
    _sub(root, "TEMPLATE_ID", -1)
    _sub(root, "VN_MAD", "lxcloud")
    _sub(root, "PHYDEV", "")
    _sub(root, "VLAN_ID", "")
    _sub(root, "OUTER_VLAN_ID", "")
    _sub(root, "VLAN_ID_AUTOMATIC", 0)
    _sub(root, "OUTER_VLAN_ID_AUTOMATIC", 0)
    used = [lease for lease in leases if lease.get("vm_id") is not None]
    _sub(root, "USED_LEASES", len(used))
    _sub(root, "VROUTERS")
    for tag in ("UPDATED_VMS", "OUTDATED_VMS", "UPDATING_VMS", "ERROR_VMS"):
        _sub(root, tag)
    t = _sub(root, "TEMPLATE")
    _sub(t, "TYPE", "FIXED")
    _sub(t, "DESCRIPTION", "lxcloud's lease table: fixed IP/MAC/DNS names pinned to hosts")
    pool = _sub(root, "AR_POOL")
    for i, lease in enumerate(leases):
        ar = _sub(pool, "AR")
        _sub(ar, "AR_ID", i)
        _sub(ar, "IP", lease["ip"])
        _sub(ar, "MAC", lease["mac"])
        _sub(ar, "SIZE", 1)
        _sub(ar, "TYPE", "IP4")
        _sub(ar, "MAC_END", lease["mac"])
        _sub(ar, "IP_END", lease["ip"])
        in_use = lease.get("vm_id") is not None
        _sub(ar, "USED_LEASES", 1 if in_use else 0)
        if with_leases:
            ls = _sub(ar, "LEASES")
            if in_use:
                entry = _sub(ls, "LEASE")
                _sub(entry, "IP", lease["ip"])
                _sub(entry, "MAC", lease["mac"])
                _sub(entry, "VM", lease["vm_id"])
    return root


def vnet_document(leases: list[dict[str, Any]]) -> str:
    return to_string(vnet_element(leases, with_leases=True))


def vnet_pool_document(leases: list[dict[str, Any]], listed: bool = True) -> str:
    """The pool holds the one network, or nothing when the id range excludes it."""
    return _pool("VNET_POOL", [vnet_element(leases, with_leases=False)] if listed else [])


# -- DATASTORE ----------------------------------------------------------------------------------
def _free_disk(host: dict[str, Any]) -> int:
    """The free disk space the host reported (``disk_free_mb``), else its capacity."""
    try:
        info = json.loads(host.get("info") or "{}")
    except ValueError:
        info = {}
    free = info.get("disk_free_mb") if isinstance(info, dict) else None
    if isinstance(free, bool) or not isinstance(free, int | float):
        return int(host.get("disk_mb") or 0)
    return int(free)


def datastore_elements(hosts: list[dict[str, Any]], image_ids: list[int]) -> list[ET.Element]:
    """The synthetic system datastore (0: the hosts' disk space for VM clones) and the image
    datastore (1: the golden images)."""
    total = sum(int(h.get("disk_mb") or 0) for h in hosts)
    free = sum(_free_disk(h) for h in hosts)
    out = []
    for ds_id, name, ds_type, images in (
        (clusters.DATASTORE_ID, SYSTEM_DS_NAME, 1, []),
        (IMAGE_DS_ID, IMAGE_DS_NAME, 0, image_ids),
    ):
        root = ET.Element("DATASTORE")
        _sub(root, "ID", ds_id)
        _owner(root, 0, "oneadmin")
        _sub(root, "NAME", name)
        permissions(root, 0o640)
        _sub(root, "DS_MAD", "-" if ds_type == 1 else "lxcloud")
        _sub(root, "TM_MAD", "lxcloud")
        _sub(root, "BASE_PATH", "/var/lib/lxcloud")
        _sub(root, "TYPE", ds_type)  # 0 IMAGE, 1 SYSTEM
        _sub(root, "DISK_TYPE", 0)
        _sub(root, "STATE", 0)  # READY
        _ids(root, "CLUSTERS", [clusters.DEFAULT_ID])
        _sub(root, "TOTAL_MB", total)
        _sub(root, "FREE_MB", free)
        _sub(root, "USED_MB", max(0, total - free))
        _ids(root, "IMAGES", images)
        t = _sub(root, "TEMPLATE")
        _sub(t, "TYPE", "SYSTEM_DS" if ds_type == 1 else "IMAGE_DS")
        out.append(root)
    return out


def datastore_pool_document(hosts: list[dict[str, Any]], image_ids: list[int]) -> str:
    return _pool("DATASTORE_POOL", datastore_elements(hosts, image_ids))
