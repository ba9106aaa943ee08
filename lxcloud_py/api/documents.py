"""OpenNebula-shaped XML documents: ``<VM>``, ``<VM_POOL>``, ``<HOST>``, ``<HOST_POOL>``, and
lxcloud's ``<POOL>``/``<POOL_POOL>`` (provisioning pools, in the same style).

Element names and order follow OpenNebula's schemas (``share/doc/xsd/vm.xsd`` and
``host.xsd`` in OpenNebula/one): numeric STATE/LCM_STATE, STIME/ETIME as epoch seconds,
``TEMPLATE`` (CPU, VCPU, MEMORY, DISK, NIC, CONTEXT), ``USER_TEMPLATE`` (the other attributes,
SCHED_MESSAGE; a pool VM's LXCLOUD_DRAIN, its exit's LXCLOUD_EXIT_CODE/_MESSAGE/_TIME),
``HISTORY_RECORDS``; hosts' ``HOST_SHARE`` in OpenNebula's units (CPU in
percent of one core, memory in KiB, disk in MiB). Built with ElementTree, never by formatting
input into strings.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from lxcloud_py import template
from lxcloud_py.model import VMState

_KEY_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_-]{0,63}\Z")
#: Characters XML 1.0 cannot carry (control characters other than tab, newline, return).
_BAD_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_TEMPLATE_KEYS = ("NAME", "CPU", "VCPU", "MEMORY", "DISK", "CONTEXT", "NIC", "TEMPLATE_ID")
GROUP = "oneadmin"
_PERM_TAGS = (
    "OWNER_U", "OWNER_M", "OWNER_A", "GROUP_U", "GROUP_M", "GROUP_A", "OTHER_U", "OTHER_M",
    "OTHER_A",
)  # fmt: skip
#: OpenNebula's default permission bits (umask 177): OWNER_U and OWNER_M.
DEFAULT_PERMISSIONS = 0o600


def _sub(parent: ET.Element, tag: str, value: object = None) -> ET.Element:
    elem = ET.SubElement(parent, tag)
    if value is not None:
        elem.text = _text(value)
    return elem


def permissions(parent: ET.Element, mode: int) -> None:
    """``<PERMISSIONS>`` from OpenNebula's octal bits (0o600: OWNER_U and OWNER_M)."""
    perms = _sub(parent, "PERMISSIONS")
    for i, tag in enumerate(_PERM_TAGS):
        _sub(perms, tag, 1 if mode & (1 << (8 - i)) else 0)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) or abs(value) >= 1e15 else str(int(value))
    return _BAD_XML_CHARS.sub("\ufffd", str(value))


def _epoch(value: float | None) -> int:
    return int(value) if value else 0


def to_string(elem: ET.Element) -> str:
    return ET.tostring(elem, encoding="unicode")


