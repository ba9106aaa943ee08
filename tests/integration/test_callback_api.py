"""Both callbacks against the real control plane: ``lxcloud serve`` on a temporary SQLite DB.

The test image's busybox loop (``images/guest/callback-loop``, run on the host under busybox
with a scratch root, as in tests/unit/test_callback_guest.py) and the golden node's
``lxcloud-callback`` each terminate a VM allocated through the API with the token
``lxcloud.vm.token`` issued, and are refused with a wrong token.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxcloud_py.api.launcher import ServeProcess

REPO = Path(__file__).resolve().parents[2]
GUEST = REPO / "images" / "guest"
CALLBACK = REPO / "roles" / "golden_node" / "files" / "lxcloud-callback"
LXCLOUD = Path(sys.executable).parent / "lxcloud"
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
ADMIN = "oneadmin:test-admin-pw"


class Server:
    def __init__(self, tmp: Path) -> None:
        self.env = dict(os.environ, LXCLOUD_DB=f"sqlite:///{tmp / 'lxcloud.db'}")
        self.env.pop("LXCLOUD_CONFIG", None)
        subprocess.run(
            [LXCLOUD, "db", "init", "--admin-password", ADMIN.split(":", 1)[1]],
            env=self.env, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.server = ServeProcess(self.env["LXCLOUD_DB"], tmp / "serve.log", env=self.env).start()
        self.url = self.server.url
        self.log = self.server.log_path
        self.api = xmlrpc.client.ServerProxy(self.url)

    def new_vm(self, name: str) -> tuple[int, str]:
        ok, vm_id, _code = self.api.one.vm.allocate(
            ADMIN, f'NAME="{name}"\nCPU=1\nMEMORY=128\n', False
        )[:3]
        assert ok, vm_id
        ok, token, _code = self.api.lxcloud.vm.token(ADMIN, vm_id)[:3]
        assert ok, token
        return vm_id, token

    def state(self, vm_id: int) -> str:
        ok, xml, _code = self.api.one.vm.info(ADMIN, vm_id)[:3]
        assert ok, xml
        return xml.split("<STATE>", 1)[1].split("</STATE>", 1)[0]

    def stop(self) -> None:
        self.api("close")()  # the API keeps HTTP/1.1 connections alive
        self.server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not LXCLOUD.exists():
        pytest.fail(f"{LXCLOUD} missing: pip install -e . into the venv")
    s = Server(tmp_path_factory.mktemp("lxcloud-serve"))
    yield s
    s.stop()


DONE = "6"  # OpenNebula VM STATE DONE


def _busybox_loop(
    tmp: Path, url: str, vm_id: int, token: str, wait: float
) -> tuple[int | None, str]:
    root, bb = tmp / "root", tmp / "bb"
    for d in ("lib/lxcloud", "etc/lxcloud", "run/lxcloud", "proc", "tmp"):
        (root / d).mkdir(parents=True)
    bb.mkdir()
    out = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout
    for applet in out.split():
        (bb / applet).symlink_to(BUSYBOX)
    shutil.copy(GUEST / "context.sh.lib", root / "lib/lxcloud/context.sh.lib")
    (root / "etc/lxcloud/callback.conf").write_text("BACKOFF_START='1'\n")
    (root / "proc/uptime").write_text("100.0 1.0\n")
    (root / "run/lxcloud/context.sh").write_text(
        f"VMID='{vm_id}'\nLIFETIME='5'\nLXCLOUD_TOKEN='{token}'\nLXCLOUD_API='{url}'\n"
        "DRAIN_CHECK_INTERVAL='1'\n"
    )
    env = {"LXCLOUD_ROOT": str(root), "LXCLOUD_PATH": str(bb), "PATH": str(bb),
           "POWEROFF": f"touch {root}/poweroff-called"}  # fmt: skip
    p = subprocess.Popen(
        [BUSYBOX, "sh", str(GUEST / "callback-loop")], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        text, _ = p.communicate(timeout=wait)
        return p.returncode, text
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        text, _ = p.communicate(timeout=5)
        return None, text


@pytest.mark.skipif(not Path(BUSYBOX).exists(), reason="busybox not installed")
def test_busybox_loop_terminates_through_lxcloud_serve(tmp_path: Path, server: Server) -> None:
    vm_id, token = server.new_vm("cb-busybox")
    rc, out = _busybox_loop(tmp_path / "ok", server.url, vm_id, token, wait=20)
    assert rc == 0, out
    assert f"LXCLOUD-CALLBACK ok vmid={vm_id}" in out
    assert server.state(vm_id) == DONE


@pytest.mark.skipif(not Path(BUSYBOX).exists(), reason="busybox not installed")
def test_busybox_loop_is_refused_with_a_wrong_token(tmp_path: Path, server: Server) -> None:
    vm_id, _token = server.new_vm("cb-busybox-bad")
    rc, out = _busybox_loop(tmp_path / "bad", server.url, vm_id, "not-the-token", wait=2.5)
    assert rc is None, out  # still retrying
    assert "LXCLOUD-CALLBACK error API refused (success=0)" in out
    assert server.state(vm_id) != DONE


def _python_callback(
    tmp: Path, url: str, vm_id: int, token: str
) -> subprocess.CompletedProcess[str]:
    tmp.mkdir()
    ctx = tmp / "context.sh"
    ctx.write_text(f"VMID='{vm_id}'\nLIFETIME='1'\nLXCLOUD_TOKEN='{token}'\nLXCLOUD_API='{url}'\n")
    return subprocess.run(
        ["/usr/bin/python3", str(CALLBACK), "--context", str(ctx),
         "--batch-user", "lxcloud-no-such-user", "--busy-file", str(tmp / "busy"),
         "--lock-file", str(tmp / "lock"), "--state-file", str(tmp / "state"),
         "--retries", "3", "--backoff", "0.1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_lxcloud_callback_terminates_through_lxcloud_serve(tmp_path: Path, server: Server) -> None:
    vm_id, token = server.new_vm("cb-python")
    r = _python_callback(tmp_path / "ok", server.url, vm_id, token)
    assert r.returncode == 0, r.stderr
    assert f"terminate ok: vm {vm_id}" in r.stderr
    assert server.state(vm_id) == DONE


def test_lxcloud_callback_wrong_token_is_not_retried(tmp_path: Path, server: Server) -> None:
    vm_id, _token = server.new_vm("cb-python-bad")
    r = _python_callback(tmp_path / "bad", server.url, vm_id, "not-the-token")
    assert r.returncode == 5, r.stderr
    assert "refused AUTHENTICATION (0x0100)" in r.stderr and "not retrying" in r.stderr
    assert server.state(vm_id) != DONE
