"""``lxcloud serve``: the XML-RPC API and the host staleness monitor.

Settings come from the ``api`` section of the config file (``--config`` or
``$LXCLOUD_CONFIG``), overridden by the options::

    api:
      listen: 127.0.0.1:2633
      max_request_bytes: 1048576
      max_threads: 32           # requests handled at once (each holds a DB connection)
      monitor_interval: 60      # seconds between host heartbeats
      missed_intervals: 3       # a host silent for this many intervals goes to ERROR

SIGTERM and SIGINT stop it gracefully: the handlers only set a flag; the main thread then shuts
the server down, lets in-flight requests finish and stops the monitor.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from lxcloud_py import hosts
from lxcloud_py.api import ApiServer, parse_listen
from lxcloud_py.api.server import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_THREADS
from lxcloud_py.config import load_config
from lxcloud_py.model import InvalidInput
from lxcloud_py.store import Store, schema

log = logging.getLogger("lxcloud.serve")

DEFAULTS: dict[str, Any] = {
    "listen": "127.0.0.1:2633",
    "max_request_bytes": DEFAULT_MAX_REQUEST_BYTES,
    "max_threads": DEFAULT_MAX_THREADS,
    "monitor_interval": 60.0,
    "missed_intervals": 3,
}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="serve the XML-RPC API (OpenNebula protocol)")
    p.add_argument("--config", metavar="FILE", help="YAML config (default: $LXCLOUD_CONFIG)")
    p.add_argument("--listen", metavar="HOST:PORT", help="default 127.0.0.1:2633")
    p.add_argument("--max-request-bytes", type=int, metavar="N", help="default 1 MiB")
    p.add_argument("--max-threads", type=int, metavar="N", help="concurrent requests, default 32")
    p.add_argument("--monitor-interval", type=float, metavar="S", help="host heartbeat interval")
    p.add_argument(
        "--missed-intervals", type=int, metavar="N", help="missed heartbeats before ERROR"
    )
    p.set_defaults(func=cmd_serve)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    section = load_config(args.config).section("api")
    unknown = sorted(set(section) - set(DEFAULTS))
    if unknown:
        raise InvalidInput(f"config api: unknown key(s) {', '.join(unknown)}")
    out = {**DEFAULTS, **section}
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    if not isinstance(out["monitor_interval"], int | float) or out["monitor_interval"] <= 0:
        raise InvalidInput("monitor_interval must be a positive number of seconds")
    if not isinstance(out["missed_intervals"], int) or out["missed_intervals"] < 1:
        raise InvalidInput("missed_intervals must be a positive integer")
    if not isinstance(out["max_request_bytes"], int) or out["max_request_bytes"] < 4096:
        raise InvalidInput("max_request_bytes must be an integer of at least 4096")
    if not isinstance(out["max_threads"], int) or not 1 <= out["max_threads"] <= 1024:
        raise InvalidInput("max_threads must be an integer from 1 to 1024")
    out["address"] = parse_listen(str(out["listen"]))
    return out


def monitor_loop(store: Store, interval: float, missed: int, stop: threading.Event) -> None:
    """Mark silent hosts ERROR every ``interval`` seconds until ``stop`` is set."""
    while not stop.wait(interval):
        try:
            for host_id, name in hosts.mark_stale(store, time.time(), interval, missed):
                log.warning("host %s (%d) missed %d heartbeats: ERROR", name, host_id, missed)
        except Exception:
            log.exception("host monitor cycle failed")


def check_database(store: Store) -> None:
    """Refuse to serve a database that is unreachable or not initialised."""
    try:
        with store.transaction() as conn:
            version = conn.execute(
                select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
            ).scalar_one_or_none()
            admins = conn.execute(
                select(schema.users.c.id).where(schema.users.c.is_admin.is_(True))
            ).first()
    except SQLAlchemyError as exc:
        raise InvalidInput(
            f"cannot use the database {store!r} ({type(exc).__name__}): "
            "is it reachable, and initialised with `lxcloud db init`?"
        ) from None
    if version is None or admins is None:
        raise InvalidInput(f"the database {store!r} is not initialised: run `lxcloud db init`")


def cmd_serve(args: argparse.Namespace) -> int:
    conf = settings(args)
    # One line per call is the server's log: INFO for lxcloud's loggers unless -v asked more.
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        logging.getLogger("lxcloud").setLevel(logging.INFO)
    store = Store(args.db)
    try:
        check_database(store)
    except InvalidInput:
        store.dispose()
        raise
    server = ApiServer(
        store,
        conf["address"],
        max_request_bytes=conf["max_request_bytes"],
        max_threads=conf["max_threads"],
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()  # only a flag: the main thread does the rest

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    serving = threading.Thread(target=server.serve_forever, name="api", daemon=True)
    monitor = threading.Thread(
        target=monitor_loop,
        args=(store, conf["monitor_interval"], conf["missed_intervals"], stop),
        name="host-monitor",
        daemon=True,
    )
    serving.start()
    monitor.start()
    host, port = conf["address"][0], server.port
    print(f"lxcloud API listening on http://{host}:{port}/RPC2", file=sys.stderr, flush=True)
    log.info(
        "serving %s; host monitor every %g s, ERROR after %d missed",
        store,
        conf["monitor_interval"],
        conf["missed_intervals"],
    )
    try:
        while not stop.wait(1.0):
            if not serving.is_alive():  # pragma: no cover - serve_forever died
                log.error("the API server thread stopped")
                return 1
    finally:
        stop.set()
        server.shutdown()  # from this thread, not from the signal handler
        server.server_close()  # waits for in-flight requests
        monitor.join(5)
        store.dispose()
        for s, h in old.items():
            signal.signal(s, h)
        log.info("stopped")
    return 0
