"""Golden images: the catalogue of (name, version) with checksum, size and format.

Registration is idempotent for identical metadata; a (name, version) that exists with other
metadata is a conflict (publish a new version instead of rewriting an old one).
"""

from __future__ import annotations

import re
from typing import Any

from ansible_collections.lxcloud.cloud.plugins.module_utils.names import (
    InvalidName,
    validate_name,
)
from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from lxcloud_py.model import Conflict, InvalidInput, NotFound
from lxcloud_py.store import Store, now, schema

_I = schema.images
FORMATS = ("raw", "qcow2")
COMPRESSIONS = ("zstd", "gzip", "none", "xz", "bzip2", "")
_SHA_RE = re.compile(r"\A[0-9a-f]{64}\Z")


def register(
    store: Store,
    name: str,
    version: str,
    sha256: str,
    size: object,
    fmt: str = "raw",
    compression: str = "zstd",
) -> int:
    try:
        validate_name(name, "image name")
        validate_name(version, "image version")
    except InvalidName as exc:
        raise InvalidInput(str(exc)) from None
    sha = sha256.lower() if isinstance(sha256, str) else ""
    if not _SHA_RE.match(sha):
        raise InvalidInput(f"bad sha256 {sha256!r} (64 hex digits)")
    # XML-RPC ints are 32-bit: sizes from 2 GiB on travel as doubles.
    if isinstance(size, bool) or not isinstance(size, int | float) or size < 0 or size != int(size):
        raise InvalidInput(f"size must be a whole number of bytes, got {size!r}")
    nbytes = int(size)
    if fmt not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}: {fmt!r}")
    if compression not in COMPRESSIONS:
        raise InvalidInput(f"unknown compression {compression!r}")
    compression = compression or "none"
    try:
        return _register(store, name, version, sha, nbytes, fmt, compression)
    except IntegrityError:  # a concurrent first registration won: compare with it
        return _register(store, name, version, sha, nbytes, fmt, compression)


def _register(
    store: Store, name: str, version: str, sha: str, nbytes: int, fmt: str, compression: str
) -> int:
    with store.transaction() as conn:
        row = conn.execute(
            store.for_update(select(_I).where(_I.c.name == name, _I.c.version == version))
        ).first()
        if row is not None:
            have = (row.sha256, int(row.size), row.format, row.compression)
            if have != (sha, nbytes, fmt, compression):
                raise Conflict(
                    f"image {name} version {version} is registered with other metadata "
                    f"(sha256 {row.sha256}, {row.size} bytes, {row.format}, {row.compression})"
                )
            return int(row.id)
        res = conn.execute(
            insert(_I).values(
                name=name,
                version=version,
                sha256=sha,
                size=nbytes,
                format=fmt,
                compression=compression,
                created=now(),
            )
        )
        image_id = _inserted_id(res)
        Store.record(conn, "image", image_id, None, "registered", f"{name} {version} {sha}")
        return image_id


def get(conn: Connection, image_id: int) -> dict[str, Any]:
    row = conn.execute(select(_I).where(_I.c.id == image_id)).first()
    if row is None:
        raise NotFound(f"image {image_id} does not exist")
    return dict(row._mapping)


def list_images(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(select(_I).order_by(_I.c.name, _I.c.id))]


def _inserted_id(res: Any) -> int:
    """The primary key of the row an INSERT created."""
    pk = res.inserted_primary_key
    if pk is None:  # pragma: no cover - every table here has an autoincrement key
        raise RuntimeError("INSERT returned no primary key")
    return int(pk[0])
