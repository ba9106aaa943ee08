"""Stage ``ec2``: the EC2 Query API listener (config section ``ec2``, docs/ec2.md).

Like the ``api`` stage it binds its socket when the daemon starts (a busy port fails the
start), and on stop lets the requests in flight finish; its settings take effect at the next
start, not on SIGHUP.
"""

from __future__ import annotations

import logging
import sys
import threading

from lxcloud_py.daemon.core import Stage, StageContext

from .config import from_section
from .server import Ec2Server

log = logging.getLogger("lxcloud.daemon.ec2")


class Ec2Stage(Stage):
    name = "ec2"

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.server = Ec2Server(ctx.store, from_section(ctx.settings.config.section("ec2")))
        self._thread = threading.Thread(target=self.server.serve_forever, name="ec2",
                                        daemon=True)
        self._closed = False

    def start(self) -> None:
        self._thread.start()
        print(f"lxcloud EC2 API listening on {self.server.url}", file=sys.stderr, flush=True)

    def request_stop(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.server.server_close()

    def reload(self, settings: object) -> None:
        log.info("ec2: listen address, region and sizes change at the next start, not on SIGHUP")


STAGE = Ec2Stage
