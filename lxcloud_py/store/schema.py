"""The control plane's schema (SQLAlchemy Core), one definition for SQLite and MariaDB/MySQL.

Integrity lives here, not in application code: unique IP/MAC/DNS name per lease, at most one
VM per lease (``leases.vm_id`` is unique and a lease has one such column), foreign keys
everywhere a row refers to another, and an append-only ``history`` of state changes.
Times are UNIX epoch seconds (float, UTC), stored as DOUBLE: MySQL's FLOAT is single precision
(a 2026 epoch would round to 128 s).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.mysql import MEDIUMTEXT

metadata = MetaData()

#: Long text: TEXT on SQLite, MEDIUMTEXT (16 MiB) on MySQL where TEXT stops at 64 KiB.
LongText = Text().with_variant(MEDIUMTEXT(), "mysql")

#: Bumped on every change to the tables; a database of another version is refused by
#: :meth:`lxcloud_py.store.Store.create_schema` (version 2: pool policy columns, VM exit
#: reasons and drain requests).
SCHEMA_VERSION = 2

meta = Table(
    "lxcloud_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("created", Double, nullable=False),
)

hosts = Table(
    "hosts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("state", Integer, nullable=False),
    Column("im_mad", String(32), nullable=False, default="lxcloud"),
    Column("vmm_mad", String(32), nullable=False, default="kvm"),
    Column("cpu", Double, nullable=False, default=0.0),  # cores
    Column("memory_mb", Integer, nullable=False, default=0),
    Column("disk_mb", Integer, nullable=False, default=0),
    Column("max_dispatch", Integer, nullable=True),  # per-host dispatch limit, NULL = config
    Column("info", LongText, nullable=True),  # JSON of the last probe/registration facts
    Column("registered", Double, nullable=True),
    Column("last_seen", Double, nullable=True),
    Column("created", Double, nullable=False),
)

host_macs = Table(
    "host_macs",
    metadata,
    Column("host_id", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True),
    Column("mac", String(17), primary_key=True),
)

images = Table(
    "images",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("version", String(64), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),  # bytes of the unpacked image (> 2 GiB)
    Column("format", String(16), nullable=False, default="raw"),
    Column("compression", String(16), nullable=False, default="zstd"),
    Column("created", Double, nullable=False),
    UniqueConstraint("name", "version", name="uq_images_name_version"),
)

host_images = Table(
    "host_images",
    metadata,
    Column("host_id", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("state", String(16), nullable=False),  # model.ImageState
    Column("sha256", String(64), nullable=True),  # what the host verified
    Column("updated", Double, nullable=False),
)

pools = Table(
    "pools",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("template", LongText, nullable=False),  # OpenNebula template of the pool's VMs
    Column("target", Integer, nullable=False, default=0),
    Column("lifetime", Integer, nullable=True),  # seconds
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created", Double, nullable=False),
    # policy (see lxcloud_py/pools.py and docs/pools.md)
    Column(
        "priority", Integer, nullable=False, default=0, server_default="0"
    ),  # higher refills first
    Column("hosts", String(1024), nullable=True),  # comma-separated host names, NULL = any
    Column(
        "drain", String(8), nullable=False, default="graceful", server_default="graceful"
    ),  # graceful | hard
    Column("backoff_base", Integer, nullable=False, default=60, server_default="60"),  # seconds
    Column("backoff_max", Integer, nullable=False, default=3600, server_default="3600"),  # seconds
    Column("updated", Double, nullable=True),
    # backoff state, written by the pool manager only
    Column("backoff_level", Integer, nullable=False, default=0, server_default="0"),
    Column("backoff_until", Double, nullable=True),
)

vms = Table(
    "vms",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("owner_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("template", LongText, nullable=False),  # the template as submitted
    Column("state", Integer, nullable=False),  # model.VMState
    Column("lcm_state", Integer, nullable=False),  # model.LCMState
    Column("cpu", Double, nullable=False, default=1.0),
    Column("vcpu", Integer, nullable=False, default=1),
    Column("memory_mb", Integer, nullable=False, default=512),
    Column("image_name", String(64), nullable=True),  # requested image (DISK/IMAGE)
    Column("image_id", Integer, ForeignKey("images.id"), nullable=True),  # bound at placement
    Column("host_id", Integer, ForeignKey("hosts.id"), nullable=True),
    Column("pool_id", Integer, ForeignKey("pools.id", ondelete="SET NULL"), nullable=True),
    Column("lifetime", Integer, nullable=True),  # seconds
    Column("created", Double, nullable=False),
    Column("started", Double, nullable=True),
    Column("deadline", Double, nullable=True),
    Column("ended", Double, nullable=True),
    Column("sched_message", String(512), nullable=True),
    Column("token_hash", String(128), nullable=True),
    # Vac-style exit reason the VM gave through its own token (lxcloud.vm.exit)
    Column("exit_code", Integer, nullable=True),
    Column("exit_message", String(512), nullable=True),
    Column("exit_time", Double, nullable=True),
    Column("drain_requested", Double, nullable=True),  # the pool manager asked it to end
    Index("ix_vms_state", "state"),
    Index("ix_vms_pool", "pool_id"),
    Index("ix_vms_host", "host_id"),
)

leases = Table(
    "leases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ip", String(45), nullable=False, unique=True),
    Column("mac", String(17), nullable=False, unique=True),
    Column("name", String(253), nullable=False, unique=True),  # DNS name
    Column("host", String(64), nullable=False),  # pinned host, by name (may register later)
    Column("state", String(8), nullable=False, default="free"),  # model.LeaseState
    # At most one live VM per lease: one column, unique across leases (a VM holds one lease).
    Column("vm_id", Integer, ForeignKey("vms.id"), nullable=True, unique=True),
    Column("updated", Double, nullable=False),
    Index("ix_leases_host_state", "host", "state"),
)

#: Columns each schema version added to existing tables: ``Store.create_schema`` adds them
#: (``ALTER TABLE ... ADD COLUMN``; NOT NULL ones carry a server default) to a database of an
#: older version. New tables need no entry: ``create_all`` makes them.
MIGRATIONS: dict[int, tuple[tuple[str, str], ...]] = {
    2: (
        *(
            ("pools", c)
            for c in (
                "priority",
                "hosts",
                "drain",
                "backoff_base",
                "backoff_max",
                "updated",
                "backoff_level",
                "backoff_until",
            )
        ),
        *(("vms", c) for c in ("exit_code", "exit_message", "exit_time", "drain_requested")),
    ),
}

history = Table(
    "history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Double, nullable=False),
    Column("kind", String(8), nullable=False),  # vm | host | lease | image | pool
    Column("object_id", Integer, nullable=False),
    Column("old_state", String(32), nullable=True),
    Column("new_state", String(32), nullable=True),
    Column("message", String(1024), nullable=True),
    Index("ix_history_object", "kind", "object_id"),
)

#: What the daemon's stages decided (placed, deployed, refilled, drained, backed off, ...), one
#: row per decision, for `lxcloud status`; names, not foreign keys, so it outlives what it names.
#: The monitor stage prunes it to the newest ``daemon.decisions_kept`` rows.
decisions = Table(
    "decisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Double, nullable=False),
    Column("stage", String(16), nullable=False),
    Column("action", String(32), nullable=False),
    Column("ok", Boolean, nullable=False, default=True),
    Column("vm_id", Integer, nullable=True),
    Column("host", String(64), nullable=True),
    Column("pool", String(64), nullable=True),
    Column("message", String(1024), nullable=True),
    Index("ix_decisions_ts", "ts"),
)
