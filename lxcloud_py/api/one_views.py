"""Images, the network and the datastores as OpenNebula shows them, read-only views of what
lxcloud has (see lxcloud_py.api.one_documents): ``one.image.info``, ``one.imagepool.info``,
``one.vn.info``, ``one.vnpool.info``, ``one.datastore.info``, ``one.datastorepool.info``.
Their write methods answer ACTION with what to use instead."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from lxcloud_py import clusters, hosts, images, leases
from lxcloud_py.model import LIVE_VM_STATES, ImageState
from lxcloud_py.store import schema
from lxcloud_py.users import Principal

from . import one_documents
from .errors import ACTION, NO_EXISTS, ApiFailure
from .namespaces import Namespace, want_bool, want_int
from .one_common import FilteredPool, in_range

_IMAGE_WRITES = (
    "allocate", "clone", "delete", "enable", "persistent", "chtype", "update", "chmod", "chown",
    "rename", "snapshotdelete", "snapshotrevert", "snapshotflatten", "lock", "unlock",
)  # fmt: skip
_VN_WRITES = (
    "allocate", "delete", "add_ar", "rm_ar", "update_ar", "reserve", "free_ar", "hold",
    "release", "update", "chmod", "chown", "rename", "lock", "unlock", "recover",
)  # fmt: skip


def _refuse(what: str, instead: str) -> Any:
    def refused(self: Namespace, who: Principal, *args: object) -> int:
        raise ApiFailure(ACTION, f"{what} are read-only in lxcloud: {instead}")

    return refused


def _images(conn: Connection, ids: list[int] | None = None) -> list[dict[str, Any]]:
    """Image rows with ``vms`` (live VMs cloned from them) and ``hosts`` (verified on)."""
    found = [i for i in images.list_images(conn) if ids is None or i["id"] in ids]
    found.sort(key=lambda i: i["id"])
    by_id = {i["id"]: i for i in found}
    for i in found:
        i.update(vms=[], hosts=[])
    if not found:
        return found
    _V, _HI, _H = schema.vms, schema.host_images, schema.hosts
    for vm_id, image_id in conn.execute(
        select(_V.c.id, _V.c.image_id)
        .where(_V.c.image_id.in_(list(by_id)), _V.c.state.in_(LIVE_VM_STATES))
        .order_by(_V.c.id)
    ):
        by_id[image_id]["vms"].append(int(vm_id))
    for image_id, name in conn.execute(
        select(_HI.c.image_id, _H.c.name)
        .join(_H, _H.c.id == _HI.c.host_id)
        .where(_HI.c.image_id.in_(list(by_id)), _HI.c.state == ImageState.VERIFIED)
        .order_by(_H.c.name)
    ):
        by_id[image_id]["hosts"].append(name)
    return found


class ImageNamespace(Namespace):
    NAME = "one.image"
    METHODS = ("info", *_IMAGE_WRITES)

    def info(self, who: Principal, image_id: object, decrypt: object = False) -> str:
        iid = want_int(image_id, "image id")
        want_bool(decrypt, "decrypt")
        with self.store.transaction() as conn:
            found = _images(conn, [iid])
        if not found:
            raise ApiFailure(NO_EXISTS, f"Error getting image [{iid}].", iid)
        return one_documents.image_document(found[0])


for _name in _IMAGE_WRITES:
    setattr(
        ImageNamespace,
        _name,
        _refuse(
            "images",
            "golden images are registered with lxcloud.image.register and "
            "staged with `lxcloud image stage`",
        ),
    )


class ImagePoolNamespace(FilteredPool):
    """The golden images belong to the admin: listed for -2 and for the admin's filters."""

    NAME = "one.imagepool"

    def document(self, owner: int | None, start: int, end: int) -> str:
        with self.store.transaction() as conn:
            found = _images(conn) if owner in (None, _admin_id(conn)) else []
        return one_documents.image_pool_document(
            [i for i in found if in_range(i["id"], start, end)]
        )


def _admin_id(conn: Connection) -> int | None:
    _U = schema.users
    found = conn.execute(select(_U.c.id).where(_U.c.is_admin.is_(True))).first()
    return int(found.id) if found else None


class VnNamespace(Namespace):
    NAME = "one.vn"
    METHODS = ("info", *_VN_WRITES)

    def info(self, who: Principal, vn_id: object, decrypt: object = False) -> str:
        vid = want_int(vn_id, "virtual network id")
        want_bool(decrypt, "decrypt")
        if vid != clusters.VNET_ID:
            raise ApiFailure(NO_EXISTS, f"Error getting virtual network [{vid}].", vid)
        with self.store.transaction() as conn:
            return one_documents.vnet_document(leases.list_leases(conn))


for _name in _VN_WRITES:
    setattr(
        VnNamespace,
        _name,
        _refuse("virtual networks", "leases are managed with `lxcloud lease import`"),
    )


class VnPoolNamespace(FilteredPool):
    """The lease network belongs to the admin and is used by everyone: every filter lists it."""

    NAME = "one.vnpool"

    def document(self, owner: int | None, start: int, end: int) -> str:
        with self.store.transaction() as conn:
            rows = leases.list_leases(conn)
        return one_documents.vnet_pool_document(rows, listed=in_range(clusters.VNET_ID, start, end))


class DatastoreNamespace(Namespace):
    NAME = "one.datastore"
    METHODS = ("info",)

    def info(self, who: Principal, ds_id: object, decrypt: object = False) -> str:
        did = want_int(ds_id, "datastore id")
        want_bool(decrypt, "decrypt")
        with self.store.transaction() as conn:
            elements = one_documents.datastore_elements(
                hosts.list_hosts(conn), [i["id"] for i in images.list_images(conn)]
            )
        for elem in elements:
            if elem.findtext("ID") == str(did):
                return one_documents.to_string(elem)
        raise ApiFailure(NO_EXISTS, f"Error getting datastore [{did}].", did)


class DatastorePoolNamespace(Namespace):
    NAME = "one.datastorepool"
    METHODS = ("info",)

    def info(self, who: Principal) -> str:
        with self.store.transaction() as conn:
            return one_documents.datastore_pool_document(
                hosts.list_hosts(conn), sorted(i["id"] for i in images.list_images(conn))
            )
