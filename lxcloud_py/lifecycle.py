"""The VM state machine: states, the allowed transitions and who may trigger each.

States are OpenNebula's (:class:`~lxcloud_py.model.VMState` and, under ACTIVE,
:class:`~lxcloud_py.model.LCMState`). Everything that moves a VM asks this table first:
the API (:mod:`lxcloud_py.api.namespaces`, for an owner/admin or the VM's own token), the
scheduler (binding a PENDING VM), the executor (deploy/destroy outcomes), the pool manager and
the reconciler; :mod:`lxcloud_py.vms` applies the answer in one DB transaction.

A :class:`Rule` says: action ``name``, asked by one of ``actors``, from ``state`` with an LCM
state in ``lcms`` (None: any), goes to ``target``. Its ``effect``:

- ``MOVE``: the VM moves to ``target`` (DONE also ends it and frees its lease);
- ``AGAIN``: the VM is already where the action leads; success without a change (an in-VM
  callback whose reply was lost retries ``terminate``);
- ``RECORD``: no state change, only a history record (``reboot``).

=================  ========================  ===============================  ==================
action             actors                    from                             to
=================  ========================  ===============================  ==================
terminate[-hard]   user, vm, pool manager    PENDING, HOLD                    DONE, lease freed
terminate[-hard]   user, vm, pool manager    ACTIVE (any LCM), POWEROFF       ACTIVE/SHUTDOWN
poweroff[-hard]    user, vm                  ACTIVE/RUNNING, ACTIVE/UNKNOWN   ACTIVE/SHUTDOWN_POW.
resume             user                      POWEROFF                         ACTIVE/BOOT_POWEROFF
reboot             user                      ACTIVE/RUNNING                   (recorded)
hold               user                      PENDING                          HOLD
release            user                      HOLD                             PENDING
place              scheduler                 PENDING                          ACTIVE/PROLOG
deployed           executor                  ACTIVE/PROLOG                    ACTIVE/RUNNING
prolog_failure     executor                  ACTIVE/PROLOG                    ACTIVE/PROLOG_FAIL.
boot_failure       executor                  ACTIVE/PROLOG                    ACTIVE/BOOT_FAILURE
destroyed          executor                  ACTIVE/SHUTDOWN                  DONE, lease freed
epilog_failure     executor                  ACTIVE/SHUTDOWN                  ACTIVE/EPILOG_FAIL.
lost               reconciler                ACTIVE/RUNNING                   ACTIVE/UNKNOWN
found              reconciler                ACTIVE/UNKNOWN                   ACTIVE/RUNNING
stopped            reconciler                ACTIVE/RUNNING, ACTIVE/UNKNOWN   POWEROFF
failed             reconciler                ACTIVE/PROLOG, BOOT, UNKNOWN,    FAILED, lease freed
                                             PROLOG_FAILURE, BOOT_FAILURE
gone               reconciler                ACTIVE/UNKNOWN                   DONE, lease freed
retry              reconciler                ACTIVE/PROLOG                    (recorded)
retry              reconciler                ACTIVE/BOOT, PROLOG_FAILURE,     ACTIVE/PROLOG
                                             BOOT_FAILURE
restart            reconciler                POWEROFF                         ACTIVE/PROLOG
terminate[-hard]   reconciler                as for the pool manager          as above
=================  ========================  ===============================  ==================

``user`` is the VM's owner or an admin calling the API; ``vm`` is the VM itself, calling with
its callback token (on its own id only: the API checks that).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ansible_collections.lxcloud.cloud.plugins.module_utils import wire

from lxcloud_py.model import Conflict, InvalidInput, LCMState, LxcloudError, VMState

#: A VM's full state: (STATE, LCM_STATE); LCM_STATE is LCM_INIT outside ACTIVE.
Full = tuple[VMState, LCMState]


class Actor(enum.Enum):
    """Who asks for a transition."""

    USER = "user"  # the VM's owner or an admin, through the API or the CLI
    VM = "vm"  # the VM itself, with its callback token
    SCHEDULER = "scheduler"
    EXECUTOR = "executor"
    RECONCILER = "reconciler"
    POOLS = "pool manager"


class Effect(enum.Enum):
    MOVE = "move"
    AGAIN = "again"
    RECORD = "record"


class WrongState(Conflict):
    """The action is not allowed in the VM's current state (OpenNebula ACTION error)."""


class NotPermitted(LxcloudError):
    """The actor may not trigger the action at all (OpenNebula AUTHORIZATION error)."""


