#!/usr/bin/python3
"""The lxcloud testbed: N hypervisor hosts on this one machine.

Each host ``lxhI`` is a network namespace on a veth attached to the bridge ``lxbr0`` in the root
namespace, plus a private mount and UTS namespace (hostname = host name) in which it has its own
``/run``, ``/tmp``, ``/root``, ``/etc/libvirt``, ``/var/lib/libvirt``, ``/var/lib/lxcloud`` ...
(bind mounts of per-host directories under the testbed directory) and no ``/dev/kvm``. In there run
the host's own sshd (root login with the testbed's key only) and its own virtlogd and libvirtd, so
``virsh -c qemu:///system`` over SSH on one host sees only that host's domains.

Commands (run as root; stdlib only)::

    testbed.py up N [--rate RATE|off]   create hosts lxh1..lxhN (re-runnable; grows, repairs)
    testbed.py down [--purge]           remove everything (namespaces, processes, links, dirs)
    testbed.py status [--json]          table: host, IP, sshd pid, libvirtd, shaped rate
    testbed.py shape RATE|off           change link shaping of a running testbed
    testbed.py ssh HOST [CMD...]        ssh to a host with the testbed's key and config

Environment: ``LXCLOUD_TESTBED_DIR`` (state; default ``<repo>/.testbed``) and
``LXCLOUD_TESTBED_NET`` (default ``10.213.0.0/24``: bridge ``.1``, host I ``.(10+I)``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()
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


@dataclass(frozen=True)
class Host:
    index: int
    name: str
    ip: str
    dir: Path
    tag: int = 0

    @property
    def veth(self) -> str:
        """The root-namespace end of the host's veth (the other end is eth0 in the host)."""
        return f"tb-{self.name}"

    @property
    def mac(self) -> str:
        return f"02:4c:58:{self.tag:02x}:{self.index // 256:02x}:{self.index % 256:02x}"

    def path(self, sub: str) -> Path:
        return self.dir / sub

    @property
    def sshd_pidfile(self) -> Path:
        return self.dir / "sshd.pid"

    @property
    def libvirtd_pidfile(self) -> Path:
        return self.dir / "run" / "libvirtd.pid"

    @property
    def virtlogd_pidfile(self) -> Path:
        return self.dir / "run" / "virtlogd.pid"

    @property
    def libvirt_sock(self) -> Path:
        return self.dir / "run" / "libvirt" / "libvirt-sock"


#: Where a testbed's state goes when the directory asked for lies under a path every host
#: replaces (a clone in /tmp or /root, say): the asked-for path becomes a link to it.
RELOCATED_ROOT = Path("/var/lib/lxcloud-testbed")


def _replaced_by_hosts(d: Path) -> str | None:
    """The bind target (a path each host replaces with its own) that ``d`` lies under."""
    for _, target in DIR_BINDS:
        if str(d) == target or str(d).startswith(target.rstrip("/") + "/"):
            return target
    return None


def state_dir(asked: Path) -> Path:
    """The real state directory for ``asked``.

    A testbed's per-host directories are bound over /run, /tmp, /root ... inside each host,
    so they cannot live under one of those paths. A directory asked for there (a fresh clone
    in /tmp, CI's checkout under /root) is relocated to ``RELOCATED_ROOT/<name>-<hash>``, and
    ``asked`` becomes a link to it, so ``<repo>/.testbed/inventory.ini`` works wherever the
    repository is.
    """
    link = Path(os.path.abspath(asked))
    if _replaced_by_hosts(link.resolve()) is None:  # also a link made here before
        return link.resolve() if link.is_symlink() else link
    tag = uuid.uuid5(uuid.NAMESPACE_URL, str(link)).hex[:10]
    real = RELOCATED_ROOT / f"{link.name.lstrip('.') or 'testbed'}-{tag}"
    if link.exists() and not link.is_symlink():
        raise TestbedError(
            f"{link} lies under {_replaced_by_hosts(link)}, which every host replaces with its "
            f"own directory: remove it (its state moves to {real}) or set LXCLOUD_TESTBED_DIR"
        )
    real.mkdir(parents=True, exist_ok=True)
    if not (link.is_symlink() and link.resolve() == real):
        link.unlink(missing_ok=True)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(real)
    return real


