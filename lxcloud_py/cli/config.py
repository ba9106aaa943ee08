"""``lxcloud config show``: the effective settings and where each one came from.

Precedence, one for every setting: flag > environment (``LXCLOUD_*``) > config file (``--config``
or ``$LXCLOUD_CONFIG``) > default. ``config show`` takes the same flags as ``lxcloud serve``, so
it prints exactly what ``serve`` with those flags (and this environment) would use.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from typing import Any

from lxcloud_py.config import SETTINGS, Settings, add_setting_flags
from lxcloud_py.table import render

SECTIONS = ("daemon", "api", "scheduler", "executor", "reconcile", "limits")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("config", help="show the effective control-plane settings")
    sub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    show = sub.add_parser(
        "show",
        help="every setting, its value and where it came from (flag, env, file, default)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("--config", metavar="FILE", help="YAML config (default: $LXCLOUD_CONFIG)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    for section in SECTIONS:
        add_setting_flags(show, section)
    show.set_defaults(func=cmd_show)


def _display(value: Any) -> Any:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "null" if value is None else value


def rows(settings: Settings) -> list[dict[str, Any]]:
    """One row per setting: key, value, source, flag, env (the last two for declared ones)."""
    from lxcloud_py.executor import ExecutorConfig  # not at import time: it loads the runner

    declared = {s.key: s for s in SETTINGS}
    out: list[dict[str, Any]] = []
    for s in SETTINGS:
        out.append(
            {"key": s.key, "value": settings[s.key], "source": settings.sources[s.key],
             "flag": s.flag, "env": s.env, "opennebula": s.onename}
        )  # fmt: skip
    # The rest of the scheduler and executor sections: config file or default only.
    executor = ExecutorConfig.from_config(settings.config)
    for section, obj in (("scheduler", settings.config.scheduler), ("executor", executor)):
        for f in fields(obj):
            key = f"{section}.{f.name}"
            if key in declared:
                continue
            value = getattr(obj, f.name)
            if key == "executor.vars":  # may hold secrets: names only
                value = sorted(value)
            out.append(
                {"key": key, "value": value, "source": settings.source_of(section, f.name),
                 "flag": None, "env": None, "opennebula": None}
            )  # fmt: skip
    order = {name: i for i, name in enumerate(SECTIONS)}
    out.sort(key=lambda r: order[r["key"].split(".")[0]])
    return out


def cmd_show(args: argparse.Namespace) -> int:
    from lxcloud_py.cli.serve import resolve  # the same resolution as serve's

    settings = resolve(args)
    config = settings.config
    table = rows(settings)
    if args.json:
        print(json.dumps({"config_file": config.path, "settings": table}, indent=2))
        return 0
    print(f"config file: {config.path or '(none: defaults, environment and flags only)'}")
    print(
        render(
            ["setting", "value", "source", "flag / environment"],
            [
                [r["key"], _display(r["value"]), r["source"],
                 f"{r['flag']} / {r['env']}" if r["flag"] else ""]
                for r in table
            ],
        )
    )  # fmt: skip
    return 0
