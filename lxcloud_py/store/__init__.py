"""The control plane's state store: one interface over SQLite (default) and MariaDB/MySQL.

Every write goes through :meth:`Store.transaction`, which yields a SQLAlchemy ``Connection``
inside one database transaction (committed on success, rolled back on any exception).
On SQLite the transaction starts with ``BEGIN IMMEDIATE`` so that writers serialise up front
instead of failing half-way on a lock upgrade; on MySQL row locks (``SELECT ... FOR UPDATE``
through :meth:`Store.for_update`) make claims atomic between schedulers.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Select, create_engine, event, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateColumn

from . import schema
from .schema import metadata

__all__ = ["Store", "default_url", "now", "schema"]

#: Seconds a writer waits for a lock before giving up (SQLite busy timeout, MySQL lock wait).
LOCK_TIMEOUT = 30


def now() -> float:
    return time.time()


def default_url() -> str:
    """``$LXCLOUD_DB``, else an SQLite file in the user's state directory."""
    env = os.environ.get("LXCLOUD_DB")
    if env:
        return env
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return f"sqlite:///{state / 'lxcloud' / 'lxcloud.db'}"


def _secure_sqlite_file(path: Path) -> None:
    """The database holds password and token hashes: its directory is created 0700, the file
    0600 before SQLite first opens it (SQLite gives its -wal and -shm files the database's
    mode), and an existing file, -wal or -shm open to others is narrowed to its owner."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            mode = p.stat().st_mode & 0o777
            if mode & 0o077:
                os.chmod(p, mode & 0o700)


def _sqlite_engine(url: str) -> Engine:
    u = make_url(url)
    if u.database and u.database != ":memory:":
        _secure_sqlite_file(Path(u.database))
    engine = create_engine(
        url,
        connect_args={"timeout": LOCK_TIMEOUT, "check_same_thread": False},
        # One connection per checkout: SQLite connections are cheap and this keeps
        # threads (the API server's) from sharing one.
        poolclass=NullPool if u.database and u.database != ":memory:" else None,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so BEGIN is ours (SQLAlchemy recipe).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={LOCK_TIMEOUT * 1000}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _mysql_engine(url: str) -> Engine:
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_recycle=3600,
        isolation_level="READ COMMITTED",
        connect_args={
            "charset": "utf8mb4",
            "init_command": f"SET innodb_lock_wait_timeout={LOCK_TIMEOUT}",
        },
    )


def _state_name(state: object) -> str | None:
    if state is None:
        return None
    return state.name if isinstance(state, Enum) else str(state)


class Store:
    """State store bound to one database URL."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
        backend = make_url(self.url).get_backend_name()
        if backend == "sqlite":
            self.engine = _sqlite_engine(self.url)
        elif backend in ("mysql", "mariadb"):
            self.engine = _mysql_engine(self.url)
        else:
            raise ValueError(
                f"unsupported database URL {self.url!r}: use sqlite:/// or mysql+pymysql://"
            )
        self.backend = "sqlite" if backend == "sqlite" else "mysql"

    def __repr__(self) -> str:
        return f"Store({make_url(self.url).render_as_string(hide_password=True)!r})"

    # -- schema -----------------------------------------------------------------------------
    def create_schema(self) -> None:
        """Create every table that does not exist yet (idempotent)."""
        metadata.create_all(self.engine)
        with self.transaction() as conn:
            have = conn.execute(
                select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
            ).scalar_one_or_none()
            if have is None:
                conn.execute(
                    insert(schema.meta).values(
                        key="schema_version", value=str(schema.SCHEMA_VERSION)
                    )
                )
            elif int(have) < schema.SCHEMA_VERSION and int(have) + 1 in schema.MIGRATIONS:
                self._migrate(conn, int(have))
            elif int(have) != schema.SCHEMA_VERSION:
                raise RuntimeError(
                    f"database schema version {have}, this lxcloud expects {schema.SCHEMA_VERSION}"
                )

    def _migrate(self, conn: Connection, have: int) -> None:
        """Bring a database of schema version ``have`` to the current one (schema.MIGRATIONS)."""
        for version in range(have + 1, schema.SCHEMA_VERSION + 1):
            if version not in schema.MIGRATIONS:
                raise RuntimeError(f"no migration from schema version {version - 1} to {version}")
            tables = []
            for table, column in schema.MIGRATIONS[version]:
                col = metadata.tables[table].c[column]
                ddl = CreateColumn(col).compile(dialect=self.engine.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {ddl}")
                tables.append(metadata.tables[table])
            for idx in {i for t in tables for i in t.indexes}:
                idx.create(conn, checkfirst=True)  # indexes added to existing tables
        conn.execute(
            update(schema.meta)
            .where(schema.meta.c.key == "schema_version")
            .values(value=str(schema.SCHEMA_VERSION))
        )

    def drop_schema(self) -> None:
        """Drop every lxcloud table (tests and `db init --force`)."""
        metadata.drop_all(self.engine)

    # -- transactions -----------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One database transaction: commit on success, roll back on any exception."""
        with self.engine.begin() as conn:
            yield conn

    def for_update(self, stmt: Select[Any]) -> Select[Any]:
        """Lock the selected rows until the transaction ends (MySQL); SQLite's BEGIN IMMEDIATE
        already holds the database's write lock, so the statement is returned unchanged."""
        return stmt.with_for_update() if self.backend == "mysql" else stmt

    @staticmethod
    def record(
        conn: Connection,
        kind: str,
        object_id: int,
        old_state: object = None,
        new_state: object = None,
        message: str | None = None,
    ) -> None:
        """Append a state change to the history (in the caller's transaction)."""
        conn.execute(
            insert(schema.history).values(
                ts=now(),
                kind=kind,
                object_id=object_id,
                old_state=_state_name(old_state),
                new_state=_state_name(new_state),
                message=(message or "")[:1024] or None,
            )
        )

    def dispose(self) -> None:
        self.engine.dispose()
