"""``lxcloud serve``: the daemon — the API and every stage of the control plane in one process.

Settings resolve as flag > environment (``LXCLOUD_*``) > config file (``--config`` or
``$LXCLOUD_CONFIG``) > default; ``lxcloud config show`` prints them with their sources. See
:mod:`lxcloud_py.daemon` for the stages and the signals, docs/daemon.md for the whole story.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from lxcloud_py.api import parse_listen
from lxcloud_py.config import Settings, add_setting_flags, effective, load_config
from lxcloud_py.daemon import Daemon, check_stages, registry
from lxcloud_py.daemon.decisions import JsonFormatter
from lxcloud_py.model import InvalidInput
from lxcloud_py.store import Store, schema

log = logging.getLogger("lxcloud.serve")

EPILOG = f"""stages (--stages, default {",".join(registry.DEFAULT_STAGES)}):
{registry.describe()}

signals: SIGTERM/SIGINT stop after the jobs in flight (--shutdown-timeout), exit 0;
a second one exits at once; SIGHUP re-reads the config file.
Every option is also an environment variable (shown) and a config-file key
(`lxcloud config show` lists them all with where each value came from)."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="the daemon: API, monitor, scheduler, executor, pools in one process",
        description="Run the control plane: the XML-RPC API (OpenNebula protocol) and the "
        "stages that make the farm converge, each in its own thread, on one database.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="YAML config (default: $LXCLOUD_CONFIG)")
    for section in ("daemon", "api", "scheduler", "executor", "reconcile", "limits"):
        add_setting_flags(p, section)
    p.set_defaults(func=cmd_serve)


def resolve(args: argparse.Namespace) -> Settings:
    """Load the config file and resolve the settings over it (again on SIGHUP).

    The executor needs an inventory: when the stages are the default ones and no inventory is
    set, the executor is left out (``serve`` says so); asked for by name, it is an error."""
    settings = effective(load_config(args.config), args)
    stages = check_stages(settings["daemon.stages"])
    if (
        settings.sources["daemon.stages"] == "default"
        and "executor" in stages
        and not settings["executor.inventory"]
    ):
        stages.remove("executor")
        settings.sources["daemon.stages"] = "default, without executor: no executor.inventory"
    settings.values["daemon.stages"] = stages
    if "api" in settings["daemon.stages"]:
        parse_listen(str(settings["api.listen"]))
    return settings


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
            conn.execute(select(schema.decisions.c.id).limit(1)).all()
            conn.execute(select(schema.vm_templates.c.id).limit(1)).all()  # OpenNebula objects
    except SQLAlchemyError as exc:
        raise InvalidInput(
            f"cannot use the database {store!r} ({type(exc).__name__}): "
            "is it reachable, and initialised (or upgraded) with `lxcloud db init`?"
        ) from None
    if version is None or admins is None:
        raise InvalidInput(f"the database {store!r} is not initialised: run `lxcloud db init`")


def setup_logging(log_format: str) -> None:
    """INFO for lxcloud's loggers unless -v asked more; JSON lines with --log-format json."""
    lx = logging.getLogger("lxcloud")
    if lx.getEffectiveLevel() > logging.INFO:
        lx.setLevel(logging.INFO)
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())


def cmd_serve(args: argparse.Namespace) -> int:
    settings = resolve(args)
    setup_logging(settings["daemon.log_format"])
    if "without executor" in settings.sources["daemon.stages"]:
        log.warning(
            "no inventory (--inventory, LXCLOUD_INVENTORY or executor.inventory): "
            "running without the executor stage; VMs are placed but not deployed"
        )
    stages = [registry.stage_class(n) for n in settings["daemon.stages"]]
    store = Store(args.db)
    try:
        check_database(store)
        log.info("serving %s", store)
        return Daemon(store, settings, stages, lambda: resolve(args)).run()
    finally:
        store.dispose()
