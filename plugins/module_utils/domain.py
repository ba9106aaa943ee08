# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt domains of lxcloud VMs: XML built with ElementTree from validated options (never by
string formatting), the managed fields read back from libvirt's XML for comparison, and the
lifecycle (define/update, start, graceful stop that waits, forced stop, undefine + storage).

Idempotence compares *managed fields*: the options this module sets, parsed back out of
libvirt's persistent XML, against the requested ones.  libvirt's expansions (controllers, PCI
addresses, machine type, emulator) are not managed and never cause a change.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Optional, Tuple

from ansible_collections.lxcloud.cloud.plugins.module_utils.names import (
    InvalidName,
    check_under,
    validate_abs_path,
    validate_ipv4,
    validate_mac,
    validate_name,
    validate_prefix,
    validate_uuid,
)

try:
    import libvirt

    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - depends on the host
    libvirt = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = exc

UUID_NAMESPACE = uuidlib.UUID("5b0d7a52-8d7e-4c1a-9a43-6c78636c6f75")  # lxcloud's namespace
VIRT_TYPES = ("kvm", "qemu", "xen")
MAX_CMDLINE = 2048
CPU_MODES = (None, "host-passthrough", "host-model", "maximum")

# virDomainState values (stable libvirt ABI), so this module works without the bindings too
STATE_NAMES = {
    0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff",
    6: "crashed", 7: "pmsuspended",
}
SHUTOFF = 5
ACTIVE_STATES = (1, 2, 3, 4, 7)


class DomainError(Exception):
    def __init__(self, msg, **result):
        super(DomainError, self).__init__(msg)
        self.msg = msg
        self.result = result


def stable_uuid(name):
    """The UUID a new domain gets: derived from its name, so a re-created VM keeps it."""
    return str(uuidlib.uuid5(UUID_NAMESPACE, name))


def _text_ok(value, what, maxlen):
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidName(what, value, "must be a string")
    if len(value) > maxlen:
        raise InvalidName(what, value, "longer than %d characters" % maxlen)
    if any(ord(c) < 32 for c in value):
        raise InvalidName(what, value, "contains control characters (newline, tab, NUL...)")
    return value


def make_spec(name, disk, disk_format="qcow2", vcpus=1, memory_mb=512, virt_type="kvm",
              uuid=None, context=None, kernel=None, initrd=None, cmdline=None, mac=None,
              bridge=None, network=None, user_subnet=None, console_log=None, arch="x86_64",
              cpu_mode=None):
    """Validate the options and return the managed-fields dict (the comparison unit)."""
    validate_name(name, "vm name")
    if virt_type not in VIRT_TYPES:
        raise InvalidName("virt_type", virt_type, "must be one of %s" % ", ".join(VIRT_TYPES))
    if disk_format not in ("qcow2", "raw"):
        raise InvalidName("disk_format", disk_format, "must be qcow2 or raw")
    try:
        vcpus = int(vcpus)
        memory_mb = int(memory_mb)
    except (TypeError, ValueError):
        raise InvalidName("vcpus/memory_mb", (vcpus, memory_mb), "must be integers") from None
    if not 1 <= vcpus <= 512:
        raise InvalidName("vcpus", vcpus, "must be 1..512")
    if not 16 <= memory_mb <= 4 * 1024 * 1024:
        raise InvalidName("memory_mb", memory_mb, "must be 16..4194304")
    if arch != "x86_64" and arch not in ("aarch64", "i686"):
        raise InvalidName("arch", arch, "must be x86_64, aarch64 or i686")
    if cpu_mode not in CPU_MODES:
        raise InvalidName("cpu_mode", cpu_mode, "must be host-passthrough, host-model or "
                                                "maximum (or unset)")
    disk = validate_abs_path(disk, "disk")
    spec = {
        "type": virt_type,
        "name": name,
        "uuid": validate_uuid(uuid, "uuid") if uuid else stable_uuid(name),
        "arch": arch,
        "vcpus": vcpus,
        "memory_mb": memory_mb,
        "kernel": validate_abs_path(kernel, "kernel") if kernel else None,
        "initrd": validate_abs_path(initrd, "initrd") if initrd else None,
        "cmdline": _text_ok(cmdline, "cmdline", MAX_CMDLINE) or None,
        "disk": {"path": disk, "format": disk_format,
                 "type": "block" if disk.startswith("/dev/") else "file"},
        "context": validate_abs_path(context, "context") if context else None,
        "nic": None,
        "console_log": validate_abs_path(console_log, "console_log") if console_log else None,
        "cpu_mode": cpu_mode,
    }
    if (spec["initrd"] or spec["cmdline"]) and not spec["kernel"]:
        raise InvalidName("kernel", None, "initrd and cmdline need kernel (direct kernel boot)")
    if bridge and network:
        raise InvalidName("network", network, "give either bridge or network, not both")
    if bridge or network:
        nic = {"mode": "bridge" if bridge else "user", "mac": validate_mac(mac) if mac else None,
               "bridge": validate_name(bridge, "bridge") if bridge else None,
               "subnet": None}
        if network and network != "user":
            raise InvalidName("network", network, "only 'user' is supported (or give bridge)")
        if user_subnet:
            if not network:
                raise InvalidName("user_subnet", user_subnet, "only with network=user")
            addr = validate_ipv4(user_subnet.get("address"), "user_subnet.address")
            prefix = validate_prefix(user_subnet.get("prefix", 24), "user_subnet.prefix")
            nic["subnet"] = {"address": addr, "prefix": prefix}
        spec["nic"] = nic
    elif mac:
        raise InvalidName("mac", mac, "needs bridge or network")
    return spec


