"""What a testbed is: its settings, hosts, addresses, paths and state file."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .base import (
    API_PORT,
    BRIDGE_RE,
    DEFAULT_BRIDGE,
    DEFAULT_NET,
    DEFAULT_PREFIX,
    DIR_BINDS,
    PREFIX_RE,
    REPO,
    TestbedError,
    atomic_write,
)


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


def replaced_by_hosts(d: Path) -> str | None:
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
    if replaced_by_hosts(link.resolve()) is None:  # also a link made here before
        return link.resolve() if link.is_symlink() else link
    tag = uuid.uuid5(uuid.NAMESPACE_URL, str(link)).hex[:10]
    real = RELOCATED_ROOT / f"{link.name.lstrip('.') or 'testbed'}-{tag}"
    if link.exists() and not link.is_symlink():
        raise TestbedError(
            f"{link} lies under {replaced_by_hosts(link)}, which every host replaces with its "
            f"own directory: remove it (its state moves to {real}) or set LXCLOUD_TESTBED_DIR"
        )
    real.mkdir(parents=True, exist_ok=True)
    if not (link.is_symlink() and link.resolve() == real):
        link.unlink(missing_ok=True)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(real)
    return real


class Layout:
    """A testbed's settings (network, host name prefix, bridge), where its hosts and files are,
    and its state file; the operations (up, down ...) are ``testbed.py``'s ``Testbed``."""

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

    def _check_dir(self) -> None:
        target = replaced_by_hosts(self.dir)
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
