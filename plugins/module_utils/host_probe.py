# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hypervisor probe: what a host offers and what it may run.

CPU cores, memory, storage (directory or LVM volume group), the allowed IP/MAC pairs (a local
lease file or the control plane's lease table), libvirt's version and running domains, and the
golden images staged in the storage directory.

Standard library only (python3-libvirt is used when importable), so the same file serves the
Ansible modules and the boot-time script ``/usr/local/sbin/lxcloud-register``.  Commands run
through a ``run(argv) -> (rc, stdout, stderr)`` callable: ``module.run_command`` in modules,
:func:`subprocess_run` in the script.  Argument lists only, never a shell.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import csv
import io
import json
import os
import re
import socket
import subprocess

from ansible_collections.lxcloud.cloud.plugins.module_utils.api_client import (
    registration_changes,
    registration_view,
)
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import (
    InvalidName,
    validate_abs_path,
    validate_hostname,
    validate_ip,
    validate_mac,
    validate_name,
)

DEFAULT_STORAGE_DIR = "/var/lib/lxcloud"
DEFAULT_IMAGES_DIR = "/var/lib/lxcloud/images"
DEFAULT_LEASE_FILE = "/etc/lxcloud/leases.csv"
DEFAULT_LIBVIRT_URI = "qemu:///system"
MIB = 1024 * 1024
LEASE_SOURCES = ("auto", "file", "api", "none")
BACKENDS = ("dir", "lvm")


class ProbeError(Exception):
    """A probe step failed in a way the caller must hear about (bad lease file, missing VG)."""

    def __init__(self, msg, **details):
        super(ProbeError, self).__init__(msg)
        self.msg = msg
        self.details = details


def subprocess_run(argv):
    """``run`` for code outside Ansible: argument list, no shell, text output."""
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=60
        )
    except OSError as exc:
        return 127, "", str(exc)
    except subprocess.TimeoutExpired:
        return 124, "", "%s timed out" % argv[0]
    return proc.returncode, proc.stdout, proc.stderr


# -- CPU and memory ------------------------------------------------------------------------


def cpu_cores():
    """Logical CPUs of the machine (what the hypervisor can give to VMs)."""
    return os.cpu_count() or 1


def parse_meminfo(text):
    """MemTotal of ``/proc/meminfo`` in MiB."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            kib = int(parts[1])
            unit = parts[2].lower() if len(parts) > 2 else "kb"
            if unit != "kb":
                raise ProbeError("unexpected MemTotal unit %r" % unit)
            return kib // 1024
    raise ProbeError("no MemTotal in /proc/meminfo")


def memory_mb(path="/proc/meminfo"):
    with open(path, encoding="ascii") as fh:
        return parse_meminfo(fh.read())


# -- storage -------------------------------------------------------------------------------


def dir_storage(path):
    """``{total_mb, free_mb}`` of the filesystem holding ``path``."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        raise ProbeError("cannot stat storage directory %s: %s" % (path, exc.strerror)) from exc
    return {
        "total_mb": st.f_blocks * st.f_frsize // MIB,
        "free_mb": st.f_bavail * st.f_frsize // MIB,
    }


def vgs_argv(vg):
    return [
        "vgs",
        "--reportformat",
        "json",
        "--units",
        "m",
        "--nosuffix",
        "-o",
        "vg_name,vg_size,vg_free",
        "--",
        vg,
    ]


