"""Helpers shared by the OpenNebula namespaces added for OpenNebula's clients (issue 18)."""

from __future__ import annotations

from lxcloud_py.users import Principal

from .errors import AUTHORIZATION, ApiFailure
from .namespaces import want_int


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
