"""The hypervisor role's molecule scenario, so the one test command runs it too.

``molecule test -s default`` from ``roles/hypervisor``: create (testbed hosts lxh1, lxh2 and a
throw-away control plane on the testbed bridge) → converge → idempotence → verify → destroy
(the testbed is torn down only if the scenario created it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ROLE = REPO / "roles" / "hypervisor"


def test_hypervisor_role_molecule_default(testbed_factory):
    if not (BIN / "molecule").exists():
        pytest.fail("molecule is not installed in the venv (pip install -e .[test])")
    # The session's testbed (shared with the other testbed tests): molecule's create finds it
    # up and its destroy leaves it to the session.
    testbed_factory(2)
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
        cwd=ROLE, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    elapsed = time.monotonic() - t0
    print(f"\nmolecule test -s default: {elapsed:.1f} s (rc={proc.returncode})")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    # Every step of the sequence ran and succeeded (none skipped), idempotence included.
    for step in ("create", "converge", "idempotence", "verify", "destroy"):
        assert re.search(rf"{step}\]?:? Executed: Successful", out), (
            f"molecule step {step} did not succeed:\n{out[-4000:]}"
        )
