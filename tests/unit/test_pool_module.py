"""The ``lxcloud.cloud.pool`` module through ansible, against a served API (``ApiServer`` on
loopback over a real store): check mode predicts, the real run changes, a second run reports
no change, diff shows before/after, absent deletes, errors fail with the API's message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lxcloud_py import pools, users
from lxcloud_py.api import ApiServer
from lxcloud_py.store import Store

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def served(sqlite_url: str) -> Iterator[tuple[str, Store]]:
    store = Store(sqlite_url)
    store.create_schema()
    users.ensure_admin(store, "pw")
    server = ApiServer(store, ("127.0.0.1", 0))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}/RPC2", store
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        store.dispose()


def run_module(args: dict[str, Any], *flags: str) -> dict[str, Any]:
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        ANSIBLE_NOCOLOR="1",
        PATH="{}:{}".format(BIN, os.environ.get("PATH", "")),
    )
    proc = subprocess.run(
        [BIN / "ansible", "localhost", "-c", "local", "-m", "lxcloud.cloud.pool",
         "-a", json.dumps(args), *flags],
        capture_output=True, text=True, env=env, check=False,
    )
    _, sep, body = proc.stdout.partition("localhost | ")
    assert sep, proc.stdout + proc.stderr
    status, result = body.split(" => ", 1)
    out = json.loads(result)
    out["_status"], out["_stdout"] = status.strip().rstrip("!"), proc.stdout
    return out


def spec_of(store: Store, name: str) -> pools.PoolSpec:
    with store.transaction() as conn:
        return pools.get_spec(conn, name)


def test_check_real_idempotent_diff_absent(served: tuple[str, Store], tmp_path: Path) -> None:
    url, store = served
    api = {"api_url": url, "api_session": "oneadmin:pw", "api_config": str(tmp_path / "x")}
    args = dict(api, name="batch", image="golden", cpu=0.5, memory=128, target=3,
                lifetime=600, hosts=["hv2", "hv1"])
    r = run_module(args, "--check", "--diff")
    assert (r["_status"], r["changed"], r["action"]) == ("CHANGED", True, "created")
    assert r["before"] == {} and r["after"]["target"] == 3
    with store.transaction() as conn:
        assert pools.list_pools(conn) == []  # check mode sent nothing
    r = run_module(args)
    assert (r["changed"], r["action"]) == (True, "created")
    spec = spec_of(store, "batch")
    assert (spec.target, spec.lifetime, spec.hosts) == (3, 600, ("hv1", "hv2"))
    assert r["after"] == pools.wire(spec)
    assert "oneadmin:pw" not in json.dumps(r)
    # the second run (and its check mode) report no change
    assert run_module(args, "--check")["changed"] is False
    r = run_module(args)
    assert (r["_status"], r["changed"], r["action"]) == ("SUCCESS", False, "none")
    # a partial change: check predicts it exactly, the real run does it, the diff shows it
    lower = dict(api, name="batch", target=1, drain="hard")
    r = run_module(lower, "--check", "--diff")
    assert r["changed"] is True and r["changes"] == ["target 3 -> 1", "drain graceful -> hard"]
    assert spec_of(store, "batch").target == 3
    r = run_module(lower, "--diff")
    assert r["changes"] == ["target 3 -> 1", "drain graceful -> hard"]
    assert '-    "target": 3,' in r["_stdout"] and '+    "target": 1,' in r["_stdout"]
    assert (spec_of(store, "batch").target, spec_of(store, "batch").lifetime) == (1, 600)
    assert run_module(lower)["changed"] is False
    # absent
    gone = dict(api, name="batch", state="absent")
    assert run_module(gone, "--check")["changed"] is True
    assert spec_of(store, "batch")
    r = run_module(gone)
    assert (r["changed"], r["action"]) == (True, "deleted")
    assert run_module(gone)["changed"] is False


def test_errors_fail_with_the_api_message(served: tuple[str, Store], tmp_path: Path) -> None:
    url, _store = served
    api = {"api_url": url, "api_session": "oneadmin:pw", "api_config": str(tmp_path / "x")}
    r = run_module(dict(api, name="b", image="golden", target=-1))
    assert r["_status"] == "FAILED" and "target must be between 0 and 100000" in r["msg"]
    r = run_module(dict(api, name="b", template="CPU = 1\n", image="golden"))
    assert r["_status"] == "FAILED" and "mutually exclusive" in r["msg"]
    r = run_module(dict(api, name="b", image="golden", api_session="oneadmin:wrong"))
    assert r["_status"] == "FAILED" and r["api_code"] == 0x0100
