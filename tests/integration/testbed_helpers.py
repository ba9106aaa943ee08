"""The testbed seen from tests: hosts, ssh, the CLI (used by conftest.py's fixtures)."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTBED_PY = REPO / "testbed" / "testbed.py"
SYSTEM_PYTHON = "/usr/bin/python3"


@functools.cache
def _testbed_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lxcloud_testbed", TESTBED_PY)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def shared_testbed_dir() -> Path:
    """The testbed's real state directory: $LXCLOUD_TESTBED_DIR or <repo>/.testbed, relocated by
    testbed.py when it lies under a path the hosts replace (a clone in /tmp or /root)."""
    asked = Path(os.environ.get("LXCLOUD_TESTBED_DIR") or REPO / ".testbed")
    return Path(_testbed_module().state_dir(asked))


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the testbed is required in CI: {reason}")
    pytest.skip(reason)


def no_testbed_reason() -> str | None:
    """Why namespace hosts cannot run here, or None."""
    if os.geteuid() != 0:
        return "the testbed needs root (network namespaces, bind mounts, sshd)"
    for tool in ("ip", "tc", "unshare", "nsenter", "ssh", "ssh-keygen", "libvirtd", "virsh"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            return f"{tool} is not installed (scripts/bootstrap installs it)"
    if not os.access("/usr/sbin/sshd", os.X_OK):
        return "openssh-server is not installed"
    res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if res.returncode != 0:
        return f"`ip netns` does not work here: {res.stderr.strip()}"
    return None


@dataclass(frozen=True)
class TestbedHost:
    name: str
    ip: str
    dir: Path  # the host's state dirs as seen from the root namespace

    def __str__(self) -> str:
        return self.name


class Testbed:
    """A running testbed, as described by ``<dir>/hosts.json`` (written by testbed/up)."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, directory: Path, env: dict[str, str] | None = None) -> None:
        self.dir = directory
        self.env = env or {}
        self.refresh()

    def refresh(self) -> None:
        info = json.loads((self.dir / "hosts.json").read_text())
        self.hosts = [TestbedHost(h["name"], h["ip"], Path(h["dir"])) for h in info["hosts"]]
        self.bridge: str = info["bridge"]
        self.bridge_ip: str = info["bridge_ip"]
        self.api_url: str = info["api_url"]
        self.inventory = Path(info["inventory"])
        self.ssh_config = Path(info["ssh_config"])
        self.key = Path(info["key"])
        self.ansible_cfg = self.dir / "ansible.cfg"

    def host(self, name: str) -> TestbedHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def ssh(
        self,
        host: TestbedHost | str,
        cmd: str | Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run cmd (a shell string, or an argument list that gets quoted) on host as root."""
        remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
        res = subprocess.run(
            ["ssh", "-F", str(self.ssh_config), str(host), remote],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"ssh {host} {remote!r} failed (rc={res.returncode}):\n{res.stdout}{res.stderr}"
            )
        return res

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run testbed/testbed.py with this testbed's environment."""
        res = subprocess.run(
            [SYSTEM_PYTHON, str(TESTBED_PY), *args],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env, "LXCLOUD_TESTBED_DIR": str(self.dir)},
            timeout=600,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"testbed {' '.join(args)} failed:\n{res.stdout}{res.stderr}")
        return res

    def status(self) -> dict:
        return dict(json.loads(self.cli("status", "--json", check=False).stdout))

    def ansible_env(self) -> dict[str, str]:
        """Environment for ansible/ansible-playbook: the testbed's config (strict host keys)."""
        venv_bin = str(REPO / ".venv" / "bin")
        return {
            **os.environ,
            "ANSIBLE_CONFIG": str(self.ansible_cfg),
            "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        }
