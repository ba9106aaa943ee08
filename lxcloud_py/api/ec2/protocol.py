"""EC2's Query protocol: flattened parameters in, API version 2016-11-15 XML out.

Parameters arrive as ``Name=value`` pairs (a POST form body or a GET query string); lists and
structures are flattened (``InstanceId.1``, ``Filter.1.Name``, ``Filter.1.Value.1``). Replies
are ``<ActionResponse xmlns=NS><requestId>…`` documents; errors are
``<Response><Errors><Error><Code>…</Code><Message>…</Message></Error></Errors><RequestID>…``
with the HTTP status EC2 gives the code.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"
API_VERSION = "2016-11-15"

#: HTTP status of each error code (400 for the others, as EC2's client errors).
STATUS = {
    "AuthFailure": 401,
    "MissingAuthenticationToken": 401,
    "SignatureDoesNotMatch": 403,
    "UnauthorizedOperation": 403,
    "RequestLimitExceeded": 503,
    "InternalError": 500,
}
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class Ec2Error(Exception):
    """A refusal: EC2's error ``code`` and a message (HTTP status from :data:`STATUS`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return STATUS.get(self.code, 400)


def invalid(message: str) -> Ec2Error:
    return Ec2Error("InvalidParameterValue", message)


def xml_safe(text: str, what: str) -> str:
    """``text``, refused when it holds characters XML 1.0 cannot carry."""
    if _XML_BAD.search(text):
        raise invalid(f"{what} contains control characters")
    return text


class Params:
    """The request's parameters with EC2's flattening rules."""

    def __init__(self, pairs: dict[str, str]) -> None:
        self.raw = pairs

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.raw.get(name, default)

    def required(self, name: str) -> str:
        value = self.raw.get(name)
        if value is None or value == "":
            raise Ec2Error("MissingParameter", f"The request must contain the parameter {name}")
        return value

    def integer(self, name: str, default: int | None, low: int, high: int) -> int | None:
        raw = self.raw.get(name)
        if raw is None:
            return default
        if not raw.isascii() or not raw.lstrip("-").isdigit():
            raise invalid(f"{name}: {raw[:40]!r} is not a whole number")
        value = int(raw)
        if not low <= value <= high:
            raise invalid(f"{name}: {value} is not between {low} and {high}")
        return value

    def boolean(self, name: str) -> bool:
        raw = (self.raw.get(name) or "false").lower()
        if raw not in ("true", "false"):
            raise invalid(f"{name} must be true or false")
        return raw == "true"

    def _indexed(self, prefix: str) -> dict[int, str]:
        """``{N: rest}`` for the parameters ``prefix.N[.rest]`` (rest '' for ``prefix.N``)."""
        out: dict[int, str] = {}
        pat = re.compile(re.escape(prefix) + r"\.(\d{1,4})(?:\.(.+))?\Z")
        for name in self.raw:
            m = pat.match(name)
            if m:
                out.setdefault(int(m.group(1)), "")
        return dict(sorted(out.items()))

    def strings(self, prefix: str) -> list[str]:
        """The values of ``prefix.1``, ``prefix.2``, … in index order."""
        return [
            self.raw[f"{prefix}.{n}"]
            for n in self._indexed(prefix)
            if f"{prefix}.{n}" in self.raw
        ]

    def structs(self, prefix: str) -> list[Params]:
        """``prefix.N.*`` as one :class:`Params` per N (names without ``prefix.N.``)."""
        out = []
        for n in self._indexed(prefix):
            head = f"{prefix}.{n}."
            out.append(
                Params({k[len(head):]: v for k, v in self.raw.items() if k.startswith(head)})
            )
        return out

    def filters(self, known: tuple[str, ...]) -> list[tuple[str, list[str]]]:
        """``Filter.N.Name`` / ``Filter.N.Value.M``; a name not in ``known`` (nor ``tag:K``)
        is refused as EC2 does."""
        out = []
        for f in self.structs("Filter"):
            name = f.get("Name")
            if not name:
                raise Ec2Error("MissingParameter", "Filter.N.Name is required")
            if name not in known and not name.startswith("tag:"):
                raise Ec2Error("InvalidParameterValue",
                               f"The filter '{name[:64]}' is invalid "
                               f"(supported: {', '.join(known)}, tag:KEY)")
            out.append((name, f.strings("Value")))
        return out


def element(parent: ET.Element, tag: str, text: object = None) -> ET.Element:
    e = ET.SubElement(parent, tag)
    if text is not None:  # characters XML 1.0 cannot carry become spaces
        e.text = str(text).lower() if isinstance(text, bool) else _XML_BAD.sub(" ", str(text))
    return e


def add(parent: ET.Element, value: dict[str, Any]) -> None:
    """Nested dicts become elements; lists become ``<item>``s; None is left out."""
    for tag, v in value.items():
        if v is None:
            continue
        if isinstance(v, dict):
            add(element(parent, tag), v)
        elif isinstance(v, list):
            wrap = element(parent, tag)
            for item in v:
                add(element(wrap, "item"), item)
        else:
            element(parent, tag, v)


def reply(action: str, request_id: str, body: dict[str, Any]) -> bytes:
    root = ET.Element(f"{action}Response", xmlns=NAMESPACE)
    element(root, "requestId", request_id)
    add(root, body)
    return _document(root)


def error_reply(code: str, message: str, request_id: str) -> bytes:
    root = ET.Element("Response")
    err = element(element(root, "Errors"), "Error")
    element(err, "Code", code)
    element(err, "Message", message)
    element(root, "RequestID", request_id)
    return _document(root)


def _document(root: ET.Element) -> bytes:
    text = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + text).encode("utf-8")
