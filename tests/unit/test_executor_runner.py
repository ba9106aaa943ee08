"""The ansible-runner adapter with the real ansible-runner and ansible-playbook on localhost
(connection local, no daemons): events arrive in order in the caller's thread, the job
directory is owner-only with the vars file 0600 while the job runs, no event is written to disk,
strings of the VM list are passed on untemplated, and the job directory is removed afterwards
unless artifacts are kept."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from lxcloud_py.executor import PlaybookRunner
from lxcloud_py.model import InvalidInput

PLAYBOOK = """\
- name: Fake deploy
  hosts: all
  gather_facts: false
  tasks:
    - name: Echo
      ansible.builtin.debug:
        msg: "{{ vm.note }}"
      loop: "{{ lxcloud_vms }}"
      loop_control: {loop_var: vm, label: "{{ vm.name }}"}
    - name: VM result
      ansible.builtin.assert:
        that: vm.name != 'bad'
        fail_msg: "{{ vm.name }} failed: {{ greeting }}"
        success_msg: "{{ vm.name }} running"
        quiet: true
      loop: "{{ lxcloud_vms }}"
      loop_control: {loop_var: vm, label: "{{ vm.name }}"}
"""


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    books = tmp_path / "playbooks"
    books.mkdir()
    (books / "fake.yml").write_text(PLAYBOOK)
    inv = tmp_path / "inventory.ini"
    inv.write_text(f"[hypervisors]\nlocal1 ansible_connection=local "
                   f"ansible_python_interpreter={sys.executable}\n")
    runtime = tmp_path / "runtime"
    return {"books": books, "inv": inv, "runtime": runtime}


def _run(setup: dict[str, Path], keep: bool) -> tuple[Any, list[dict], list[dict]]:
    runner = PlaybookRunner(str(setup["inv"]), setup["runtime"], forks=5, keep_artifacts=keep,
                            playbooks_dir=setup["books"])
    events: list[dict] = []
    seen: list[dict] = []

    def on_event(ev: dict) -> None:
        if not seen:  # while the job runs: what is on disk?
            jobs = list(setup["runtime"].iterdir())
            seen.append({
                "jobs": jobs,
                "runtime_mode": stat.S_IMODE(setup["runtime"].stat().st_mode),
                "job_mode": stat.S_IMODE(jobs[0].stat().st_mode),
                "vars_mode": stat.S_IMODE((jobs[0] / "vars.yml").stat().st_mode),
            })
        events.append(ev)

    vms = [{"name": "good", "note": "{{ lookup('env', 'HOME') }}", "host": "local1"},
           {"name": "bad", "note": "plain", "host": "local1"}]
    result = runner.run("fake.yml", {"greeting": "boom"}, {"lxcloud_vms": vms}, on_event,
                        limit=["local1"])
    return result, events, seen


def test_run_events_modes_untemplated_and_cleanup(setup: dict[str, Path]) -> None:
    result, events, seen = _run(setup, keep=False)
    assert result.status == "failed" and result.rc != 0  # "bad" failed its result
    assert seen[0]["runtime_mode"] == 0o700 and seen[0]["job_mode"] == 0o700
    assert seen[0]["vars_mode"] == 0o600
    items = [(e["event"], e["event_data"]["task"], e["event_data"]["res"]["_ansible_item_label"])
             for e in events if e["event"].startswith("runner_item_on_")]
    assert items == [
        ("runner_item_on_ok", "Echo", "good"),
        ("runner_item_on_ok", "Echo", "bad"),
        ("runner_item_on_ok", "VM result", "good"),
        ("runner_item_on_failed", "VM result", "bad"),
    ]
    echo = next(e for e in events if e["event"] == "runner_item_on_ok")
    assert echo["event_data"]["res"]["msg"] == "{{ lookup('env', 'HOME') }}"  # not templated
    failed = next(e for e in events if e["event"] == "runner_item_on_failed")
    assert failed["event_data"]["res"]["msg"] == "bad failed: boom"
    assert events[-1]["event"] == "playbook_on_stats"
    assert list(setup["runtime"].iterdir()) == [], "job directory left behind"
    assert result.artifacts is None and "PLAY RECAP" in result.stdout_tail


def test_keep_artifacts_writes_no_events(setup: dict[str, Path]) -> None:
    result, events, _ = _run(setup, keep=True)
    assert result.artifacts and Path(result.artifacts).is_dir()
    written = list(Path(result.artifacts).rglob("job_events/*.json"))
    assert events and written == [], "events hold VM data: they must not be written"
    assert stat.S_IMODE(Path(result.artifacts).stat().st_mode) == 0o700


def test_runtime_dir_open_to_others_is_refused(setup: dict[str, Path]) -> None:
    setup["runtime"].mkdir(mode=0o755)
    os.chmod(setup["runtime"], 0o755)  # noqa: S103 - the point of the test
    with pytest.raises(InvalidInput, match="not accessible to others"):
        _run(setup, keep=False)


def test_missing_inventory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        PlaybookRunner(str(tmp_path / "nope.ini"), tmp_path)
