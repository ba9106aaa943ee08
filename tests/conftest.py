"""Shared fixtures: a private MariaDB on loopback and a ``store`` on each backend.

The MariaDB server is the real thing (Debian's mariadb-server): started once per test session
in a temporary data directory on a free loopback port, unless ``LXCLOUD_TEST_MYSQL_URL`` names
one already running. Where it cannot start, MySQL tests skip with the reason, except under
``CI=true``, where they fail: CI must exercise both backends.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxcloud_py.store import Store

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"MariaDB is required in CI: {reason}")
    pytest.skip(reason)


class MariaDB:
    """A private mariadbd: own datadir, socket and port, root without password on loopback."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lxcloud-mariadb-"))
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        install = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
        server = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        if not (os.path.exists(install) and os.path.exists(server)):
            raise RuntimeError("mariadb-server is not installed (scripts/bootstrap installs it)")
        datadir = self.dir / "data"
        user = ["--user=root"] if os.geteuid() == 0 else []
        subprocess.run(
            [
                install,
                "--no-defaults",
                f"--datadir={datadir}",
                *user,
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
        )
        self.log = open(self.dir / "mariadbd.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [
                server,
                "--no-defaults",
                *user,
                f"--datadir={datadir}",
                f"--socket={self.dir / 'sock'}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=64M",
                "--max-connections=500",
                "--innodb-flush-log-at-trx-commit=2",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "mariadbd.log").read_text()[-2000:])
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("mariadbd did not listen within 30 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def mysql_server_url() -> Iterator[str]:
    """Base URL (no database) of a MariaDB server for the session."""
    given = os.environ.get("LXCLOUD_TEST_MYSQL_URL")
    if given:
        yield given.rstrip("/")
        return
    try:
        import pymysql  # noqa: F401
    except ImportError:
        _unavailable("PyMySQL is not installed (pip install .[mysql])")
    server = MariaDB()
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        server.stop()
        _unavailable(f"could not start a private MariaDB: {exc}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def mysql_url(mysql_server_url: str) -> Iterator[str]:
    """A fresh, empty MySQL database for one test, dropped afterwards."""
    import pymysql

    name = "lxtest_" + uuid.uuid4().hex[:12]
    from sqlalchemy.engine import make_url

    u = make_url(mysql_server_url)
    conn = pymysql.connect(
        host=u.host,
        port=u.port or 3306,
        user=u.username,
        password=u.password or "",
        autocommit=True,
    )
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        yield f"{mysql_server_url}/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'lxcloud.db'}"


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The URL of a fresh database on each backend: tests using it run twice."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A store with the schema created, on each backend."""
    s = Store(db_url)
    s.create_schema()
    try:
        yield s
    finally:
        s.dispose()
