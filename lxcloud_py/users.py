"""Users and sessions: the admin (``oneadmin``) and per-VM callback tokens.

A session string is OpenNebula's ``"user:secret"``. ``vm-ID:TOKEN`` authenticates as VM ID
with its callback token; any other user name is looked up in ``users`` and its password checked
with scrypt. Successful password checks are cached in memory (keyed by the stored hash, so a
password change invalidates them) because scrypt costs tens of milliseconds per call.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ansible_collections.lxcloud.cloud.plugins.module_utils import wire
from sqlalchemy import insert, select, update

from lxcloud_py import auth
from lxcloud_py.model import InvalidInput, LxcloudError, NotFound, VMState
from lxcloud_py.store import Store, now, schema
from lxcloud_py.throttle import LoginThrottle

ADMIN = "oneadmin"
_U, _V = schema.users, schema.vms
_USER_RE = re.compile(r"\A[A-Za-z0-9_.@-]{1,64}\Z")
#: A hash to check against when the user does not exist, so that timing does not tell.
_DUMMY_HASH = auth.hash_password(secrets.token_hex(8))
_ENDED = (int(VMState.DONE), int(VMState.FAILED))


class AuthenticationError(LxcloudError):
    """Bad credentials or a malformed session (OpenNebula AUTHENTICATION, 0x0100)."""


class Throttled(AuthenticationError):
    """Too many failed logins from this address or for this user: refused unchecked."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed logins; retry in {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (``vm_id`` None) or a VM holding its callback token."""

    name: str
    user_id: int | None = None
    is_admin: bool = False
    vm_id: int | None = None

    @property
    def is_vm(self) -> bool:
        return self.vm_id is not None


@dataclass
class AdminResult:
    created: bool = False
    password_changed: bool = False
    #: a password was given that differs from the stored one and was NOT applied
    password_differs: bool = False


def ensure_admin(
    store: Store, password: str | None, *, reset_password: bool = False
) -> AdminResult:
    """Create ``oneadmin`` (a password is required then); with an existing admin, a differing
    password is applied only with ``reset_password`` (else reported in the result)."""
    if password is not None and not password:
        raise InvalidInput("the admin password must not be empty")
    with store.transaction() as conn:
        row = conn.execute(
            store.for_update(select(_U.c.id, _U.c.password_hash).where(_U.c.name == ADMIN))
        ).first()
        if row is None:
            if password is None:
                raise InvalidInput(
                    "no admin password: give --admin-password or set LXCLOUD_ADMIN_PASSWORD"
                )
            res = conn.execute(
                insert(_U).values(
                    name=ADMIN,
                    password_hash=auth.hash_password(password),
                    is_admin=True,
                    created=now(),
                )
            )
            Store.record(conn, "user", _inserted_id(res), None, "admin", "created")
            return AdminResult(created=True)
        if password is None or auth.verify_password(password, row.password_hash):
            return AdminResult()
        if not reset_password:
            return AdminResult(password_differs=True)
        conn.execute(
            update(_U).where(_U.c.id == row.id).values(password_hash=auth.hash_password(password))
        )
        Store.record(conn, "user", row.id, "admin", "admin", "password changed")
        return AdminResult(password_changed=True)


class Authenticator:
    """Checks session strings against the store; thread-safe."""

    def __init__(
        self, store: Store, cache_size: int = 64, throttle: LoginThrottle | None = None
    ) -> None:
        self.store = store
        self.throttle = throttle or LoginThrottle()
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def _mac(self, secret: str) -> bytes:
        return hmac.new(self._key, secret.encode(), hashlib.sha256).digest()

    def authenticate(self, session: object, ip: str | None = None) -> Principal:
        """The caller of ``session`` from address ``ip``; failures are throttled per address
        and per user (:mod:`lxcloud_py.throttle`): a throttled call is refused before any
        password or token is checked."""
        user = session.split(":", 1)[0][:64] if isinstance(session, str) else None
        wait = self.throttle.retry_after(ip, user)
        if wait > 0:
            raise Throttled(wait)
        try:
            who = self._authenticate(session)
        except AuthenticationError:
            self.throttle.failed(ip, user)
            raise
        self.throttle.succeeded(ip, user)
        return who

    def _authenticate(self, session: object) -> Principal:
        try:
            user, secret = wire.split_session(session)
        except ValueError as exc:
            raise AuthenticationError(str(exc)) from None
        vm_id = wire.vm_id_of_user(user)
        if vm_id is not None:
            return self._vm(vm_id, secret)
        if not _USER_RE.match(user):
            raise AuthenticationError("malformed session (bad user name)")
        return self._user(user, secret)

    def _vm(self, vm_id: int, token: str) -> Principal:
        with self.store.transaction() as conn:
            row = conn.execute(select(_V.c.token_hash, _V.c.state).where(_V.c.id == vm_id)).first()
        stored = row.token_hash if row is not None else None
        # verify_token compares in constant time; a missing VM compares against nothing.
        if not auth.verify_token(token, stored):
            raise AuthenticationError("bad VM token")
        assert row is not None
        if row.state in _ENDED:  # a token dies with its VM
            raise AuthenticationError(f"VM {vm_id} has ended: its token is no longer valid")
        return Principal(name=wire.vm_user(vm_id), vm_id=vm_id)

    def _user(self, name: str, password: str) -> Principal:
        with self.store.transaction() as conn:
            row = conn.execute(
                select(_U.c.id, _U.c.password_hash, _U.c.is_admin).where(_U.c.name == name)
            ).first()
        if row is None:
            auth.verify_password(password, _DUMMY_HASH)
            raise AuthenticationError("bad user or password")
        digest = self._mac(password)
        with self._lock:
            cached = self._cache.get(name)
        ok = (
            cached is not None
            and cached[0] == row.password_hash
            and hmac.compare_digest(cached[1], digest)
        )
        if not ok:
            if not auth.verify_password(password, row.password_hash):
                raise AuthenticationError("bad user or password")
            with self._lock:
                self._cache[name] = (row.password_hash, digest)
                self._cache.move_to_end(name)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return Principal(name=name, user_id=int(row.id), is_admin=bool(row.is_admin))


def user_id(store: Store, name: str = ADMIN) -> int:
    with store.transaction() as conn:
        uid = conn.execute(select(_U.c.id).where(_U.c.name == name)).scalar_one_or_none()
    if uid is None:
        raise NotFound(f"no user {name!r} (run: lxcloud db init)")
    return int(uid)


def _inserted_id(res: Any) -> int:
    """The primary key of the row an INSERT created."""
    pk = res.inserted_primary_key
    if pk is None:  # pragma: no cover - every table here has an autoincrement key
        raise RuntimeError("INSERT returned no primary key")
    return int(pk[0])
