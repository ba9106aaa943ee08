"""libvirtd in the root namespace for single-host integration tests, shared by every test that
needs ``qemu:///system`` on this machine.

No systemd here: :func:`ensure_libvirtd` starts ``virtlogd -d`` and ``libvirtd -d`` when no
libvirtd answers, and :func:`release_libvirtd` stops them again only if this process started
them and no domain other than the ones the caller owns is left (another engineer's session may
be using the same daemon).  It also makes ``/dev/kvm`` group kvm, mode 0660 (DESIGN.md: with
0600 libvirt re-probes qemu on every call, ~48 s per define).

Use the ``libvirt_uri`` fixture (tests/integration/conftest.py imports it from here, or a test
module does ``from libvirt_helpers import libvirt_uri``), or the two functions directly.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

URI = "qemu:///system"
PIDFILES = {"libvirtd": "/run/libvirtd.pid", "virtlogd": "/run/virtlogd.pid"}


def _libvirt():
    try:
        import libvirt
    except ImportError:
        return None
    return libvirt


def _answers(uri: str = URI) -> bool:
    libvirt = _libvirt()
    if libvirt is None:
        return False
    try:
        libvirt.registerErrorHandler(lambda *_: None, None)
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    conn.close()
    return True


def fix_kvm_permissions() -> str:
    """chgrp kvm /dev/kvm; chmod 660 — returns what was done (for the test log)."""
    if not os.path.exists("/dev/kvm") or os.geteuid() != 0:
        return "no /dev/kvm or not root: nothing done"
    try:
        gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return "no kvm group: nothing done"
    st = os.stat("/dev/kvm")
    if st.st_gid == gid and st.st_mode & 0o777 == 0o660:
        return "/dev/kvm already root:kvm 0660"
    os.chown("/dev/kvm", 0, gid)
    os.chmod("/dev/kvm", 0o660)
    return "/dev/kvm set to root:kvm 0660"


def ensure_libvirtd(timeout: float = 60) -> list[str]:
    """Start virtlogd and libvirtd unless a libvirtd answers; returns the daemons started."""
    if _libvirt() is None:
        pytest.skip("libvirt Python bindings missing (pip install .[libvirt])")
    if _answers():
        return []
    for tool in ("libvirtd", "virtlogd", "qemu-system-x86_64"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            pytest.skip(f"{tool} not installed (scripts/bootstrap installs libvirt and qemu)")
    if os.geteuid() != 0:
        pytest.skip("starting libvirtd needs root")
    fix_kvm_permissions()
    started = []
    if not _alive("virtlogd"):
        subprocess.run(["virtlogd", "-d"], check=True)
        started.append("virtlogd")
    subprocess.run(["libvirtd", "-d"], check=True)
    started.append("libvirtd")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers():
            return started
        time.sleep(0.2)
    release_libvirtd(started, ())
    pytest.fail(f"libvirtd did not answer on {URI} within {timeout} s")
    return started


def _pid(daemon: str) -> int | None:
    try:
        with open(PIDFILES[daemon]) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _alive(daemon: str) -> bool:
    pid = _pid(daemon)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def other_domains(own_prefixes: tuple[str, ...]) -> list[str]:
    libvirt = _libvirt()
    if libvirt is None or not _answers():
        return []
    conn = libvirt.open(URI)
    try:
        return [d.name() for d in conn.listAllDomains() if not d.name().startswith(own_prefixes)]
    finally:
        conn.close()


def release_libvirtd(started: list[str], own_prefixes: tuple[str, ...] = ("lxvm-",)) -> None:
    """Stop the daemons ``ensure_libvirtd`` started, unless someone else's domains exist."""
    if not started or other_domains(own_prefixes):
        return
    for daemon in ("libvirtd", "virtlogd"):
        if daemon not in started:
            continue
        pid = _pid(daemon)
        if pid is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)


