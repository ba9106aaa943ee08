"""lifecycle.py: every transition from every state, allowed or refused, by every actor."""

from __future__ import annotations

import pytest
from ansible_collections.lxcloud.cloud.plugins.module_utils import wire

from lxcloud_py import lifecycle
from lxcloud_py.lifecycle import Actor, Effect, NotPermitted, WrongState
from lxcloud_py.model import InvalidInput, LCMState, VMState

A, L = VMState, LCMState

#: Every state a VM can be in here (LCM states only under ACTIVE).
STATES: dict[str, tuple[VMState, LCMState]] = {
    "PENDING": (A.PENDING, L.LCM_INIT),
    "HOLD": (A.HOLD, L.LCM_INIT),
    **{lcm.name: (A.ACTIVE, lcm) for lcm in L if lcm != L.LCM_INIT},
    "POWEROFF": (A.POWEROFF, L.LCM_INIT),
    "DONE": (A.DONE, L.LCM_INIT),
}
ACTIVE_NAMES = [lcm.name for lcm in L if lcm != L.LCM_INIT]
SD = (A.ACTIVE, L.SHUTDOWN)
SDPO = (A.ACTIVE, L.SHUTDOWN_POWEROFF)
DONE = (A.DONE, L.LCM_INIT)
RUNNING = (A.ACTIVE, L.RUNNING)
OFF = (A.POWEROFF, L.LCM_INIT)
FAILED = (A.FAILED, L.LCM_INIT)
PROLOG = (A.ACTIVE, L.PROLOG)

#: name -> (actors, {start: (effect, result)}); a start not listed is a WrongState error.
TERMINATE = {
    "PENDING": (Effect.MOVE, DONE),
    "HOLD": (Effect.MOVE, DONE),
    **{n: (Effect.MOVE, SD) for n in ACTIVE_NAMES},
    "SHUTDOWN": (Effect.AGAIN, SD),
    "POWEROFF": (Effect.MOVE, SD),
}
POWEROFF = {
    "RUNNING": (Effect.MOVE, SDPO),
    "UNKNOWN": (Effect.MOVE, SDPO),
    "SHUTDOWN_POWEROFF": (Effect.AGAIN, SDPO),
}
U, V, S, E, R, P = (
    Actor.USER,
    Actor.VM,
    Actor.SCHEDULER,
    Actor.EXECUTOR,
    Actor.RECONCILER,
    Actor.POOLS,
)
EXPECTED: dict[str, tuple[set[Actor], dict[str, tuple[Effect, tuple[VMState, LCMState]]]]] = {
    "terminate": ({U, V, P, R}, TERMINATE),
    "terminate-hard": ({U, V, P, R}, TERMINATE),
    "poweroff": ({U, V}, POWEROFF),
    "poweroff-hard": ({U, V}, POWEROFF),
    "resume": ({U}, {"POWEROFF": (Effect.MOVE, (A.ACTIVE, L.BOOT_POWEROFF))}),
    "reboot": ({U}, {"RUNNING": (Effect.RECORD, RUNNING)}),
    "hold": ({U}, {"PENDING": (Effect.MOVE, (A.HOLD, L.LCM_INIT))}),
    "release": ({U}, {"HOLD": (Effect.MOVE, (A.PENDING, L.LCM_INIT))}),
    "place": ({S}, {"PENDING": (Effect.MOVE, (A.ACTIVE, L.PROLOG))}),
    "deployed": ({E}, {"PROLOG": (Effect.MOVE, RUNNING)}),
    "prolog_failure": ({E}, {"PROLOG": (Effect.MOVE, (A.ACTIVE, L.PROLOG_FAILURE))}),
    "boot_failure": ({E}, {"PROLOG": (Effect.MOVE, (A.ACTIVE, L.BOOT_FAILURE))}),
    "destroyed": ({E}, {"SHUTDOWN": (Effect.MOVE, DONE)}),
    "epilog_failure": ({E}, {"SHUTDOWN": (Effect.MOVE, (A.ACTIVE, L.EPILOG_FAILURE))}),
    "lost": ({R}, {"RUNNING": (Effect.MOVE, (A.ACTIVE, L.UNKNOWN))}),
    "found": ({R}, {"UNKNOWN": (Effect.MOVE, RUNNING)}),
    "stopped": ({R}, {"RUNNING": (Effect.MOVE, OFF), "UNKNOWN": (Effect.MOVE, OFF)}),
    "failed": ({R}, {n: (Effect.MOVE, FAILED) for n in (
        "PROLOG", "BOOT", "UNKNOWN", "PROLOG_FAILURE", "BOOT_FAILURE")}),
    "gone": ({R}, {"UNKNOWN": (Effect.MOVE, DONE)}),
    "retry": ({R}, {"PROLOG": (Effect.RECORD, PROLOG), **{n: (Effect.MOVE, PROLOG) for n in (
        "BOOT", "PROLOG_FAILURE", "BOOT_FAILURE")}}),
    "restart": ({R}, {"POWEROFF": (Effect.MOVE, PROLOG)}),
}


