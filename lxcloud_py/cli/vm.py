"""``lxcloud vm``: list, show, create and terminate VMs (the same operations as the API)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from lxcloud_py import template, users, vms
from lxcloud_py.api import documents
from lxcloud_py.model import InvalidInput
from lxcloud_py.store import Store
from lxcloud_py.table import render


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("vm", help="virtual machines: list, show, create, terminate")
    sub = p.add_subparsers(dest="vm_command", metavar="ACTION", required=True)

    ls = sub.add_parser("list", help="table of VMs")
    ls.add_argument("--all", action="store_true", help="include DONE VMs")
    ls.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="one VM in detail")
    show.add_argument("id", type=int)
    show.add_argument("--xml", action="store_true", help="print the one.vm.info document")
    show.set_defaults(func=cmd_show)

    create = sub.add_parser("create", help="allocate a VM from an OpenNebula template")
    create.add_argument("template", metavar="FILE", help="template file ('-': stdin)")
    create.add_argument("--hold", action="store_true", help="create it in HOLD")
    create.add_argument(
        "--print-token", action="store_true", help="print the VM's callback token too"
    )
    create.set_defaults(func=cmd_create)

    term = sub.add_parser("terminate", help="terminate VMs")
    term.add_argument("ids", type=int, nargs="+", metavar="ID")
    term.add_argument("--hard", action="store_true", help="terminate-hard")
    term.set_defaults(func=cmd_terminate)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def vm_rows(rows: list[dict[str, Any]]) -> list[list[object]]:
    return [
        [
            v["id"],
            v["name"],
            vms.state_text(v),
            (v["host"] or {}).get("name", "-"),
            (v["lease"] or {}).get("ip", "-"),
            f"{v['cpu']:g}",
            v["memory_mb"],
            v["image_name"] or "-",
            _when(v["created"]),
            v["sched_message"] or "",
        ]
        for v in rows
    ]


def _exit_text(vm: dict[str, Any]) -> str:
    """``300 no more work available ...: "the VM's message" at TIME`` or ``-``."""
    code = vm["exit_code"]
    if code is None:
        return "-"
    meaning = vms.EXIT_CODES.get(code, "?")
    message = f' "{vm["exit_message"]}"' if vm["exit_message"] else ""
    return f"{code} ({meaning}){message} at {_when(vm['exit_time'])}"


def _pool_name(vm: dict[str, Any]) -> str:
    if vm["pool_id"] is None:
        return "-"
    try:
        name = template.parse(vm["template"]).get("POOL")
    except InvalidInput:
        name = None
    return f"{name} ({vm['pool_id']})" if name else str(vm["pool_id"])


def cmd_list(args: argparse.Namespace) -> int:
    store = Store(args.db)
    try:
        with store.transaction() as conn:
            rows = vms.list_vms(conn, state=-2 if args.all else -1)
    finally:
        store.dispose()
    print(
        render(
            ["id", "name", "state", "host", "ip", "cpu", "mem_mb", "image", "created", "message"],
            vm_rows(rows),
        )
    )
    print(f"{len(rows)} VM{'s' if len(rows) != 1 else ''}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = Store(args.db)
    try:
        with store.transaction() as conn:
            vm = vms.get(conn, args.id)
    finally:
        store.dispose()
    if args.xml:
        print(documents.vm_document(vm))
        return 0
    lease = vm["lease"] or {}
    fields = [
        ("id", vm["id"]),
        ("name", vm["name"]),
        ("state", vms.state_text(vm)),
        ("owner", vm["owner"]),
        ("host", (vm["host"] or {}).get("name", "-")),
        ("lease", f"{lease['ip']} {lease['mac']} {lease['name']}" if lease else "-"),
        ("cpu / vcpu", f"{vm['cpu']:g} / {vm['vcpu']}"),
        ("memory", f"{vm['memory_mb']} MiB"),
        ("image", vm["image_name"] or "-"),
        ("lifetime", f"{vm['lifetime']} s" if vm["lifetime"] is not None else "-"),
        ("created", _when(vm["created"])),
        ("started", _when(vm["started"])),
        ("deadline", _when(vm["deadline"])),
        ("ended", _when(vm["ended"])),
        ("sched message", vm["sched_message"] or "-"),
        ("pool", _pool_name(vm)),
        ("drain", f"requested {_when(vm['drain_requested'])}" if vm["drain_requested"] else "-"),
        ("exit", _exit_text(vm)),
    ]
    width = max(len(k) for k, _ in fields)
    for k, v in fields:
        print(f"{k.ljust(width)} : {v}")
    print("template:")
    for line in vm["template"].splitlines():
        print(f"  {line}")
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    if args.template == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(args.template).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read template {args.template!r}: {exc}") from exc
    store = Store(args.db)
    try:
        vm_id, token = vms.allocate(store, text, users.user_id(store), hold=args.hold)
    finally:
        store.dispose()
    print(f"VM {vm_id} created ({'HOLD' if args.hold else 'PENDING'})")
    if args.print_token:
        print(f"token: {token}")
    return 0


def cmd_terminate(args: argparse.Namespace) -> int:
    action = "terminate-hard" if args.hard else "terminate"
    store = Store(args.db)
    failed = 0
    try:
        for vm_id in args.ids:
            try:
                vms.action(store, vm_id, action)
            except (vms.WrongState, vms.NotFound) as exc:
                print(f"lxcloud: VM {vm_id}: {exc}", file=sys.stderr)
                failed += 1
                continue
            with store.transaction() as conn:
                print(f"VM {vm_id}: {vms.state_text(vms.get(conn, vm_id))}")
    finally:
        store.dispose()
    return 1 if failed else 0
