"""``lxcloud template``: list, show, create and delete VM templates (``one.template.*``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from lxcloud_py import templates, users
from lxcloud_py.api import one_documents
from lxcloud_py.model import InvalidInput
from lxcloud_py.store import Store
from lxcloud_py.table import render
from lxcloud_py.template import parse


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("template", help="VM templates: list, show, create, delete")
    sub = p.add_subparsers(dest="template_command", metavar="ACTION", required=True)

    ls = sub.add_parser("list", help="table of VM templates")
    ls.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="one VM template")
    show.add_argument("template", metavar="NAME|ID")
    show.add_argument("--xml", action="store_true", help="print the one.template.info document")
    show.set_defaults(func=cmd_show)

    create = sub.add_parser(
        "create", help="a VM template from a file in OpenNebula syntax (NAME = ... required)"
    )
    create.add_argument("file", metavar="FILE", help="template file ('-': stdin)")
    create.set_defaults(func=cmd_create)

    rm = sub.add_parser("delete", help="delete VM templates (their VMs stay)")
    rm.add_argument("templates", nargs="+", metavar="NAME|ID")
    rm.set_defaults(func=cmd_delete)


def cmd_list(args: argparse.Namespace) -> int:
    store = Store(args.db)
    try:
        with store.transaction() as conn:
            rows = templates.list_templates(conn)
    finally:
        store.dispose()
    table = []
    for t in rows:
        body = parse(t["template"])
        images = [d.get("IMAGE", "") for d in body.vectors("DISK")]
        table.append(
            [
                t["id"],
                t["name"],
                t["owner"],
                body.get("CPU", "1"),
                body.get("MEMORY", "512"),
                ",".join(images) or "-",
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t["created"])),
            ]
        )
    print(render(["id", "name", "owner", "cpu", "mem_mb", "image", "created"], table))
    print(f"{len(rows)} template{'s' if len(rows) != 1 else ''}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = Store(args.db)
    try:
        with store.transaction() as conn:
            tpl = templates.get(conn, templates.find_id(conn, args.template))
    finally:
        store.dispose()
    if args.xml:
        print(one_documents.template_document(tpl))
        return 0
    print(f"id    : {tpl['id']}\nname  : {tpl['name']}\nowner : {tpl['owner']}\ntemplate:")
    for line in tpl["template"].splitlines():
        print(f"  {line}")
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    if args.file == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(args.file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read template {args.file!r}: {exc}") from exc
    store = Store(args.db)
    try:
        template_id = templates.allocate(store, text, users.user_id(store))
    finally:
        store.dispose()
    print(f"template {template_id} created")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    store = Store(args.db)
    try:
        for name in args.templates:
            with store.transaction() as conn:
                template_id = templates.find_id(conn, name)
            templates.delete_template(store, template_id)
            print(f"template {template_id} deleted")
    finally:
        store.dispose()
    return 0