@dataclass(frozen=True)
class Rule:
    name: str
    actors: frozenset[Actor]
    state: VMState
    #: LCM states the rule applies in (None: any)
    lcms: tuple[LCMState, ...] | None
    effect: Effect
    #: where the VM goes (for AGAIN and RECORD: where it is)
    target: Full

    def applies(self, state: int, lcm: int) -> bool:
        return state == self.state and (self.lcms is None or lcm in self.lcms)

    @property
    def ends(self) -> bool:
        """The VM is DONE (or FAILED) afterwards: ``ended`` is set and its lease is freed."""
        return self.effect is Effect.MOVE and self.target[0] in (VMState.DONE, VMState.FAILED)


A, L = VMState, LCMState
_SHUTDOWN: Full = (A.ACTIVE, L.SHUTDOWN)
_DONE: Full = (A.DONE, L.LCM_INIT)
_OFF: Full = (A.ACTIVE, L.SHUTDOWN_POWEROFF)
_RUNNING: Full = (A.ACTIVE, L.RUNNING)
_PROLOG_FAILED: Full = (A.ACTIVE, L.PROLOG_FAILURE)
_BOOT_FAILED: Full = (A.ACTIVE, L.BOOT_FAILURE)
_EPILOG_FAILED: Full = (A.ACTIVE, L.EPILOG_FAILURE)
_OWNER_OR_SELF = frozenset({Actor.USER, Actor.VM})
_TERMINATORS = frozenset({Actor.USER, Actor.VM, Actor.POOLS, Actor.RECONCILER})
_USER = frozenset({Actor.USER})
_EXECUTOR = frozenset({Actor.EXECUTOR})
_RECONCILER = frozenset({Actor.RECONCILER})


def _terminate(name: str) -> tuple[Rule, ...]:
    # Order matters: the first rule that applies wins (SHUTDOWN before "any LCM state").
    return (
        Rule(name, _TERMINATORS, A.PENDING, None, Effect.MOVE, _DONE),
        Rule(name, _TERMINATORS, A.HOLD, None, Effect.MOVE, _DONE),
        Rule(name, _TERMINATORS, A.ACTIVE, (L.SHUTDOWN,), Effect.AGAIN, _SHUTDOWN),
        Rule(name, _TERMINATORS, A.ACTIVE, None, Effect.MOVE, _SHUTDOWN),
        Rule(name, _TERMINATORS, A.POWEROFF, None, Effect.MOVE, _SHUTDOWN),
    )


def _poweroff(name: str) -> tuple[Rule, ...]:
    return (
        Rule(name, _OWNER_OR_SELF, A.ACTIVE, (L.SHUTDOWN_POWEROFF,), Effect.AGAIN, _OFF),
        Rule(name, _OWNER_OR_SELF, A.ACTIVE, (L.RUNNING, L.UNKNOWN), Effect.MOVE, _OFF),
    )


#: Scheduler, executor and reconciler transitions (one source state each).
PLACE = "place"
DEPLOYED = "deployed"
PROLOG_FAILURE = "prolog_failure"
BOOT_FAILURE = "boot_failure"
DESTROYED = "destroyed"
EPILOG_FAILURE = "epilog_failure"
LOST = "lost"
FOUND = "found"
STOPPED = "stopped"
FAILED = "failed"
GONE = "gone"
RETRY = "retry"
RESTART = "restart"
_FAILED: Full = (A.FAILED, L.LCM_INIT)
_PROLOG: Full = (A.ACTIVE, L.PROLOG)

