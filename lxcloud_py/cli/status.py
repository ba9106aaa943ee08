"""``lxcloud status``: the farm on one screen — hosts, pools, the last decisions, errors.

Hosts: state, used/total CPU and memory (live placed VMs), VM count. Pools: target, active
(the VMs that count against the target: PENDING to RUNNING, not draining), pending (not placed
yet), draining, backoff (time left). Decisions: what the daemon's stages did
last (``decisions`` table). Errors: hosts in ERROR, VMs in a failure state with their message,
failed decisions. ``--json`` for machines, ``--watch N`` redraws every N seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from lxcloud_py import pools
from lxcloud_py.daemon.decisions import latest
from lxcloud_py.model import HostState, InvalidInput, LCMState, VMState
from lxcloud_py.scheduler.state import usage_query
from lxcloud_py.store import Store, schema
from lxcloud_py.table import render

_H, _V = schema.hosts, schema.vms
FAILED_LCM = (LCMState.PROLOG_FAILURE, LCMState.BOOT_FAILURE, LCMState.EPILOG_FAILURE)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status",
        help="the farm on one screen: hosts, pools, last decisions, errors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--watch", type=float, metavar="N", help="redraw every N seconds (Ctrl-C ends)")
    p.add_argument("--decisions", type=int, default=10, metavar="N", help="last N (default 10)")
    p.set_defaults(func=cmd_status)


def _hosts(conn: Connection) -> list[dict[str, Any]]:
    usage = {r[0]: r for r in conn.execute(usage_query()).all()}
    out = []
    for h in conn.execute(select(_H).order_by(_H.c.name)).all():
        u = usage.get(h.id)
        out.append(
            {
                "name": h.name,
                "state": HostState(h.state).name,
                "cpu_used": float(u[1]) if u else 0.0,
                "cpu_total": float(h.cpu),
                "memory_mb_used": int(u[2]) if u else 0,
                "memory_mb_total": int(h.memory_mb),
                "vms": int(u[3]) if u else 0,
            }
        )
    return out


def _pools(conn: Connection) -> list[dict[str, Any]]:
    now = time.time()
    return [
        {
            "name": p["name"],
            "target": int(p["target"]),
            "enabled": bool(p["enabled"]),
            "active": p["active"],
            "pending": p["pending"],
            "draining": p["draining"],
            "backoff_level": int(p["backoff_level"]),
            "backoff_s": max(0.0, float(p["backoff_until"]) - now) if p["backoff_until"] else 0.0,
        }
        for p in pools.list_pools(conn)
    ]


def _errors(conn: Connection, decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"what": f"host {h.name}", "message": "ERROR (missed heartbeats)"}
        for h in conn.execute(select(_H.c.name).where(_H.c.state == HostState.ERROR)).all()
    ]
    for v in conn.execute(
        select(_V.c.id, _V.c.name, _V.c.lcm_state, _V.c.sched_message)
        .where(_V.c.state == VMState.ACTIVE, _V.c.lcm_state.in_(FAILED_LCM))
        .order_by(_V.c.id)
    ).all():
        out.append(
            {"what": f"VM {v.id} ({v.name})",
             "message": f"{LCMState(v.lcm_state).name}: {v.sched_message or ''}".strip()}
        )  # fmt: skip
    out += [
        {"what": f"{d['stage']} {d['action']}", "message": d["message"] or ""}
        for d in decisions
        if not d["ok"]
    ]
    return out


def snapshot(store: Store, n_decisions: int = 10) -> dict[str, Any]:
    """Everything ``status`` shows, as plain data."""
    decisions = latest(store, n_decisions)
    with store.transaction() as conn:
        return {
            "time": time.time(),
            "hosts": _hosts(conn),
            "pools": _pools(conn),
            "decisions": decisions,
            "errors": _errors(conn, decisions),
        }


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def format_snapshot(snap: dict[str, Any]) -> str:
    h, p, d = snap["hosts"], snap["pools"], snap["decisions"]
    host_rows = [
        [x["name"], x["state"], f"{x['cpu_used']:g}/{x['cpu_total']:g}",
         f"{x['memory_mb_used']}/{x['memory_mb_total']}", x["vms"]]
        for x in h
    ]  # fmt: skip
    pool_rows = [
        [x["name"], x["target"] if x["enabled"] else f"{x['target']} (off)", x["active"],
         x["pending"], x["draining"],
         f"{x['backoff_s']:.0f}s (level {x['backoff_level']})" if x["backoff_s"] else "-"]
        for x in p
    ]  # fmt: skip
    decision_rows = [
        [_clock(x["ts"]), x["stage"], x["action"] + ("" if x["ok"] else " (!)"), x["vm_id"],
         x["host"], x["pool"], (x["message"] or "")[:60]]
        for x in d
    ]  # fmt: skip
    lines = [f"lxcloud status at {_clock(snap['time'])} UTC", "", f"HOSTS ({len(h)})"]
    lines.append(render(["name", "state", "cpu", "memory MiB", "vms"], host_rows))
    lines += ["", f"POOLS ({len(p)})"]
    lines.append(render(["name", "target", "active", "pending", "draining", "backoff"], pool_rows))
    lines += ["", f"LAST DECISIONS ({len(d)})"]
    lines.append(
        render(["time", "stage", "decision", "vm", "host", "pool", "message"], decision_rows)
    )
    errors = snap["errors"]
    lines += ["", f"ERRORS ({len(errors)})"]
    lines += [f"  {e['what']}: {e['message']}" for e in errors] or ["  none"]
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch is not None and args.watch <= 0:
        raise InvalidInput("--watch must be a positive number of seconds")
    if args.decisions < 0:
        raise InvalidInput("--decisions must be 0 or more")
    store = Store(args.db)
    tty = sys.stdout.isatty()
    try:
        while True:
            snap = snapshot(store, args.decisions)
            if args.json:
                text = json.dumps(snap)
            else:
                text = format_snapshot(snap)
                if args.watch is not None:
                    text = ("\033[H\033[2J" if tty else "\n") + text
            print(text, flush=True)
            if args.watch is None:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    finally:
        store.dispose()
