"""The control_plane role's supervisor (roles/control_plane/files/lxcloud-supervise), for real:
start/status/stop, restart after a crash with a doubling backoff, SIGKILL of a command that
ignores SIGTERM, and refusal without a config. The supervised command is a tiny fake that
writes its pid and start count, then sleeps (or exits at once, to crash)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SUPERVISE = Path(__file__).resolve().parents[2] / "roles" / "control_plane" / "files" / (
    "lxcloud-supervise"
)

FAKE = """\
import os, signal, sys, time
state = sys.argv[1]
n = len(open(state + '/starts').read().split()) if os.path.exists(state + '/starts') else 0
with open(state + '/starts', 'a') as f:
    f.write(f'{os.getpid()}\\n')
print(f'fake start {n + 1} env={os.environ.get("FAKE_SECRET")}', flush=True)
if os.environ.get('FAKE_IGNORE_TERM'):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if n + 1 < int(os.environ.get('FAKE_CRASHES', '0')) + 1:
    sys.exit(3)
time.sleep(600)
"""


def sv(config: Path, action: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SUPERVISE), "--config", str(config), action],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def wait_for(cond, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def starts(tmp: Path) -> list[int]:
    f = tmp / "starts"
    return [int(x) for x in f.read_text().split()] if f.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive either
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "fake.py").write_text(FAKE)
    envfile = tmp_path / "env"
    envfile.write_text("# secrets\nFAKE_SECRET=s3cret\n")
    conf = {
        "name": "fake-api",
        "command": [sys.executable, str(tmp_path / "fake.py"), str(tmp_path)],
        "environment_file": str(envfile),
        "pid_file": str(tmp_path / "run" / "fake.pid"),
        "log_file": str(tmp_path / "log" / "fake.log"),
        "backoff_initial": 0.2,
        "backoff_max": 0.8,
        "stable_after": 5,
        "stop_timeout": 1,
    }
    config = tmp_path / "supervise.json"

    def write(**extra: object) -> Path:
        config.write_text(json.dumps({**conf, **extra}))
        return config

    write()
    yield tmp_path, config, write
    sv(config, "stop")


def test_help_has_no_side_effects(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, str(SUPERVISE), "--help"], capture_output=True,
                       text=True, cwd=tmp_path, check=False)
    assert p.returncode == 0 and "restart" in p.stdout and "backoff" in p.stdout
    assert list(tmp_path.iterdir()) == []


def test_refuses_without_config(tmp_path: Path) -> None:
    for action in ("start", "status", "run"):
        p = sv(tmp_path / "absent.json", action)
        assert p.returncode == 6, p
        assert "no config at" in p.stderr and "absent.json" in p.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    c = tmp_path / "c.json"
    c.write_text(json.dumps({"command": ["true"], "pid_file": "p", "log_file": "l", "colour": 1}))
    p = sv(c, "start")
    assert p.returncode == 1 and "unknown key(s): colour" in p.stderr
    c.write_text(json.dumps({"command": "true", "pid_file": "p", "log_file": "l"}))
    assert "command must be a non-empty list" in sv(c, "start").stderr
    c.write_text(json.dumps({"command": ["x"], "pid_file": "p", "log_file": "l",
                             "backoff_initial": 0}))
    assert "backoff_initial must be a positive number" in sv(c, "status").stderr


def test_start_status_stop(setup) -> None:  # type: ignore[no-untyped-def]
    tmp, config, _ = setup
    assert sv(config, "status").returncode == 3
    p = sv(config, "start")
    assert p.returncode == 0, p.stderr
    assert "started fake-api" in p.stdout
    wait_for(lambda: len(starts(tmp)) == 1)
    st = sv(config, "status")
    assert st.returncode == 0 and f"command pid {starts(tmp)[0]}" in st.stdout
    # start again: no second supervisor, no second command
    again = sv(config, "start")
    assert again.returncode == 0 and "already running" in again.stdout
    time.sleep(0.3)
    assert len(starts(tmp)) == 1
    child = starts(tmp)[0]
    p = sv(config, "stop")
    assert p.returncode == 0 and "stopped" in p.stdout
    assert not alive(child)
    assert sv(config, "status").returncode == 3
    assert not (tmp / "run" / "fake.pid").exists()
    log = (tmp / "log" / "fake.log").read_text()
    # the environment file reached the command; the supervisor logged what it did
    assert "fake start 1 env=s3cret" in log
    assert f"started pid {child}" in log and "supervisor exits" in log
    assert sv(config, "stop").returncode == 0  # stopping a stopped service is fine


def test_restarts_a_crashed_command_with_backoff(setup) -> None:  # type: ignore[no-untyped-def]
    tmp, config, _ = setup
    assert sv(config, "start").returncode == 0
    wait_for(lambda: len(starts(tmp)) == 1)
    first = starts(tmp)[0]
    os.kill(first, signal.SIGKILL)  # a crash
    wait_for(lambda: len(starts(tmp)) == 2)
    assert not alive(first) and alive(starts(tmp)[1])
    log = (tmp / "log" / "fake.log").read_text()
    assert "the command exited (status -9)" in log and "restarting in 0.2 s" in log
    assert sv(config, "status").returncode == 0


def test_backoff_doubles_up_to_the_max(setup) -> None:  # type: ignore[no-untyped-def]
    tmp, config, write = setup
    write(environment_file=None)
    os.environ["FAKE_CRASHES"] = "4"  # not passed: the command's environment is fixed
    try:
        assert sv(config, "start").returncode == 0
        wait_for(lambda: len(starts(tmp)) >= 1)
        time.sleep(1.0)
        assert len(starts(tmp)) == 1  # the caller's environment did not leak in
    finally:
        del os.environ["FAKE_CRASHES"]
    sv(config, "stop")
    (tmp / "starts").unlink()
    (tmp / "env2").write_text("FAKE_CRASHES=4\n")
    write(environment_file=str(tmp / "env2"))
    t0 = time.monotonic()
    assert sv(config, "start").returncode == 0
    wait_for(lambda: len(starts(tmp)) == 5)
    elapsed = time.monotonic() - t0
    # four crashes, then waits of 0.2 + 0.4 + 0.8 + 0.8 (capped) seconds
    assert elapsed >= 2.0, elapsed
    log = (tmp / "log" / "fake.log").read_text()
    delays = [line.rsplit("restarting in ", 1)[1] for line in log.splitlines()
              if "restarting in" in line]
    assert delays == ["0.2 s", "0.4 s", "0.8 s", "0.8 s"], delays
    assert alive(starts(tmp)[-1])


def test_sigkill_after_stop_timeout(setup) -> None:  # type: ignore[no-untyped-def]
    tmp, config, _ = setup
    (tmp / "env").write_text("FAKE_IGNORE_TERM=1\n")
    assert sv(config, "start").returncode == 0
    wait_for(lambda: len(starts(tmp)) == 1)
    wait_for(lambda: "fake start 1" in (tmp / "log" / "fake.log").read_text())
    t0 = time.monotonic()
    assert sv(config, "stop").returncode == 0
    assert 0.9 <= time.monotonic() - t0 < 5
    assert not alive(starts(tmp)[0])
    assert "ignored SIGTERM: SIGKILL" in (tmp / "log" / "fake.log").read_text()


def test_start_fails_when_the_command_cannot_run(setup) -> None:  # type: ignore[no-untyped-def]
    tmp, config, write = setup
    write(command=[str(tmp / "no-such-binary")])
    p = sv(config, "start")
    assert p.returncode == 1 and "did not start" in p.stderr and "no-such-binary" in p.stderr
    assert sv(config, "status").returncode == 3  # and no supervisor is left behind


def test_restart(setup) -> None:  # type: ignore[no-untyped-def]
    tmp, config, _ = setup
    assert sv(config, "restart").returncode == 0  # from stopped: just starts
    wait_for(lambda: len(starts(tmp)) == 1)
    assert sv(config, "restart").returncode == 0
    wait_for(lambda: len(starts(tmp)) == 2)
    assert not alive(starts(tmp)[0]) and alive(starts(tmp)[1])
