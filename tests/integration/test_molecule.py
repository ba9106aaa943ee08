"""Every role's molecule scenario, so the one test command runs them too.

``molecule test -s default`` from each role directory, with molecule's default (delegated)
driver against the session's testbed hosts: create → converge → idempotence → verify →
destroy. The scenarios find the testbed up (the fixture brings it up) and leave it to the
session.
- hypervisor: hosts lxh1, lxh2 and a throw-away control plane on the testbed bridge; verify
  asserts the hosts are registered with capacity and MACs, libvirtd answers, the boot script
  and init script are in place.
- golden_node: host lxh1; verify asserts the callback script and cron entry are installed and
  that a dry run with a test context says "not yet due".
- control_plane: no testbed host; this machine (connection local, every path in a private
  directory under /tmp), the wheel built from the checkout, lxcloud serve as nobody under
  lxcloud-supervise; verify asserts the API answers, file modes, and a restart after a kill.
- image_repo: host lxh1 as the repository host and a throw-away control plane; verify asserts
  the captured image unpacks to the source, its metadata (sha256 of the compressed file, sizes)
  and the control plane's record of it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ROLES = sorted(p.parents[1].name for p in (REPO / "roles").glob("*/meta/main.yml"))


def scenario_file(role: str) -> Path:
    return REPO / "roles" / role / "molecule" / "default" / "molecule.yml"


def scenario(role: str) -> dict:
    return yaml.safe_load(scenario_file(role).read_text())


def test_every_role_has_a_default_scenario() -> None:
    assert ROLES, "no roles found"
    missing = [r for r in ROLES if not scenario_file(r).is_file()]
    assert not missing, f"roles without molecule/default/molecule.yml: {missing}"


@pytest.mark.parametrize("role", ROLES)
def test_role_molecule_default(role: str, testbed_factory) -> None:
    if not (BIN / "molecule").exists():
        pytest.fail("molecule is not installed in the venv (pip install -e .[test])")
    conf = scenario(role)
    # the scenario's platforms are testbed hosts lxh1..lxhN (localhost ones need none)
    hosts = [p for p in conf["platforms"] if p.get("name") not in ("localhost", "instance")
             and "localhost" not in str(p.get("name"))]
    if hosts:
        testbed_factory(len(hosts))
    env = dict(
        os.environ,
        PATH=f"{BIN}:{os.environ.get('PATH', '')}",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
        NO_COLOR="1",
    )
    env.pop("ANSIBLE_CONFIG", None)  # molecule writes its own
    t0 = time.monotonic()
    proc = subprocess.run(
        [BIN / "molecule", "test", "-s", "default"],
        cwd=REPO / "roles" / role, env=env, capture_output=True, text=True, timeout=900,
        check=False,
    )
    print(f"\nmolecule test ({role}): {time.monotonic() - t0:.1f} s (rc={proc.returncode})")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    # Every step of the sequence ran and succeeded (none skipped), idempotence included.
    steps = conf["scenario"]["test_sequence"]
    assert {"create", "converge", "idempotence", "verify", "destroy"} <= set(steps), steps
    for step in steps:
        assert re.search(rf"{step}\]?:? Executed: Successful", out), (
            f"molecule step {step} did not succeed:\n{out[-4000:]}"
        )
