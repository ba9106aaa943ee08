"""The ``lxcloud`` command: a thin argparse front over the control plane.

Each area's subcommands live in a module of this package that exposes
``register(subparsers)``; handlers take the parsed arguments and return an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from lxcloud_py import __version__
from lxcloud_py.model import LxcloudError
from lxcloud_py.store import default_url


def _command_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lxcloud", description="Control plane of lxcloud, the virtual batch farm."
    )
    parser.add_argument("--version", action="version", version=f"lxcloud {__version__}")
    parser.add_argument(
        "--db",
        default=default_url(),
        help="database URL: sqlite:///PATH (default, from $LXCLOUD_DB) or mysql+pymysql://...",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _command_modules():
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except LxcloudError as exc:
        print(f"lxcloud: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
