"""``lxcloud lease``: import, export and list the fixed leases (the network database)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lxcloud_py import lease_export, leases
from lxcloud_py.model import LeaseState
from lxcloud_py.store import Store
from lxcloud_py.table import render


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("lease", help="fixed leases: import, export, list")
    sub = p.add_subparsers(dest="lease_command", metavar="ACTION", required=True)

    imp = sub.add_parser(
        "import",
        help="import the lease file (CSV ip,mac,name,host or YAML list); all or nothing",
    )
    imp.add_argument("file", metavar="FILE")
    imp.add_argument(
        "--prune", action="store_true", help="remove free leases that are not in the file"
    )
    imp.add_argument("--dry-run", action="store_true", help="check and report, change nothing")
    imp.add_argument(
        "--strict", action="store_true",
        help="refuse rows pinned to a host that has not registered (default: warn)",
    )
    imp.add_argument(
        "--prefix", type=int, default=leases.DEFAULT_PREFIX, metavar="N",
        help="prefix length of the VM networks: a lease may not be its network or broadcast "
        "address (default 24)",
    )
    imp.set_defaults(func=cmd_import)

    exp = sub.add_parser("export", help="write the leases as a dnsmasq dhcp-hostsfile or CSV")
    exp.add_argument("--format", choices=("dnsmasq", "csv"), default="dnsmasq")
    exp.add_argument(
        "-o", "--output", metavar="FILE", help="write FILE atomically (default: stdout)"
    )
    exp.set_defaults(func=cmd_export)

    ls = sub.add_parser("list", help="list leases")
    ls.add_argument("--host", help="only leases pinned to this host")
    ls.add_argument("--state", choices=(LeaseState.FREE, LeaseState.USED))
    ls.set_defaults(func=cmd_list)


def cmd_import(args: argparse.Namespace) -> int:
    store = Store(args.db)
    try:
        try:
            if not 8 <= args.prefix <= 32:
                print("lxcloud: --prefix must be 8..32", file=sys.stderr)
                return 2
            report = leases.import_leases(
                store, args.file, prune=args.prune, dry_run=args.dry_run, strict=args.strict,
                prefix=args.prefix,
            )
        except leases.LeaseFileError as exc:
            for line in exc.errors:
                print(line, file=sys.stderr)
            n = len(exc.errors)
            print(
                f"lxcloud: {n} problem{'s' if n != 1 else ''} in {args.file}, nothing imported",
                file=sys.stderr,
            )
            return 2
    finally:
        store.dispose()
    for row in report.unknown_hosts:
        print(f"warning: {args.file}:{row.line}: host {row.host} is not registered (yet)",
              file=sys.stderr)
    print(format_report(report))
    if args.dry_run:
        print("(dry run: nothing changed)")
    return 0


def format_report(report: leases.ImportReport) -> str:
    rows: list[list[object]] = []
    for r in report.added:
        rows.append(["added", r.ip, r.mac, r.name, r.host, ""])
    for r, old in report.updated:
        changes = [f"{k} was {old[k]}" for k in ("mac", "name", "host") if old[k] != getattr(r, k)]
        rows.append(["updated", r.ip, r.mac, r.name, r.host, "; ".join(changes)])
    for r, old in report.in_use:
        wanted = [
            f"{k} wants {getattr(r, k)}" for k in ("mac", "name", "host") if old[k] != getattr(r, k)
        ]
        rows.append(
            [
                "in use",
                old["ip"],
                old["mac"],
                old["name"],
                old["host"],
                f"VM {old['vm_id']}, not changed: " + "; ".join(wanted),
            ]
        )
    for old in report.pruned:
        rows.append(["pruned", old["ip"], old["mac"], old["name"], old["host"], ""])
    for old in report.missing:
        note = "not in the file, kept"
        if old["vm_id"] is not None:
            note += f" (in use by VM {old['vm_id']})"
        rows.append(["missing", old["ip"], old["mac"], old["name"], old["host"], note])
    out = []
    if rows:
        out.append(render(["change", "ip", "mac", "name", "host", "note"], rows))
        out.append("")
    out.append(report.summary())
    return "\n".join(out)


def cmd_export(args: argparse.Namespace) -> int:
    store = Store(args.db)
    try:
        with store.transaction() as conn:
            text = lease_export.render_export(leases.list_leases(conn), args.format)
    finally:
        store.dispose()
    if args.output:
        lease_export.atomic_write(args.output, text)
        n = max(0, text.count("\n") - 1)
        print(f"wrote {n} leases to {args.output} ({args.format})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = Store(args.db)
    try:
        with store.transaction() as conn:
            rows = leases.list_leases(conn, host=args.host, state=args.state)
    finally:
        store.dispose()
    print(
        render(
            ["ip", "mac", "name", "host", "state", "vm"],
            [[r["ip"], r["mac"], r["name"], r["host"], r["state"], r["vm_id"]] for r in rows],
        )
    )
    print(f"{len(rows)} lease{'s' if len(rows) != 1 else ''}")
    return 0