def parse_vgs_json(text, vg):
    """``{total_mb, free_mb}`` of ``vg`` from ``vgs --reportformat json --units m --nosuffix``."""
    try:
        doc = json.loads(text)
        rows = doc["report"][0]["vg"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ProbeError("cannot parse vgs output: %s" % exc, stdout=text) from exc
    for row in rows:
        if row.get("vg_name") == vg:
            try:
                return {
                    "total_mb": int(float(row["vg_size"])),
                    "free_mb": int(float(row["vg_free"])),
                }
            except (KeyError, ValueError) as exc:
                raise ProbeError("bad vgs row %r" % row) from exc
    raise ProbeError("volume group %s not found in vgs output" % vg, stdout=text)


def lvm_storage(vg, run):
    validate_name(vg, "volume group")
    argv = vgs_argv(vg)
    rc, out, err = run(argv)
    if rc != 0:
        raise ProbeError(
            "vgs failed for volume group %s" % vg, cmd=argv, rc=rc, stdout=out, stderr=err
        )
    return parse_vgs_json(out, vg)


def storage(backend, path, vg, run):
    if backend == "dir":
        return dict(dir_storage(path), backend="dir", path=path)
    if backend == "lvm":
        if not vg:
            raise ProbeError("storage backend lvm needs a volume group name")
        return dict(lvm_storage(vg, run), backend="lvm", vg=vg)
    raise ProbeError("unknown storage backend %r (expected one of %s)" % (backend, BACKENDS))


# -- leases (allowed IP/MAC pairs) ---------------------------------------------------------


LEASE_FIELDS = ("ip", "mac", "name", "host")


def parse_lease_csv(text, host, source="lease file"):
    """Rows ``ip,mac,name,host`` (``#`` comments) pinned to ``host``.

    The control plane's lease file format: a header naming the four columns (any order; what
    ``lxcloud lease export --format csv`` writes).  Without a header the order is
    ``ip,mac,name,host``.  Every row is validated, not only this host's: a broken file is an
    error, never a silently shorter list.  Returns ``[{ip, mac, name}]`` sorted by MAC.
    """
    leases = []
    seen_mac = {}
    order = None
    reader = csv.reader(io.StringIO(text))
    for lineno, row in enumerate(reader, 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in row]
        if order is None:
            lowered = [c.lower() for c in cells]
            if sorted(lowered) == sorted(LEASE_FIELDS):
                order = [lowered.index(f) for f in LEASE_FIELDS]
                continue
            order = [0, 1, 2, 3]
        if len(cells) != 4:
            raise ProbeError(
                "%s line %d: expected 4 fields ip,mac,name,host, got %d"
                % (source, lineno, len(cells))
            )
        ip, mac, name, lease_host = (cells[i] for i in order)
        try:
            ip = validate_ip(ip, "%s line %d ip" % (source, lineno))
            mac = validate_mac(mac, "%s line %d mac" % (source, lineno))
            validate_hostname(name, "%s line %d name" % (source, lineno))
            validate_name(lease_host, "%s line %d host" % (source, lineno))
        except InvalidName as exc:
            raise ProbeError(str(exc)) from exc
        if mac in seen_mac:
            raise ProbeError(
                "%s line %d: MAC %s already on line %d" % (source, lineno, mac, seen_mac[mac])
            )
        seen_mac[mac] = lineno
        if lease_host == host:
            leases.append({"ip": ip, "mac": mac, "name": name})
    return sorted(leases, key=lambda lease: lease["mac"])


def leases_from_file(path, host):
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ProbeError("cannot read lease file %s: %s" % (path, exc.strerror)) from exc
    return parse_lease_csv(text, host, source=path)


def leases_from_api(client, host):
    """This host's leases from the control plane's lease table (``lxcloud.lease.list``)."""
    rows = client.lease_list(host)
    leases = []
    for row in rows or []:
        if row.get("host") not in (None, "", host):
            continue
        try:
            leases.append(
                {
                    "ip": validate_ip(row.get("ip"), "lease ip"),
                    "mac": validate_mac(row.get("mac"), "lease mac"),
                    "name": str(row.get("name", "")),
                }
            )
        except InvalidName as exc:
            raise ProbeError("control plane lease table: %s" % exc) from exc
    return sorted(leases, key=lambda lease: lease["mac"])


def allowed_leases(source, host, lease_file=DEFAULT_LEASE_FILE, client=None):
    """``(source_used, leases)``.  ``auto``: the local file when it exists, else the API
    (when a client is available), else none."""
    if source not in LEASE_SOURCES:
        raise ProbeError("unknown lease source %r (expected one of %s)" % (source, LEASE_SOURCES))
    if source == "auto":
        if os.path.exists(lease_file):
            source = "file"
        elif client is not None:
            source = "api"
        else:
            source = "none"
    if source == "file":
        return "file", leases_from_file(lease_file, host)
    if source == "api":
        if client is None:
            raise ProbeError("lease source api needs the API URL and session")
        return "api", leases_from_api(client, host)
    return "none", []


# -- libvirt -------------------------------------------------------------------------------


def _version_str(n):
    n = int(n)
    return "%d.%d.%d" % (n // 1000000, (n // 1000) % 1000, n % 1000)


def libvirt_bindings_probe(uri):
    """Version and running domains through python3-libvirt; None when it is not importable."""
    try:
        import libvirt  # optional: Debian's python3-libvirt
    except ImportError:
        return None
    if hasattr(libvirt, "registerErrorHandler"):
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as exc:
        return {"available": False, "via": "python", "error": str(exc), "domains": []}
    try:
        active = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        domains = sorted(d.name() for d in active)
        return {
            "available": True,
            "via": "python",
            "version": _version_str(conn.getLibVersion()),
            "hypervisor": conn.getType().lower(),
            "hypervisor_version": _version_str(conn.getVersion()),
            "domains": domains,
        }
    except libvirt.libvirtError as exc:
        return {"available": False, "via": "python", "error": str(exc), "domains": []}
    finally:
        conn.close()


_VIRSH_DAEMON = re.compile(r"Running against daemon:\s*(\S+)")
_VIRSH_HV = re.compile(r"Running hypervisor:\s*(\S+)\s+(\S+)")


def parse_virsh_version(text):
    out = {}
    m = _VIRSH_DAEMON.search(text)
    if m:
        out["version"] = m.group(1)
    m = _VIRSH_HV.search(text)
    if m:
        out["hypervisor"] = m.group(1).lower()
        out["hypervisor_version"] = m.group(2)
    return out


def parse_virsh_names(text):
    return sorted(line.strip() for line in text.splitlines() if line.strip())


def libvirt_virsh_probe(uri, run):
    rc, out, err = run(["virsh", "-r", "-c", uri, "version", "--daemon"])
    if rc != 0:
        return {"available": False, "via": "virsh", "error": (err or out).strip(), "domains": []}
    info = dict(parse_virsh_version(out), available=True, via="virsh")
    rc, out, err = run(["virsh", "-r", "-c", uri, "list", "--name", "--state-running"])
    if rc != 0:
        return {"available": False, "via": "virsh", "error": (err or out).strip(), "domains": []}
    info["domains"] = parse_virsh_names(out)
    return info


def libvirt_probe(uri, run, use_bindings=True):
    info = libvirt_bindings_probe(uri) if use_bindings else None
    return info if info is not None else libvirt_virsh_probe(uri, run)


# -- staged images -------------------------------------------------------------------------


def staged_images(images_dir):
    """The sidecars ``NAME-VERSION.json`` next to ``NAME-VERSION.raw`` (written by the image
    staging module), as found: ``[{file, name, version, sha256, ..., present}]``."""
    images = []
    try:
        entries = sorted(os.listdir(images_dir))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ProbeError("cannot list %s: %s" % (images_dir, exc.strerror)) from exc
    for entry in entries:
        if not entry.endswith(".json") or entry.startswith("."):
            continue
        path = os.path.join(images_dir, entry)
        base = entry[: -len(".json")]
        item = {"file": entry}
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
            if isinstance(doc, dict):
                for key in ("name", "version", "sha256", "size", "format", "state"):
                    if key in doc:
                        item[key] = doc[key]
        except (OSError, ValueError) as exc:
            item["error"] = str(exc)
        disk = [e for e in entries if e.startswith(base + ".") and e != entry]
        item["present"] = any(e == base + ".raw" or e == base + ".qcow2" for e in disk)
        images.append(item)
    return images


# -- everything ----------------------------------------------------------------------------


def default_host_name():
    return socket.gethostname().split(".")[0]


def probe(
    host=None,
    storage_backend="dir",
    storage_dir=DEFAULT_STORAGE_DIR,
    storage_vg=None,
    images_dir=DEFAULT_IMAGES_DIR,
    lease_source="auto",
    lease_file=DEFAULT_LEASE_FILE,
    libvirt_uri=DEFAULT_LIBVIRT_URI,
    client=None,
    run=subprocess_run,
    use_libvirt_bindings=True,
):
    """The whole probe as one JSON-able dict."""
    host = validate_name(host or default_host_name(), "host name")
    validate_abs_path(storage_dir, "storage dir")
    validate_abs_path(images_dir, "images dir")
    validate_abs_path(lease_file, "lease file")
    store = storage(storage_backend, storage_dir, storage_vg, run)
    used, leases = allowed_leases(lease_source, host, lease_file, client)
    return {
        "name": host,
        "cpu": cpu_cores(),
        "memory_mb": memory_mb(),
        "storage": store,
        "disk_mb": store["total_mb"],
        "disk_free_mb": store["free_mb"],
        "lease_source": used,
        "leases": leases,
        "macs": [lease["mac"] for lease in leases],
        "libvirt": libvirt_probe(libvirt_uri, run, use_libvirt_bindings),
        "images": staged_images(images_dir),
    }


#: The probe's options (doc fragment lxcloud.cloud.probe), shared by host_facts and host_register.
PROBE_ARGUMENT_SPEC = dict(
    name=dict(type="str"),
    storage_backend=dict(type="str", choices=list(BACKENDS), default="dir"),
    storage_dir=dict(type="path", default=DEFAULT_STORAGE_DIR),
    storage_vg=dict(type="str"),
    images_dir=dict(type="path", default=DEFAULT_IMAGES_DIR),
    lease_source=dict(type="str", choices=list(LEASE_SOURCES), default="auto"),
    lease_file=dict(type="path", default=DEFAULT_LEASE_FILE),
    libvirt_uri=dict(type="str", default=DEFAULT_LIBVIRT_URI),
)
PROBE_REQUIRED_IF = [("storage_backend", "lvm", ["storage_vg"])]


def probe_from_params(params, client, run):
    """:func:`probe` with a module's probe options."""
    return probe(
        host=params["name"],
        storage_backend=params["storage_backend"],
        storage_dir=params["storage_dir"],
        storage_vg=params["storage_vg"],
        images_dir=params["images_dir"],
        lease_source=params["lease_source"],
        lease_file=params["lease_file"],
        libvirt_uri=params["libvirt_uri"],
        client=client,
        run=run,
    )


def registration_info(facts):
    """The free-form ``info`` struct sent with a registration or heartbeat."""
    lv = facts.get("libvirt") or {}
    return {
        "libvirt_version": lv.get("version") or "",
        "hypervisor": lv.get("hypervisor") or "",
        "libvirt_available": bool(lv.get("available")),
        "domains": list(lv.get("domains") or []),
        "images": [
            {k: v for k, v in img.items() if k in ("name", "version", "sha256", "present")}
            for img in facts.get("images") or []
        ],
        "disk_free_mb": int(facts.get("disk_free_mb") or 0),
        "storage_backend": (facts.get("storage") or {}).get("backend", ""),
        "lease_source": facts.get("lease_source", ""),
        # The MACs travel as their own argument; the lease rows would only bloat the info
        # (the control plane caps it at 256 KiB, and it has the lease table anyway).
    }


def register(client, facts, check_mode=False, heartbeat=False, capacity=None, force=False):
    """Register (or heartbeat) the probed host; the one routine of the module and the script.

    Compares the control plane's record (``one.hostpool.info``) with what would be sent —
    capacity and the MAC set — so ``changed`` is true only when they differ.  With
    ``heartbeat`` only ``lxcloud.host.heartbeat`` is called (last_seen; never a change).  With
    ``check_mode`` nothing is sent.  ``force`` registers even when nothing differs (the boot
    script: a reboot is a new registration); otherwise an unchanged host only heartbeats, so
    ``last_seen`` still moves.  ``capacity`` overrides probed values (cpu, memory_mb, disk_mb).
    """
    name = facts["name"]
    cap = {"cpu": facts["cpu"], "memory_mb": facts["memory_mb"], "disk_mb": facts["disk_mb"]}
    for key, value in (capacity or {}).items():
        if value is not None:
            cap[key] = value
    desired = registration_view(cap["cpu"], cap["memory_mb"], cap["disk_mb"], facts["macs"])
    info = registration_info(facts)
    if heartbeat:
        # No pool lookup: a heartbeat must stay cheap for hundreds of hosts every minute.
        result = {"name": name, "host_id": None}
        if not check_mode:
            result["host_id"] = client.host_heartbeat(name, info)
        result.update(changed=False, action="heartbeat", before=None, after=None)
        return result
    current = client.find_host(name)
    result = {"name": name, "host_id": current["id"] if current else None}
    changed, before, after = registration_changes(current, desired)
    action = "none"
    if not check_mode:
        if changed or force:
            send = {"cpu": float(desired["cpu"]), "memory_mb": desired["memory_mb"],
                    "disk_mb": desired["disk_mb"]}
            result["host_id"] = client.host_register(name, send, desired["macs"], info)
            action = "register"
        else:
            result["host_id"] = client.host_heartbeat(name, info)
            action = "heartbeat"
    elif changed:
        action = "register"
    result.update(changed=changed, action=action, before=before, after=after)
    return result
