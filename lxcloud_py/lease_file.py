"""The lease file: fixed leases (IP, MAC, DNS name, host) as CSV with the header
``ip,mac,name,host`` or a YAML list of mappings with those keys. :func:`parse_lease_file` reads
and validates it, reporting every problem as ``FILE:LINE: problem``; the database side is
:mod:`lxcloud_py.leases`.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import (
    InvalidName,
    validate_ipv4,
    validate_mac,
    validate_name,
)

from lxcloud_py.model import InvalidInput

FIELDS = ("ip", "mac", "name", "host")
_LABEL_RE = re.compile(r"\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")


def normalise_dns_name(value: str) -> str:
    """Lower-case DNS name (RFC 1123 labels), trailing dot removed; ValueError if bad."""
    name = value.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError("empty")
    if len(name) > 253:
        raise ValueError("longer than 253 characters")
    for label in name.split("."):
        if not _LABEL_RE.match(label):
            raise ValueError(
                f"label {label!r} must be 1-63 letters, digits or '-', "
                "not starting or ending with '-'"
            )
    return name


def normalise_mac(value: str) -> str:
    """Lower-case colon form; ValueError for bad syntax, multicast or all-zero MACs."""
    try:
        mac = validate_mac(value)
    except InvalidName as exc:
        raise ValueError(exc.reason) from None
    if mac == "00:00:00:00:00:00":
        raise ValueError("all-zero MAC address")
    return mac


@dataclass(frozen=True)
class LeaseRow:
    ip: str
    mac: str
    name: str
    host: str
    line: int

    def values(self) -> tuple[str, str, str, str]:
        return (self.ip, self.mac, self.name, self.host)


class LeaseFileError(InvalidInput):
    """The lease file has bad rows; ``errors`` lists every one as ``FILE:LINE: problem``."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        n = len(self.errors)
        super().__init__(
            f"{n} problem{'s' if n != 1 else ''} in the lease file, nothing imported:\n"
            + "\n".join(self.errors)
        )


#: The prefix length of the farm's VM networks when the lease file does not say (the hypervisor
#: role's default netmask is 255.255.255.0): a lease may not be its network or broadcast address.
DEFAULT_PREFIX = 24


def check_usable_ip(ip: str, prefix: int = DEFAULT_PREFIX) -> None:
    """ValueError unless ``ip`` can be a VM's address: not unspecified, loopback, multicast,
    link-local, reserved or limited broadcast, nor the network or broadcast address of its
    ``/prefix`` network."""
    addr = ipaddress.IPv4Address(ip)
    for test, what in (
        (addr.is_unspecified, "the unspecified address"),
        (addr.is_loopback, "a loopback address"),
        (addr.is_multicast, "a multicast address"),
        (addr.is_link_local, "a link-local address"),
        (addr == ipaddress.IPv4Address("255.255.255.255"), "the limited broadcast address"),
        (addr.is_reserved, "a reserved address (240.0.0.0/4)"),
    ):
        if test:
            raise ValueError(f"{what} cannot be a VM's lease")
    if prefix <= 30:
        net = ipaddress.IPv4Network(f"{ip}/{prefix}", strict=False)
        if addr == net.network_address:
            raise ValueError(f"the network address of {net} cannot be a VM's lease")
        if addr == net.broadcast_address:
            raise ValueError(f"the broadcast address of {net} cannot be a VM's lease")


def _check_row(
    fname: str, line: int, raw: dict[str, str | None], errors: list[str],
    prefix: int = DEFAULT_PREFIX,
) -> LeaseRow | None:
    """Validate one row's fields (all present); append problems to ``errors``."""
    bad = len(errors)
    out: dict[str, str] = {}
    for key in FIELDS:
        value = raw.get(key)
        if value is None or value.strip() == "":
            errors.append(f"{fname}:{line}: missing field {key!r}")
            continue
        value = value.strip()
        try:
            if key == "ip":
                try:
                    out[key] = validate_ipv4(value)
                except InvalidName:
                    raise ValueError("not an IPv4 address") from None
                check_usable_ip(out[key], prefix)
            elif key == "mac":
                out[key] = normalise_mac(value)
            elif key == "name":
                out[key] = normalise_dns_name(value)
            else:
                try:
                    out[key] = validate_name(value, "host")
                except InvalidName as exc:
                    raise ValueError(exc.reason) from None
        except ValueError as exc:
            label = {"ip": "IP", "mac": "MAC", "name": "DNS name", "host": "host name"}[key]
            errors.append(f"{fname}:{line}: bad {label} {value!r}: {exc}")
    if len(errors) != bad:
        return None
    return LeaseRow(out["ip"], out["mac"], out["name"], out["host"], line)


