"""One log line and one ``decisions`` row per decision a stage takes.

A decision names what it is about: the VM, the host, the pool. The log line is
``decision ACTION vm=ID host=NAME pool=NAME: MESSAGE`` (``--log-format json`` turns it into one
JSON object with those fields). The row is written in its own short transaction after the
transition it reports; if that write fails the decision is still logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import SQLAlchemyError

from lxcloud_py.store import Store, schema

log = logging.getLogger("lxcloud.decision")
_D = schema.decisions


@dataclass(frozen=True)
class Decision:
    stage: str
    action: str  # placed, deployed, destroyed, refilled, drained, backed off, ...
    vm_id: int | None = None
    host: str | None = None
    pool: str | None = None
    message: str = ""
    ok: bool = True

    def text(self) -> str:
        names = " ".join(
            f"{k}={v}"
            for k, v in (("vm", self.vm_id), ("host", self.host), ("pool", self.pool))
            if v is not None
        )
        line = f"decision {self.action}" + (f" {names}" if names else "")
        return f"{line}: {self.message}" if self.message else line


def record(store: Store, decisions: Iterable[Decision]) -> None:
    """Log each decision and store them all in one transaction."""
    rows = []
    for d in decisions:
        log.log(
            logging.INFO if d.ok else logging.WARNING, "%s", d.text(), extra={"decision": asdict(d)}
        )
        rows.append({**asdict(d), "ts": time.time(), "message": d.message[:1024] or None})
    if not rows:
        return
    try:
        with store.transaction() as conn:
            conn.execute(insert(_D), rows)
    except SQLAlchemyError as exc:
        log.error("could not store %d decision(s): %s", len(rows), exc)


def prune(store: Store, keep: int) -> int:
    """Delete all but the newest ``keep`` decisions; returns how many went."""
    with store.transaction() as conn:
        cutoff = conn.execute(
            select(_D.c.id).order_by(_D.c.id.desc()).offset(keep).limit(1)
        ).scalar_one_or_none()
        if cutoff is None:
            return 0
        return int(conn.execute(delete(_D).where(_D.c.id <= cutoff)).rowcount or 0)


def latest(store: Store, limit: int = 20) -> list[dict[str, Any]]:
    """The newest decisions, newest first."""
    with store.transaction() as conn:
        rows = conn.execute(select(_D).order_by(_D.c.id.desc()).limit(limit)).all()
    return [dict(r._mapping) for r in rows]


def pool_names(store: Store, vm_ids: Iterable[int]) -> dict[int, str]:
    """VM id -> its pool's name, for the VMs that belong to a pool."""
    ids = sorted(set(vm_ids))
    if not ids:
        return {}
    v, p = schema.vms, schema.pools
    with store.transaction() as conn:
        rows = conn.execute(
            select(v.c.id, p.c.name).join(p, p.c.id == v.c.pool_id).where(v.c.id.in_(ids))
        ).all()
    return {int(r[0]): str(r[1]) for r in rows}


class JsonFormatter(logging.Formatter):
    """One JSON object per log record: ts, level, logger, message; a decision adds stage,
    action, ok, vm_id, host, pool and its own message as ``detail``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        decision = getattr(record, "decision", None)
        if isinstance(decision, dict):
            out.update({k: v for k, v in decision.items() if v is not None and k != "message"})
            if decision.get("message"):
                out["detail"] = decision["message"]
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, sort_keys=False)
