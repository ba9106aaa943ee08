"""The control plane's XML-RPC API (OpenNebula's calling convention); see docs/api.md."""

from __future__ import annotations

from .errors import (
    ACTION,
    ALLOCATE,
    AUTHENTICATION,
    AUTHORIZATION,
    INTERNAL,
    NO_EXISTS,
    SUCCESS,
    XML_RPC_API,
    ApiFailure,
)
from .server import ApiServer, Dispatcher, parse_listen

__all__ = [
    "ACTION",
    "ALLOCATE",
    "AUTHENTICATION",
    "AUTHORIZATION",
    "INTERNAL",
    "NO_EXISTS",
    "SUCCESS",
    "XML_RPC_API",
    "ApiFailure",
    "ApiServer",
    "Dispatcher",
    "parse_listen",
]
