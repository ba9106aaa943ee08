"""VMs on both backends: template validation, OpenNebula's action/state table, tokens."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from lxcloud_py import auth, users, vms
from lxcloud_py.model import InvalidInput, LCMState, NotFound, VMState
from lxcloud_py.store import Store, schema

A, L = VMState, LCMState
TPL = 'NAME = w\nMEMORY = 64\nDISK = [ IMAGE = "golden" ]\n'

STARTS = {
    "PENDING": (A.PENDING, L.LCM_INIT),
    "HOLD": (A.HOLD, L.LCM_INIT),
    "PROLOG": (A.ACTIVE, L.PROLOG),
    "BOOT": (A.ACTIVE, L.BOOT),
    "RUNNING": (A.ACTIVE, L.RUNNING),
    "UNKNOWN": (A.ACTIVE, L.UNKNOWN),
    "SHUTDOWN": (A.ACTIVE, L.SHUTDOWN),
    "SHUTDOWN_POWEROFF": (A.ACTIVE, L.SHUTDOWN_POWEROFF),
    "POWEROFF": (A.POWEROFF, L.LCM_INIT),
    "DONE": (A.DONE, L.LCM_INIT),
}
SD = (A.ACTIVE, L.SHUTDOWN)
SDPO = (A.ACTIVE, L.SHUTDOWN_POWEROFF)
DONE = (A.DONE, L.LCM_INIT)
#: action -> {start: result}; a start not listed is a wrong-state error.
EXPECTED: dict[str, dict[str, tuple[VMState, LCMState]]] = {
    "terminate": {
        "PENDING": DONE,
        "HOLD": DONE,
        "PROLOG": SD,
        "BOOT": SD,
        "RUNNING": SD,
        "UNKNOWN": SD,
        "SHUTDOWN": SD,
        "SHUTDOWN_POWEROFF": SD,
        "POWEROFF": SD,
    },
    "poweroff": {"RUNNING": SDPO, "UNKNOWN": SDPO, "SHUTDOWN_POWEROFF": SDPO},
    "resume": {"POWEROFF": (A.ACTIVE, L.BOOT_POWEROFF)},
    "reboot": {"RUNNING": (A.ACTIVE, L.RUNNING)},
    "hold": {"PENDING": (A.HOLD, L.LCM_INIT)},
    "release": {"HOLD": (A.PENDING, L.LCM_INIT)},
}
EXPECTED["terminate-hard"] = EXPECTED["terminate"]
EXPECTED["poweroff-hard"] = EXPECTED["poweroff"]


def test_every_action_from_every_state(store: Store) -> None:
    users.ensure_admin(store, "pw")
    owner = users.user_id(store)
    assert set(EXPECTED) == set(vms.ACTIONS)
    failures = []
    for action, table in EXPECTED.items():
        for start, (state, lcm) in STARTS.items():
            vm_id, _ = vms.allocate(store, TPL, owner)
            with store.transaction() as conn:
                conn.execute(
                    update(schema.vms)
                    .where(schema.vms.c.id == vm_id)
                    .values(state=int(state), lcm_state=int(lcm))
                )
            want = table.get(start)
            try:
                vms.action(store, vm_id, action)
                got: object = None
            except vms.WrongState as exc:
                got = exc
            with store.transaction() as conn:
                row = conn.execute(select(schema.vms).where(schema.vms.c.id == vm_id)).one()
            after = (row.state, row.lcm_state)
            if want is None:
                if got is None or after != (state, lcm):
                    failures.append(f"{action} from {start}: expected an error, got {after}")
            elif got is not None or after != want:
                failures.append(f"{action} from {start}: expected {want}, got {after} {got}")
            if want == DONE and row.ended is None:
                failures.append(f"{action} from {start}: DONE without ended time")
    assert failures == []


def test_unknown_action_and_vm(store: Store) -> None:
    users.ensure_admin(store, "pw")
    vm_id, _ = vms.allocate(store, TPL, users.user_id(store))
    with pytest.raises(InvalidInput, match="unknown action"):
        vms.action(store, vm_id, "migrate")
    with pytest.raises(NotFound):
        vms.action(store, vm_id + 1000, "terminate")
    with pytest.raises(NotFound):
        vms.issue_token(store, vm_id + 1000)


def test_tokens_are_stored_hashed_and_reissued(store: Store) -> None:
    users.ensure_admin(store, "pw")
    vm_id, token = vms.allocate(store, TPL, users.user_id(store))
    with store.transaction() as conn:
        stored = conn.execute(
            select(schema.vms.c.token_hash).where(schema.vms.c.id == vm_id)
        ).scalar_one()
    assert token not in stored and auth.verify_token(token, stored)
    authn = users.Authenticator(store)
    assert authn.authenticate(f"vm-{vm_id}:{token}").vm_id == vm_id
    new = vms.issue_token(store, vm_id)
    with pytest.raises(users.AuthenticationError):
        authn.authenticate(f"vm-{vm_id}:{token}")
    assert authn.authenticate(f"vm-{vm_id}:{new}").vm_id == vm_id


def test_admin_password_cache_follows_password_changes(store: Store) -> None:
    users.ensure_admin(store, "first")
    authn = users.Authenticator(store)
    assert authn.authenticate("oneadmin:first").is_admin
    assert authn.authenticate("oneadmin:first").is_admin  # cached
    assert users.ensure_admin(store, "second").password_differs
    assert authn.authenticate("oneadmin:first").is_admin  # not applied without the flag
    assert users.ensure_admin(store, "second", reset_password=True).password_changed
    with pytest.raises(users.AuthenticationError):
        authn.authenticate("oneadmin:first")
    assert authn.authenticate("oneadmin:second").is_admin


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("CPU = -1", "CPU must be greater than 0"),
        ("CPU = abc", "CPU must be a number"),
        ("VCPU = 0", "VCPU must be at least 1"),
        ("VCPU = 2000", "more than the limit 1024"),
        ("MEMORY = 1.5", "MEMORY must be a whole number"),
        ("LIFETIME = -5", "LIFETIME must be at least 0"),
        ("DISK = [ TARGET = vda ]", "every DISK needs an IMAGE"),
        ('DISK = [ IMAGE = "a b" ]', "DISK/IMAGE"),
        ("CONTEXT = [ A = 1 ]\nCONTEXT = [ B = 2 ]", "CONTEXT given more than once"),
        ("MEMORY = 1\nMEMORY = 2", "MEMORY given more than once"),
        ("NAME = x;y", "NAME"),
        # issue 14: refused at allocate, the attribute named
        ("DESCRIPTION = \"{{ lookup('pipe','id') }}\"", "DESCRIPTION: template delimiters"),
        ('CONTEXT = [ X = "{% if 1 %}y{% endif %}" ]', "CONTEXT/X: template delimiters"),
        ('CONTEXT = [ X = "{# c #}" ]', "CONTEXT/X: template delimiters"),
        ('LXCLOUD_TOKEN = "abc"', "LXCLOUD_TOKEN is set by lxcloud"),
        ('ETH0_IP = "1.2.3.4"', "ETH0_IP is set by lxcloud"),
        ('VMID = "7"', "VMID is set by lxcloud"),
        ('CONTEXT = [ ETH0_IP = "6.6.6.6" ]', "CONTEXT/ETH0_IP is set by lxcloud"),
        ('CONTEXT = [ LXCLOUD_TOKEN = "x" ]', "CONTEXT/LXCLOUD_TOKEN is set by lxcloud"),
        ('CONTEXT = [ NAME = "other" ]', "CONTEXT/NAME is set by lxcloud"),
        ("MEMORY = 1000000000000", "MEMORY 1000000000000 is more than the limit"),
        ("CPU = 5000", "CPU 5000 is more than the limit"),
        ("MEMORY = \u0661\u0662\u0668", "MEMORY must be written with ASCII digits"),
        ("CPU = \uff12", "CPU must be written with ASCII digits"),
        ("\n".join(f"A{i} = {i}" for i in range(10_000)), "more than 1000 attributes"),
        ("CONTEXT = [ " + ", ".join(f"K{i} = 1" for i in range(1200)) + " ]",
         "more than 1000 attributes"),
        ('DESCRIPTION = "' + "x" * 70_000 + '"', "DESCRIPTION: longer than 65536"),
    ],
)
def test_spec_validation(text: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words.replace("(", r"\(")):
        vms.parse_spec(text)


def test_limits_are_configurable() -> None:
    old = vms.limits()
    try:
        vms.configure_limits(vms.Limits(max_memory_mb=1024))
        with pytest.raises(InvalidInput, match="MEMORY 2048 is more than the limit 1024"):
            vms.parse_spec("MEMORY = 2048")
        assert vms.parse_spec("MEMORY = 1024").memory_mb == 1024
    finally:
        vms.configure_limits(old)


def test_spec_defaults_and_values() -> None:
    spec = vms.parse_spec("CPU = 0.25\nVCPU = 4\nMEMORY = 2048\nLIFETIME = 7200\nX = y\n")
    assert (spec.name, spec.cpu, spec.vcpu, spec.memory_mb, spec.lifetime, spec.image) == (
        None,
        0.25,
        4,
        2048,
        7200,
        None,
    )
    default = vms.parse_spec("")
    assert (default.cpu, default.vcpu, default.memory_mb, default.lifetime) == (1.0, 1, 512, None)


def test_actions_follow_the_lifecycle_by_actor(store: Store) -> None:
    from lxcloud_py.lifecycle import Actor, NotPermitted

    users.ensure_admin(store, "pw")
    owner = users.user_id(store)
    vm_id, _ = vms.allocate(store, TPL, owner)
    with pytest.raises(NotPermitted, match="the vm may not hold"):
        vms.action(store, vm_id, "hold", Actor.VM)
    with pytest.raises(NotPermitted, match="the pool manager may not poweroff"):
        vms.action(store, vm_id, "poweroff", Actor.POOLS)
    with pytest.raises(InvalidInput, match="unknown action 'deployed'"):
        vms.action(store, vm_id, "deployed", Actor.EXECUTOR)  # not a one.vm.action
    assert vms.action(store, vm_id, "terminate", Actor.POOLS) == vm_id
    with store.transaction() as conn:
        assert vms.get(conn, vm_id)["state"] == A.DONE
    assert vms.SELF_ACTIONS == ("terminate", "terminate-hard", "poweroff", "poweroff-hard")
    assert vms.EXECUTOR_TRANSITIONS["destroyed"] == ((A.ACTIVE, L.SHUTDOWN), (A.DONE, L.LCM_INIT))
