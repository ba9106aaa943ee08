"""Settings, constants and small helpers shared by the testbed's parts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

#: The repository (testbed/lxtb/ lies two levels below it).
REPO = Path(__file__).resolve().parents[2]
#: The entry point, which also runs inside each host as ``testbed.py _host-init``.
ENTRY = REPO / "testbed" / "testbed.py"
DEFAULT_NET = "10.213.0.0/24"
DEFAULT_BRIDGE = "lxbr0"
DEFAULT_PREFIX = "lxh"
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
BRIDGE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,14}$")
API_PORT = 2633
SSHD = "/usr/sbin/sshd"
RATE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps)$")
RATE_FACTORS = {
    "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
    "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9, "tbps": 8 * 10**12,
}
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}

# Per-host directories bound over these paths inside the host's mount namespace.
# (name of the per-host dir, target path, template to copy from on creation or None)
DIR_BINDS: list[tuple[str, str]] = [
    ("run", "/run"),
    ("tmp", "/tmp"),  # noqa: S108 - a bind target, each host's own /tmp
    ("var-tmp", "/var/tmp"),  # noqa: S108
    ("root", "/root"),
    ("etc-libvirt", "/etc/libvirt"),
    ("var-lib-libvirt", "/var/lib/libvirt"),
    ("var-cache-libvirt", "/var/cache/libvirt"),
    ("var-log-libvirt", "/var/log/libvirt"),
    ("var-lib-lxcloud", "/var/lib/lxcloud"),
    ("etc-lxcloud", "/etc/lxcloud"),
    ("var-log-lxcloud", "/var/log/lxcloud"),
]
# Mount points the testbed may have to create in the shared root filesystem (empty dirs).
CREATED_MOUNTPOINTS = ["/var/lib/lxcloud", "/etc/lxcloud", "/var/log/lxcloud"]
FILE_BINDS: list[tuple[str, str]] = [
    ("hostname", "/etc/hostname"),
    ("machine-id", "/etc/machine-id"),
    ("kvm-hidden", "/dev/kvm"),
    ("hosts", "/etc/hosts"),
]


class TestbedError(Exception):
    """A failure with a message meant for the operator."""


def log(msg: str) -> None:
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if check and res.returncode != 0:
        raise TestbedError(
            f"command failed (rc={res.returncode}): {' '.join(cmd)}\n{res.stderr.strip()}"
        )
    return res


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def ns_inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def parse_rate(rate: str) -> tuple[str, int]:
    """Validate a tc rate ("100mbit", "1gbit", "500kbit") -> (normalised text, bits/s)."""
    m = RATE_RE.match(rate.strip().lower())
    if not m:
        raise TestbedError(
            f"bad rate {rate!r}: want a number and a tc unit, e.g. 100mbit, 1gbit, 500kbit"
        )
    bits = int(float(m.group(1)) * RATE_FACTORS[m.group(2)])
    if bits < 8000:
        raise TestbedError(f"rate {rate!r} is too small (minimum 8kbit)")
    return f"{m.group(1)}{m.group(2)}", bits


def preflight() -> None:
    if os.geteuid() != 0:
        raise TestbedError("the testbed needs root (network namespaces, bind mounts, sshd)")
    for tool in ("ip", "tc", "unshare", "nsenter", "ssh-keygen", "libvirtd", "virtlogd",
                 "virsh", "losetup"):
        if not shutil.which(tool, path=CLEAN_ENV["PATH"]):
            raise TestbedError(f"{tool} not found (scripts/bootstrap installs it)")
    if not os.access(SSHD, os.X_OK):
        raise TestbedError(f"{SSHD} not found (apt-get install openssh-server)")


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except OSError:
        return []