class Testbed:
    def __init__(self, directory: Path | None = None) -> None:
        asked = Path(directory or os.environ.get("LXCLOUD_TESTBED_DIR") or REPO / ".testbed")
        self.dir = state_dir(asked)
        self.state = self.load_state()
        want_net = self._setting("net", "LXCLOUD_TESTBED_NET", DEFAULT_NET)
        try:
            self.net = ipaddress.ip_network(want_net)
        except ValueError as exc:
            raise TestbedError(f"bad LXCLOUD_TESTBED_NET {want_net!r}: {exc}") from exc
        if self.net.version != 4 or self.net.prefixlen > 24:
            raise TestbedError(f"LXCLOUD_TESTBED_NET must be an IPv4 /24 or larger: {want_net}")
        # A second, independent testbed (the testbed's own tests use one) needs other names.
        self.prefix = self._setting("prefix", "LXCLOUD_TESTBED_PREFIX", DEFAULT_PREFIX)
        if not PREFIX_RE.match(self.prefix):
            raise TestbedError(f"bad host name prefix {self.prefix!r}: want [a-z][a-z0-9]{{0,7}}")
        self.bridge = self._setting("bridge", "LXCLOUD_TESTBED_BRIDGE", DEFAULT_BRIDGE)
        if not BRIDGE_RE.match(self.bridge):
            raise TestbedError(f"bad bridge name {self.bridge!r}")
        self.host_re = re.compile(rf"^{self.prefix}([1-9][0-9]{{0,2}})$")
        self.bridge_ip = str(self.net[1])
        self._check_dir()

    def _setting(self, key: str, env: str, default: str) -> str:
        """Environment, else the running testbed's value, else the default; no mixing."""
        given = os.environ.get(env)
        have = self.state.get(key) if self.state.get("hosts") else None
        if key == "net" and given:
            with contextlib.suppress(ValueError):  # reported by the caller
                given = str(ipaddress.ip_network(given))
        if given and have and given != have:
            raise TestbedError(
                f"the testbed in {self.dir} runs with {key}={have}, not {env}={given}: "
                "run testbed/down first"
            )
        return given or have or default

    # -- layout -----------------------------------------------------------------------------
    def _check_dir(self) -> None:
        target = _replaced_by_hosts(self.dir)
        if target is not None:  # state_dir relocates such a directory; a link loop would not
            raise TestbedError(
                f"LXCLOUD_TESTBED_DIR={self.dir} lies under {target}, which every host replaces "
                "with its own directory; choose another place"
            )

    @property
    def max_hosts(self) -> int:
        return min(self.net.num_addresses - 12, 999)

    def host(self, i: int) -> Host:
        if not 1 <= i <= self.max_hosts:
            raise TestbedError(f"host index {i} out of range 1..{self.max_hosts} for {self.net}")
        name = f"{self.prefix}{i}"
        tag = 0 if self.prefix == DEFAULT_PREFIX else sum(self.prefix.encode()) % 256
        return Host(i, name, str(self.net[10 + i]), self.dir / "hosts" / name, tag)

    def hosts(self) -> list[Host]:
        return [self.host(i) for i in self.state.get("hosts", [])]

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def inventory(self) -> Path:
        return self.dir / "inventory.ini"

    @property
    def ssh_config(self) -> Path:
        return self.dir / "ssh_config"

    @property
    def api_url(self) -> str:
        return f"http://{self.bridge_ip}:{API_PORT}/RPC2"

    def load_state(self) -> dict:
        try:
            return json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    def save_state(self) -> None:
        self.state["net"] = str(self.net)
        self.state["prefix"] = self.prefix
        self.state["bridge"] = self.bridge
        self.state["bridge_ip"] = self.bridge_ip
        self.state["dir"] = str(self.dir)
        atomic_write(self.dir / "state.json", json.dumps(self.state, indent=2) + "\n")

    @contextmanager
    def lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- up ---------------------------------------------------------------------------------
    def up(self, n: int, rate: str | None = None, owner: str = "manual") -> None:
        preflight()
        if not 1 <= n <= self.max_hosts:
            raise TestbedError(f"number of hosts must be 1..{self.max_hosts}, not {n}")
        if rate is not None and rate != "off":
            rate = parse_rate(rate)[0]
        with self.lock():
            self.state = self.load_state()
            if not self.state.get("hosts"):
                self.state["owner"] = owner  # who created it (a fixture tears down its own)
            if rate is not None:
                self.state["rate"] = None if rate == "off" else rate
            have = set(self.state.get("hosts", []))
            wanted = sorted(have | set(range(1, n + 1)))
            self.state["hosts"] = wanted
            self.state.setdefault("created_mountpoints", [])
            self.save_state()
            self._ensure_keys()
            self._ensure_bridge()
            hosts = self.hosts()
            for h in hosts:
                self._ensure_host_dirs(h)
                self._ensure_link(h)
            self._write_client_files(hosts)
            self._write_etc_hosts(hosts)
            # sshd first (it creates the namespaces), all at once, then libvirt daemons.
            started = [h for h in hosts if self._ensure_sshd(h)]
            for h in hosts:
                self._wait_sshd(h)
                if h not in started:
                    self._ensure_binds(h)  # a host started by an older testbed.py
            template = self._caps_template()
            if not any(template.glob("*.xml")):
                # The first host probes qemu once; every other host starts from its result.
                self._ensure_libvirtd(hosts[0], seed=template)
                self._wait_libvirtd(hosts[0])
                self._warm_caps(hosts[0], template)
            for h in hosts:
                self._ensure_libvirtd(h, seed=template)
            for h in hosts:
                self._wait_libvirtd(h)
            self._apply_rate(hosts, self.state.get("rate"))
            self.save_state()
        log(
            f"{len(hosts)} host(s) up ({len(started)} started), inventory {self.inventory}, "
            f"API for hosts at {self.api_url}"
        )

    def _ensure_keys(self) -> None:
        if not self.key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lxcloud-testbed",
                 "-f", str(self.key)])
        os.chmod(self.key, 0o600)

    def _ensure_bridge(self) -> None:
        br = self.bridge
        if run(["ip", "link", "show", br], check=False).returncode != 0:
            run(["ip", "link", "add", br, "type", "bridge", "stp_state", "0",
                 "forward_delay", "0"])
        cidr = f"{self.bridge_ip}/{self.net.prefixlen}"
        addrs = run(["ip", "-o", "-4", "addr", "show", "dev", br]).stdout
        if f" {cidr} " not in addrs:
            run(["ip", "addr", "add", cidr, "dev", br])
        run(["ip", "link", "set", br, "up"])

    def _ensure_host_dirs(self, h: Host) -> None:
        h.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(h.dir, 0o755)  # noqa: S103 - as /, qemu (libvirt-qemu) must traverse
        for sub, _ in DIR_BINDS:
            h.path(sub).mkdir(exist_ok=True)
        for sub in ("tmp", "var-tmp"):
            os.chmod(h.path(sub), 0o1777)  # noqa: S103 - it is the host's /tmp
        os.chmod(h.path("root"), 0o700)
        (h.path("run") / "sshd").mkdir(mode=0o755, exist_ok=True)
        (h.path("run") / "lock").mkdir(mode=0o1777, exist_ok=True)
        (h.path("var-lib-lxcloud") / "images").mkdir(exist_ok=True)
        (h.dir / "log").mkdir(exist_ok=True)
        # /etc/libvirt per host: the package's config files (its own libvirtd.conf, qemu.conf),
        # empty domain/network/storage/secret dirs (never the root namespace's domains), no
        # autostarted default network (it would start a dnsmasq in every host).
        etc = h.path("etc-libvirt")
        if not (etc / "libvirtd.conf").exists():
            init_etc_libvirt(Path("/etc/libvirt"), etc)
            with open(etc / "libvirtd.conf", "a") as f:
                f.write(f'\n# lxcloud testbed host {h.name}\nhost_uuid = "{uuid.uuid4()}"\n')
            # libvirt's private /dev per domain would try to move the mount that hides
            # /dev/kvm into it and fail ("Unable to move ... mount to /dev/kvm").
            with open(etc / "qemu.conf", "a") as f:
                f.write(f"\n# lxcloud testbed host {h.name}\nnamespaces = []\n")
        # libvirt's state/cache/log directories: the package's directory skeleton, no content.
        for sub, src in (("var-lib-libvirt", "/var/lib/libvirt"),
                         ("var-cache-libvirt", "/var/cache/libvirt"),
                         ("var-log-libvirt", "/var/log/libvirt")):
            copy_dir_skeleton(Path(src), h.path(sub), depth=2)
        ssh = h.dir / "ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        hostkey = ssh / "ssh_host_ed25519_key"
        if not hostkey.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{h.name}",
                 "-f", str(hostkey)])
        dotssh = h.path("root") / ".ssh"
        dotssh.mkdir(mode=0o700, exist_ok=True)
        pub = Path(str(self.key) + ".pub").read_text()
        atomic_write(dotssh / "authorized_keys", pub, 0o600)
        atomic_write(h.dir / "hostname", h.name + "\n")
        if not (h.dir / "machine-id").exists():
            atomic_write(h.dir / "machine-id", uuid.uuid4().hex + "\n", 0o444)
        hidden = h.dir / "kvm-hidden"
        if not hidden.exists():
            hidden.touch()
        os.chmod(hidden, 0)
        atomic_write(h.dir / "sshd_config", self._sshd_config(h))
        for target in CREATED_MOUNTPOINTS:
            if not os.path.isdir(target):
                os.makedirs(target, exist_ok=True)
                if target not in self.state["created_mountpoints"]:
                    self.state["created_mountpoints"].append(target)
                    self.save_state()

    def _write_etc_hosts(self, hosts: list[Host]) -> None:
        """Each host's /etc/hosts names every testbed host. Written in place, not renamed:
        a running host has the file bind-mounted, and a rename would leave it the old one."""
        text = "\n".join([
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            "ff02::1\tip6-allnodes",
            "ff02::2\tip6-allrouters",
            f"# lxcloud testbed {self.net}: the control plane listens on {self.bridge_ip}",
            *[f"{h.ip}\t{h.name}" for h in hosts],
            "",
        ])
        for h in hosts:
            path = h.dir / "hosts"
            if not path.exists() or path.read_text() != text:
                with open(path, "w") as f:
                    f.write(text)

    def _sshd_config(self, h: Host) -> str:
        return "\n".join([
            f"# lxcloud testbed host {h.name} (generated by testbed/up)",
            f"ListenAddress {h.ip}:22",
            f"HostKey {h.dir / 'ssh' / 'ssh_host_ed25519_key'}",
            "PidFile /run/sshd.pid",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "AuthorizedKeysFile .ssh/authorized_keys",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            "UsePAM no",
            "UseDNS no",
            "X11Forwarding no",
            "PrintMotd no",
            "PrintLastLog no",
            "MaxStartups 100:30:200",
            "MaxSessions 100",
            "AcceptEnv LANG LC_*",
            "Subsystem sftp internal-sftp",
            "",
        ])

    def _ensure_link(self, h: Host) -> None:
        if not Path(f"/run/netns/{h.name}").exists():
            run(["ip", "netns", "add", h.name])
        ns = ["ip", "-n", h.name]
        if run(["ip", "link", "show", h.veth], check=False).returncode != 0:
            run(["ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0",
                 "netns", h.name])
            run([*ns, "link", "set", "eth0", "address", h.mac])  # only on creation
        run(["ip", "link", "set", h.veth, "master", self.bridge, "up"])
        run([*ns, "link", "set", "lo", "up"])
        cidr = f"{h.ip}/{self.net.prefixlen}"
        if f" {cidr} " not in run([*ns, "-o", "-4", "addr", "show", "dev", "eth0"]).stdout:
            run([*ns, "addr", "add", cidr, "dev", "eth0"])
        run([*ns, "link", "set", "eth0", "up"])

    def sshd_pid(self, h: Host) -> int | None:
        """The host's sshd pid, if it runs inside the host's network namespace."""
        pid = read_pid(h.sshd_pidfile)
        if not pid_alive(pid):
            return None
        if ns_inode(f"/proc/{pid}/ns/net") != ns_inode(f"/run/netns/{h.name}"):
            return None
        return pid

    def _ensure_sshd(self, h: Host) -> bool:
        """Start the host's namespaces and sshd unless they run. True if (re)started."""
        if self.sshd_pid(h):
            return False
        # A half-dead host (sshd gone, maybe libvirtd left): clear it out, start afresh.
        kill_namespace_processes(h, self)
        (h.path("run") / "sshd.pid").unlink(missing_ok=True)
        cmd = ["ip", "netns", "exec", h.name, "unshare", "-m", "-u", "--propagation", "private",
               sys.executable, str(THIS), "--dir", str(self.dir), "_host-init", h.name]
        logf = h.dir / "log" / "sshd.log"
        pid = spawn_detached(cmd, logf)
        atomic_write(h.sshd_pidfile, f"{pid}\n")
        return True

    def _ensure_binds(self, h: Host) -> None:
        """Add any of the host's bind mounts that its running mount namespace lacks."""
        sshd = self.sshd_pid(h)
        if not sshd:
            return
        with open(f"/proc/{sshd}/mountinfo") as f:
            mounted = {line.split()[4] for line in f}
        binds = [(h.path(sub), t) for sub, t in DIR_BINDS] + [
            (h.dir / sub, t) for sub, t in FILE_BINDS if os.path.exists(t)
        ]
        for src, target in binds:
            if target not in mounted:
                log(f"{h.name}: adding bind mount {target}")
                run(["nsenter", "-t", str(sshd), "-m", "--", "mount", "--bind", str(src), target])

    def _wait_sshd(self, h: Host, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = read_pid(h.sshd_pidfile)
            if not pid_alive(pid):
                raise TestbedError(f"{h.name}: sshd exited; see {h.dir / 'log' / 'sshd.log'}")
            try:
                socket.create_connection((h.ip, 22), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)
        raise TestbedError(f"{h.name}: sshd did not listen on {h.ip}:22 within {timeout}s")

    def host_daemon_pid(self, h: Host, pidfile: Path) -> int | None:
        """The pid in pidfile if that process lives and runs inside the host."""
        pid = read_pid(pidfile)
        if not pid_alive(pid):
            return None
        if ns_inode(f"/proc/{pid}/ns/net") != ns_inode(f"/run/netns/{h.name}"):
            return None
        return pid

    def libvirtd_pid(self, h: Host) -> int | None:
        return self.host_daemon_pid(h, h.libvirtd_pidfile)

    def _caps_template(self) -> Path:
        d = self.dir / "libvirt-caps"
        d.mkdir(exist_ok=True)
        return d

    def _ensure_libvirtd(self, h: Host, seed: Path) -> None:
        sshd = self.sshd_pid(h)
        if not sshd:
            raise TestbedError(f"{h.name}: sshd is not running")
        enter = ["nsenter", "-t", str(sshd), "-m", "-u", "-n", "--"]
        if not self.host_daemon_pid(h, h.virtlogd_pidfile):
            run([*enter, "virtlogd", "-d"], env=CLEAN_ENV, cwd="/")
        if self.libvirtd_pid(h):
            return
        # libvirt probes qemu (1-12 s) on a host's first call unless its cache holds the result:
        # seed it with the probe of the first host (same binaries, same kernel, no /dev/kvm).
        caps = h.path("var-cache-libvirt") / "qemu" / "capabilities"
        if any(seed.glob("*.xml")) and not (caps.is_dir() and any(caps.glob("*.xml"))):
            caps.mkdir(parents=True, exist_ok=True)
            for x in seed.glob("*.xml"):
                shutil.copy2(x, caps / x.name)
        h.libvirt_sock.unlink(missing_ok=True)
        run([*enter, "libvirtd", "-d"], env=CLEAN_ENV, cwd="/")

    def _wait_libvirtd(self, h: Host, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if h.libvirt_sock.exists():
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(str(h.libvirt_sock))
                    return
                except OSError:
                    pass
            if not self.libvirtd_pid(h) and time.monotonic() > deadline - timeout + 5:
                raise TestbedError(
                    f"{h.name}: libvirtd is not running; see {h.path('var-log-libvirt')}"
                )
            time.sleep(0.05)
        raise TestbedError(f"{h.name}: libvirtd socket did not appear within {timeout}s")

    def _warm_caps(self, h: Host, template: Path) -> None:
        log(f"{h.name}: probing qemu once for the libvirt capabilities cache")
        sshd = self.sshd_pid(h)
        run(["nsenter", "-t", str(sshd), "-m", "-u", "-n", "--", "virsh", "-q", "-c",
             "qemu:///system", "domcapabilities", "--virttype", "qemu"], env=CLEAN_ENV, cwd="/")
        caps = h.path("var-cache-libvirt") / "qemu" / "capabilities"
        for x in caps.glob("*.xml"):
            shutil.copy2(x, template / x.name)

    def _write_client_files(self, hosts: list[Host]) -> None:
        d = self.dir
        known = "".join(
            f"{h.name},{h.ip} "
            + " ".join((h.dir / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2])
            + "\n"
            for h in hosts
        )
        atomic_write(d / "known_hosts", known)
        pats = " ".join(sorted({f"{self.prefix}*", *[h.ip for h in hosts]}))
        cfg = [f"# lxcloud testbed (generated by testbed/up): ssh -F {self.ssh_config} lxh1", ""]
        for h in hosts:
            cfg += [f"Host {h.name}", f"  HostName {h.ip}", ""]
        cfg += [
            f"Host {pats}",
            "  User root",
            f"  IdentityFile {self.key}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {d / 'known_hosts'}",
            "  StrictHostKeyChecking yes",
            "  BatchMode yes",
            "  PasswordAuthentication no",
            "  ConnectTimeout 10",
            "  ServerAliveInterval 15",
            "  LogLevel ERROR",
            "",
        ]
        atomic_write(self.ssh_config, "\n".join(cfg))
        inv = [
            "# lxcloud testbed inventory (generated by testbed/up; regenerated on every up)",
            "[hypervisors]",
        ]
        inv += [f"{h.name} ansible_host={h.ip} lxcloud_host_ip={h.ip}" for h in hosts]
        inv += [
            "",
            "[hypervisors:vars]",
            "ansible_user=root",
            "ansible_port=22",
            f"ansible_ssh_private_key_file={self.key}",
            f"ansible_ssh_common_args='-F {self.ssh_config}'",
            "ansible_ssh_pipelining=true",
            "ansible_python_interpreter=/usr/bin/python3",
            "hypervisor_state_dir=/var/lib/lxcloud",
            "hypervisor_images_dir=/var/lib/lxcloud/images",
            "lxcloud_config_dir=/etc/lxcloud",
            "lxcloud_log_dir=/var/log/lxcloud",
            f"hypervisor_api_url={self.api_url}",
            f"lxcloud_api_host={self.bridge_ip}",
            "hypervisor_libvirt_uri=qemu:///system",
            "lxcloud_virt_type=qemu",
            "lxcloud_testbed=true",
            "",
        ]
        atomic_write(self.inventory, "\n".join(inv))
        atomic_write(d / "ansible.cfg", "\n".join([
            "# ANSIBLE_CONFIG=this file: the testbed inventory and strict host key checking",
            "[defaults]",
            f"inventory = {self.inventory}",
            "interpreter_python = /usr/bin/python3",
            "host_key_checking = True",
            "forks = 50",
            "retry_files_enabled = False",
            "",
            "[ssh_connection]",
            "pipelining = True",
            f"ssh_args = -F {self.ssh_config} -o ControlMaster=auto -o ControlPersist=60s",
            "",
        ]))
        atomic_write(d / "hosts.json", json.dumps(
            {"bridge": self.bridge, "bridge_ip": self.bridge_ip, "api_url": self.api_url,
             "inventory": str(self.inventory), "ssh_config": str(self.ssh_config),
             "key": str(self.key),
             "hosts": [{"name": h.name, "ip": h.ip, "dir": str(h.dir)} for h in hosts]},
            indent=2) + "\n")

    # -- shaping ----------------------------------------------------------------------------
    def _apply_rate(self, hosts: list[Host], rate: str | None) -> None:
        if rate is None:
            for h in hosts:
                for cmd in (["tc"], ["tc", "-n", h.name]):
                    dev = h.veth if len(cmd) == 1 else "eth0"
                    if "tbf" in run([*cmd, "qdisc", "show", "dev", dev, "root"]).stdout:
                        run([*cmd, "qdisc", "del", "dev", dev, "root"])
            return
        text, bits = parse_rate(rate)
        # Bucket: 4 ms worth of traffic, at least 10 full frames (GSO super-packets are split).
        burst = max(bits // 8 // 250, 15140)
        for h in hosts:
            for cmd, dev in ((["tc"], h.veth), (["tc", "-n", h.name], "eth0")):
                run([*cmd, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", text,
                     "burst", str(burst), "latency", "100ms"])

    def shape(self, rate: str) -> None:
        preflight()
        if rate != "off":
            rate = parse_rate(rate)[0]
        with self.lock():
            self.state = self.load_state()
            if not self.state.get("hosts"):
                raise TestbedError("no testbed is up (testbed/up N first)")
            self.state["rate"] = None if rate == "off" else rate
            self._apply_rate(self.hosts(), self.state["rate"])
            self.save_state()
        log(f"links of {len(self.hosts())} host(s): {rate}")

    def link_rate(self, h: Host) -> str:
        def one(cmd: list[str], dev: str) -> str:
            out = run([*cmd, "qdisc", "show", "dev", dev, "root"], check=False).stdout
            m = re.search(r"qdisc tbf .* rate (\S+)", out)
            return m.group(1) if m else "-"
        up = one(["tc", "-n", h.name], "eth0")
        down = one(["tc"], h.veth)
        return up if up == down else f"up {up} / down {down}"

    # -- down -------------------------------------------------------------------------------
    def known_hosts_everywhere(self) -> list[Host]:
        """Hosts in the state, plus any PREFIX<N> namespace, veth or host dir left behind."""
        idx = set(self.state.get("hosts", []))
        names = list_netns()
        for line in run(["ip", "-o", "link", "show"]).stdout.splitlines():
            m = re.match(r"^\d+: tb-([a-z0-9]+)[@:]", line)
            if m:
                names.append(m.group(1))
        hd = self.dir / "hosts"
        if hd.is_dir():
            names += [p.name for p in hd.iterdir()]
        for name in names:
            m = self.host_re.match(name)
            if m:
                idx.add(int(m.group(1)))
        return [self.host(i) for i in sorted(idx) if 1 <= i <= self.max_hosts]

    def in_use(self) -> bool:
        """True while a pytest session holds its shared lease (tests/integration/conftest.py)."""
        path = self.dir / "users.lock"
        if not path.exists():
            return False
        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
        return False

    def down(self, purge: bool = False, force: bool = False) -> bool:
        """Remove the testbed; False if deferred because a test session still uses it."""
        preflight()
        with self.lock():
            self.state = self.load_state()
            if not force and self.state.get("hosts") and self.in_use():
                # Its last test session tears it down (as for a testbed a fixture created).
                self.state["owner"] = "fixture"
                self.save_state()
                log("a pytest session is using the testbed: left up, that session removes it "
                    "when it ends (down --force removes it now)")
                return False
            hosts = self.known_hosts_everywhere()
            for h in hosts:
                kill_namespace_processes(h, self)
            detach_loops_under(self.dir / "hosts")
            for h in hosts:
                if Path(f"/run/netns/{h.name}").exists():
                    run(["ip", "netns", "del", h.name], check=False)
                if run(["ip", "link", "show", h.veth], check=False).returncode == 0:
                    run(["ip", "link", "del", h.veth], check=False)
            if run(["ip", "link", "show", self.bridge], check=False).returncode == 0:
                run(["ip", "link", "del", self.bridge])
            shutil.rmtree(self.dir / "hosts", ignore_errors=True)
            # The empty mount point dirs made in the root filesystem (created_mountpoints) stay:
            # removing one would silently unmount it in every other testbed's hosts.
            for name in ("state.json", "inventory.ini", "ssh_config", "known_hosts",
                         "ansible.cfg", "hosts.json"):
                (self.dir / name).unlink(missing_ok=True)
            if purge:
                shutil.rmtree(self.dir, ignore_errors=True)
            self.state = {}
        names = " ".join(h.name for h in hosts)
        log(f"down: removed {len(hosts)} host(s) {names}" + (f" and {self.dir}" if purge else ""))
        return True

    # -- status -----------------------------------------------------------------------------
    def status_rows(self) -> list[dict]:
        rows = []
        for h in self.known_hosts_everywhere():
            sshd = self.sshd_pid(h)
            ssh_ok = False
            if sshd:
                try:
                    socket.create_connection((h.ip, 22), timeout=0.5).close()
                    ssh_ok = True
                except OSError:
                    pass
            lv = self.libvirtd_pid(h)
            lv_ok = False
            if lv and h.libvirt_sock.exists():
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.settimeout(1)
                        s.connect(str(h.libvirt_sock))
                    lv_ok = True
                except OSError:
                    pass
            netns = Path(f"/run/netns/{h.name}").exists()
            rows.append({
                "host": h.name, "ip": h.ip, "netns": netns, "sshd_pid": sshd, "ssh": ssh_ok,
                "libvirtd_pid": lv, "libvirtd": lv_ok,
                "rate": self.link_rate(h) if netns else "-",
                **(namespace_memory_kib(h) if netns else {"rss_kib": 0, "pss_kib": 0}),
            })
        return rows

    def status(self, as_json: bool = False) -> int:
        rows = self.status_rows()
        if as_json:
            print(json.dumps({"dir": str(self.dir), "bridge": self.bridge,
                              "bridge_ip": self.bridge_ip, "hosts": rows}, indent=2))
        elif not rows:
            print(f"no testbed hosts ({self.dir})")
        else:
            print(f"testbed {self.dir}  bridge {self.bridge} {self.bridge_ip}  "
                  f"API for hosts {self.api_url}")
            hdr = ("HOST", "IP", "SSHD PID", "SSH", "LIBVIRTD", "RATE", "MEM (PSS)")
            table = [hdr] + [(
                r["host"], r["ip"], str(r["sshd_pid"] or "-"), "up" if r["ssh"] else "DOWN",
                f"alive ({r['libvirtd_pid']})" if r["libvirtd"] else "DEAD", r["rate"],
                f"{r['pss_kib'] / 1024:.1f} MiB",
            ) for r in rows]
            widths = [max(len(row[i]) for row in table) for i in range(len(hdr))]
            for row in table:
                print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        healthy = bool(rows) and all(r["ssh"] and r["libvirtd"] for r in rows)
        return 0 if healthy else 1


# -- helpers ---------------------------------------------------------------------------------
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


def init_etc_libvirt(src: Path, dst: Path) -> None:
    """A host's /etc/libvirt: the package's *.conf, nwfilter and hooks; no defined objects."""
    for p in src.iterdir():
        if p.is_file() and p.name.endswith(".conf"):
            shutil.copy2(p, dst / p.name)
    for d in ("nwfilter", "hooks"):
        if (src / d).is_dir():
            shutil.copytree(src / d, dst / d, symlinks=True, dirs_exist_ok=True)
    for d, mode in (("qemu", 0o755), ("qemu/networks", 0o755), ("qemu/networks/autostart", 0o755),
                    ("qemu/autostart", 0o755), ("storage", 0o755), ("storage/autostart", 0o755),
                    ("secrets", 0o700)):
        (dst / d).mkdir(mode=mode, exist_ok=True)
    default_net = src / "qemu" / "networks" / "default.xml"
    if default_net.is_file():
        shutil.copy2(default_net, dst / "qemu" / "networks" / "default.xml")


def copy_dir_skeleton(src: Path, dst: Path, depth: int) -> None:
    """Create the directories of src (owner and mode too) under dst, no files, to depth."""
    if depth <= 0 or not src.is_dir():
        return
    for p in src.iterdir():
        if p.is_dir() and not p.is_symlink():
            st = p.stat()
            q = dst / p.name
            if not q.exists():
                q.mkdir()
                os.chown(q, st.st_uid, st.st_gid)
                os.chmod(q, stat.S_IMODE(st.st_mode))
            copy_dir_skeleton(p, q, depth - 1)


def spawn_detached(cmd: list[str], logfile: Path) -> int:
    """Start cmd in a new session, not our child (so it is never our zombie); return its pid."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child
        try:
            os.close(r)
            os.setsid()
            with open(logfile, "ab") as out:
                p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, env=CLEAN_ENV, cwd="/",
                                     close_fds=True)
            os.write(w, str(p.pid).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(child, 0)
    if not data:
        raise TestbedError(f"could not start {cmd[0]}")
    return int(data)


def processes_in(net: tuple[int, int] | None, mnt: tuple[int, int] | None) -> list[int]:
    me = os.getpid()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        pid = int(d)
        in_net = bool(net) and ns_inode(f"/proc/{pid}/ns/net") == net
        in_mnt = bool(mnt) and ns_inode(f"/proc/{pid}/ns/mnt") == mnt
        if (in_net or in_mnt) and pid_alive(pid):
            found.append(pid)
    return found


def kill_namespace_processes(h: Host, tb: Testbed, grace: float = 5.0) -> int:
    """Stop every process in the host's namespaces (sshd, libvirtd, qemu, ssh sessions...)."""
    net = ns_inode(f"/run/netns/{h.name}")
    mnt = None
    sshd = read_pid(h.sshd_pidfile)
    if pid_alive(sshd) and net and ns_inode(f"/proc/{sshd}/ns/net") == net:
        mnt = ns_inode(f"/proc/{sshd}/ns/mnt")
    if mnt == ns_inode("/proc/self/ns/mnt"):
        mnt = None  # never the root mount namespace
    pids = processes_in(net, mnt) if (net or mnt) else []
    # Daemons whose pid files say they belong to this host, even if their namespace is gone.
    for pf in (h.libvirtd_pidfile, h.virtlogd_pidfile):
        pid = read_pid(pf)
        if (
            pid_alive(pid)
            and pid not in pids
            and _cmdline_has(pid, (b"libvirtd", b"virtlogd"))
            and ns_inode(f"/proc/{pid}/ns/net") != ns_inode("/proc/self/ns/net")
        ):
            pids.append(pid)
    if not pids:
        return 0
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 5)
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.02)
        pids = [p for p in pids if pid_alive(p)]
        if not pids:
            break
    if pids:
        raise TestbedError(f"{h.name}: processes {pids} did not die")
    return 1


def _cmdline_has(pid: int | None, names: tuple[bytes, ...]) -> bool:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return os.path.basename(argv0) in names


def detach_loops_under(root: Path) -> None:
    """Detach loop devices whose backing file lives under root (set up inside a host)."""
    res = run(["losetup", "-l", "-n", "-J", "-O", "NAME,BACK-INO,BACK-MAJ:MIN"], check=False)
    try:
        devs = json.loads(res.stdout or "{}").get("loopdevices", [])
    except ValueError:
        return
    if not devs or not root.is_dir():
        return
    wanted = {}
    for d in devs:
        try:
            maj, mn = (int(x) for x in str(d["back-maj:min"]).split(":"))
            wanted[(os.makedev(maj, mn), int(d["back-ino"]))] = d["name"]
        except (KeyError, ValueError, TypeError):
            continue
    for dirpath, _dirs, files in os.walk(root):
        for fn in files:
            try:
                st = os.lstat(os.path.join(dirpath, fn))
            except OSError:
                continue
            name = wanted.get((st.st_dev, st.st_ino))
            if name:
                log(f"detaching {name} (backing file {os.path.join(dirpath, fn)})")
                run(["losetup", "-d", name], check=False)


def namespace_memory_kib(h: Host) -> dict[str, int]:
    """RSS and PSS (shared pages split between their users) of all processes in the host."""
    net = ns_inode(f"/run/netns/{h.name}")
    total = {"rss_kib": 0, "pss_kib": 0}
    for pid in processes_in(net, None):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Rss:", "Pss:")):
                    total[line[:3].lower() + "_kib"] += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return total


# -- inside a host: runs as `ip netns exec H unshare -m -u ... testbed.py _host-init H` --------
MS_BIND = 4096
MS_REC = 16384
MNT_DETACH = 2
LOOP_MAJOR = 7


def _libc_call(fn: str, *args: object) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, fn)(*args) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{fn}{args}: {os.strerror(e)}")


