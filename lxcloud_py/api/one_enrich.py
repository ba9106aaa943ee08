"""What the VM and host documents need beyond the domain modules' rows for OpenNebula's
clients (issue 18): permission bits, disk sizes, the hosts' own templates."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from lxcloud_py import templates
from lxcloud_py.store import schema

_MIB = 1024 * 1024


def enrich_vms(conn: Connection, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``permissions`` (chmod bits) and ``disk_size_mb`` (the bound image's size, else
    the largest registered version of the requested image) to :func:`lxcloud_py.vms.get`
    rows."""
    if not found:
        return found
    perms = templates.permissions(conn, [v["id"] for v in found])
    names = {v["image_name"] for v in found if v.get("image_name")}
    by_id: dict[int, int] = {}
    by_name: dict[str, int] = {}
    if names:
        _I = schema.images
        for image_id, name, size in conn.execute(
            select(_I.c.id, _I.c.name, _I.c.size).where(_I.c.name.in_(names))
        ):
            by_id[int(image_id)] = int(size)
            by_name[name] = max(by_name.get(name, 0), int(size))
    for v in found:
        v["permissions"] = perms.get(v["id"], templates.DEFAULT_PERMISSIONS)
        size = by_id.get(v.get("image_id") or -1) or by_name.get(v.get("image_name") or "", 0)
        v["disk_size_mb"] = -(-size // _MIB)
    return found


def enrich_hosts(conn: Connection, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``template``: what operators set with ``one.host.update``."""
    tpls = templates.host_templates(conn, [h["id"] for h in found])
    for h in found:
        h["template"] = tpls.get(h["id"])
    return found
