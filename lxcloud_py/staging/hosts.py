"""Where the image goes: hosts from an Ansible inventory, the repository image, ssh argv."""

from __future__ import annotations

import base64
import json
import os
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lxcloud_py.model import InvalidInput, LxcloudError, NotFound

REPO_ROOT = Path(__file__).resolve().parents[2]
AGENT = REPO_ROOT / "plugins" / "module_utils" / "chain.py"
DEFAULT_IMAGE_DIR = "/var/lib/lxcloud/images"
DEFAULT_REPO_DIR = os.environ.get("LXCLOUD_REPO", "/var/lib/lxcloud/repo")
SSH_OPTS = [
    "-o", "BatchMode=yes",
    "-o", "ControlMaster=no",
    "-o", "ControlPath=none",
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    # the default hybrid post-quantum key exchange costs ~0.4 s of CPU per connection here,
    # which every agent start pays (16 hosts at once on 2 cores: seconds)
    "-o", "KexAlgorithms=curve25519-sha256,curve25519-sha256@libssh.org",
    "-o", "GSSAPIAuthentication=no",
    "-o", "ConnectTimeout=10",
    "-o", "ServerAliveInterval=5",
    "-o", "ServerAliveCountMax=3",
]


class StagingFailed(LxcloudError):
    """A staging run could not start or no host got the image."""


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    user: str = "root"
    port: int = 22
    key: str | None = None
    image_dir: str = DEFAULT_IMAGE_DIR
    python: str = "/usr/bin/python3"
    #: run the agent as a local process instead of over ssh (tests: hosts on 127.0.0.1 ports)
    local: bool = False
    #: TCP port of this host's chain relay / BitTorrent peer (default: the run's port)
    relay_port: int | None = None

    @property
    def target(self) -> str:
        return f"{self.user}@{self.address}"

    def ssh_argv(self, *, tty: bool = False) -> list[str]:
        argv = ["ssh", *SSH_OPTS, "-p", str(self.port)]
        if self.key:
            argv += ["-i", self.key]
        if not tty:
            argv.append("-T")
        return [*argv, self.target]

    def incoming(self, filename: str) -> str:
        return f"{self.image_dir}/incoming/{filename}"


@dataclass(frozen=True)
class RepoImage:
    name: str
    version: str
    sha256: str
    size: int  # unpacked bytes
    compressed_size: int
    format: str
    compression: str
    path: Path
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def filename(self) -> str:
        return self.path.name


def _safe(value: str, what: str) -> str:
    from ansible_collections.lxcloud.cloud.plugins.module_utils.names import (
        InvalidName,
        validate_name,
    )

    try:
        return str(validate_name(value, what))
    except InvalidName as exc:
        raise InvalidInput(str(exc)) from None


def list_repo(repo_dir: str | Path) -> list[RepoImage]:
    out = []
    for meta_file in sorted(Path(repo_dir).glob("*.json")):
        try:
            meta = json.loads(meta_file.read_text())
            out.append(_from_meta(Path(repo_dir), meta))
        except (ValueError, KeyError, OSError, InvalidInput):
            continue
    return out


def _from_meta(repo_dir: Path, meta: dict) -> RepoImage:
    _safe(meta["name"], "image name")
    _safe(meta["version"], "image version")
    _safe(meta["file"], "image file")
    return RepoImage(
        name=meta["name"],
        version=meta["version"],
        sha256=meta["sha256"],
        size=int(meta["size"]),
        compressed_size=int(meta["compressed_size"]),
        format=meta.get("format", "raw"),
        compression=meta.get("compression", "zstd"),
        path=repo_dir / meta["file"],
        meta=meta,
    )


def find_image(repo_dir: str | Path, name: str, version: str | None = None) -> RepoImage:
    """The image NAME (latest captured version unless VERSION) in the repository."""
    _safe(name, "image name")
    if version is not None:
        _safe(version, "image version")
    found = [i for i in list_repo(repo_dir) if i.name == name
             and (version is None or i.version == version)]
    if not found:
        what = f"{name} {version}" if version else name
        raise NotFound(f"image {what} is not in the repository {repo_dir}")
    found.sort(key=lambda i: (i.meta.get("captured_at", ""), i.version))
    img = found[-1]
    if not img.path.is_file():
        raise NotFound(f"{img.path} is missing (metadata without the image)")
    return img


def load_inventory(inventory: str, group: str | None = None,
                   limit: list[str] | None = None) -> list[Host]:
    """Hosts of an Ansible inventory (any format ``ansible-inventory`` reads), in order.

    Uses ``group`` if given, else ``hypervisors`` when it exists, else every host.
    """
    exe = REPO_ROOT / ".venv" / "bin" / "ansible-inventory"
    cmd = [str(exe) if exe.exists() else "ansible-inventory", "-i", inventory, "--list"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise StagingFailed(f"ansible-inventory -i {inventory} failed: {proc.stderr.strip()}")
    data = json.loads(proc.stdout)
    hostvars = data.get("_meta", {}).get("hostvars", {})

    def members(g: str, seen: set[str]) -> list[str]:
        if g in seen:
            return []
        seen.add(g)
        node = data.get(g, {})
        names = list(node.get("hosts", []))
        for child in node.get("children", []):
            names += members(child, seen)
        return names

    if group:
        if group not in data:
            raise NotFound(f"group {group} is not in {inventory}")
        names = members(group, set())
    elif "hypervisors" in data:
        names = members("hypervisors", set())
    else:
        names = members("all", set())
    hosts: list[Host] = []
    seen: set[str] = set()
    for n in names:
        if n in seen or (limit and n not in limit):
            continue
        seen.add(n)
        hv = hostvars.get(n, {})
        key = hv.get("ansible_ssh_private_key_file") or hv.get("ansible_private_key_file")
        hosts.append(
            Host(
                name=_safe(n, "host name"),
                address=str(hv.get("ansible_host", n)),
                user=str(hv.get("ansible_user", "root")),
                port=int(hv.get("ansible_port", 22)),
                key=str(Path(inventory).parent / key) if key and not os.path.isabs(key)
                else key,
                image_dir=str(hv.get("lxcloud_image_dir", DEFAULT_IMAGE_DIR)),
                python=str(hv.get("ansible_python_interpreter", "/usr/bin/python3")),
            )
        )
    if not hosts:
        raise StagingFailed(f"no hosts in {inventory}")
    return hosts


def local_address_towards(address: str) -> str:
    """The address of this machine on the route to ``address`` (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((address, 9))
        return str(s.getsockname()[0])


def agent_source() -> str:
    return AGENT.read_text()


def remote_agent_command(python: str, args: list[str]) -> str:
    """The remote command line that runs the staging agent with ``args``: the agent travels
    base64-encoded in argv so stdin stays free (closing it tells torrent peers to stop)."""
    blob = base64.b64encode(AGENT.read_bytes()).decode()
    boot = ("import base64,sys;src=base64.b64decode(sys.argv[1]);"
            "sys.argv=['chain.py']+sys.argv[2:];exec(compile(src,'chain.py','exec'))")
    return shlex.join([python, "-c", boot, blob, *args])


def agent_argv(host: Host | None, args: list[str]) -> list[str]:
    """argv to run the agent on ``host`` over ssh, or locally (the repository side) if None."""
    if host is None or host.local:
        return [sys.executable, str(AGENT), *args]
    return [*host.ssh_argv(), remote_agent_command(host.python, args)]
