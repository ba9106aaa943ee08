"""OpenNebula's XML-RPC error codes and the exception that carries one."""

from __future__ import annotations

SUCCESS = 0x0000
AUTHENTICATION = 0x0100
AUTHORIZATION = 0x0200
NO_EXISTS = 0x0400
ACTION = 0x0800
XML_RPC_API = 0x1000
INTERNAL = 0x2000
ALLOCATE = 0x4000

NAMES = {
    SUCCESS: "SUCCESS",
    AUTHENTICATION: "AUTHENTICATION",
    AUTHORIZATION: "AUTHORIZATION",
    NO_EXISTS: "NO_EXISTS",
    ACTION: "ACTION",
    XML_RPC_API: "XML_RPC_API",
    INTERNAL: "INTERNAL",
    ALLOCATE: "ALLOCATE",
}


class ApiFailure(Exception):
    """A failed call: becomes ``[False, message, code, object_id]``."""

    def __init__(self, code: int, message: str, object_id: int = -1) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.object_id = object_id