def cleanup_domains(prefix: str) -> None:
    """Force off and undefine every domain whose name starts with ``prefix``."""
    libvirt = _libvirt()
    if libvirt is None or not _answers():
        return
    conn = libvirt.open(URI)
    try:
        for dom in conn.listAllDomains():
            if not dom.name().startswith(prefix):
                continue
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                )
    finally:
        conn.close()


@pytest.fixture(scope="session")
def libvirt_uri() -> Iterator[str]:
    """``qemu:///system`` with a libvirtd answering (started for the session if needed)."""
    started = ensure_libvirtd()
    try:
        yield URI
    finally:
        cleanup_domains("lxvm-")
        release_libvirtd(started)


# ---------------------------------------------------------------------------------------------
# running modules the way Ansible does (ansible / ansible-playbook from the venv, local
# connection, the venv's python as interpreter, the json stdout callback)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(REPO, ".venv", "bin")


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
        ANSIBLE_STDOUT_CALLBACK="lxcloud_json",
        ANSIBLE_CALLBACK_PLUGINS=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                              "callback_plugins"),
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_RETRY_FILES_ENABLED="False",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCALHOST_WARNING="False",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
    )
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    return env


def _python() -> str:
    return os.path.join(VENV_BIN, "python")


def adhoc(module: str, args: dict, check: bool = False, diff: bool = False) -> dict:
    """Run one module on localhost through ``ansible``; returns its result dict."""
    import json

    argv = [
        os.path.join(VENV_BIN, "ansible"), "localhost", "-i", "localhost,", "-c", "local",
        "-e", f"ansible_python_interpreter={_python()}",
        "-m", module, "-a", json.dumps(args),
    ]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    proc = subprocess.run(argv, capture_output=True, text=True, env=ansible_env(), check=False)
    try:
        out = json.loads(proc.stdout)
        return out["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError):
        raise AssertionError(
            f"ansible {module} printed no result (rc={proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        ) from None


def playbook(path: str, extravars: dict | None = None, check: bool = False,
             inventory: str = "localhost,", extra_args: tuple[str, ...] = ()) -> dict:
    """Run a playbook; returns the json callback's document plus ``rc`` and ``stderr``."""
    import json

    argv = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", inventory, path, *extra_args]
    if extravars is not None:
        argv += ["-e", json.dumps(extravars)]
    if check:
        argv.append("--check")
    proc = subprocess.run(argv, capture_output=True, text=True, env=ansible_env(), check=False)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(
            f"ansible-playbook printed no JSON (rc={proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        ) from None
    doc["rc"] = proc.returncode
    doc["stderr"] = proc.stderr
    return doc


def task_results(doc: dict, host: str = "localhost") -> list[tuple[str, dict]]:
    """(task name, result) for every task the host ran, in order."""
    out = []
    for play in doc.get("plays", []):
        for task in play.get("tasks", []):
            if host in task.get("hosts", {}):
                out.append((task["task"]["name"], task["hosts"][host]))
    return out


def adhoc_many(module: str, cases: list[dict], check: bool = False) -> list[dict]:
    """Run ``module`` once per args dict in one ansible-playbook run (each task ignore_errors),
    on localhost with the venv's python; returns the results in order.  Cheaper than one
    ``ansible`` process per case."""
    import json

    plays = [{
        "name": "cases", "hosts": "localhost", "gather_facts": False,
        "vars": {"ansible_python_interpreter": _python(), "ansible_connection": "local"},
        "tasks": [{"name": f"case {i}", module: args, "ignore_errors": True}
                  for i, args in enumerate(cases)],
    }]
    with tempfile.NamedTemporaryFile("w", suffix=".yml", prefix="lxvm-cases-") as f:
        json.dump(plays, f)  # JSON is YAML
        f.flush()
        doc = playbook(f.name, check=check)
    results = dict(task_results(doc))
    missing = [i for i in range(len(cases)) if f"case {i}" not in results]
    assert not missing, f"cases {missing} did not run: {doc['stderr'][-2000:]}"
    return [results[f"case {i}"] for i in range(len(cases))]