def _parse_csv(
    fname: str, text: str, errors: list[str], prefix: int = DEFAULT_PREFIX
) -> list[LeaseRow]:
    rows: list[LeaseRow] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    for cells in reader:
        line = reader.line_num
        if not cells or all(not c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in cells]
        if header is None:
            header = [c.lower() for c in cells]
            missing = [f for f in FIELDS if f not in header]
            extra = [c for c in header if c not in FIELDS]
            dups = sorted({c for c in header if header.count(c) > 1})
            if missing or extra or dups:
                problems = []
                if missing:
                    problems.append("missing column(s) " + ", ".join(map(repr, missing)))
                if extra:
                    problems.append("unknown column(s) " + ", ".join(map(repr, extra)))
                if dups:
                    problems.append("duplicate column(s) " + ", ".join(map(repr, dups)))
                errors.append(
                    f"{fname}:{line}: bad header ({'; '.join(problems)}); "
                    f"expected {','.join(FIELDS)}"
                )
                return []
            continue
        if len(cells) < len(header):
            names = ", ".join(repr(h) for h in header[len(cells) :])
            errors.append(f"{fname}:{line}: missing field(s) {names}")
            continue
        if len(cells) > len(header):
            extra_cells = ", ".join(repr(c) for c in cells[len(header) :])
            errors.append(f"{fname}:{line}: extra field(s) {extra_cells}")
            continue
        row = _check_row(fname, line, dict(zip(header, cells, strict=True)), errors, prefix)
        if row:
            rows.append(row)
    if header is None:
        errors.append(f"{fname}:1: empty lease file (expected header {','.join(FIELDS)})")
    return rows


def _parse_yaml(
    fname: str, text: str, errors: list[str], prefix: int = DEFAULT_PREFIX
) -> list[LeaseRow]:
    try:
        doc = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        errors.append(f"{fname}:{line}: not valid YAML: {getattr(exc, 'problem', exc)}")
        return []
    if doc is None:
        return []
    if not isinstance(doc, yaml.SequenceNode):
        errors.append(f"{fname}:{doc.start_mark.line + 1}: expected a list of leases")
        return []
    rows: list[LeaseRow] = []
    for item in doc.value:
        line = item.start_mark.line + 1
        if not isinstance(item, yaml.MappingNode):
            errors.append(f"{fname}:{line}: expected a mapping with keys {', '.join(FIELDS)}")
            continue
        raw: dict[str, str | None] = {}
        bad = False
        extra: list[str] = []
        for knode, vnode in item.value:
            key = str(knode.value).strip().lower() if isinstance(knode, yaml.ScalarNode) else "?"
            if key not in FIELDS:
                extra.append(str(knode.value) if isinstance(knode, yaml.ScalarNode) else "?")
                continue
            if key in raw:
                errors.append(f"{fname}:{knode.start_mark.line + 1}: duplicate key {key!r}")
                bad = True
                continue
            if not isinstance(vnode, yaml.ScalarNode):
                errors.append(
                    f"{fname}:{vnode.start_mark.line + 1}: field {key!r} must be a plain value"
                )
                bad = True
                continue
            # The raw scalar text: YAML 1.1 would read 52:54:00:12:34:56 as a sexagesimal int.
            null = vnode.tag == "tag:yaml.org,2002:null" and vnode.style is None
            raw[key] = None if null else str(vnode.value)
        if extra:
            errors.append(f"{fname}:{line}: extra field(s) {', '.join(map(repr, extra))}")
            bad = True
        missing = [f for f in FIELDS if f not in raw]
        if missing:
            errors.append(f"{fname}:{line}: missing field(s) {', '.join(map(repr, missing))}")
            bad = True
        if bad:
            continue
        row = _check_row(fname, line, raw, errors, prefix)
        if row:
            rows.append(row)
    return rows


def _looks_like_yaml(text: str) -> bool:
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        return s.startswith(("-", "[", "%YAML"))
    return False


def parse_lease_file(
    path: str | os.PathLike[str], prefix: int = DEFAULT_PREFIX
) -> tuple[list[LeaseRow], list[str]]:
    """Read and validate the lease file; return (good rows, every problem). Duplicates within
    the file are problems too (the second and later occurrences)."""
    fname = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read lease file {fname!r}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InvalidInput(
            f"{fname}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}: {exc.reason})"
        ) from None
    errors: list[str] = []
    suffix = Path(fname).suffix.lower()
    if suffix in (".yaml", ".yml") or (suffix != ".csv" and _looks_like_yaml(text)):
        rows = _parse_yaml(fname, text, errors, prefix)
    else:
        rows = _parse_csv(fname, text, errors, prefix)
    seen: dict[str, dict[str, int]] = {"ip": {}, "mac": {}, "name": {}}
    labels = {"ip": "IP", "mac": "MAC", "name": "DNS name"}
    unique_rows = []
    for row in rows:
        dup = False
        for key, where in seen.items():
            value = getattr(row, key)
            if value in where:
                errors.append(
                    f"{fname}:{row.line}: duplicate {labels[key]} {value} "
                    f"(already on line {where[value]})"
                )
                dup = True
            else:
                where[value] = row.line
        if not dup:
            unique_rows.append(row)
    # Keep errors in line order for the reader.
    errors.sort(key=line_of)
    return unique_rows, errors


def line_of(message: str) -> int:
    """The line number in a ``FILE:LINE: problem`` message (0 without one), to sort by."""
    m = re.search(r":(\d+): ", message)
    return int(m.group(1)) if m else 0


def ip_key(lease: dict[str, Any]) -> tuple[int, ...]:
    """Sort key: IPv4 addresses in numeric order (anything else last)."""
    try:
        return tuple(int(p) for p in str(lease["ip"]).split("."))
    except ValueError:
        return (1 << 32,)
