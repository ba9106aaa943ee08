"""``one.cluster.info|addhost|delhost``, ``one.clusterpool.info`` (the default cluster, see
lxcloud_py.clusters) and ``one.host.update`` (the host's own template)."""

from __future__ import annotations

from lxcloud_py import clusters, templates
from lxcloud_py.users import Principal

from . import one_documents
from .namespaces import Namespace, want_bool, want_int, want_str

_MAX_TEMPLATE = 256 * 1024


class ClusterNamespace(Namespace):
    NAME = "one.cluster"
    METHODS = ("info", "addhost", "delhost")

    def info(self, who: Principal, cluster_id: object, decrypt: object = False) -> str:
        cid = want_int(cluster_id, "cluster id")
        want_bool(decrypt, "decrypt")
        with self.store.transaction() as conn:
            return one_documents.cluster_document(clusters.get(conn, cid))

    def addhost(self, who: Principal, cluster_id: object, host_id: object) -> int:
        cid, hid = want_int(cluster_id, "cluster id"), want_int(host_id, "host id")
        with self.store.transaction() as conn:
            return clusters.add_host(conn, cid, hid)

    def delhost(self, who: Principal, cluster_id: object, host_id: object) -> int:
        cid, hid = want_int(cluster_id, "cluster id"), want_int(host_id, "host id")
        with self.store.transaction() as conn:
            return clusters.del_host(conn, cid, hid)


class ClusterPoolNamespace(Namespace):
    NAME = "one.clusterpool"
    METHODS = ("info",)

    def info(self, who: Principal) -> str:
        with self.store.transaction() as conn:
            return one_documents.cluster_pool_document([clusters.get(conn, clusters.DEFAULT_ID)])


class HostUpdateNamespace(Namespace):
    NAME = "one.host"
    METHODS = ("update",)

    def update(self, who: Principal, host_id: object, text: object, kind: object = 0) -> int:
        """(id, template, type): 0 replaces, 1 merges into the host's own attributes."""
        return templates.update_host(
            self.store,
            want_int(host_id, "host id"),
            want_str(text, "template", _MAX_TEMPLATE),
            want_int(kind, "type"),
        )
