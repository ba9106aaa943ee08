"""Helpers shared by the OpenNebula namespaces added for OpenNebula's clients (issue 18)."""

from __future__ import annotations

from typing import ClassVar

from lxcloud_py.users import Principal

from .errors import AUTHORIZATION, ApiFailure
from .namespaces import Namespace, want_int


def pool_owner(who: Principal, filter_flag: object) -> int | None:
    """OpenNebula's pool filter flag as in ``one.vmpool.info``: ``-2`` everything (None),
    other negative flags the caller's objects, ``>= 0`` that user's."""
    flag = want_int(filter_flag, "filter flag")
    if flag == -2:
        return None
    return who.user_id if flag < 0 else flag


def check_owner(who: Principal, owner_id: int, operation: str, what: str, oid: int) -> None:
    """A user acts on its own objects; the admin on all (OpenNebula's AUTHORIZATION)."""
    if not who.is_admin and who.user_id != owner_id:
        raise ApiFailure(
            AUTHORIZATION,
            f"User [{who.name}] : Not authorized to perform {operation} {what} [{oid}].",
            oid,
        )


class FilteredPool(Namespace):
    """An OpenNebula pool's ``info(filter, start_id, end_id)``: the objects of the filter's
    owner (:func:`pool_owner`) with ids from ``start_id`` to ``end_id`` (``-1``: open). A 4th
    argument some clients send (community.general's one_vm, one_image) is accepted and
    ignored. Subclasses render the pool with :meth:`document`."""

    METHODS: ClassVar[tuple[str, ...]] = ("info",)

    def info(
        self,
        who: Principal,
        filter_flag: object,
        start_id: object = -1,
        end_id: object = -1,
        _unused: object = -1,
    ) -> str:
        owner = pool_owner(who, filter_flag)
        return self.document(owner, want_int(start_id, "start id"), want_int(end_id, "end id"))

    def document(self, owner: int | None, start: int, end: int) -> str:
        raise NotImplementedError


def in_range(object_id: int, start: int, end: int) -> bool:
    return object_id >= start and (end < 0 or object_id <= end)
