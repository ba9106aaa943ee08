"""``lxcloud schedule``: run the placement cycle (once, or every few seconds)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from lxcloud_py.config import load_config
from lxcloud_py.scheduler import CycleResult, Scheduler
from lxcloud_py.store import Store
from lxcloud_py.table import render


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("schedule", help="place PENDING VMs on hosts (bind leases)")
    p.add_argument("--once", action="store_true", help="run one cycle and exit")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="control-plane config (YAML; default $LXCLOUD_CONFIG, else built-in defaults)",
    )
    p.add_argument(
        "--interval", type=float, default=10.0, help="seconds between cycles (without --once)"
    )
    p.add_argument("--limit", type=int, help="consider at most N pending VMs per cycle")
    p.set_defaults(func=cmd_schedule)


def format_result(result: CycleResult) -> str:
    rows: list[list[object]] = [
        [p.vm_id, p.vm_name, p.host, p.ip, p.mac, p.lease_name, "placed"] for p in result.placements
    ]
    rows += [[u.vm_id, u.vm_name, "", "", "", "", u.reason] for u in result.unplaced]
    rows.sort(key=lambda r: int(str(r[0])))
    out = []
    if rows:
        out.append(render(["vm", "name", "host", "ip", "mac", "lease name", "result"], rows))
    summary = (
        f"{len(result.placements)} placed, {len(result.unplaced)} unplaced "
        f"of {result.requests} pending on {result.hosts} hosts in {result.seconds:.3f} s"
    )
    if result.skipped:
        summary += f", {len(result.skipped)} taken by another scheduler"
    if result.conflicts:
        summary += f", {result.conflicts} claim conflicts retried"
    out.append(summary)
    return "\n".join(out)


def cmd_schedule(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    store = Store(args.db)
    scheduler = Scheduler(store, config.scheduler)
    try:
        while True:
            result = scheduler.run_cycle(limit=args.limit)
            print(format_result(result), flush=True)
            if args.once:
                return 0
            time.sleep(max(0.1, args.interval))
    finally:
        store.dispose()
