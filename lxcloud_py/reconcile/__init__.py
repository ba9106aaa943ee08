"""The reconciler: the database, libvirt, the disks and the leases always agree.

One cycle (:meth:`.engine.Reconciler.run_once`) is **observe -> diff -> act**:

1. *observe* (:mod:`.observe`): the collection's playbook ``lxcloud.cloud.vm_observe`` runs on
   every registered host through the one runner adapter (:mod:`lxcloud_py.runner`), with a
   per-host task timeout and a bounded run: the domains named ``one-<id>`` with their state
   (``lxcloud.cloud.vm_info``) and the clone/context files under the disks directory with their
   age. An unreachable host gives no observation (its VMs are judged by its heartbeat only);
   then the database is read in one short transaction (a :class:`.model.Snapshot`) -- *after*
   the observation, so every domain a deploy made has its VM row already;
2. *diff* (:mod:`.rules`): each rule is a pure function of (snapshot, observation, now,
   settings) returning :class:`.model.Action` values (plain data), tested alone;
3. *act* (:mod:`.engine`): each VM or lease action is its own database transition, through
   :mod:`lxcloud_py.lifecycle` as the ``reconciler`` actor (a VM that moved meanwhile is left
   for the next cycle); host-side repairs (a stray domain, orphan files) run the collection's
   ``lxcloud.cloud.vm_destroy`` playbook for those names only.

Every action is logged with what the rule saw and what was done, and returned to the caller
(``lxcloud reconcile`` prints them as a table; the daemon's ``reconciler`` stage records them as
decisions).
"""

from __future__ import annotations

from .model import Action, HostObservation, ReconcileSettings, Snapshot
from .rules import RULES, plan

__all__ = ["RULES", "Action", "HostObservation", "ReconcileSettings", "Snapshot", "plan"]
