"""``lxcloud host``: list hosts, change their status."""

from __future__ import annotations

import argparse
import time
from typing import Any

from lxcloud_py import hosts
from lxcloud_py.model import HostState
from lxcloud_py.store import Store
from lxcloud_py.table import render


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("host", help="hypervisor hosts: list, enable, disable")
    sub = p.add_subparsers(dest="host_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="table of hosts with capacity, usage and last report")
    ls.set_defaults(func=cmd_list)
    for name, status, text in (
        ("enable", hosts.STATUS_ENABLE, "let the scheduler place VMs on the host"),
        ("disable", hosts.STATUS_DISABLE, "keep new VMs off the host"),
        ("offline", hosts.STATUS_OFFLINE, "mark the host offline"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("host", metavar="HOST", help="name or id")
        sp.set_defaults(func=cmd_status, status=status)


def _ago(t: float | None, now: float) -> str:
    if not t:
        return "never"
    d = max(0, now - t)
    if d < 120:
        return f"{d:.0f}s ago"
    if d < 7200:
        return f"{d / 60:.0f}m ago"
    return f"{d / 3600:.1f}h ago"


def host_rows(rows: list[dict[str, Any]], now: float) -> list[list[object]]:
    out: list[list[object]] = []
    for h in rows:
        verified = sum(1 for i in h["images"] if i["state"] == "verified")
        out.append(
            [
                h["id"],
                h["name"],
                HostState(h["state"]).name,
                f"{h['cpu_used']:g}/{h['cpu']:g}",
                f"{h['memory_used']}/{h['memory_mb']}",
                len(h["vms"]),
                len(h["macs"]),
                verified,
                _ago(h["last_seen"], now),
            ]
        )
    return out


def cmd_list(args: argparse.Namespace) -> int:
    store = Store(args.db)
    try:
        with store.transaction() as conn:
            rows = hosts.list_hosts(conn)
    finally:
        store.dispose()
    print(
        render(
            ["id", "name", "state", "cpu", "mem_mb", "vms", "macs", "images", "last_seen"],
            host_rows(rows, time.time()),
        )
    )
    print(f"{len(rows)} host{'s' if len(rows) != 1 else ''}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    store = Store(args.db)
    try:
        with store.transaction() as conn:
            host_id = hosts.find_id(conn, args.host)
        hosts.set_status(store, host_id, args.status)
        with store.transaction() as conn:
            state = HostState(hosts.get(conn, host_id)["state"]).name
    finally:
        store.dispose()
    print(f"host {args.host}: {state}")
    return 0
