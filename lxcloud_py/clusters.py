"""Clusters as OpenNebula shows them: lxcloud has one, the default cluster (id 0, "default"),
which holds every host, the system datastore (0) and the lease network (0).

``one.cluster.addhost`` to the default cluster and ``one.cluster.delhost`` (which, as in
OpenNebula, moves the host back to the default cluster) succeed without a change; any other
cluster id does not exist (OpenNebula's NO_EXISTS).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from lxcloud_py.model import NotFound
from lxcloud_py.store import schema

DEFAULT_ID = 0
DEFAULT_NAME = "default"
#: The synthetic system datastore and the lease network (lxcloud_py.api.one_views).
DATASTORE_ID = 0
VNET_ID = 0


def check_cluster(cluster_id: int) -> None:
    if cluster_id != DEFAULT_ID:
        raise NotFound(f"Error getting cluster [{cluster_id}].")


def check_host(conn: Connection, host_id: int) -> None:
    if conn.execute(select(schema.hosts.c.id).where(schema.hosts.c.id == host_id)).first() is None:
        raise NotFound(f"Error getting host [{host_id}].")


def get(conn: Connection, cluster_id: int) -> dict[str, Any]:
    """The cluster with its host ids, datastores and networks."""
    check_cluster(cluster_id)
    hosts = [int(r.id) for r in conn.execute(select(schema.hosts.c.id).order_by(schema.hosts.c.id))]
    return {
        "id": DEFAULT_ID,
        "name": DEFAULT_NAME,
        "hosts": hosts,
        "datastores": [DATASTORE_ID],
        "vnets": [VNET_ID],
    }


def add_host(conn: Connection, cluster_id: int, host_id: int) -> int:
    """``one.cluster.addhost``: every host is in the default cluster already."""
    check_cluster(cluster_id)
    check_host(conn, host_id)
    return cluster_id


def del_host(conn: Connection, cluster_id: int, host_id: int) -> int:
    """``one.cluster.delhost``: the host goes back to the default cluster, where it is."""
    return add_host(conn, cluster_id, host_id)
