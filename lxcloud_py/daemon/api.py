"""Stage ``api``: the XML-RPC server (OpenNebula protocol), one thread per request.

It binds its socket when the daemon starts (a busy port fails the start); on stop it shuts the
server down and lets the requests in flight finish. ``api.listen`` and the other ``api`` settings
take effect at the next start, not on SIGHUP.
"""

from __future__ import annotations

import logging
import sys
import threading

from lxcloud_py.api import ApiServer, parse_listen

from .core import Stage, StageContext

log = logging.getLogger("lxcloud.daemon.api")


class ApiStage(Stage):
    name = "api"

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        api = ctx.settings.section("api")
        self.address = parse_listen(str(api["listen"]))
        self.server = ApiServer(
            ctx.store,
            self.address,
            max_request_bytes=api["max_request_bytes"],
            max_threads=api["max_threads"],
            request_deadline=api["request_deadline"],
            idle_timeout=api["idle_timeout"],
            max_connections=api["max_connections"],
            max_per_ip=api["max_per_address"],
        )
        self._thread = threading.Thread(target=self.server.serve_forever, name="api", daemon=True)
        self._closed = False

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.server.port}/RPC2"

    def start(self) -> None:
        self._thread.start()
        print(f"lxcloud API listening on {self.url}", file=sys.stderr, flush=True)

    def request_stop(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()  # from the main thread, never from a handler

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.server.server_close()  # waits for the requests in flight

    def reload(self, settings: object) -> None:
        log.info("api: listen address and limits change at the next start, not on SIGHUP")


STAGE = ApiStage
