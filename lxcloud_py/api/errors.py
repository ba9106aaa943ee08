"""The exception that carries one of OpenNebula's XML-RPC error codes.

The codes themselves are the wire contract shared with the collection's modules:
:mod:`ansible_collections.lxcloud.cloud.plugins.module_utils.wire`.
"""

from __future__ import annotations

from ansible_collections.lxcloud.cloud.plugins.module_utils.wire import (
    ACTION,
    ALLOCATE,
    AUTHENTICATION,
    AUTHORIZATION,
    ERROR_NAMES,
    INTERNAL,
    NO_EXISTS,
    SUCCESS,
    XML_RPC_API,
)

NAMES = ERROR_NAMES

__all__ = [
    "ACTION",
    "ALLOCATE",
    "AUTHENTICATION",
    "AUTHORIZATION",
    "INTERNAL",
    "NAMES",
    "NO_EXISTS",
    "SUCCESS",
    "XML_RPC_API",
    "ApiFailure",
]


class ApiFailure(Exception):
    """A failed call: becomes ``[False, message, code, object_id]``."""

    def __init__(self, code: int, message: str, object_id: int = -1) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.object_id = object_id
