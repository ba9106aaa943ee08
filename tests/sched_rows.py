"""Rows for lease and placement tests, inserted directly with SQLAlchemy Core (the API that
normally fills these tables is tested elsewhere)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, insert, select

from lxcloud_py.model import HostState, ImageState, LCMState, LeaseState, VMState
from lxcloud_py.store import schema

_clock = itertools.count(1)


def user(conn: Connection, name: str = "oneadmin") -> int:
    got = conn.execute(select(schema.users.c.id).where(schema.users.c.name == name)).scalar()
    if got is not None:
        return int(got)
    return int(
        conn.execute(
            insert(schema.users).values(name=name, password_hash="x", is_admin=True, created=0)
        ).inserted_primary_key[0]
    )


def host(
    conn: Connection,
    name: str,
    cpu: float = 8,
    memory_mb: int = 16384,
    state: int = HostState.MONITORED,
    macs: Iterable[str] = (),
    max_dispatch: int | None = None,
) -> int:
    hid = int(
        conn.execute(
            insert(schema.hosts).values(
                name=name,
                state=state,
                cpu=cpu,
                memory_mb=memory_mb,
                disk_mb=100000,
                max_dispatch=max_dispatch,
                created=0,
            )
        ).inserted_primary_key[0]
    )
    macs = list(macs)
    if macs:
        conn.execute(insert(schema.host_macs), [{"host_id": hid, "mac": m} for m in macs])
    return hid


def image(conn: Connection, name: str, version: str = "1", sha: str = "a" * 64) -> int:
    return int(
        conn.execute(
            insert(schema.images).values(
                name=name,
                version=version,
                sha256=sha,
                size=1 << 20,
                format="raw",
                created=next(_clock),
            )
        ).inserted_primary_key[0]
    )


def stage(
    conn: Connection,
    host_id: int,
    image_id: int,
    state: str = ImageState.VERIFIED,
    sha: str | None = None,
) -> None:
    conn.execute(
        insert(schema.host_images).values(
            host_id=host_id, image_id=image_id, state=state, sha256=sha, updated=0
        )
    )


def lease(
    conn: Connection,
    n: int,
    host: str,
    *,
    mac: str | None = None,
    state: str = LeaseState.FREE,
    vm_id: int | None = None,
) -> int:
    return int(
        conn.execute(
            insert(schema.leases).values(
                ip=f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}",
                mac=mac or f"02:00:00:{(n >> 16) & 255:02x}:{(n >> 8) & 255:02x}:{n & 255:02x}",
                name=f"vm{n}.farm.example",
                host=host,
                state=state,
                vm_id=vm_id,
                updated=0,
            )
        ).inserted_primary_key[0]
    )


def vm(
    conn: Connection,
    name: str = "v",
    *,
    cpu: float = 1,
    memory_mb: int = 1024,
    image_name: str | None = "slc5-batch",
    state: int = VMState.PENDING,
    lcm_state: int = LCMState.LCM_INIT,
    host_id: int | None = None,
    created: float | None = None,
) -> int:
    owner = user(conn)
    return int(
        conn.execute(
            insert(schema.vms).values(
                name=name,
                owner_id=owner,
                template="",
                state=state,
                lcm_state=lcm_state,
                cpu=cpu,
                vcpu=max(1, int(cpu)),
                memory_mb=memory_mb,
                image_name=image_name,
                host_id=host_id,
                created=next(_clock) if created is None else created,
            )
        ).inserted_primary_key[0]
    )


def vm_row(conn: Connection, vm_id: int) -> Any:
    return conn.execute(select(schema.vms).where(schema.vms.c.id == vm_id)).one()


def lease_of(conn: Connection, vm_id: int) -> Any:
    return conn.execute(select(schema.leases).where(schema.leases.c.vm_id == vm_id)).first()
