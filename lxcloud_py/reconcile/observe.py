"""Observation: what the hosts have (through the runner) and what the database says."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select

from lxcloud_py.model import LIVE_VM_STATES
from lxcloud_py.runner import PlaybookRunner, playbook
from lxcloud_py.store import Store, schema

from .model import VM, Host, HostObservation, Lease

log = logging.getLogger("lxcloud.reconcile")

RESULT_TASK = "LXCloud observation"


def observe_hosts(runner: PlaybookRunner, hosts: Iterable[str], task_timeout: int,
                  variables: dict[str, Any] | None = None) -> dict[str, HostObservation]:
    """Run ``lxcloud.cloud.vm_observe`` on ``hosts``: one :class:`HostObservation` per host
    (``ok`` False with the error for a host that failed, was unreachable or did not answer)."""
    names = sorted(set(hosts))
    out = {h: HostObservation(h, False, "no result") for h in names}
    if not names:
        return out

    def on_event(ev: dict[str, Any]) -> None:
        data = ev.get("event_data") or {}
        host, task = str(data.get("host", "")), data.get("task", "")
        res = data.get("res") or {}
        if host not in out:
            return
        kind = ev.get("event", "")
        if kind == "runner_on_ok" and task == RESULT_TASK:
            seen = (res.get("ansible_facts") or {}).get("lxcloud_observation") or {}
            out[host] = HostObservation(
                host, True, "",
                {str(k): str(v) for k, v in (seen.get("domains") or {}).items()},
                {str(k): float(v) for k, v in (seen.get("files") or {}).items()},
            )
        elif kind in ("runner_on_failed", "runner_on_unreachable"):
            out[host] = HostObservation(host, False, f"{task}: {res.get('msg', kind)}"[:300])

    result = runner.run(
        playbook("vm_observe"),
        {**(variables or {}), "lxcloud_observe_timeout": task_timeout},
        None,
        on_event,
        limit=names,
    )
    if result.status == "timeout":
        for o in out.values():
            if not o.ok and o.error == "no result":
                o.error = "the observation run timed out"
    for o in out.values():
        if not o.ok:
            log.warning("reconcile: host %s not observed: %s", o.host, o.error)
    return out


def snapshot(store: Store) -> tuple[dict[int, VM], dict[str, Host], list[Lease]]:
    """The live VMs, the hosts and the bound leases, in one short transaction."""
    v, h, le, hist, p = schema.vms, schema.hosts, schema.leases, schema.history, schema.pools
    with store.transaction() as conn:
        hosts = {
            str(r.name): Host(str(r.name), int(r.state))
            for r in conn.execute(select(h.c.name, h.c.state))
        }
        since = (
            select(hist.c.object_id, func.max(hist.c.ts).label("ts"))
            .where(hist.c.kind == "vm")
            .group_by(hist.c.object_id)
            .subquery()
        )
        retries = (
            select(hist.c.object_id, func.count().label("n"))
            .where(hist.c.kind == "vm", hist.c.message.like("retry%"))
            .group_by(hist.c.object_id)
            .subquery()
        )
        rows = conn.execute(
            select(
                v.c.id, v.c.state, v.c.lcm_state, v.c.deadline, v.c.created,
                h.c.name.label("host"), p.c.name.label("pool"), le.c.id.label("lease"),
                since.c.ts, retries.c.n,
            )
            .outerjoin(h, h.c.id == v.c.host_id)
            .outerjoin(p, p.c.id == v.c.pool_id)
            .outerjoin(le, le.c.vm_id == v.c.id)
            .outerjoin(since, since.c.object_id == v.c.id)
            .outerjoin(retries, retries.c.object_id == v.c.id)
            .where(v.c.state.in_([int(s) for s in LIVE_VM_STATES]))
        ).all()
        vms = {
            int(r.id): VM(
                int(r.id), int(r.state), int(r.lcm_state), r.host, r.pool, r.lease is not None,
                float(r.ts if r.ts is not None else r.created), r.deadline, int(r.n or 0),
            )
            for r in rows
        }
        leases = [
            Lease(int(r.id), str(r.ip), int(r.vm_id), None if r.state is None else int(r.state))
            for r in conn.execute(
                select(le.c.id, le.c.ip, le.c.vm_id, v.c.state)
                .outerjoin(v, v.c.id == le.c.vm_id)
                .where(le.c.vm_id.is_not(None))
            )
        ]
    return vms, hosts, leases
