"""``lxcloud db init`` and ``lxcloud serve`` (a real process, stopped with SIGTERM)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path

import pytest

from lxcloud_py.cli import main
from lxcloud_py.store import Store

REPO = Path(__file__).resolve().parents[2]


def test_db_init_is_idempotent_and_guards_the_password(
    sqlite_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LXCLOUD_ADMIN_PASSWORD", raising=False)
    assert main(["--db", sqlite_url, "db", "init"]) == 1
    assert "no admin password" in capsys.readouterr().err
    monkeypatch.setenv("LXCLOUD_ADMIN_PASSWORD", "from-env")
    assert main(["--db", sqlite_url, "db", "init"]) == 0
    assert "created the admin user oneadmin" in capsys.readouterr().out
    assert main(["--db", sqlite_url, "db", "init"]) == 0
    assert "exists (unchanged)" in capsys.readouterr().out
    # A different password is reported, not applied.
    assert main(["--db", sqlite_url, "db", "init", "--admin-password", "other"]) == 1
    assert "NOT changed" in capsys.readouterr().err
    argv = ["--db", sqlite_url, "db", "init", "--admin-password", "other"]
    assert main([*argv, "--reset-admin-password"]) == 0
    assert "changed the password" in capsys.readouterr().out
    from lxcloud_py.users import Authenticator

    store = Store(sqlite_url)
    try:
        assert Authenticator(store).authenticate("oneadmin:other").is_admin
    finally:
        store.dispose()
    # --force starts over.
    assert main(["--db", sqlite_url, "db", "init", "--force"]) == 0
    assert "created the admin user" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_answers_and_stops_gracefully(sqlite_url: str, sig: signal.Signals) -> None:
    env = {**os.environ, "LXCLOUD_DB": sqlite_url, "LXCLOUD_ADMIN_PASSWORD": "pw"}
    env.pop("LXCLOUD_CONFIG", None)
    assert main(["--db", sqlite_url, "db", "init", "--admin-password", "pw"]) == 0
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lxcloud_py", "serve", "--listen", f"127.0.0.1:{port}",
         "--stages", "api,monitor"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/RPC2")
        deadline = time.monotonic() + 20
        while True:
            try:
                reply = proxy.one.system.version("oneadmin:pw")
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "serve did not listen"
                time.sleep(0.1)
        assert reply[0] is True
        proxy("close")()
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "one.system.version user=oneadmin ip=127.0.0.1 code=0x0000" in err
    assert "Traceback" not in err
    assert "stopped" in err


def test_serve_refuses_bad_settings(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "lxcloud.yml"
    conf.write_text("api:\n  listen: 127.0.0.1:0\n  missed_intervalz: 3\n")
    assert main(["--db", sqlite_url, "serve", "--config", str(conf)]) == 1
    assert "missed_intervalz" in capsys.readouterr().err
    assert main(["--db", sqlite_url, "serve", "--listen", "nowhere"]) == 1
    assert "HOST:PORT" in capsys.readouterr().err


def test_serve_refuses_an_uninitialised_database(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--db", sqlite_url, "serve", "--listen", "127.0.0.1:0", "--stages", "api"]
    assert main(argv) == 1
    assert "lxcloud db init" in capsys.readouterr().err
