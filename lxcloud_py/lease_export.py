"""Leases out of the database: the dnsmasq hosts file or the lease file's CSV, written
atomically (``lxcloud lease export``)."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lxcloud_py.lease_file import FIELDS, ip_key
from lxcloud_py.model import InvalidInput


def render_export(leases: Iterable[dict[str, Any]], fmt: str) -> str:
    ordered = sorted(leases, key=ip_key)
    if fmt == "dnsmasq":
        lines = ["# dnsmasq dhcp-hostsfile written by lxcloud lease export: mac,ip,name"]
        lines += [f"{x['mac']},{x['ip']},{x['name']}" for x in ordered]
        return "\n".join(lines) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(FIELDS)
        for x in ordered:
            w.writerow([x[f] for f in FIELDS])
        return buf.getvalue()
    raise InvalidInput(f"unknown export format {fmt!r} (dnsmasq, csv)")


def atomic_write(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename:
    readers (dnsmasq) see the old file or the new one, never half of one."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
