"""The XML-RPC server: OpenNebula's calling convention at ``/RPC2``.

* HTTP is :mod:`lxcloud_py.api.front`: an asyncio front that reads whole requests (deadline,
  size cap, connection caps) before one of ``max_threads`` workers sees them; ``POST /RPC2``
  only (404/405 otherwise), a Content-Length no larger than ``max_request_bytes`` (413
  otherwise, 411 without one, 400 malformed) and no Content-Encoding (415).
* A body that is not XML-RPC gets the fault ``-32700``; integers beyond 64 bits are refused
  with XML_RPC_API "out of range"; no reply carries a traceback or a Python class name.
* Method names resolve to ``NAMESPACE.METHOD`` through the namespace classes' ``METHODS``
  lists only; no ``allow_dotted_names``; any name with a part starting with ``_`` and any
  unknown name get the XML-RPC fault ``-506`` (xmlrpc-c's "method not defined", as oned).
* Every call answers ``[True, body, 0]`` or ``[False, message, code, object_id]``; unexpected
  exceptions are logged with their traceback and answered INTERNAL without details.
* One log line per call: method, user, result code, milliseconds.
"""

from __future__ import annotations

import inspect
import logging
import time
import xmlrpc.client
from typing import Any
from xmlrpc.client import Fault

from lxcloud_py.model import Conflict, InvalidInput, LxcloudError, NotFound
from lxcloud_py.store import Store
from lxcloud_py.users import AuthenticationError, Authenticator, Principal

from .errors import (
    ACTION,
    AUTHENTICATION,
    AUTHORIZATION,
    INTERNAL,
    NAMES,
    NO_EXISTS,
    SUCCESS,
    XML_RPC_API,
    ApiFailure,
)
from .front import HttpFront
from .namespaces import NAMESPACES, Namespace
from .one_namespaces import ONE_NAMESPACES

log = logging.getLogger("lxcloud.api")

DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
DEFAULT_MAX_THREADS = 32
METHOD_NOT_FOUND = -506
PARSE_ERROR = -32700
INT64 = (-(2**63), 2**63)


