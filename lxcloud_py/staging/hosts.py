"""Where the image goes: hosts from an Ansible inventory, the repository image, ssh argv."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxcloud_py.model import InvalidInput, LxcloudError, NotFound

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
    #: TCP port of this host's chain relay / BitTorrent peer (hostvar
    #: ``lxcloud_stage_relay_port``; default: the run's port). Several hosts on one address
    #: (tests on 127.0.0.1) need their own.
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


def _read_inventory(inventory: str) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """Groups (name -> host names, children included, in inventory order) and each host's
    variables, read through Ansible's own inventory API (any source Ansible reads)."""
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    if not Path(inventory).exists():
        raise StagingFailed(f"inventory {inventory} does not exist")
    loader = DataLoader()
    try:
        inv = InventoryManager(loader=loader, sources=[inventory])
        variables = VariableManager(loader=loader, inventory=inv)
        groups = {name: [h.name for h in g.get_hosts()] for name, g in inv.groups.items()}
        hostvars = {h.name: variables.get_vars(host=h, include_hostvars=False)
                    for h in inv.get_hosts("all")}
    except AnsibleError as exc:
        raise StagingFailed(f"cannot read the inventory {inventory}: {exc}") from None
    if not hostvars:
        raise StagingFailed(f"no hosts in {inventory} (not an inventory Ansible can read?)")
    return groups, hostvars


def load_inventory(inventory: str, group: str | None = None,
                   limit: list[str] | None = None) -> list[Host]:
    """Hosts of an Ansible inventory (any format Ansible reads), in order.

    Uses ``group`` if given, else ``hypervisors`` when it exists, else every host.
    """
    groups, hostvars = _read_inventory(inventory)
    if group:
        if group not in groups:
            raise NotFound(f"group {group} is not in {inventory}")
        names = groups[group]
    elif groups.get("hypervisors"):
        names = groups["hypervisors"]
    else:
        names = list(hostvars)
    hosts: list[Host] = []
    seen: set[str] = set()
    for n in names:
        if n in seen or (limit and n not in limit):
            continue
        seen.add(n)
        hv = hostvars.get(n, {})
        key = hv.get("ansible_ssh_private_key_file") or hv.get("ansible_private_key_file")
        port = hv.get("lxcloud_stage_relay_port")
        hosts.append(
            Host(
                name=_safe(n, "host name"),
                address=str(hv.get("ansible_host", n)),
                user=str(hv.get("ansible_user", "root")),
                port=int(hv.get("ansible_port", 22)),
                key=str(Path(inventory).parent / key) if key and not os.path.isabs(key)
                else key,
                image_dir=str(hv.get("lxcloud_image_dir", DEFAULT_IMAGE_DIR)),
                relay_port=int(port) if port else None,
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
