"""The network database: fixed leases (IP, MAC, DNS name) each pinned to one hypervisor.

A lease is identified by its IP address. The lease file (CSV with header ``ip,mac,name,host``,
or a YAML list of mappings with those keys) is the source of truth; :func:`import_leases`
validates every row, reports every problem with ``FILE:LINE``, and imports nothing unless the
whole file is good. Re-importing an unchanged file changes nothing; a changed file updates free
leases and only reports leases in use (a VM holds them); leases missing from the file are
reported and, with ``prune``, removed when free.

The scheduler binds a VM to a free lease with :func:`claim_lease` (atomic: ``UPDATE ... WHERE
vm_id IS NULL`` and a rowcount check); :func:`release_lease` frees the lease of a VM that ended.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import (
    InvalidName,
    validate_ipv4,
    validate_mac,
    validate_name,
)
from sqlalchemy import Connection, bindparam, delete, insert, select, update

from lxcloud_py.model import InvalidInput, LeaseState
from lxcloud_py.store import Store, now, schema

FIELDS = ("ip", "mac", "name", "host")
_LABEL_RE = re.compile(r"\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_L = schema.leases


# -- validation --------------------------------------------------------------------------------
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


def _check_row(
    fname: str, line: int, raw: dict[str, str | None], errors: list[str]
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


def _parse_csv(fname: str, text: str, errors: list[str]) -> list[LeaseRow]:
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
        row = _check_row(fname, line, dict(zip(header, cells, strict=True)), errors)
        if row:
            rows.append(row)
    if header is None:
        errors.append(f"{fname}:1: empty lease file (expected header {','.join(FIELDS)})")
    return rows


def _parse_yaml(fname: str, text: str, errors: list[str]) -> list[LeaseRow]:
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
        row = _check_row(fname, line, raw, errors)
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


def parse_lease_file(path: str | os.PathLike[str]) -> tuple[list[LeaseRow], list[str]]:
    """Read and validate the lease file; return (good rows, every problem). Duplicates within
    the file are problems too (the second and later occurrences)."""
    fname = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise InvalidInput(f"cannot read lease file {fname!r}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{fname}: not UTF-8 text ({exc.reason})") from exc
    errors: list[str] = []
    suffix = Path(fname).suffix.lower()
    if suffix in (".yaml", ".yml") or (suffix != ".csv" and _looks_like_yaml(text)):
        rows = _parse_yaml(fname, text, errors)
    else:
        rows = _parse_csv(fname, text, errors)
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
    errors.sort(key=_line_of)
    return unique_rows, errors


def _line_of(message: str) -> int:
    m = re.search(r":(\d+): ", message)
    return int(m.group(1)) if m else 0


# -- import ------------------------------------------------------------------------------------
@dataclass
class ImportReport:
    added: list[LeaseRow] = field(default_factory=list)
    #: (new row, old lease) for free leases updated to the file's values
    updated: list[tuple[LeaseRow, dict[str, Any]]] = field(default_factory=list)
    unchanged: int = 0
    #: (wanted row, current lease) for leases in use whose row changed: left as they are
    in_use: list[tuple[LeaseRow, dict[str, Any]]] = field(default_factory=list)
    #: leases in the DB but not in the file, kept (not pruning, or in use)
    missing: list[dict[str, Any]] = field(default_factory=list)
    pruned: list[dict[str, Any]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.pruned)

    def summary(self) -> str:
        parts = [
            f"{len(self.added)} added",
            f"{len(self.updated)} updated",
            f"{self.unchanged} unchanged",
        ]
        if self.in_use:
            parts.append(f"{len(self.in_use)} in use (not changed)")
        if self.pruned:
            parts.append(f"{len(self.pruned)} pruned")
        if self.missing:
            parts.append(f"{len(self.missing)} not in the file (kept)")
        return ", ".join(parts)


def _in_use(lease: dict[str, Any]) -> bool:
    return lease["vm_id"] is not None or lease["state"] != LeaseState.FREE


def _describe(lease: dict[str, Any]) -> str:
    text = f"lease {lease['ip']} ({lease['name']}, host {lease['host']}"
    if lease.get("vm_id") is not None:
        text += f", in use by VM {lease['vm_id']}"
    return text + ")"


def import_leases(
    store: Store, path: str | os.PathLike[str], *, prune: bool = False, dry_run: bool = False
) -> ImportReport:
    """Validate the lease file against itself and the database and apply it in one
    transaction. Raises :class:`LeaseFileError` listing every problem; nothing changes then."""
    fname = str(path)
    rows, errors = parse_lease_file(path)
    with store.transaction() as conn:
        # Lock the leases (MySQL) so no claim slips between the checks and the writes.
        current = [
            dict(r._mapping) for r in conn.execute(store.for_update(select(_L).order_by(_L.c.id)))
        ]
        by_ip = {lease["ip"]: lease for lease in current}
        report = ImportReport()
        in_file = {row.ip for row in rows}
        # Final state of every lease: the file's values where they apply, else the current.
        final: dict[str, tuple[str, str]] = {}  # ip -> (mac, name) after the import
        origin: dict[str, dict[str, Any]] = {}  # ip -> the DB lease, if it exists
        for lease in current:
            if lease["ip"] in in_file:
                continue
            if prune and not _in_use(lease):
                report.pruned.append(lease)
                continue
            report.missing.append(lease)
            final[lease["ip"]] = (lease["mac"], lease["name"])
            origin[lease["ip"]] = lease
        applied: list[LeaseRow] = []
        for row in rows:
            old = by_ip.get(row.ip)
            if old is None:
                report.added.append(row)
                applied.append(row)
                final[row.ip] = (row.mac, row.name)
                continue
            origin[row.ip] = old
            if (old["mac"], old["name"], old["host"]) == (row.mac, row.name, row.host):
                report.unchanged += 1
                applied.append(row)
                final[row.ip] = (row.mac, row.name)
            elif _in_use(old):
                report.in_use.append((row, old))
                final[row.ip] = (old["mac"], old["name"])
            else:
                report.updated.append((row, old))
                applied.append(row)
                final[row.ip] = (row.mac, row.name)
        holder_mac: dict[str, list[str]] = {}
        holder_name: dict[str, list[str]] = {}
        for ip, (mac, name) in final.items():
            holder_mac.setdefault(mac, []).append(ip)
            holder_name.setdefault(name, []).append(ip)
        for row in applied:
            for label, holder, value in (
                ("MAC", holder_mac, row.mac),
                ("DNS name", holder_name, row.name),
            ):
                for other_ip in holder.get(value, []):
                    if other_ip == row.ip:
                        continue
                    other = origin.get(other_ip)
                    desc = _describe(other) if other else f"lease {other_ip}"
                    hint = ""
                    if other and other_ip not in in_file:
                        hint = "; it is not in the file" + (
                            "" if _in_use(other) else ": --prune removes it"
                        )
                    elif other:
                        hint = "; it is in use and keeps its values"
                    errors.append(f"{fname}:{row.line}: {label} {value} is held by {desc}{hint}")
        if errors:
            errors.sort(key=_line_of)
            raise LeaseFileError(errors)
        if dry_run:
            return report
        _apply(conn, report)
    return report


def _apply(conn: Connection, report: ImportReport) -> None:
    t = now()
    hist: list[dict[str, Any]] = []
    for lease in report.pruned:
        res = conn.execute(delete(_L).where(_L.c.id == lease["id"], _L.c.vm_id.is_(None)))
        if res.rowcount != 1:
            raise InvalidInput(f"{_describe(lease)} was claimed during the import; retry")
        hist.append(_hist(t, lease["id"], lease["state"], None, f"pruned {lease['ip']}"))
    # Two steps so that swapped MACs/names between leases never collide half-way.
    for _row, old in report.updated:
        conn.execute(
            update(_L)
            .where(_L.c.id == old["id"])
            .values(mac=f"~{old['id']:x}"[:17], name=f"~{old['id']}")
        )
    for row, old in report.updated:
        res = conn.execute(
            update(_L)
            .where(_L.c.id == old["id"], _L.c.vm_id.is_(None))
            .values(mac=row.mac, name=row.name, host=row.host, updated=t)
        )
        if res.rowcount != 1:
            raise InvalidInput(f"{_describe(old)} was claimed during the import; retry")
        changes = [
            f"{k} {old[k]} -> {getattr(row, k)}"
            for k in ("mac", "name", "host")
            if old[k] != getattr(row, k)
        ]
        hist.append(_hist(t, old["id"], old["state"], old["state"], "; ".join(changes)))
    if report.added:
        conn.execute(
            insert(_L),
            [
                dict(ip=r.ip, mac=r.mac, name=r.name, host=r.host, state=LeaseState.FREE, updated=t)
                for r in report.added
            ],
        )
        ids: dict[str, int] = {
            ip: lease_id for ip, lease_id in conn.execute(select(_L.c.ip, _L.c.id))
        }
        hist.extend(
            _hist(t, ids[r.ip], None, LeaseState.FREE, f"added {r.ip} {r.mac} {r.name} {r.host}")
            for r in report.added
        )
    if hist:
        conn.execute(insert(schema.history), hist)


def _hist(t: float, lease_id: int, old: str | None, new: str | None, msg: str) -> dict[str, Any]:
    return dict(
        ts=t, kind="lease", object_id=lease_id, old_state=old, new_state=new, message=msg[:1024]
    )


# -- queries and claims ------------------------------------------------------------------------
def list_leases(
    conn: Connection, host: str | None = None, state: str | None = None
) -> list[dict[str, Any]]:
    stmt = select(_L)
    if host is not None:
        stmt = stmt.where(_L.c.host == host)
    if state is not None:
        stmt = stmt.where(_L.c.state == state)
    rows = [dict(r._mapping) for r in conn.execute(stmt)]
    rows.sort(key=_ip_key)
    return rows


def leases_for_host(conn: Connection, host: str) -> list[dict[str, Any]]:
    """Every lease pinned to ``host`` (by host name), in IP order."""
    return list_leases(conn, host=host)


def lease_of_vm(conn: Connection, vm_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(_L).where(_L.c.vm_id == vm_id)).first()
    return dict(row._mapping) if row else None


# Built once: claims run thousands of times per scheduling cycle.
_FREE = (_L.c.id == bindparam("lid"), _L.c.vm_id.is_(None), _L.c.state == LeaseState.FREE)
_CLAIM = (
    update(_L)
    .where(*_FREE)
    .values(vm_id=bindparam("vid"), state=LeaseState.USED, updated=bindparam("t"))
)
_CLAIM_AS_SEEN = _CLAIM.where(
    _L.c.ip == bindparam("seen_ip"),
    _L.c.mac == bindparam("seen_mac"),
    _L.c.name == bindparam("seen_name"),
    _L.c.host == bindparam("seen_host"),
)
_HISTORY = insert(schema.history)


def claim_lease(conn: Connection, lease_id: int, vm_id: int, *, as_seen: Any = None) -> bool:
    """Bind a free lease to a VM, atomically: False when someone else got it first.

    ``as_seen`` (anything with ``ip``, ``mac``, ``name`` and ``host`` attributes: the lease as
    the caller read it) makes the claim fail too if a concurrent import changed the lease,
    e.g. re-pinned it to another host, since the caller read it."""
    t = now()
    params: dict[str, Any] = {"lid": lease_id, "vid": vm_id, "t": t}
    stmt = _CLAIM
    if as_seen is not None:
        stmt = _CLAIM_AS_SEEN
        params.update(
            seen_ip=as_seen.ip,
            seen_mac=as_seen.mac,
            seen_name=as_seen.name,
            seen_host=as_seen.host,
        )
    res = conn.execute(stmt, params)
    if res.rowcount != 1:
        return False
    conn.execute(
        _HISTORY,
        _hist(t, lease_id, LeaseState.FREE, LeaseState.USED, f"claimed by VM {vm_id}"),
    )
    return True


def release_lease(conn: Connection, vm_id: int) -> int | None:
    """Free the lease held by a VM that ended; returns the lease id (None if it held none)."""
    lease_id = conn.execute(select(_L.c.id).where(_L.c.vm_id == vm_id)).scalar_one_or_none()
    if lease_id is None:
        return None
    conn.execute(
        update(_L)
        .where(_L.c.id == lease_id, _L.c.vm_id == vm_id)
        .values(vm_id=None, state=LeaseState.FREE, updated=now())
    )
    Store.record(
        conn, "lease", lease_id, LeaseState.USED, LeaseState.FREE, f"released by VM {vm_id}"
    )
    return int(lease_id)


# -- export ------------------------------------------------------------------------------------
def _ip_key(lease: dict[str, Any]) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(lease["ip"]).split("."))
    except ValueError:
        return (1 << 32,)


def render_export(leases: Iterable[dict[str, Any]], fmt: str) -> str:
    ordered = sorted(leases, key=_ip_key)
    if fmt == "dnsmasq":
        lines = ["# dnsmasq dhcp-hostsfile written by lxcloud lease export: mac,ip,name"]
        lines += [f"{x['mac']},{x['ip']},{x['name']}" for x in ordered]
        return "\n".join(lines) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(FIELDS)
        for x in ordered:
            w.writerow([x[f] for f in FIELDS])
        return buf.getvalue()
    raise InvalidInput(f"unknown export format {fmt!r} (dnsmasq, csv)")


def atomic_write(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename:
    readers (dnsmasq) see the old file or the new one, never half of one."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
