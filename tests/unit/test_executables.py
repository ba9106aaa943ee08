"""Every executable in the repository answers --help with usage and no side effects, refuses
``--list`` (what Ansible's script inventory plugin would pass it), and the scripts meant for one
place (inside the test image, on a hypervisor) refuse to run anywhere else. Each run happens
inside ``unshare -m -p -f --mount-proc --propagation private``; the mount table seen there must
be the same afterwards. And ``ansible-inventory -i ""`` from the repository root executes
nothing (the project's ansible.cfg enables no script plugin)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_INVENTORY = Path(sys.executable).parent / "ansible-inventory"


def executables() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-s"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    return sorted(line.split("\t", 1)[1] for line in out.splitlines()
                  if line.startswith("100755"))


#: Executables whose run without arguments is their job (install, test, demo, build, CI): they
#: are checked with --help and --list only.
MAIN_JOBS = {".ci/run", "scripts/bootstrap", "scripts/test", "scripts/demo",
             "images/build-test-image", "images/build-lvm-guest", "scripts/install-check",
             "scripts/collection-check", "testbed/lvm-guest", "testbed/lvm_guest.py",
             "testbed/up", "testbed/down",
             "testbed/status", "testbed/shape", "testbed/ssh", "testbed/testbed.py",
             "roles/hypervisor/molecule/default/controlplane"}
#: Scripts that must refuse to run here (not their place), with no arguments.
ONE_PLACE = {"roles/hypervisor/files/lxcloud-register.init": 6,
             "roles/control_plane/files/lxcloud-supervise": 6}

SANDBOX = ["unshare", "-m", "-p", "-f", "--mount-proc", "--propagation", "private"]


def sandboxed(path: str, *args: str) -> tuple[int, str, bool]:
    """(exit code, output, mount table unchanged) of ``path args`` in a private mount and PID
    namespace."""
    script = (
        'cat /proc/self/mountinfo > "$1"; shift; "$@" </dev/null; rc=$?; '
        'cat /proc/self/mountinfo > "$0.after"; exit $rc'
    )
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"lxexe-{os.getpid()}"
    before = tmp.with_suffix(".before")
    after = Path(str(before) + ".after")
    res = subprocess.run(
        [*SANDBOX, "sh", "-c", script, str(before), str(before), str(REPO / path), *args],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    try:
        same = before.read_text() == after.read_text()
    finally:
        before.unlink(missing_ok=True)
        after.unlink(missing_ok=True)
    return res.returncode, res.stdout + res.stderr, same


def need_sandbox() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the executables test needs root and unshare in CI")
        pytest.skip("needs root and unshare")


def test_the_list_is_what_git_tracks() -> None:
    found = set(executables())
    assert found >= set(ONE_PLACE) | {".ci/run", "scripts/test"}
    unexpected = found - MAIN_JOBS - set(ONE_PLACE) - {
        "roles/hypervisor/files/lxcloud-register", "bench/api_hostile.py",
    }
    # a new executable must be classified here (and answer --help)
    assert all(p.startswith(("bench/", "scripts/")) for p in unexpected), unexpected


@pytest.mark.parametrize("path", executables())
def test_help_and_list_have_no_side_effects(path: str) -> None:
    need_sandbox()
    rc, out, same = sandboxed(path, "--help")
    assert rc == 0, f"{path} --help: rc {rc}\n{out}"
    assert "usage" in out.lower(), f"{path} --help prints no usage:\n{out}"
    assert same, f"{path} --help changed the mount table"
    rc, out, same = sandboxed(path, "--list")
    assert rc != 0, f"{path} --list did something (rc 0):\n{out}"
    assert same, f"{path} --list changed the mount table"


@pytest.mark.parametrize("path", sorted(ONE_PLACE))
def test_one_place_scripts_refuse_here(path: str) -> None:
    need_sandbox()
    rc, out, same = sandboxed(path, "start")
    assert rc == ONE_PLACE[path] and same, (rc, out)


@pytest.mark.parametrize("path", ["images/guest/initramfs-init", "images/guest/init",
                                  "images/guest/callback-loop"])
def test_guest_scripts_refuse_outside_the_guest(path: str) -> None:
    """Not executable in the repository (the image builder sets their modes); run with sh as
    someone might, with no arguments and with --list, they refuse before touching anything."""
    need_sandbox()
    assert not os.access(REPO / path, os.X_OK), f"{path} must not be executable in the tree"
    for args in ((), ("--list",)):
        res = subprocess.run(
            [*SANDBOX, "sh", "-c", 'cat /proc/self/mountinfo > "$0"; sh "$1" "$2" </dev/null; '
             'rc=$?; cat /proc/self/mountinfo > "$0.after"; exit $rc',
             "/tmp/lxguest-mounts", str(REPO / path), *args],
            capture_output=True, text=True, timeout=60,
        )
        before = Path("/tmp/lxguest-mounts").read_text()
        after = Path("/tmp/lxguest-mounts.after").read_text()
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert "refusing" in res.stderr or "no arguments" in res.stderr, res.stderr
        assert before == after, f"{path} {args} changed the mount table"
    Path("/tmp/lxguest-mounts").unlink(missing_ok=True)
    Path("/tmp/lxguest-mounts.after").unlink(missing_ok=True)


def test_empty_inventory_from_the_root_executes_nothing(tmp_path: Path) -> None:
    """``ansible-inventory -i ""`` from a directory laid out like the repository root (its
    ansible.cfg and an executable canary that records being run): the canary never runs."""
    need_sandbox()
    shutil.copy(REPO / "ansible.cfg", tmp_path / "ansible.cfg")
    marker = tmp_path / "ran"
    canary = tmp_path / "canary"
    canary.write_text(f"#!/bin/sh\necho \"$@\" > {marker}\necho '{{}}'\n")
    canary.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    res = subprocess.run([*SANDBOX, str(ANSIBLE_INVENTORY), "-i", "", "--list"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env=env)
    assert not marker.exists(), f"ansible-inventory ran {canary}: {res.stdout}{res.stderr}"
    # and from the repository root itself, with its own ansible.cfg: no script plugin at work
    res = subprocess.run([*SANDBOX, str(ANSIBLE_INVENTORY), "-i", "", "--list", "-vvv"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert "with script plugin" not in res.stdout + res.stderr
    assert "script declined" not in res.stdout + res.stderr