class Dispatcher:
    """Resolves method names to namespace methods, authenticates, maps errors to codes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.auth = Authenticator(store)
        self._methods: dict[str, tuple[Namespace, Any, inspect.Signature]] = {}
        for cls in (*NAMESPACES, *ONE_NAMESPACES):
            ns = cls(store)
            for name in cls.METHODS:
                if name.startswith("_"):  # pragma: no cover - a programming error
                    raise ValueError(f"{cls.__name__} exposes private {name}")
                fn = getattr(ns, name)
                self._methods[f"{cls.NAME}.{name}"] = (ns, fn, inspect.signature(fn))

    @property
    def method_names(self) -> list[str]:
        return sorted(self._methods)

    # marshaled() calls _dispatch(method, params) for every call.
    def _dispatch(self, method: str, params: tuple[Any, ...], ip: str = "-") -> list[Any]:
        t0 = time.monotonic()
        if (
            not isinstance(method, str)
            or any(part.startswith("_") for part in method.split("."))
            or method not in self._methods
        ):
            log.warning("refused method %r", str(method)[:100])
            raise Fault(METHOD_NOT_FOUND, f"Method {str(method)[:100]!r} not defined")
        ctx = {"user": "-", "ip": ip}
        try:
            reply = self._call(method, params, ctx)
            code = SUCCESS
        except ApiFailure as exc:
            code = exc.code
            reply = [False, f"[{method}] {exc.message}", exc.code, exc.object_id]
        ms = (time.monotonic() - t0) * 1000
        log.info("%s user=%s ip=%s code=0x%04x(%s) %.1f ms", method, ctx["user"], ip, code,
                 NAMES[code], ms)
        return reply

    def _call(self, method: str, params: tuple[Any, ...], ctx: dict[str, str]) -> list[Any]:
        ns, fn, sig = self._methods[method]
        if not params:
            raise ApiFailure(AUTHENTICATION, "User couldn't be authenticated, aborting call.")
        claimed = params[0].split(":", 1)[0][:64] if isinstance(params[0], str) else "?"
        try:
            who = self.auth.authenticate(params[0], None if ctx["ip"] == "-" else ctx["ip"])
        except AuthenticationError as exc:
            log.warning("%s: authentication failed for user %r from %s: %s", method, claimed,
                        ctx["ip"], exc)
            raise ApiFailure(
                AUTHENTICATION, "User couldn't be authenticated, aborting call."
            ) from None
        except Exception:
            log.exception("%s: authentication error", method)
            raise ApiFailure(INTERNAL, "Internal error, see the server log.") from None
        ctx["user"] = who.name
        self._authorize(ns, method, who)
        args = params[1:]
        for i, arg in enumerate(args, start=2):
            if _has_huge_int(arg):
                raise ApiFailure(
                    XML_RPC_API,
                    f"argument {i}: integer out of range (i4/int: 32 bits, i8: 64 bits, "
                    "ASCII digits)",
                )
        try:
            sig.bind(who, *args)
        except TypeError:
            n = len(sig.parameters) - 1
            raise ApiFailure(
                XML_RPC_API, f"wrong number of arguments: {len(args)} (expects up to {n})"
            ) from None
        oid = -1 if "pool." in method else _object_id(args)
        try:
            body = fn(who, *args)
        except ApiFailure:
            raise
        except NotFound as exc:
            raise ApiFailure(NO_EXISTS, str(exc), oid) from None
        except Conflict as exc:
            raise ApiFailure(ACTION, str(exc), oid) from None
        except InvalidInput as exc:
            raise ApiFailure(XML_RPC_API, str(exc), oid) from None
        except LxcloudError as exc:
            raise ApiFailure(ACTION, str(exc), oid) from None
        except Exception:
            log.exception("%s by %s failed", method, who.name)
            raise ApiFailure(INTERNAL, "Internal error, see the server log.", oid) from None
        return [True, body, SUCCESS]

    @staticmethod
    def internal_reply() -> list[Any]:
        return [False, "Internal error, see the server log.", INTERNAL, -1]

    @staticmethod
    def _authorize(ns: Namespace, method: str, who: Principal) -> None:
        short = method.rsplit(".", 1)[1]
        if who.is_vm:
            if short in ns.VM_METHODS:
                return  # the method checks that the VM acts on itself
            raise ApiFailure(AUTHORIZATION, f"User [{who.name}] : Not authorized to call {method}.")
        if not who.is_admin:
            raise ApiFailure(AUTHORIZATION, f"User [{who.name}] : Not authorized to call {method}.")


def _has_huge_int(value: Any, depth: int = 0) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return isinstance(value, OutOfRange) or not INT64[0] <= value < INT64[1]
    if depth < 32 and isinstance(value, list | tuple):
        return any(_has_huge_int(v, depth + 1) for v in value)
    if depth < 32 and isinstance(value, dict):
        return any(_has_huge_int(v, depth + 1) for v in value.values())
    return False


def _object_id(args: tuple[Any, ...]) -> int:
    for a in args:
        if isinstance(a, int) and not isinstance(a, bool) and -(2**31) <= a < 2**31:
            return a
    return -1


class OutOfRange(int):
    """An XML-RPC integer outside its type's range (``<i4>``/``<int>``: 32 bits, ``<i8>``: 64
    bits) or written with other than ASCII digits; the dispatcher refuses calls carrying one."""


def _end_int(bits: int) -> Any:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1)

    def end(self: xmlrpc.client.Unmarshaller, data: str) -> None:
        text = data.strip()
        try:
            value = int(text)
        except ValueError:
            raise ValueError("bad integer") from None
        ok = text.isascii() and low <= value < high
        self.append(value if ok else OutOfRange(value))
        self._value = False  # as the standard end_int leaves it

    return end


class _Unmarshaller(xmlrpc.client.Unmarshaller):
    dispatch = dict(xmlrpc.client.Unmarshaller.dispatch)
    for _tag in ("i1", "i2", "i4", "int"):
        dispatch[_tag] = _end_int(32)
    dispatch["i8"] = _end_int(64)
    dispatch["big_integer"] = _end_int(64)


def _loads(data: bytes) -> tuple[tuple[Any, ...], str | None]:
    u = _Unmarshaller()
    p = xmlrpc.client.ExpatParser(u)
    p.feed(data)
    p.close()
    return u.close(), u.getmethodname()


def _dumps(value: Any, **kw: Any) -> bytes:
    return xmlrpc.client.dumps(value, allow_none=False, encoding="utf-8", **kw).encode(
        "utf-8", "xmlcharrefreplace"
    )


def marshaled(dispatcher: Dispatcher, data: bytes, ip: str = "-") -> bytes:
    """One XML-RPC request body to its reply body. Unlike the standard library's dispatcher,
    no fault carries a Python class name: a body that is not XML-RPC gets a plain parse-error
    fault, a reply that cannot be marshalled an INTERNAL reply (logged)."""
    try:
        params, method = _loads(data)
        if method is None:
            raise ValueError("no methodName")
    except Exception:  # expat, ValueError, TypeError ...: all the client's fault
        return _dumps(Fault(PARSE_ERROR, "parse error: not a well-formed XML-RPC request"))
    try:
        return _dumps((dispatcher._dispatch(method, params, ip),), methodresponse=True)
    except Fault as fault:
        return _dumps(fault)
    except Exception:
        log.exception("XML-RPC reply to %s could not be built", str(method)[:100])
        return _dumps((Dispatcher.internal_reply(),), methodresponse=True)


class ApiServer(HttpFront):
    """The XML-RPC API over :class:`~lxcloud_py.api.front.HttpFront` (asyncio front, whole
    requests read before a worker sees them, ``max_threads`` workers)."""

    def __init__(
        self,
        store: Store,
        address: tuple[str, int],
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_threads: int = DEFAULT_MAX_THREADS,
        **front: Any,
    ) -> None:
        # No allow_dotted_names or registered instance: the dispatcher resolves names itself.
        self.dispatcher = Dispatcher(store)
        super().__init__(
            address,
            lambda body, ip: marshaled(self.dispatcher, body, ip),
            max_request_bytes=max_request_bytes,
            max_threads=max_threads,
            **front,
        )

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidInput(f"--listen must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)
