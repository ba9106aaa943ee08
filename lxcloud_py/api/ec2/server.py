"""The EC2 listener: :class:`~lxcloud_py.api.front.HttpFront` at ``/`` (GET and POST), SigV4.

Every request is authenticated before its action is looked at: a signature (header or query
form, :mod:`.sigv4`) made with an access key's secret (:mod:`.keys`). Failures are throttled
per address and per access key id as logins are (:class:`~lxcloud_py.throttle.LoginThrottle`):
a throttled request gets ``RequestLimitExceeded`` before any key is looked up. One log line per
request: action, user, code, milliseconds.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

from lxcloud_py.api.front import HttpFront, Request
from lxcloud_py.api.server import DEFAULT_MAX_REQUEST_BYTES, parse_listen
from lxcloud_py.model import LxcloudError
from lxcloud_py.store import Store
from lxcloud_py.throttle import LoginThrottle

from . import keys, sigv4
from .config import Ec2Config
from .protocol import Ec2Error, Params, error_reply, reply
from .service import Caller, Service

log = logging.getLogger("lxcloud.api.ec2")
DEFAULT_MAX_THREADS = 16
_XML = "text/xml;charset=UTF-8"


class Ec2Server(HttpFront):
    """The EC2 Query API for ``store`` at ``address`` (``config.listen`` when None)."""

    def __init__(
        self,
        store: Store,
        config: Ec2Config,
        address: tuple[str, int] | None = None,
        *,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_threads: int = DEFAULT_MAX_THREADS,
        throttle: LoginThrottle | None = None,
        **front: Any,
    ) -> None:
        self.config = config
        self.store = store
        self.server_key = keys.load_server_key(config.key_file)
        self.throttle = throttle or LoginThrottle()
        super().__init__(
            address or parse_listen(config.listen),
            lambda body, ip: b"",  # unused: respond() sees the whole request
            path="/",
            methods=("GET", "POST"),
            max_request_bytes=max_request_bytes,
            max_threads=max_threads,
            **front,
        )
        self.service = Service(store, config, self.url)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def respond(self, request: Request) -> tuple[int, bytes, str]:
        rid = str(uuid.uuid4())
        t0 = time.monotonic()
        action, user, code = "-", "-", "OK"
        try:
            params, query = _params(request)
            action = params.get("Action") or "-"
            who = self._authenticate(request, query)
            user = who.name
            if action == "-":
                raise Ec2Error("MissingAction", "The request must contain the parameter Action")
            body = self.service.call(action, who, params)
            status, out = 200, reply(action, rid, body)
        except (Ec2Error, sigv4.SigError) as exc:
            code = exc.code
            status, out = exc.status, error_reply(exc.code, exc.message, rid)
        except LxcloudError as exc:  # validation below the service (InvalidInput ...)
            code = "InvalidParameterValue"
            status, out = 400, error_reply(code, str(exc), rid)
        except Exception:
            log.exception("EC2 %s by %s failed (request %s)", action[:64], user, rid)
            code = "InternalError"
            status, out = 500, error_reply(code, "An internal error has occurred", rid)
        log.info("ec2 %s user=%s ip=%s code=%s %.1f ms", action[:64], user, request.ip, code,
                 (time.monotonic() - t0) * 1000)
        return status, out, _XML

    def _authenticate(self, request: Request, query: dict[str, str]) -> Caller:
        signed = sigv4.parse(request.headers, query)
        wait = self.throttle.retry_after(request.ip, signed.key_id)
        if wait > 0:
            raise Ec2Error("RequestLimitExceeded",
                           f"too many failed authentications; retry in {wait:.0f} s")
        try:
            owner = keys.lookup(self.store, self.server_key, signed.key_id)
            if owner is None:
                raise sigv4.SigError("AuthFailure", "AWS was not able to validate the provided "
                                     "access credentials", 401)
            sigv4.verify(signed, owner.secret, request.method, request.path, request.query,
                         request.headers, request.body, self.config.region)
        except sigv4.SigError as exc:
            self.throttle.failed(request.ip, signed.key_id)
            log.warning("ec2: refused key %s from %s: %s %s", signed.key_id, request.ip,
                        exc.code, exc.message)
            raise
        self.throttle.succeeded(request.ip, signed.key_id)
        return Caller(owner.user_id, owner.name, owner.is_admin)


def _params(request: Request) -> tuple[Params, dict[str, str]]:
    """(all parameters, the query string's) of a Query protocol request."""
    try:
        query = dict(parse_qsl(request.query, keep_blank_values=True, strict_parsing=False,
                               errors="strict"))
        pairs = dict(query)
        if request.method == "POST" and request.body:
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/x-www-form-urlencoded":
                raise Ec2Error("InvalidParameterValue",
                               "POST bodies must be application/x-www-form-urlencoded")
            pairs.update(parse_qsl(request.body.decode("utf-8"), keep_blank_values=True,
                                   errors="strict"))
    except (UnicodeDecodeError, ValueError):
        raise Ec2Error("InvalidParameterValue", "parameters are not UTF-8 form data") from None
    return Params(pairs), query


def serve(store: Store, config: Ec2Config, address: tuple[str, int] | None = None,
          ) -> Ec2Server:
    """An :class:`Ec2Server` bound and serving in a daemon thread (stop with ``shutdown()``
    then ``server_close()``), for callers without the daemon."""
    import threading

    server = Ec2Server(store, config, address)
    threading.Thread(target=server.serve_forever, name="ec2", daemon=True).start()
    return server
