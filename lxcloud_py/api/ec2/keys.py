"""EC2 access keys: one user may hold several (``lxcloud user key create|list|delete``).

AWS Signature Version 4 is an HMAC keyed with a key derived from the *secret itself*, so the
server must be able to recover the secret: a hash would not do. Secrets are sealed with AES-GCM
under a 256-bit server key kept in a file of its own (mode 0600, created on first use, never in
the database), so a copy of the database alone does not give the secrets away. The access key
id is the associated data: a sealed secret moved to another key id does not open.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, delete, insert, select

from lxcloud_py.model import InvalidInput, LxcloudError, NotFound
from lxcloud_py.store import Store, now, schema

_K, _U = schema.ec2_keys, schema.users
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
MAX_KEYS_PER_USER = 10


class KeyFileError(LxcloudError):
    """The server key file is missing, unreadable or malformed."""


def default_key_file() -> Path:
    """``$LXCLOUD_EC2_KEY_FILE``, else ``ec2-secrets.key`` in the user's lxcloud state dir."""
    env = os.environ.get("LXCLOUD_EC2_KEY_FILE")
    if env:
        return Path(env)
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "lxcloud" / "ec2-secrets.key"


def load_server_key(path: Path, create: bool = True) -> bytes:
    """The 32-byte server key from ``path`` (hex); created 0600 (atomically, O_EXCL) when
    absent and ``create``. A file readable by others is refused."""
    if create and not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (secrets.token_hex(32) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a key another process made meanwhile
        except FileExistsError:
            pass
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    try:
        st = path.stat()
        text = path.read_text().strip()
    except OSError as exc:
        raise KeyFileError(f"EC2 server key file {path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise KeyFileError(f"EC2 server key file {path} is open to others (chmod 600 it)")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise KeyFileError(f"EC2 server key file {path}: expected 64 hex digits")
    return key


def _seal(server_key: bytes, key_id: str, secret: str) -> str:
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(server_key).encrypt(nonce, secret.encode(), key_id.encode())
    return "aesgcm$" + base64.b64encode(nonce + sealed).decode()


def _unseal(server_key: bytes, key_id: str, text: str) -> str | None:
    algo, _, data = text.partition("$")
    if algo != "aesgcm":
        return None
    try:
        raw = base64.b64decode(data)
        return AESGCM(server_key).decrypt(raw[:12], raw[12:], key_id.encode()).decode()
    except (InvalidTag, ValueError):
        return None


@dataclass(frozen=True)
class NewKey:
    access_key_id: str
    secret: str  # shown once


def create(store: Store, server_key: bytes, user: str) -> NewKey:
    """A new access key for ``user`` (at most :data:`MAX_KEYS_PER_USER` each)."""
    key_id = "AKIA" + "".join(secrets.choice(_B32) for _ in range(16))
    secret = base64.b64encode(secrets.token_bytes(30)).decode()  # 40 characters, as AWS's
    with store.transaction() as conn:
        uid = _user_id(conn, user)
        count = len(conn.execute(select(_K.c.access_key_id).where(_K.c.user_id == uid)).all())
        if count >= MAX_KEYS_PER_USER:
            raise InvalidInput(f"user {user!r} already has {count} access keys (the limit)")
        conn.execute(
            insert(_K).values(
                access_key_id=key_id,
                user_id=uid,
                secret_sealed=_seal(server_key, key_id, secret),
                created=now(),
            )
        )
        Store.record(conn, "user", uid, None, None, f"EC2 access key {key_id} created")
    return NewKey(key_id, secret)


def list_keys(store: Store, user: str | None = None) -> list[dict[str, Any]]:
    """Access keys (never their secrets): id, user, created."""
    stmt = (
        select(_K.c.access_key_id, _U.c.name.label("user"), _K.c.created)
        .join(_U, _U.c.id == _K.c.user_id)
        .order_by(_U.c.name, _K.c.created)
    )
    if user is not None:
        stmt = stmt.where(_U.c.name == user)
    with store.transaction() as conn:
        if user is not None:
            _user_id(conn, user)
        return [dict(r._mapping) for r in conn.execute(stmt)]


def delete_key(store: Store, key_id: str) -> bool:
    """Remove an access key; False when there was none (idempotent)."""
    with store.transaction() as conn:
        row = conn.execute(select(_K.c.user_id).where(_K.c.access_key_id == key_id)).first()
        if row is None:
            return False
        conn.execute(delete(_K).where(_K.c.access_key_id == key_id))
        Store.record(conn, "user", row.user_id, None, None, f"EC2 access key {key_id} deleted")
    return True


@dataclass(frozen=True)
class KeyOwner:
    user_id: int
    name: str
    is_admin: bool
    secret: str


def lookup(store: Store, server_key: bytes, key_id: str) -> KeyOwner | None:
    """The owner and secret of an access key id; None when unknown (or not unsealable)."""
    with store.transaction() as conn:
        row = conn.execute(
            select(_K.c.secret_sealed, _U.c.id, _U.c.name, _U.c.is_admin)
            .join(_U, _U.c.id == _K.c.user_id)
            .where(_K.c.access_key_id == key_id)
        ).first()
    if row is None:
        return None
    secret = _unseal(server_key, key_id, row.secret_sealed)
    if secret is None:
        return None
    return KeyOwner(int(row.id), row.name, bool(row.is_admin), secret)


def _user_id(conn: Connection, name: str) -> int:
    uid = conn.execute(select(_U.c.id).where(_U.c.name == name)).scalar_one_or_none()
    if uid is None:
        raise NotFound(f"no user {name!r}")
    return int(uid)