def _bind_repo_into_host(h: Host) -> str | None:
    """Bind REPO into the per-host dir that will replace the path it lies under; that dir's
    name in DIR_BINDS, or None when the repository is not under a replaced path."""
    for sub, target in DIR_BINDS:
        if _replaced_by_hosts(REPO) == target:
            inside = h.path(sub) / REPO.relative_to(target)
            inside.mkdir(parents=True, exist_ok=True)
            _libc_call("mount", str(REPO).encode(), str(inside).encode(), None, MS_BIND, None)
            return sub
    return None


def host_init(tb: Testbed, name: str) -> None:
    m = tb.host_re.match(name)
    if not m:
        raise TestbedError(f"bad host name {name!r}")
    h = tb.host(int(m.group(1)))
    socket.sethostname(h.name)
    # Loop-backed filesystems mounted elsewhere on the machine, copied into this private
    # namespace, would stay busy here after their owner unmounts them: drop them.
    with open("/proc/self/mountinfo") as f:
        infos = [line.split() for line in f]
    for fields in reversed(infos):
        target, majmin = fields[4], fields[2]
        if majmin.startswith(f"{LOOP_MAJOR}:") and target != "/":
            try:
                _libc_call("umount2", target.encode(), MNT_DETACH)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOENT):
                    raise
    # The repository stays visible inside the host at its own path, also when it lies under
    # a path the host replaces (a clone in /tmp or /root): tests and the demo hand hosts
    # paths in it (the test kernel, golden images). It is bound into the host's own copy of
    # that path, which then goes over the path recursively. The bind lives in this host's
    # private mount namespace only; in the root namespace the mount point is an empty dir.
    repo_sub = _bind_repo_into_host(h)
    for sub, target in DIR_BINDS:
        flags = MS_BIND | (MS_REC if sub == repo_sub else 0)
        _libc_call("mount", str(h.path(sub)).encode(), target.encode(), None, flags, None)
    for sub, target in FILE_BINDS:
        if os.path.exists(target):
            _libc_call("mount", str(h.dir / sub).encode(), target.encode(), None, MS_BIND, None)
    argv = [SSHD, "-D", "-f", str(h.dir / "sshd_config"), "-E", str(h.dir / "log" / "sshd.log")]
    os.execv(SSHD, argv)  # noqa: S606 - fixed argument list, no shell


