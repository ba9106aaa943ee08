"""``lxcloud pool``: provisioning pools: set, list, show, delete, apply a YAML file.

The same model as the API (``lxcloud.pool.*``) and the Ansible module ``lxcloud.cloud.pool``:
every change goes through :mod:`lxcloud_py.pools`. The daemon's pool stage converges the farm
to the pools; see docs/pools.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from lxcloud_py import pools
from lxcloud_py.api import documents
from lxcloud_py.model import InvalidInput, NotFound
from lxcloud_py.store import Store
from lxcloud_py.table import render


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "pool", help="provisioning pools: keep N VMs of a template (set, list, show, apply)"
    )
    sub = p.add_subparsers(dest="pool_command", metavar="ACTION", required=True)

    st = sub.add_parser(
        "set",
        help="create a pool or change the fields given",
        description="Create pool NAME (needs --template or --image) or change the fields "
        "given; fields not given keep their values. Lowering --count drains the surplus "
        "gracefully (newest first) unless --hard.",
    )
    st.add_argument("name", metavar="NAME")
    src = st.add_mutually_exclusive_group()
    src.add_argument("--template", metavar="FILE", help="OpenNebula VM template ('-': stdin)")
    src.add_argument("--image", help="image name (with --cpu, --vcpu, --memory)")
    st.add_argument("--cpu", type=float, help="with --image (default 1)")
    st.add_argument("--vcpu", type=int, help="with --image (default 1)")
    st.add_argument("--memory", type=int, metavar="MB", help="with --image (default 512)")
    st.add_argument(
        "--context",
        action="append",
        metavar="KEY=VALUE",
        help="with --image: a CONTEXT variable (repeat), e.g. VM_EXIT_CODE=300",
    )
    st.add_argument("--count", "--target", dest="target", type=int, help="target VM count")
    st.add_argument("--lifetime", type=int, metavar="S", help="seconds each VM lives (0: none)")
    st.add_argument("--priority", type=int, help="higher pools refill first")
    st.add_argument("--hosts", metavar="H1,H2", help="place only on these hosts ('': any)")
    mode = st.add_mutually_exclusive_group()
    mode.add_argument(
        "--hard", action="store_const", const="hard", dest="drain", help="drain: terminate"
    )
    mode.add_argument(
        "--graceful",
        action="store_const",
        const="graceful",
        dest="drain",
        help="drain: the VMs end themselves (the default)",
    )
    st.add_argument("--backoff-base", type=int, metavar="S", help="first backoff (default 60)")
    st.add_argument("--backoff-max", type=int, metavar="S", help="backoff cap (default 3600)")
    en = st.add_mutually_exclusive_group()
    en.add_argument("--enable", action="store_const", const=True, dest="enabled")
    en.add_argument(
        "--disable",
        action="store_const",
        const=False,
        dest="enabled",
        help="leave the pool alone (no refill, no drain)",
    )
    st.set_defaults(func=cmd_set)

    ls = sub.add_parser("list", help="table of pools with their counts and backoff")
    ls.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="one pool, its template and its latest decisions")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--decisions", type=int, default=20, metavar="N", help="(default 20)")
    show.add_argument("--xml", action="store_true", help="print the lxcloud.pool.info document")
    show.set_defaults(func=cmd_show)

    rm = sub.add_parser("delete", help="delete a pool without live VMs")
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("--force", action="store_true", help="even with live VMs (they stay, unpooled)")
    rm.set_defaults(func=cmd_delete)

    ap = sub.add_parser(
        "apply",
        help="make the pools match a YAML file",
        description="Create and update the pools FILE declares (a list under 'pools:', each "
        "with the fields of 'pool set': name, template or image/cpu/vcpu/memory/context, "
        "target, lifetime, priority, hosts, drain, backoff_base, backoff_max, enabled). "
        "Fields not given take their defaults. With --prune, pools not in the file are "
        "deleted, or set to target 0 while they still have live VMs.",
    )
    ap.add_argument("file", metavar="FILE.yml")
    ap.add_argument("--prune", action="store_true", help="remove pools the file does not name")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    ap.set_defaults(func=cmd_apply)


def _read(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path!r}: {exc}") from exc


def set_mapping(args: argparse.Namespace) -> dict[str, Any]:
    """The fields ``pool set`` was given, as a pool mapping."""
    data: dict[str, Any] = {}
    if args.template is not None:
        data["template"] = _read(args.template)
    for key in ("image", "cpu", "vcpu", "memory", "target", "lifetime", "priority", "drain"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.context:
        pairs = [c.partition("=") for c in args.context]
        bad = [c for c, (_k, sep, _v) in zip(args.context, pairs, strict=True) if not sep]
        if bad:
            raise InvalidInput(f"--context takes KEY=VALUE, got {bad[0]!r}")
        data["context"] = {k: v for k, _sep, v in pairs}
    if args.hosts is not None:
        data["hosts"] = args.hosts
    if args.backoff_base is not None:
        data["backoff_base"] = args.backoff_base
    if args.backoff_max is not None:
        data["backoff_max"] = args.backoff_max
    if args.enabled is not None:
        data["enabled"] = args.enabled
    return data


def cmd_set(args: argparse.Namespace) -> int:
    data = set_mapping(args)
    store = Store(args.db)
    try:
        try:
            with store.transaction() as conn:
                current = pools.get_spec(conn, args.name)
        except NotFound:
            spec = pools.spec_from_mapping(data, args.name)
            pools.create_pool(store, spec)
            print(f"pool {spec.name} created: {pools.describe(spec)}")
            return 0
        spec = pools.spec_from_mapping(pools.merged_mapping(current, data), args.name)
        changes = pools.update_pool(store, args.name, spec)
    finally:
        store.dispose()
    print(f"pool {args.name}: " + ("; ".join(changes) if changes else "unchanged"))
    return 0


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _backoff(p: dict[str, Any], now: float) -> str:
    if not p["backoff_level"]:
        return "-"
    until = p["backoff_until"] or 0
    wait = f", {until - now:.0f}s left" if until > now else ", one per cycle"
    return f"level {p['backoff_level']}{wait}"


def cmd_list(args: argparse.Namespace) -> int:
    store = Store(args.db)
    try:
        with store.transaction() as conn:
            rows = pools.list_pools(conn)
    finally:
        store.dispose()
    now = time.time()
    print(
        render(
            [
                "id",
                "name",
                "target",
                "active",
                "pending",
                "draining",
                "lifetime",
                "prio",
                "drain",
                "enabled",
                "backoff",
            ],
            [
                [
                    p["id"],
                    p["name"],
                    p["spec"].target,
                    p["active"],
                    p["pending"],
                    p["draining"],
                    p["spec"].lifetime or "-",
                    p["spec"].priority,
                    p["spec"].drain,
                    "yes" if p["spec"].enabled else "no",
                    _backoff(p, now),
                ]
                for p in rows
            ],
        )
    )
    print(f"{len(rows)} pool{'s' if len(rows) != 1 else ''}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = Store(args.db)
    try:
        with store.transaction() as conn:
            row = pools.find(conn, args.name)
            (p,) = pools.pool_status(conn, [row])
            p["decisions"] = pools.decisions_of(conn, row.id, max(0, args.decisions))
    finally:
        store.dispose()
    if args.xml:
        print(documents.pool_document(p))
        return 0
    spec: pools.PoolSpec = p["spec"]
    fields = [
        ("id", p["id"]),
        ("name", spec.name),
        ("target", spec.target),
        ("active", f"{p['active']} ({p['pending']} pending)"),
        ("draining", p["draining"]),
        ("lifetime", f"{spec.lifetime} s" if spec.lifetime else "-"),
        ("priority", spec.priority),
        ("hosts", ",".join(spec.hosts) or "any"),
        ("drain mode", spec.drain),
        ("enabled", "yes" if spec.enabled else "no"),
        (
            "backoff",
            f"{_backoff(p, time.time())} (base {spec.backoff_base} s, max {spec.backoff_max} s)",
        ),
        ("created", _when(p["created"])),
        ("updated", _when(p["updated"])),
    ]
    width = max(len(k) for k, _ in fields)
    for k, v in fields:
        print(f"{k.ljust(width)} : {v}")
    print("template:")
    for line in spec.template.splitlines():
        print(f"  {line}")
    print("decisions (newest first):")
    print(
        render(
            ["time", "action", "message"],
            [
                [_when(d["ts"]), d["new_state"] or "change", d["message"] or ""]
                for d in p["decisions"]
            ],
        )
    )
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    store = Store(args.db)
    try:
        pools.delete_pool(store, args.name, force=args.force)
    finally:
        store.dispose()
    print(f"pool {args.name} deleted")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    specs = pools.parse_pool_file(args.file, _read(args.file))
    store = Store(args.db)
    try:
        plan = pools.apply_specs(store, specs, prune=args.prune, dry_run=args.dry_run)
    finally:
        store.dispose()
    for step in plan:
        detail = f": {'; '.join(step.details)}" if step.details else ""
        print(
            f"{'would ' if args.dry_run and step.action != 'unchanged' else ''}"
            f"{step.action} {step.pool}{detail}"
        )
    changed = sum(1 for s in plan if s.action != "unchanged")
    print(f"{len(plan)} pool(s), {changed} {'to change' if args.dry_run else 'changed'}")
    return 0
