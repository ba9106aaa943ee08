"""The store on both backends: schema, transactions, integrity constraints."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from lxcloud_py.model import HostState, VMState
from lxcloud_py.store import Store, schema


def _user(conn) -> int:
    return conn.execute(
        insert(schema.users).values(name="oneadmin", password_hash="x", is_admin=True, created=0)
    ).inserted_primary_key[0]


def _lease(conn, n: int, **kw) -> int:
    values = dict(
        ip=f"10.0.0.{n}",
        mac=f"02:00:00:00:00:{n:02x}",
        name=f"vm{n}.example",
        host="h1",
        state="free",
        updated=0,
    )
    values.update(kw)
    return conn.execute(insert(schema.leases).values(**values)).inserted_primary_key[0]


def _vm(conn, owner: int) -> int:
    return conn.execute(
        insert(schema.vms).values(
            name="v", owner_id=owner, template="", state=VMState.PENDING, lcm_state=0, created=0
        )
    ).inserted_primary_key[0]


def test_create_schema_is_idempotent(store: Store) -> None:
    store.create_schema()
    with store.transaction() as conn:
        assert conn.execute(select(schema.meta.c.value)).scalar_one() == str(schema.SCHEMA_VERSION)


def test_transaction_rolls_back_on_error(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction() as conn:
        _user(conn)
        raise RuntimeError("boom")
    with store.transaction() as conn:
        assert conn.execute(select(func.count()).select_from(schema.users)).scalar_one() == 0


@pytest.mark.parametrize("column", ["ip", "mac", "name"])
def test_lease_ip_mac_name_unique(store: Store, column: str) -> None:
    with store.transaction() as conn:
        _lease(conn, 1)
    clash = {"ip": "10.0.0.9", "mac": "02:00:00:00:00:09", "name": "other.example"}
    clash[column] = {"ip": "10.0.0.1", "mac": "02:00:00:00:00:01", "name": "vm1.example"}[column]
    with pytest.raises(IntegrityError), store.transaction() as conn:
        _lease(conn, 9, **clash)


def test_one_live_vm_per_lease(store: Store) -> None:
    with store.transaction() as conn:
        owner = _user(conn)
        vm = _vm(conn, owner)
        a, b = _lease(conn, 1), _lease(conn, 2)
        conn.execute(update(schema.leases).where(schema.leases.c.id == a).values(vm_id=vm))
    with pytest.raises(IntegrityError), store.transaction() as conn:
        conn.execute(update(schema.leases).where(schema.leases.c.id == b).values(vm_id=vm))


def test_foreign_keys_enforced(store: Store) -> None:
    with pytest.raises(IntegrityError), store.transaction() as conn:
        conn.execute(insert(schema.host_macs).values(host_id=4242, mac="02:00:00:00:00:01"))


def test_host_delete_cascades_macs(store: Store) -> None:
    with store.transaction() as conn:
        hid = conn.execute(
            insert(schema.hosts).values(name="h1", state=HostState.MONITORED, created=0)
        ).inserted_primary_key[0]
        conn.execute(insert(schema.host_macs).values(host_id=hid, mac="02:00:00:00:00:01"))
    with store.transaction() as conn:
        conn.execute(schema.hosts.delete().where(schema.hosts.c.id == hid))
        assert conn.execute(select(func.count()).select_from(schema.host_macs)).scalar_one() == 0


def test_history_is_appended(store: Store) -> None:
    with store.transaction() as conn:
        Store.record(conn, "vm", 1, VMState.PENDING, VMState.ACTIVE, "placed")
        Store.record(conn, "vm", 1, VMState.ACTIVE, VMState.DONE, None)
    with store.transaction() as conn:
        rows = conn.execute(select(schema.history).order_by(schema.history.c.id)).all()
    assert [(r.old_state, r.new_state) for r in rows] == [("PENDING", "ACTIVE"), ("ACTIVE", "DONE")]


def test_unknown_url_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        Store("postgresql://x/y")


def test_sqlite_files_are_owner_only(tmp_path: Path) -> None:
    """The database holds password and token hashes: 0700 dir, 0600 file, -wal and -shm too;
    an existing file open to others is narrowed."""
    import stat as st

    db = tmp_path / "new" / "state" / "lxcloud.db"
    store = Store(f"sqlite:///{db}")
    store.create_schema()
    held = store.engine.connect()  # while a connection is open, -wal and -shm exist
    try:
        with store.transaction() as conn:
            conn.execute(schema.meta.insert().values(key="probe", value="x"))
        assert st.S_IMODE(db.parent.stat().st_mode) == 0o700
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert st.S_IMODE(p.stat().st_mode) == 0o600, p
    finally:
        held.close()
        store.dispose()
    db.chmod(0o644)
    Store(f"sqlite:///{db}").dispose()
    assert st.S_IMODE(db.stat().st_mode) == 0o600