# -- CLI ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="testbed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", help="testbed directory (default $LXCLOUD_TESTBED_DIR or "
                                  "<repo>/.testbed)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="create or grow the testbed to N hosts (re-runnable)")
    p.add_argument("n", type=int, nargs="?", default=3)
    p.add_argument("--rate", help="shape every host link, both ways (e.g. 100mbit; off)")
    p.add_argument("--owner", default="manual", choices=["manual", "fixture"],
                   help=argparse.SUPPRESS)
    p = sub.add_parser("down", help="remove all hosts, links, processes and host dirs")
    p.add_argument("--purge", action="store_true", help="also remove keys and the qemu cache")
    p.add_argument("--force", action="store_true",
                   help="even while a pytest session uses it (else deferred to its end)")
    p = sub.add_parser("status", help="table of hosts (exit 1 unless all are healthy)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("shape", help="set link shaping of a running testbed")
    p.add_argument("rate", help="tc rate (100mbit, 1gbit ...) or off")
    p = sub.add_parser("ssh", help="ssh to a host with the testbed key")
    p.add_argument("host")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("_host-init", help=argparse.SUPPRESS)
    p.add_argument("host")
    args = ap.parse_args(argv)
    try:
        tb = Testbed(Path(args.dir) if args.dir else None)
        if args.cmd == "up":
            tb.up(args.n, rate=args.rate, owner=args.owner)
        elif args.cmd == "down":
            tb.down(purge=args.purge, force=args.force)
        elif args.cmd == "status":
            return tb.status(as_json=args.json)
        elif args.cmd == "shape":
            tb.shape(args.rate)
        elif args.cmd == "ssh":
            if not tb.ssh_config.exists():
                raise TestbedError("no testbed is up (testbed/up N first)")
            argv = ["ssh", "-F", str(tb.ssh_config), args.host, *args.command]
            os.execvp("ssh", argv)  # noqa: S606 - argument list, no shell
        elif args.cmd == "_host-init":
            host_init(tb, args.host)
    except TestbedError as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