# ---------------------------------------------------------------------------------------------
# XML


def _sub(parent, tag, text=None, **attrs):
    el = ET.SubElement(parent, tag, {k: str(v) for k, v in attrs.items()})
    if text is not None:
        el.text = str(text)
    return el


def build_xml(spec):
    """Domain XML for a managed-fields dict (ElementTree does all quoting)."""
    dom = ET.Element("domain", {"type": spec["type"]})
    _sub(dom, "name", spec["name"])
    _sub(dom, "uuid", spec["uuid"])
    _sub(dom, "memory", spec["memory_mb"], unit="MiB")
    _sub(dom, "currentMemory", spec["memory_mb"], unit="MiB")
    _sub(dom, "vcpu", spec["vcpus"], placement="static")
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch=spec["arch"])
    if spec["kernel"]:
        _sub(os_el, "kernel", spec["kernel"])
        if spec["initrd"]:
            _sub(os_el, "initrd", spec["initrd"])
        if spec["cmdline"]:
            _sub(os_el, "cmdline", spec["cmdline"])
    else:
        _sub(os_el, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    if spec.get("cpu_mode"):
        _sub(dom, "cpu", mode=spec["cpu_mode"])
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    dev = _sub(dom, "devices")
    d = spec["disk"]
    disk = _sub(dev, "disk", type=d["type"], device="disk")
    _sub(disk, "driver", name="qemu", type=d["format"])
    if d["type"] == "block":
        _sub(disk, "source", dev=d["path"])
    else:
        _sub(disk, "source", file=d["path"])
    _sub(disk, "target", dev="vda", bus="virtio")
    if spec["context"]:
        ctx = _sub(dev, "disk", type="file", device="disk")
        _sub(ctx, "driver", name="qemu", type="raw")
        _sub(ctx, "source", file=spec["context"])
        _sub(ctx, "target", dev="vdb", bus="virtio")
        _sub(ctx, "readonly")
    nic = spec["nic"]
    if nic:
        iface = _sub(dev, "interface", type=nic["mode"])
        if nic["mac"]:
            _sub(iface, "mac", address=nic["mac"])
        if nic["mode"] == "bridge":
            _sub(iface, "source", bridge=nic["bridge"])
        _sub(iface, "model", type="virtio")
        if nic["subnet"]:
            _sub(iface, "ip", family="ipv4", address=nic["subnet"]["address"],
                 prefix=nic["subnet"]["prefix"])
    if spec["console_log"]:
        serial = _sub(dev, "serial", type="file")
        _sub(serial, "source", path=spec["console_log"])
        _sub(serial, "target", port=0)
        console = _sub(dev, "console", type="file")
        _sub(console, "source", path=spec["console_log"])
        _sub(console, "target", type="serial", port=0)
    else:
        serial = _sub(dev, "serial", type="pty")
        _sub(serial, "target", port=0)
    _sub(dev, "memballoon", model="none")
    if hasattr(ET, "indent"):
        ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"


_UNIT = {"b": 1, "bytes": 1, "kib": 1024, "k": 1024, "mib": 1024 ** 2, "m": 1024 ** 2,
         "gib": 1024 ** 3, "g": 1024 ** 3, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3}


def _mem_mb(el):
    if el is None:
        return None
    unit = _UNIT.get((el.get("unit") or "KiB").lower(), 1024)
    return int(el.text) * unit // (1024 * 1024)


def _norm(path):
    return os.path.normpath(path) if path else None


def parse_xml(xml):
    """The managed fields of a libvirt domain XML (the same dict shape make_spec returns)."""
    dom = ET.fromstring(xml)  # noqa: S314 - libvirt's own output
    os_el = dom.find("os")
    spec = {
        "type": dom.get("type"),
        "name": dom.findtext("name"),
        "uuid": (dom.findtext("uuid") or "").lower() or None,
        "arch": os_el.find("type").get("arch") if os_el is not None and
        os_el.find("type") is not None else None,
        "vcpus": int(dom.findtext("vcpu") or 0),
        "memory_mb": _mem_mb(dom.find("memory")),
        "kernel": _norm(os_el.findtext("kernel")) if os_el is not None else None,
        "initrd": _norm(os_el.findtext("initrd")) if os_el is not None else None,
        "cmdline": (os_el.findtext("cmdline") or None) if os_el is not None else None,
        "disk": None,
        "context": None,
        "nic": None,
        "console_log": None,
        "cpu_mode": None,
    }
    cpu = dom.find("cpu")
    if cpu is not None and cpu.get("mode") in CPU_MODES:
        spec["cpu_mode"] = cpu.get("mode")
    devices = dom.find("devices")
    if devices is None:
        devices = ET.Element("devices")
    for disk in devices.findall("disk"):
        target = disk.find("target")
        dev = target.get("dev") if target is not None else None
        src = disk.find("source")
        path = None
        if src is not None:
            path = src.get("file") or src.get("dev")
        driver = disk.find("driver")
        fmt = driver.get("type") if driver is not None else None
        if dev == "vda":
            spec["disk"] = {"path": _norm(path), "format": fmt, "type": disk.get("type")}
        elif dev == "vdb":
            spec["context"] = _norm(path)
    iface = devices.find("interface")
    if iface is not None:
        mac = iface.find("mac")
        src = iface.find("source")
        ip = iface.find("ip")
        mode = iface.get("type")
        spec["nic"] = {
            "mode": mode,
            "mac": mac.get("address").lower() if mac is not None else None,
            "bridge": src.get("bridge") if mode == "bridge" and src is not None else None,
            "subnet": {"address": ip.get("address"), "prefix": int(ip.get("prefix", 24))}
            if ip is not None and ip.get("family", "ipv4") == "ipv4" else None,
        }
    for serial in devices.findall("serial"):
        if serial.get("type") == "file":
            src = serial.find("source")
            spec["console_log"] = _norm(src.get("path")) if src is not None else None
            break
    return spec


def compare(current, wanted):
    """Names of managed fields that differ.  A NIC without a requested MAC accepts the one
    libvirt generated (so a second run does not see a change)."""
    changes = []
    for key in sorted(wanted):
        want = wanted[key]
        have = current.get(key)
        if key == "nic" and want and have and want.get("mac") is None:
            have = dict(have, mac=None)
        if want != have:
            changes.append(key)
    return changes


def adopt_generated(current, wanted):
    """``wanted`` with the values libvirt filled in for things left unset (MAC)."""
    wanted = dict(wanted)
    if wanted.get("nic") and current and current.get("nic") and not wanted["nic"]["mac"]:
        wanted["nic"] = dict(wanted["nic"], mac=current["nic"].get("mac"))
    return wanted


# ---------------------------------------------------------------------------------------------
# libvirt


def _libvirt_error(what, exc):
    return DomainError("%s: %s" % (what, exc))


def connect(uri):
    if not HAS_LIBVIRT:
        raise DomainError("the libvirt Python bindings are missing")
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise _libvirt_error("cannot connect to %s" % uri, exc) from None


def lookup(conn, name):
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise _libvirt_error("looking up domain %s" % name, exc) from None


def state_of(dom):
    return dom.state()[0]


def inactive_xml(dom):
    return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def live_xml(dom):
    return dom.XMLDesc(0)


def define(conn, xml):
    try:
        return conn.defineXML(xml)
    except libvirt.libvirtError as exc:
        raise _libvirt_error("defining the domain failed", exc) from None


def start(dom):
    try:
        dom.create()
    except libvirt.libvirtError as exc:
        raise _libvirt_error("starting %s failed" % dom.name(), exc) from None


def stop(dom, timeout, poll=0.2, clock=time.monotonic, sleep=time.sleep):
    """Graceful ACPI shutdown, waiting until the domain is really off; ``destroy`` once
    ``timeout`` seconds have passed.  Returns True when it had to force it off."""
    if state_of(dom) not in ACTIVE_STATES:
        return False
    if state_of(dom) == 3:  # paused: it cannot see the ACPI event, no point in waiting
        timeout = 0
    deadline = clock() + max(0, timeout)
    try:
        if timeout > 0:
            dom.shutdown()  # the driver's default: ACPI power button for qemu (no agent here)
    except libvirt.libvirtError:
        pass  # e.g. the guest is already going down; the wait below decides
    while clock() < deadline:
        if state_of(dom) == SHUTOFF:
            return False
        sleep(poll)
    try:
        if state_of(dom) != SHUTOFF:
            dom.destroy()
    except libvirt.libvirtError as exc:
        if state_of(dom) != SHUTOFF:
            raise _libvirt_error("forcing %s off failed" % dom.name(), exc) from None
    return True


def undefine(dom):
    """Undefine with everything libvirt keeps beside the XML (NVRAM, managed save, snapshot
    and checkpoint metadata)."""
    names = ["VIR_DOMAIN_UNDEFINE_MANAGED_SAVE", "VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA",
             "VIR_DOMAIN_UNDEFINE_NVRAM", "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA"]
    # Drivers that do not know a flag refuse the call (e.g. the test driver, older libxl):
    # drop the newest flags one by one, down to a plain undefine.
    unsupported = (getattr(libvirt, "VIR_ERR_INVALID_ARG", 8),
                   getattr(libvirt, "VIR_ERR_NO_SUPPORT", 3))
    for n in range(len(names), -1, -1):
        flags = 0
        for name in names[:n]:
            flags |= getattr(libvirt, name, 0)
        try:
            dom.undefineFlags(flags)
            return
        except libvirt.libvirtError as exc:
            if n == 0 or exc.get_error_code() not in unsupported:
                raise _libvirt_error("undefining %s failed" % dom.name(), exc) from None


def managed_files(spec, storage_dir):
    """Disk and context files of a domain that lxcloud manages (inside storage_dir)."""
    out = []
    for path in ((spec.get("disk") or {}).get("path"), spec.get("context")):
        if not path or path.startswith("/dev/"):
            continue
        try:
            check_under(storage_dir, path)
        except InvalidName:
            continue
        out.append(path)
    return out


def remove_storage(paths, check_mode=False):
    """Remove the files (and reflink/copy clone records).  Returns the paths removed."""
    from ansible_collections.lxcloud.cloud.plugins.module_utils.disk_backends import (
        record_path,
    )

    removed = []
    for path in paths:
        for p in (path, record_path(path)):
            if os.path.lexists(p):
                if not check_mode:
                    os.unlink(p)
                if p == path:
                    removed.append(p)
    return removed


# ---------------------------------------------------------------------------------------------
# the operation the module runs


def _diff_text(spec, state):
    if spec is None:
        return "state: absent\n"
    return "state: %s\n%s" % (state, build_xml(spec))


def _state_name(dom):
    return STATE_NAMES.get(state_of(dom), "unknown") if dom is not None else "absent"


@dataclass(frozen=True)
class DomainRequest:
    """What :func:`ensure` is asked to do with one domain (the vm module's options)."""

    #: the domain's name
    name: str
    #: defined, running, stopped or absent
    state: str
    #: make_spec()'s dict, or None to leave an existing definition alone
    wanted: Optional[dict] = None
    #: the uuid in ``wanted`` was given, not derived: a domain with another uuid is an error
    uuid_given: bool = False
    #: a running domain whose definition changed is restarted (else: pending_restart)
    restart_on_change: bool = False
    #: seconds a graceful shutdown may take before the domain is forced off
    shutdown_timeout: int = 60
    #: with state absent: the managed storage directory; files under it are removed
    storage_dir: Optional[str] = None
    remove_storage_files: bool = True
    #: more files to remove with the domain (its disk and context as given), if managed
    extra_paths: Tuple[str, ...] = ()
    #: also return the persistent XML
    return_xml: bool = False
    #: with state absent: also remove the console log (the definition's and ``console_log``)
    remove_console_log: bool = False
    console_log: Optional[str] = None


def ensure(conn, request, check_mode=False):
    """Bring domain ``request.name`` to ``request.state`` (defined, running, stopped, absent).

    Returns the result dict for exit_json (changed, diff, uuid, state, changes, ...).
    """
    name, wanted, state = request.name, request.wanted, request.state
    uuid_given, restart_on_change = request.uuid_given, request.restart_on_change
    shutdown_timeout, storage_dir = request.shutdown_timeout, request.storage_dir
    remove_storage_files, extra_paths = request.remove_storage_files, request.extra_paths
    return_xml, remove_console_log = request.return_xml, request.remove_console_log
    console_log = request.console_log
    validate_name(name, "vm name")
    dom = lookup(conn, name)
    before = parse_xml(inactive_xml(dom)) if dom is not None else None
    before_state = _state_name(dom)
    result = {"name": name, "changed": False, "changes": [], "pending_restart": False,
              "forced_off": False}

    if state == "absent":
        if dom is not None:
            result["changed"] = True
            result["changes"].append("undefined")
            if not check_mode:
                if state_of(dom) in ACTIVE_STATES:
                    result["forced_off"] = stop(dom, 0)
                undefine(dom)
        removed = []
        if remove_storage_files and storage_dir:
            paths = managed_files(before or {}, storage_dir)
            for p in extra_paths:
                if p and p not in paths:
                    paths.extend(managed_files({"context": p}, storage_dir))
            if remove_console_log:
                for log in ((before or {}).get("console_log"), console_log):
                    if log and log not in paths:
                        paths.extend(managed_files({"context": log}, storage_dir))
            removed = remove_storage(paths, check_mode)
        if removed:
            result["changed"] = True
            result["changes"].append("storage removed")
        result.update(uuid=before["uuid"] if before else None, state="absent", removed=removed,
                      diff={"before": _diff_text(before, before_state),
                            "after": _diff_text(None, "absent")})
        return result

    if wanted is None:
        if before is None:
            raise DomainError("domain %s does not exist; give disk (and the other options) to "
                              "define it" % name)
        wanted = before
    wanted = dict(wanted)
    if before is not None:
        if uuid_given and wanted["uuid"] != before["uuid"]:
            raise DomainError("domain %s exists with uuid %s, not %s; remove it first"
                              % (name, before["uuid"], wanted["uuid"]))
        wanted["uuid"] = before["uuid"]
        wanted = adopt_generated(before, wanted)
        changes = compare(before, wanted)
    else:
        changes = ["defined"]
    after_state = before_state if dom is not None else "shutoff"
    if changes:
        result["changed"] = True
        result["changes"].extend(changes)
        if not check_mode:
            dom = define(conn, build_xml(wanted))
            after = parse_xml(inactive_xml(dom))
            wanted = adopt_generated(after, wanted)
            after_state = _state_name(dom)
    active = dom is not None and state_of(dom) in ACTIVE_STATES

    if active and state in ("running", "defined"):
        live_changes = compare(parse_xml(live_xml(dom)), wanted)
        if live_changes:
            if state == "running" and restart_on_change:
                result["changed"] = True
                result["changes"].append("restarted")
                if not check_mode:
                    result["forced_off"] = stop(dom, shutdown_timeout)
                    start(dom)
            else:
                result["pending_restart"] = True
    if state == "running" and active and state_of(dom) == 3:  # paused: resume it
        result["changed"] = True
        result["changes"].append("resumed")
        after_state = "running"
        if not check_mode:
            try:
                dom.resume()
            except libvirt.libvirtError as exc:
                raise _libvirt_error("resuming %s failed" % name, exc) from None
    if state == "running" and not active:
        result["changed"] = True
        result["changes"].append("started")
        after_state = "running"
        if not check_mode and dom is not None:
            start(dom)
    elif state == "stopped" and active:
        result["changed"] = True
        result["changes"].append("stopped")
        after_state = "shutoff"
        if not check_mode:
            result["forced_off"] = stop(dom, shutdown_timeout)
    if dom is not None and not check_mode:
        after_state = _state_name(dom)
    result.update(uuid=wanted["uuid"], state=after_state,
                  diff={"before": _diff_text(before, before_state),
                        "after": _diff_text(wanted, after_state)})
    if return_xml:
        result["xml"] = inactive_xml(dom) if dom is not None and not check_mode \
            else build_xml(wanted)
    return result


def describe(dom):
    """A domain as the info module reports it: managed fields plus state and persistence."""
    spec = parse_xml(inactive_xml(dom)) if dom.isPersistent() else parse_xml(live_xml(dom))
    spec["state"] = _state_name(dom)
    spec["active"] = bool(dom.isActive())
    spec["persistent"] = bool(dom.isPersistent())
    return spec


def list_domains(conn, names=None, prefix=None):
    """describe() of every domain (or of ``names``; or those starting with ``prefix``)."""
    if names:
        out = []
        for n in names:
            validate_name(n, "vm name")
            dom = lookup(conn, n)
            if dom is not None:
                out.append(describe(dom))
        return out
    try:
        doms = conn.listAllDomains()
    except libvirt.libvirtError as exc:
        raise _libvirt_error("listing domains failed", exc) from None
    return sorted((describe(d) for d in doms if not prefix or d.name().startswith(prefix)),
                  key=lambda d: d["name"])
