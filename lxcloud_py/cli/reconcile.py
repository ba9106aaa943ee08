"""``lxcloud reconcile``: one reconcile cycle (observe the hosts, compare with the database,
repair), or with ``--dry-run`` only what it would do, as a table."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lxcloud_py.config import add_setting_flags, effective, load_config
from lxcloud_py.reconcile.engine import Done, from_settings
from lxcloud_py.store import Store
from lxcloud_py.table import render

HEADERS = ("rule", "vm", "host", "saw", "action", "result")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "reconcile",
        help="compare the DB with libvirt, the disks and the leases; repair (or --dry-run)",
        description="One reconcile cycle: lxcloud.cloud.vm_observe on every registered host "
        "(through the executor's inventory), then the rules (vanished or shut-off domains, "
        "strays, orphan files, leases of ended VMs, stuck deploys, lifetimes, silent hosts); "
        "each action is its own transition. The daemon's reconciler stage runs this every "
        "daemon.reconcile_interval seconds.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="YAML config (default: $LXCLOUD_CONFIG)")
    p.add_argument("--dry-run", action="store_true", help="print what it would do, change nothing")
    p.add_argument("--json", action="store_true", help="one JSON object per action")
    p.add_argument("--inventory", "-i", help="Ansible inventory of the hypervisors")
    add_setting_flags(p, "reconcile")
    p.set_defaults(func=cmd_reconcile)


def rows(done: list[Done]) -> list[tuple[object, ...]]:
    return [
        (d.action.rule, d.action.vm_id if d.action.vm_id is not None else "-",
         d.action.host or "-", d.action.saw, d.action.do,
         d.result + (f": {d.message}" if d.message else ""))
        for d in done
    ]


def cmd_reconcile(args: argparse.Namespace) -> int:
    settings = effective(load_config(args.config), args)
    store = Store(args.db)
    try:
        done = from_settings(store, settings).run_once(dry_run=args.dry_run)
    finally:
        store.dispose()
    if args.json:
        for d in done:
            print(json.dumps({**dict(zip(HEADERS, rows([d])[0], strict=True)),
                              "kind": d.action.kind, "ok": d.ok}))
    elif done:
        print(render(HEADERS, rows(done)))
    else:
        print("nothing to reconcile: the database, libvirt, the disks and the leases agree")
    return 0 if all(d.ok for d in done) else 1
