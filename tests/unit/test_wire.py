"""wire.py: the contract modules, hypervisor/VM scripts and the control plane share."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from ansible_collections.lxcloud.cloud.plugins.module_utils import api_client, wire

from lxcloud_py import vms
from lxcloud_py.api import errors

REPO = Path(__file__).resolve().parents[2]
WIRE = REPO / "plugins" / "module_utils" / "wire.py"


def test_standard_library_only() -> None:
    """Hypervisors run it under /usr/bin/python3 without Ansible or lxcloud_py."""
    tree = ast.parse(WIRE.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported, "the walk found no imports at all"
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


@pytest.mark.parametrize(
    "session,user,secret",
    [("oneadmin:pw", "oneadmin", "pw"), ("vm-7:a:b:c", "vm-7", "a:b:c")],
)
def test_split_session(session: str, user: str, secret: str) -> None:
    assert wire.split_session(session) == (user, secret)
    assert wire.make_session(user, secret) == session


@pytest.mark.parametrize("bad", ["", "nocolon", ":secret", "user:", None, 17])
def test_split_session_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="malformed session"):
        wire.split_session(bad)


@pytest.mark.parametrize("user,secret", [("", "s"), ("u", ""), ("a:b", "s")])
def test_make_session_refuses(user: str, secret: str) -> None:
    with pytest.raises(ValueError):
        wire.make_session(user, secret)


def test_vm_sessions() -> None:
    assert wire.vm_user(42) == "vm-42"
    assert wire.vm_session(42, "tok") == "vm-42:tok"
    assert wire.vm_id_of_user("vm-42") == 42
    for user in ("vm-", "vm-x", "vm-42 ", "xvm-42", "VM-42", "vm-12345678901", "oneadmin", None):
        assert wire.vm_id_of_user(user) is None, user


def test_both_sides_use_the_same_codes() -> None:
    for name in ("SUCCESS", "AUTHENTICATION", "AUTHORIZATION", "NO_EXISTS", "ACTION",
                 "XML_RPC_API", "INTERNAL", "ALLOCATE"):
        code = getattr(wire, name)
        assert getattr(errors, name) == code == getattr(api_client, name)
        assert wire.ERROR_NAMES[code] == name
        assert errors.NAMES[code] == api_client.CODE_NAMES[code] == name
    assert len(set(wire.ERROR_NAMES)) == 8
    # the client's pseudo code for "no reply" is not an OpenNebula code
    assert api_client.CONNECTION not in wire.ERROR_NAMES


def test_control_plane_speaks_the_contract() -> None:
    assert vms.ACTIONS == wire.VM_ACTIONS
