"""Integration fixtures: the namespace testbed of hypervisor hosts (``testbed/testbed.py``).

``testbed`` (session scope) gives a testbed with at least ``LXCLOUD_TESTBED_HOSTS`` hosts
(default 3); ``testbed_factory(n)`` gives one with at least ``n``. A testbed that is already up
(``testbed/up`` by hand, or another pytest session) is reused and grown if needed, never shrunk.
At the end of the session the testbed is torn down only if a fixture created it and no other
session still uses it (each session holds a shared lock on ``<dir>/users.lock``), and not when
``LXCLOUD_TESTBED_KEEP=1``. Where the testbed cannot work (not root, no ``ip netns``, missing
daemons) tests skip with the reason, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from testbed_helpers import (
    SYSTEM_PYTHON,
    TESTBED_PY,
    Testbed,
    TestbedHost,
    no_testbed_reason,
    shared_testbed_dir,
    skip_or_fail,
)

__all__ = ["Testbed", "TestbedHost", "no_testbed_reason", "skip_or_fail"]

class TestbedSession:
    """One pytest session's use of the testbed: a shared lease, created-by-us bookkeeping."""

    __test__ = False

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.lease: IO[str] | None = None
        self.tb: Testbed | None = None

    def ensure(self, n: int) -> Testbed:
        problem = no_testbed_reason()
        if problem:
            skip_or_fail(problem)
        if self.lease is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.lease = open(self.dir / "users.lock", "a")  # noqa: SIM115 - held all session
            fcntl.flock(self.lease, fcntl.LOCK_SH)  # waits while another session tears down
        if self.tb is None or len(self.tb.hosts) < n:
            res = subprocess.run(
                [SYSTEM_PYTHON, str(TESTBED_PY), "up", str(n), "--owner", "fixture"],
                capture_output=True,
                text=True,
                env={**os.environ, "LXCLOUD_TESTBED_DIR": str(self.dir)},
                timeout=600,
            )
            if res.returncode != 0:
                pytest.fail(f"testbed/up {n} failed:\n{res.stdout}{res.stderr}")
            self.tb = Testbed(self.dir)
        return self.tb

    def close(self) -> None:
        if self.lease is None:
            return
        try:
            state = json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError):
            state = {}
        keep = os.environ.get("LXCLOUD_TESTBED_KEEP") == "1"
        if state.get("owner") == "fixture" and not keep:
            try:
                fcntl.flock(self.lease, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the last user?
            except BlockingIOError:
                pass  # another session still uses it: the last one tears it down
            else:
                subprocess.run(
                    [SYSTEM_PYTHON, str(TESTBED_PY), "down", "--force"],  # we hold the lease
                    env={**os.environ, "LXCLOUD_TESTBED_DIR": str(self.dir)},
                    check=False,
                    timeout=300,
                )
        self.lease.close()
        self.lease = None


@pytest.fixture(scope="session")
def _testbed_session() -> Iterator[TestbedSession]:
    session = TestbedSession(shared_testbed_dir())
    try:
        yield session
    finally:
        session.close()


@pytest.fixture(scope="session")
def testbed_factory(_testbed_session: TestbedSession) -> Callable[[int], Testbed]:
    """``testbed_factory(n)``: the session's testbed, grown to at least n hosts."""
    return _testbed_session.ensure


@pytest.fixture(scope="session")
def testbed(testbed_factory: Callable[[int], Testbed]) -> Testbed:
    """A testbed with at least LXCLOUD_TESTBED_HOSTS (default 3) hosts."""
    return testbed_factory(int(os.environ.get("LXCLOUD_TESTBED_HOSTS", "3")))