# -- VM -----------------------------------------------------------------------------------------
def vm_element(vm: dict[str, Any]) -> ET.Element:
    """``vm`` as returned by :func:`lxcloud_py.vms.get` (row + lease, host, owner, image)."""
    try:
        tpl = template.parse_text(vm["template"] or "")
    except template.TemplateError:
        tpl = template.Template()
    host = vm.get("host")
    root = ET.Element("VM")
    _sub(root, "ID", vm["id"])
    _sub(root, "UID", vm["owner_id"])
    _sub(root, "GID", 0)
    _sub(root, "UNAME", vm.get("owner", ""))
    _sub(root, "GNAME", GROUP)
    _sub(root, "NAME", vm["name"])
    permissions(root, vm.get("permissions", DEFAULT_PERMISSIONS))
    _sub(root, "LAST_POLL", 0)
    _sub(root, "STATE", vm["state"])
    _sub(root, "LCM_STATE", vm["lcm_state"])
    _sub(root, "PREV_STATE", vm["state"])
    _sub(root, "PREV_LCM_STATE", vm["lcm_state"])
    _sub(root, "RESCHED", 0)
    _sub(root, "STIME", _epoch(vm["created"]))
    _sub(root, "ETIME", _epoch(vm["ended"]))
    bound = host is not None and vm["state"] not in (VMState.PENDING, VMState.HOLD)
    _sub(root, "DEPLOY_ID", f"one-{vm['id']}" if bound else "")

    t = _sub(root, "TEMPLATE")
    _sub(t, "AUTOMATIC_REQUIREMENTS", "")
    for vec in tpl.vectors("CONTEXT"):
        ctx = _sub(t, "CONTEXT")
        for k, v in vec.items():
            _sub(ctx, k, v)
    _sub(t, "CPU", vm["cpu"])
    for i, vec in enumerate(tpl.vectors("DISK")):
        disk = _sub(t, "DISK")
        for k, v in vec.items():
            _sub(disk, k, v)
        _sub(disk, "DISK_ID", i)
        if "SIZE" not in vec:  # MiB, as OpenNebula's DISK/SIZE (0: image not registered)
            _sub(disk, "SIZE", vm.get("disk_size_mb", 0))
        image = vm.get("image")
        if image and vec.get("IMAGE") == image["name"]:
            _sub(disk, "IMAGE_ID", image["id"])
            _sub(disk, "IMAGE_VERSION", image["version"])
    _sub(t, "MEMORY", vm["memory_mb"])
    lease = vm.get("lease")
    if lease:
        nic = _sub(t, "NIC")
        _sub(nic, "IP", lease["ip"])
        _sub(nic, "MAC", lease["mac"])
        _sub(nic, "NETWORK", "lxcloud")
        _sub(nic, "NIC_ID", 0)
        _sub(nic, "DNS_NAME", lease["name"])
    if tpl.get_all("TEMPLATE_ID"):  # instantiated from a VM template
        _sub(t, "TEMPLATE_ID", tpl.get_all("TEMPLATE_ID")[0])
    _sub(t, "VCPU", vm["vcpu"])
    _sub(t, "VMID", vm["id"])

    u = _sub(root, "USER_TEMPLATE")
    for key, value in tpl:
        if key in _TEMPLATE_KEYS:
            continue
        elem = _sub(u, key)
        if isinstance(value, dict):
            for k, v in value.items():
                _sub(elem, k, v)
        else:
            elem.text = value
    if vm.get("deadline"):
        _sub(u, "DEADLINE", _epoch(vm["deadline"]))
    if vm.get("sched_message"):
        _sub(u, "SCHED_MESSAGE", vm["sched_message"])
    if vm.get("drain_requested"):
        _sub(u, "LXCLOUD_DRAIN", "YES")  # the pool asks the VM to end itself (exit 100)
        _sub(u, "LXCLOUD_DRAIN_TIME", _epoch(vm["drain_requested"]))
    if vm.get("exit_code") is not None:
        _sub(u, "LXCLOUD_EXIT_CODE", vm["exit_code"])
        _sub(u, "LXCLOUD_EXIT_MESSAGE", vm.get("exit_message") or "")
        _sub(u, "LXCLOUD_EXIT_TIME", _epoch(vm.get("exit_time")))

    hist = _sub(root, "HISTORY_RECORDS")
    if host is not None:
        h = _sub(hist, "HISTORY")
        _sub(h, "OID", vm["id"])
        _sub(h, "SEQ", 0)
        _sub(h, "HOSTNAME", host["name"])
        _sub(h, "HID", host["id"])
        _sub(h, "CID", 0)
        _sub(h, "STIME", _epoch(vm.get("started") or vm["created"]))
        _sub(h, "ETIME", _epoch(vm["ended"]))
        _sub(h, "VM_MAD", host.get("vmm_mad") or "kvm")
        _sub(h, "TM_MAD", "lxcloud")
        _sub(h, "DS_ID", 0)
        for tag in ("PSTIME", "PETIME", "RSTIME", "RETIME", "ESTIME", "EETIME"):
            _sub(h, tag, 0)
        _sub(h, "ACTION", 0)
    return root


def vm_document(vm: dict[str, Any]) -> str:
    return to_string(vm_element(vm))


def vm_pool_document(vms: Iterable[dict[str, Any]]) -> str:
    root = ET.Element("VM_POOL")
    for vm in vms:
        root.append(vm_element(vm))
    return to_string(root)


