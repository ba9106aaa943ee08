"""One reconcile cycle: observe, diff, act (see the package docstring)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from lxcloud_py import vms
from lxcloud_py.lifecycle import Actor, WrongState
from lxcloud_py.model import LeaseState, NotFound, VMState
from lxcloud_py.runner import PlaybookRunner, playbook
from lxcloud_py.store import Store, now, schema

from .model import Action, HostObservation, ReconcileSettings, Snapshot
from .observe import observe_hosts, snapshot
from .rules import plan

log = logging.getLogger("lxcloud.reconcile")

DESTROY_RESULT = "VM result"


@dataclass
class Done:
    """An action and what became of it: ``applied``, ``skipped`` (the state moved on),
    ``failed`` (with the error), ``reported`` or ``planned`` (dry run)."""

    action: Action
    result: str
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.result != "failed"


class Reconciler:
    def __init__(self, store: Store, runner: PlaybookRunner | None, cfg: ReconcileSettings,
                 variables: dict[str, Any] | None = None) -> None:
        self.store = store
        self.runner = runner
        self.cfg = cfg
        self.variables = dict(variables or {})

    # -- observe, diff ----------------------------------------------------------------------
    def observe(self) -> tuple[Snapshot, dict[str, HostObservation]]:
        """Observe the registered hosts (none without a runner), then read the database."""
        _vms, hosts, _leases = snapshot(self.store)
        obs: dict[str, HostObservation] = {}
        if self.runner is not None and hosts:
            obs = observe_hosts(self.runner, hosts, max(1, self.cfg.probe_timeout // 2),
                                self.variables)
        vms_now, hosts_now, leases = snapshot(self.store)  # after the observation
        return Snapshot(vms_now, hosts_now, leases), obs

    def plan(self) -> tuple[list[Action], dict[str, HostObservation]]:
        snap, obs = self.observe()
        return plan(snap, obs, time.time(), self.cfg), obs

    # -- act --------------------------------------------------------------------------------
    def run_once(self, dry_run: bool = False) -> list[Done]:
        actions, _obs = self.plan()
        for a in actions:
            log.info("reconcile %s: saw %s; %s%s", a.rule, a.saw, a.do,
                     " (dry run)" if dry_run else "")
        if dry_run:
            return [Done(a, "planned") for a in actions]
        done = [self._apply_db(a) for a in actions if a.kind in ("vm", "lease")]
        done += [Done(a, "reported") for a in actions if a.kind == "report"]
        done += self._destroy([a for a in actions if a.kind == "destroy"])
        for d in done:
            (log.info if d.ok else log.warning)(
                "reconcile %s: %s %s", d.action.rule, d.result, d.message or d.action.do)
        return done

    def _apply_db(self, a: Action) -> Done:
        try:
            with self.store.transaction() as conn:
                if a.kind == "lease":
                    return self._free_lease(conn, a)
                assert a.vm_id is not None and a.transition is not None
                vms.action_in(self.store, conn, a.vm_id, a.transition, f"reconciler: {a.saw}",
                              actor=Actor.RECONCILER)
                if a.transition == "failed":
                    conn.execute(update(schema.vms).where(schema.vms.c.id == a.vm_id)
                                 .values(sched_message=f"FAILED: {a.saw}"[:512]))
        except (WrongState, NotFound) as exc:
            return Done(a, "skipped", str(exc))
        return Done(a, "applied")

    @staticmethod
    def _free_lease(conn: Any, a: Action) -> Done:
        le, v = schema.leases, schema.vms
        lease_id = int(a.target or 0)
        state = conn.execute(select(v.c.state).where(v.c.id == a.vm_id)).scalar_one_or_none()
        if state is not None and state not in (VMState.DONE, VMState.FAILED):
            return Done(a, "skipped", f"VM {a.vm_id} is live again")
        res = conn.execute(update(le).where(le.c.id == lease_id, le.c.vm_id == a.vm_id)
                           .values(vm_id=None, state=LeaseState.FREE, updated=now()))
        if res.rowcount != 1:
            return Done(a, "skipped", "the lease moved meanwhile")
        Store.record(conn, "lease", lease_id, LeaseState.USED, LeaseState.FREE,
                     f"reconciler: freed from VM {a.vm_id} ({a.saw})"[:1024])
        return Done(a, "applied")

    def _destroy(self, actions: list[Action]) -> list[Done]:
        """Host-side repairs with ``lxcloud.cloud.vm_destroy`` for those names only."""
        if not actions:
            return []
        if self.runner is None:
            return [Done(a, "failed", "no inventory: host repairs need a runner") for a in actions]
        results: dict[tuple[str, str], str | None] = {}

        def on_event(ev: dict[str, Any]) -> None:
            data = ev.get("event_data") or {}
            if data.get("task") != DESTROY_RESULT:
                return
            res = data.get("res") or {}
            key = (str(data.get("host", "")), str(res.get("_ansible_item_label", "")))
            if ev.get("event") == "runner_item_on_ok":
                results[key] = None
            elif ev.get("event") == "runner_item_on_failed":
                results[key] = str(res.get("msg") or "failed")[:300]

        items = [{"name": a.target, "host": a.host, **a.extra} for a in actions]
        run = self.runner.run(playbook("vm_destroy"), dict(self.variables),
                              {"lxcloud_vms": items}, on_event,
                              limit={str(a.host) for a in actions})
        out = []
        for a in actions:
            key = (str(a.host), str(a.target))
            if key not in results:
                out.append(Done(a, "failed", f"no result (playbook {run.status})"))
            elif results[key] is None:
                out.append(Done(a, "applied"))
            else:
                out.append(Done(a, "failed", str(results[key])))
        return out

    def cancel(self) -> None:
        if self.runner is not None:
            self.runner.cancel()


def from_settings(store: Store, settings: Any) -> Reconciler:
    """A reconciler from resolved settings (:class:`lxcloud_py.config.Settings`): the
    ``reconcile`` section, and the executor's inventory, runtime dir, forks and ``vars`` (the
    same hosts and variables the deploys use). Without an inventory nothing is observed: only
    the database rules run (leases, lifetimes, stuck deploys, silent hosts)."""
    cfg = ReconcileSettings.from_values(settings.section("reconcile"))
    ex = settings.section("executor")
    variables = dict(settings.config.section("executor").get("vars") or {})
    runner = None
    if ex.get("inventory"):
        runner = PlaybookRunner(str(ex["inventory"]), ex.get("runtime_dir"),
                                forks=int(ex.get("forks") or 50), timeout=cfg.probe_timeout)
    return Reconciler(store, runner, cfg, variables)
