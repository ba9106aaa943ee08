"""``lxcloud db init``: create the schema and the admin user ``oneadmin``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from lxcloud_py import users
from lxcloud_py.store import Store


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("db", help="database: create the schema and the admin")
    sub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    init = sub.add_parser(
        "init",
        help="create the schema (idempotent) and the admin user oneadmin",
        description="Create every missing table and the admin user 'oneadmin'. The password "
        "comes from --admin-password or $LXCLOUD_ADMIN_PASSWORD; an existing admin keeps its "
        "password unless --reset-admin-password is given.",
    )
    init.add_argument("--admin-password", metavar="P", help="(default: $LXCLOUD_ADMIN_PASSWORD)")
    init.add_argument(
        "--reset-admin-password",
        action="store_true",
        help="set the given password on an existing admin",
    )
    init.add_argument(
        "--force", action="store_true", help="DROP every lxcloud table first (all data is lost)"
    )
    init.set_defaults(func=cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    password = args.admin_password or os.environ.get("LXCLOUD_ADMIN_PASSWORD") or None
    store = Store(args.db)
    try:
        if args.force:
            store.drop_schema()
            print(f"dropped the lxcloud tables in {store!r}")
        store.create_schema()
        result = users.ensure_admin(store, password, reset_password=args.reset_admin_password)
    finally:
        store.dispose()
    print(f"schema ready in {store!r}")
    if result.created:
        print(f"created the admin user {users.ADMIN}")
    elif result.password_changed:
        print(f"changed the password of {users.ADMIN}")
    elif result.password_differs:
        print(
            f"lxcloud: the given password differs from {users.ADMIN}'s; NOT changed "
            "(use --reset-admin-password to change it)",
            file=sys.stderr,
        )
        return 1
    else:
        print(f"admin user {users.ADMIN} exists (unchanged)")
    return 0
