"""The golden_node role's molecule scenario, so the one test command runs it too.

``molecule test`` from ``roles/golden_node``: create (testbed host lxh1, brought up only if no
testbed is) → converge → idempotence → verify (script installed and executable, cron entry,
dry run with a test context says "not yet due") → destroy (scratch prefix removed; the testbed
torn down only if the scenario created it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ROLE = REPO / "roles" / "golden_node"


def test_golden_node_role_molecule_default() -> None:
    if not (BIN / "molecule").exists():
        pytest.fail("molecule is not installed in the venv (pip install -e .[test])")
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("the testbed needs root and iproute2")
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
        cwd=ROLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    print(f"\nmolecule test (golden_node): {time.monotonic() - t0:.1f} s (rc={proc.returncode})")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    for step in ("converge", "idempotence", "verify", "destroy"):
        assert f"{step}: Executed: Successful" in out, f"molecule step {step}:\n{out[-4000:]}"