RULES: tuple[Rule, ...] = (
    *_terminate(wire.TERMINATE),
    *_terminate(wire.TERMINATE_HARD),
    *_poweroff(wire.POWEROFF),
    *_poweroff(wire.POWEROFF_HARD),
    Rule(wire.RESUME, _USER, A.POWEROFF, None, Effect.MOVE, (A.ACTIVE, L.BOOT_POWEROFF)),
    Rule(wire.REBOOT, _USER, A.ACTIVE, (L.RUNNING,), Effect.RECORD, _RUNNING),
    Rule(wire.HOLD, _USER, A.PENDING, None, Effect.MOVE, (A.HOLD, L.LCM_INIT)),
    Rule(wire.RELEASE, _USER, A.HOLD, None, Effect.MOVE, (A.PENDING, L.LCM_INIT)),
    Rule(
        PLACE, frozenset({Actor.SCHEDULER}), A.PENDING, None, Effect.MOVE, (A.ACTIVE, L.PROLOG)
    ),
    Rule(DEPLOYED, _EXECUTOR, A.ACTIVE, (L.PROLOG,), Effect.MOVE, _RUNNING),
    Rule(PROLOG_FAILURE, _EXECUTOR, A.ACTIVE, (L.PROLOG,), Effect.MOVE, _PROLOG_FAILED),
    Rule(BOOT_FAILURE, _EXECUTOR, A.ACTIVE, (L.PROLOG,), Effect.MOVE, _BOOT_FAILED),
    Rule(DESTROYED, _EXECUTOR, A.ACTIVE, (L.SHUTDOWN,), Effect.MOVE, _DONE),
    Rule(EPILOG_FAILURE, _EXECUTOR, A.ACTIVE, (L.SHUTDOWN,), Effect.MOVE, _EPILOG_FAILED),
    Rule(LOST, _RECONCILER, A.ACTIVE, (L.RUNNING,), Effect.MOVE, (A.ACTIVE, L.UNKNOWN)),
    Rule(FOUND, _RECONCILER, A.ACTIVE, (L.UNKNOWN,), Effect.MOVE, _RUNNING),
    Rule(
        STOPPED, _RECONCILER, A.ACTIVE, (L.RUNNING, L.UNKNOWN), Effect.MOVE,
        (A.POWEROFF, L.LCM_INIT),
    ),
    Rule(
        FAILED, _RECONCILER, A.ACTIVE,
        (L.PROLOG, L.BOOT, L.UNKNOWN, L.PROLOG_FAILURE, L.BOOT_FAILURE), Effect.MOVE, _FAILED,
    ),
    Rule(GONE, _RECONCILER, A.ACTIVE, (L.UNKNOWN,), Effect.MOVE, _DONE),
    Rule(RETRY, _RECONCILER, A.ACTIVE, (L.PROLOG,), Effect.RECORD, _PROLOG),
    Rule(
        RETRY, _RECONCILER, A.ACTIVE, (L.BOOT, L.PROLOG_FAILURE, L.BOOT_FAILURE), Effect.MOVE,
        _PROLOG,
    ),
    Rule(RESTART, _RECONCILER, A.POWEROFF, None, Effect.MOVE, _PROLOG),
)  # fmt: skip

#: Every transition's name, in table order.
NAMES: tuple[str, ...] = tuple(dict.fromkeys(r.name for r in RULES))


def initial_state(hold: bool = False) -> Full:
    """Where a new VM starts (``one.vm.allocate``, or a pool's refill): PENDING, or HOLD."""
    return (A.HOLD if hold else A.PENDING, L.LCM_INIT)


def actions_for(actor: Actor) -> tuple[str, ...]:
    """The transitions ``actor`` may trigger, in table order."""
    return tuple(dict.fromkeys(r.name for r in RULES if actor in r.actors))


def may_trigger(actor: Actor, name: str) -> bool:
    return any(r.name == name and actor in r.actors for r in RULES)


def check_actor(name: str, actor: Actor) -> None:
    """Raise InvalidInput for an unknown transition, NotPermitted if ``actor`` may not ask."""
    if name not in NAMES:
        raise InvalidInput(f"unknown action {name!r} (known: {', '.join(NAMES)})")
    if not may_trigger(actor, name):
        raise NotPermitted(f"the {actor.value} may not {name} a VM")


def state_text(state: int, lcm: int) -> str:
    """``PENDING``, ``ACTIVE/RUNNING``, ... (an LCM state only under ACTIVE)."""
    s = VMState(state).name
    if state == VMState.ACTIVE:
        try:
            return f"{s}/{LCMState(lcm).name}"
        except ValueError:
            return f"{s}/{lcm}"
    return s


def decide(name: str, actor: Actor, state: int, lcm: int, vm: object = "the VM") -> Rule:
    """The rule that applies to transition ``name`` asked by ``actor`` for a VM in
    ``(state, lcm)``; InvalidInput, NotPermitted or WrongState when there is none."""
    check_actor(name, actor)
    for rule in RULES:
        if rule.name == name and rule.applies(state, lcm):
            return rule
    raise WrongState(f"cannot {name} VM {vm} in state {state_text(state, lcm)}")


def transition(name: str) -> tuple[Full, Full]:
    """(from, to) of a one-source MOVE transition (the scheduler's, executor's, reconciler's)."""
    found = [r for r in RULES if r.name == name]
    if len(found) != 1 or (found[0].lcms is not None and len(found[0].lcms) != 1):
        raise ValueError(f"{name!r} is not a transition with one source state")
    rule = found[0]
    source = (rule.state, rule.lcms[0] if rule.lcms else L.LCM_INIT)
    return source, rule.target


def transitions_of(actor: Actor) -> dict[str, tuple[Full, Full]]:
    """``{name: (from, to)}`` of the one-source transitions only ``actor`` triggers."""
    rules = [r for r in RULES if r.actors == frozenset({actor})]
    return {
        r.name: transition(r.name)
        for r in rules
        if r.effect is Effect.MOVE and (r.lcms is None or len(r.lcms) == 1)
        and sum(x.name == r.name for x in rules) == 1
    }

