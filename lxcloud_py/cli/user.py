"""``lxcloud user key create|list|delete``: EC2 access keys (docs/ec2.md).

The secret is printed once, at creation; the database keeps it sealed with the EC2 server key
file (``--key-file``, else the config's ``ec2.key_file``, else ``$LXCLOUD_EC2_KEY_FILE``, else
the state directory), which the EC2 listener must read too.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lxcloud_py.api.ec2 import keys
from lxcloud_py.api.ec2.config import from_section
from lxcloud_py.cli.vm import _when
from lxcloud_py.config import load_config
from lxcloud_py.store import Store
from lxcloud_py.table import render


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("user", help="users' EC2 access keys")
    sub = p.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    kp = sub.add_parser("key", help="EC2 access keys: create, list, delete")
    ksub = kp.add_subparsers(dest="key_command", metavar="ACTION", required=True)

    create = ksub.add_parser("create", help="a new access key for USER (the secret is shown "
                             "once)")
    create.add_argument("user")
    create.add_argument("--key-file", help="the EC2 server key file (created 0600 if absent)")
    create.set_defaults(func=cmd_create)

    ls = ksub.add_parser("list", help="access keys (never their secrets)")
    ls.add_argument("--user", help="only this user's")
    ls.set_defaults(func=cmd_list)

    rm = ksub.add_parser("delete", help="delete an access key (no error when it is gone)")
    rm.add_argument("access_key_id", metavar="ACCESS_KEY_ID")
    rm.set_defaults(func=cmd_delete)


def _key_file(args: argparse.Namespace) -> Path:
    if args.key_file:
        return Path(args.key_file)
    return from_section(load_config().section("ec2")).key_file


def cmd_create(args: argparse.Namespace) -> int:
    store = Store(args.db)
    key = keys.create(store, keys.load_server_key(_key_file(args)), args.user)
    print(f"AccessKeyId:     {key.access_key_id}")
    print(f"SecretAccessKey: {key.secret}")
    print("(the secret is not shown again)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = keys.list_keys(Store(args.db), args.user)
    print(render(["ACCESS_KEY_ID", "USER", "CREATED"],
                 [[r["access_key_id"], r["user"], _when(r["created"])] for r in rows]))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    if keys.delete_key(Store(args.db), args.access_key_id):
        print(f"deleted {args.access_key_id}")
    else:
        print(f"no access key {args.access_key_id} (nothing to do)")
    return 0