def test_the_table_names_every_transition() -> None:
    assert set(EXPECTED) == set(lifecycle.NAMES)
    assert set(wire.VM_ACTIONS) <= set(lifecycle.NAMES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("actor", list(Actor), ids=lambda a: a.value)
def test_every_transition_by_every_actor_from_every_state(name: str, actor: Actor) -> None:
    actors, table = EXPECTED[name]
    for start, (state, lcm) in STATES.items():
        if actor not in actors:
            with pytest.raises(NotPermitted):
                lifecycle.decide(name, actor, state, lcm)
            continue
        want = table.get(start)
        if want is None:
            with pytest.raises(WrongState, match=f"cannot {name} VM 7 in state "):
                lifecycle.decide(name, actor, state, lcm, 7)
            continue
        rule = lifecycle.decide(name, actor, state, lcm)
        assert (rule.effect, rule.target) == want, (name, start)
        assert rule.ends == (want in ((Effect.MOVE, DONE), (Effect.MOVE, FAILED))), (name, start)


def test_done_is_final() -> None:
    for name in lifecycle.NAMES:
        for actor in Actor:
            if lifecycle.may_trigger(actor, name):
                with pytest.raises(WrongState):
                    lifecycle.decide(name, actor, A.DONE, L.LCM_INIT)


def test_unknown_transition() -> None:
    with pytest.raises(InvalidInput, match="unknown action 'migrate'"):
        lifecycle.decide("migrate", Actor.USER, A.ACTIVE, L.RUNNING)


def test_actions_by_actor() -> None:
    assert lifecycle.actions_for(Actor.USER) == wire.VM_ACTIONS
    assert lifecycle.actions_for(Actor.VM) == (
        "terminate", "terminate-hard", "poweroff", "poweroff-hard"
    )
    assert lifecycle.actions_for(Actor.POOLS) == ("terminate", "terminate-hard")
    assert lifecycle.actions_for(Actor.RECONCILER) == (
        "terminate", "terminate-hard", "lost", "found", "stopped", "failed", "gone", "retry",
        "restart")
    assert lifecycle.actions_for(Actor.SCHEDULER) == ("place",)
    for name, (actors, _) in EXPECTED.items():
        assert {a for a in Actor if lifecycle.may_trigger(a, name)} == actors, name


def test_one_source_transitions() -> None:
    assert lifecycle.transitions_of(Actor.EXECUTOR) == {
        "deployed": ((A.ACTIVE, L.PROLOG), RUNNING),
        "prolog_failure": ((A.ACTIVE, L.PROLOG), (A.ACTIVE, L.PROLOG_FAILURE)),
        "boot_failure": ((A.ACTIVE, L.PROLOG), (A.ACTIVE, L.BOOT_FAILURE)),
        "destroyed": (SD, DONE),
        "epilog_failure": (SD, (A.ACTIVE, L.EPILOG_FAILURE)),
    }
    assert lifecycle.transition("place") == ((A.PENDING, L.LCM_INIT), (A.ACTIVE, L.PROLOG))
    assert lifecycle.transitions_of(Actor.RECONCILER) == {
        "lost": (RUNNING, (A.ACTIVE, L.UNKNOWN)),
        "found": ((A.ACTIVE, L.UNKNOWN), RUNNING),
        "gone": ((A.ACTIVE, L.UNKNOWN), DONE),
        "restart": (OFF, PROLOG),
    }
    with pytest.raises(ValueError, match="one source state"):
        lifecycle.transition("terminate")


def test_initial_state_and_text() -> None:
    assert lifecycle.initial_state() == (A.PENDING, L.LCM_INIT)
    assert lifecycle.initial_state(hold=True) == (A.HOLD, L.LCM_INIT)
    assert lifecycle.state_text(A.ACTIVE, L.RUNNING) == "ACTIVE/RUNNING"
    assert lifecycle.state_text(A.ACTIVE, 99) == "ACTIVE/99"
    assert lifecycle.state_text(A.POWEROFF, L.LCM_INIT) == "POWEROFF"
