"""The XML-RPC server: OpenNebula's calling convention at ``/RPC2``.

* ``POST /RPC2`` only (anything else 404); the body must have a Content-Length no larger than
  ``max_request_bytes`` (413 otherwise, 411 without one) and no Content-Encoding (415).
* One thread per request (``ThreadingMixIn``); each request's socket times out.
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
import socketserver
import threading
import time
from typing import Any
from xmlrpc.client import Fault
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

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
from .namespaces import NAMESPACES, Namespace
from .one_namespaces import ONE_NAMESPACES

log = logging.getLogger("lxcloud.api")

DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_MAX_THREADS = 32
METHOD_NOT_FOUND = -506


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

    # SimpleXMLRPCDispatcher calls instance._dispatch(method, params) for every call.
    def _dispatch(self, method: str, params: tuple[Any, ...]) -> list[Any]:
        t0 = time.monotonic()
        if (
            not isinstance(method, str)
            or any(part.startswith("_") for part in method.split("."))
            or method not in self._methods
        ):
            log.warning("refused method %r", str(method)[:100])
            raise Fault(METHOD_NOT_FOUND, f"Method {str(method)[:100]!r} not defined")
        ctx = {"user": "-"}
        try:
            reply = self._call(method, params, ctx)
            code = SUCCESS
        except ApiFailure as exc:
            code = exc.code
            reply = [False, f"[{method}] {exc.message}", exc.code, exc.object_id]
        ms = (time.monotonic() - t0) * 1000
        log.info("%s user=%s code=0x%04x(%s) %.1f ms", method, ctx["user"], code, NAMES[code], ms)
        return reply

    def _call(self, method: str, params: tuple[Any, ...], ctx: dict[str, str]) -> list[Any]:
        ns, fn, sig = self._methods[method]
        if not params:
            raise ApiFailure(AUTHENTICATION, "User couldn't be authenticated, aborting call.")
        try:
            who = self.auth.authenticate(params[0])
        except AuthenticationError as exc:
            log.info("%s: authentication failed: %s", method, exc)
            raise ApiFailure(
                AUTHENTICATION, "User couldn't be authenticated, aborting call."
            ) from None
        except Exception:
            log.exception("%s: authentication error", method)
            raise ApiFailure(INTERNAL, "Internal error, see the server log.") from None
        ctx["user"] = who.name
        self._authorize(ns, method, who)
        args = params[1:]
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
    def _authorize(ns: Namespace, method: str, who: Principal) -> None:
        short = method.rsplit(".", 1)[1]
        if who.is_vm:
            if short in ns.VM_METHODS:
                return  # the method checks that the VM acts on itself
            raise ApiFailure(AUTHORIZATION, f"User [{who.name}] : Not authorized to call {method}.")
        if not who.is_admin:
            raise ApiFailure(AUTHORIZATION, f"User [{who.name}] : Not authorized to call {method}.")


def _object_id(args: tuple[Any, ...]) -> int:
    for a in args:
        if isinstance(a, int) and not isinstance(a, bool) and -(2**31) <= a < 2**31:
            return a
    return -1


class RequestHandler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/RPC2",)
    timeout = DEFAULT_REQUEST_TIMEOUT

    def do_POST(self) -> None:
        if not self.is_rpc_path_valid():
            self.report_404()
            return
        limit = getattr(self.server, "max_request_bytes", DEFAULT_MAX_REQUEST_BYTES)
        raw = self.headers.get("content-length")
        if raw is None:
            self._refuse(411, "Length Required")
            return
        try:
            length = int(raw)
        except ValueError:
            self._refuse(400, "Bad Content-Length")
            return
        if length < 0:
            self._refuse(400, "Bad Content-Length")
            return
        if length > limit:
            log.warning(
                "refused a %d-byte request from %s (limit %d)",
                length,
                self.client_address[0],
                limit,
            )
            self._refuse(413, f"Request larger than {limit} bytes")
            return
        encoding = self.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            self._refuse(415, "Content-Encoding not supported")
            return
        super().do_POST()

    def _refuse(self, code: int, message: str) -> None:
        self.send_response(code, message)
        self.send_header("Content-Type", "text/plain")
        body = (message + "\n").encode()
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class ApiServer(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    """Threaded XML-RPC server; in-flight requests finish on ``server_close``.

    At most ``max_threads`` requests are handled at once (each holds a database connection);
    further connections wait in the listen backlog until a handler finishes.
    """

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        store: Store,
        address: tuple[str, int],
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_threads: int = DEFAULT_MAX_THREADS,
    ) -> None:
        self._slots = threading.BoundedSemaphore(max_threads)
        super().__init__(
            address,
            requestHandler=RequestHandler,
            logRequests=False,
            allow_none=False,
            encoding="utf-8",
        )
        self.max_request_bytes = max_request_bytes
        self.dispatcher = Dispatcher(store)
        # No allow_dotted_names: the dispatcher resolves names itself.
        self.register_instance(self.dispatcher)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidInput(f"--listen must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)