# -- HOST ---------------------------------------------------------------------------------------
def host_element(host: dict[str, Any]) -> ET.Element:
    """``host`` as returned by :func:`lxcloud_py.hosts.list_hosts` (row + usage, MACs, VMs)."""
    root = ET.Element("HOST")
    _sub(root, "ID", host["id"])
    _sub(root, "NAME", host["name"])
    _sub(root, "STATE", host["state"])
    _sub(root, "PREV_STATE", host["state"])
    _sub(root, "IM_MAD", host["im_mad"])
    _sub(root, "VM_MAD", host["vmm_mad"])
    _sub(root, "VN_MAD", "lxcloud")
    _sub(root, "LAST_MON_TIME", _epoch(host["last_seen"]))
    _sub(root, "CLUSTER_ID", 0)
    _sub(root, "CLUSTER", "default")
    info: dict[str, Any] = {}
    if host.get("info"):
        try:
            loaded = json.loads(host["info"])
            info = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            info = {}
    max_cpu = round(float(host["cpu"] or 0) * 100)
    max_mem = int(host["memory_mb"] or 0) * 1024
    max_disk = int(host["disk_mb"] or 0)
    used_cpu = round(float(host.get("cpu_used", 0)) * 100)
    used_mem = int(host.get("memory_used", 0)) * 1024
    free_disk = info.get("disk_free_mb")
    if isinstance(free_disk, bool) or not isinstance(free_disk, int | float):
        free_disk = max_disk
    share = _sub(root, "HOST_SHARE")
    _sub(share, "DISK_USAGE", 0)
    _sub(share, "MEM_USAGE", used_mem)
    _sub(share, "CPU_USAGE", used_cpu)
    _sub(share, "TOTAL_MEM", max_mem)
    _sub(share, "TOTAL_CPU", max_cpu)
    _sub(share, "MAX_DISK", max_disk)
    _sub(share, "MAX_MEM", max_mem)
    _sub(share, "MAX_CPU", max_cpu)
    _sub(share, "FREE_DISK", int(free_disk))
    _sub(share, "FREE_MEM", max(0, max_mem - used_mem))
    _sub(share, "FREE_CPU", max(0, max_cpu - used_cpu))
    _sub(share, "USED_DISK", max(0, max_disk - int(free_disk)))
    _sub(share, "USED_MEM", used_mem)
    _sub(share, "USED_CPU", used_cpu)
    _sub(share, "RUNNING_VMS", len(host.get("vms", [])))
    vms = _sub(root, "VMS")
    for vm_id in host.get("vms", []):
        _sub(vms, "ID", vm_id)
    t = _sub(root, "TEMPLATE")
    _sub(t, "MACS", " ".join(host.get("macs", [])))
    _sub(t, "LAST_SEEN", _epoch(host["last_seen"]))
    _sub(t, "REGISTERED", _epoch(host["registered"]))
    if host.get("max_dispatch") is not None:
        _sub(t, "MAX_DISPATCH", host["max_dispatch"])
    # Scalar facts the host reported (libvirt version, hypervisor, storage backend ...).
    for key in sorted(info):
        value = info[key]
        if _KEY_RE.match(key) and isinstance(value, str | int | float | bool):
            _sub(t, key.upper(), value)
    # What operators set with one.host.update (LABELS ...), over the reported facts.
    for key, value in host.get("template") or ():
        elem = t.find(key)  # a reported fact of that name (the generated keys are refused)
        if elem is not None:
            t.remove(elem)
        vec = _sub(t, key)
        if isinstance(value, dict):
            for k, v in value.items():
                _sub(vec, k, v)
        else:
            vec.text = _text(value)
    for img in host.get("images", []):
        vec = _sub(t, "IMAGE")
        _sub(vec, "NAME", img["name"])
        _sub(vec, "VERSION", img["version"])
        _sub(vec, "STATE", img["state"])
    return root


def host_document(host: dict[str, Any]) -> str:
    return to_string(host_element(host))


def host_pool_document(hosts: Iterable[dict[str, Any]]) -> str:
    root = ET.Element("HOST_POOL")
    for host in hosts:
        root.append(host_element(host))
    return to_string(root)


# -- POOL (lxcloud's provisioning pools) --------------------------------------------------------
def pool_element(pool: dict[str, Any]) -> ET.Element:
    """``pool`` as :func:`lxcloud_py.pools.pool_status` returns it (plus ``decisions`` for
    one pool's info)."""
    spec = pool["spec"]
    root = ET.Element("POOL")
    _sub(root, "ID", pool["id"])
    _sub(root, "NAME", spec.name)
    _sub(root, "TARGET", spec.target)
    _sub(root, "LIFETIME", spec.lifetime or 0)
    _sub(root, "PRIORITY", spec.priority)
    _sub(root, "ENABLED", spec.enabled)
    _sub(root, "DRAIN", spec.drain)
    hosts = _sub(root, "HOSTS")
    for name in spec.hosts:
        _sub(hosts, "HOST", name)
    _sub(root, "BACKOFF_BASE", spec.backoff_base)
    _sub(root, "BACKOFF_MAX", spec.backoff_max)
    _sub(root, "BACKOFF_LEVEL", pool["backoff_level"])
    _sub(root, "BACKOFF_UNTIL", _epoch(pool["backoff_until"]))
    for key in ("active", "pending", "draining", "live"):
        _sub(root, key.upper(), pool[key])
    _sub(root, "CREATED", _epoch(pool["created"]))
    _sub(root, "UPDATED", _epoch(pool["updated"]))
    _sub(root, "TEMPLATE_TEXT", spec.template)
    # the template was checked when the pool was set
    template.parse_text(spec.template).to_xml(_sub(root, "TEMPLATE"))
    if "decisions" in pool:
        decisions = _sub(root, "DECISIONS")
        for rec in pool["decisions"]:
            d = _sub(decisions, "DECISION")
            _sub(d, "TIME", _epoch(rec["ts"]))
            _sub(d, "ACTION", rec["new_state"] or "change")
            _sub(d, "MESSAGE", rec["message"] or "")
    return root


def pool_document(pool: dict[str, Any]) -> str:
    return to_string(pool_element(pool))


def pool_pool_document(pools: Iterable[dict[str, Any]]) -> str:
    root = ET.Element("POOL_POOL")
    for pool in pools:
        root.append(pool_element(pool))
    return to_string(root)
