"""The ansible-runner adapter with the real ansible-runner and ansible-playbook on localhost
(connection local, no daemons): events arrive in order in the caller's thread, the job
directory is owner-only with the vars file 0600 while the job runs, no event is written to disk,
strings of the VM list are passed on untemplated, per-host results come from the stats event,
the vars file never outlives the job, a failed job's directory is kept (the newest N), a
successful one removed; the collection's playbooks run by FQCN."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from lxcloud_py.model import InvalidInput
from lxcloud_py.runner import PlaybookRunner, playbook

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


def _run(setup: dict[str, Path], keep: bool, keep_failed: int = 20,
         book: str = "fake.yml") -> tuple[Any, list[dict], list[dict]]:
    runner = PlaybookRunner(str(setup["inv"]), setup["runtime"], forks=5, keep_artifacts=keep,
                            keep_failed=keep_failed)
    events: list[dict] = []
    seen: list[dict] = []

    def on_event(ev: dict) -> None:
        if not seen:  # while the job runs: what is on disk?
            jobs = [p for p in setup["runtime"].iterdir() if p.name.startswith("job-")]
            seen.append({
                "jobs": jobs,
                "runtime_mode": stat.S_IMODE(setup["runtime"].stat().st_mode),
                "job_mode": stat.S_IMODE(jobs[0].stat().st_mode),
                "vars_mode": stat.S_IMODE((jobs[0] / "vars.yml").stat().st_mode),
            })
        events.append(ev)

    vms = [{"name": "good", "note": "{{ lookup('env', 'HOME') }}", "host": "local1"},
           {"name": "bad", "note": "plain", "host": "local1"}]
    result = runner.run(str(setup["books"] / book), {"greeting": "boom"}, {"lxcloud_vms": vms},
                        on_event, limit=["local1"])
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
    assert result.hosts["local1"].failures == 1 and result.hosts["local1"].ok == 1  # Echo
    assert result.hosts["local1"].failed and not result.ok
    assert "PLAY RECAP" in result.stdout_tail
    # the failed job is kept for a look, without its vars file (it holds the secrets)
    kept = Path(result.artifacts)
    assert kept.parent == setup["runtime"] and kept.name.startswith("failed-job-")
    assert not (kept / "vars.yml").exists()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o700
    assert list(setup["runtime"].iterdir()) == [kept]


def test_successful_job_leaves_nothing(setup: dict[str, Path]) -> None:
    (setup["books"] / "ok.yml").write_text(PLAYBOOK.replace("vm.name != 'bad'", "true"))
    result, _, _ = _run(setup, keep=False, book="ok.yml")
    assert result.ok and result.artifacts is None
    assert result.hosts["local1"].failures == 0
    assert list(setup["runtime"].iterdir()) == [], "job directory left behind"


def test_only_the_newest_failed_jobs_are_kept(setup: dict[str, Path]) -> None:
    firsts = [_run(setup, keep=False, keep_failed=2)[0].artifacts for _ in range(3)]
    left = sorted(p.name for p in setup["runtime"].iterdir())
    assert left == sorted(Path(a).name for a in firsts[1:])


def test_collection_playbook_by_fqcn(setup: dict[str, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """lxcloud.cloud.vm_destroy with no VMs: found by FQCN (not through this checkout), runs
    from an empty private project dir, changes nothing."""
    monkeypatch.delenv("ANSIBLE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    runner = PlaybookRunner(str(setup["inv"]), setup["runtime"], forks=5)
    result = runner.run(playbook("vm_destroy"), {}, {"lxcloud_vms": []})
    assert result.ok, result.stdout_tail
    assert result.hosts["local1"].changed == 0 and not result.hosts["local1"].failed


def test_bad_playbook_names_are_refused(setup: dict[str, Path]) -> None:
    runner = PlaybookRunner(str(setup["inv"]), setup["runtime"])
    for bad in ("fake.yml", "../x", "lxcloud.cloud", "a.b.c d"):
        with pytest.raises(InvalidInput):
            runner.run(bad, {})
    with pytest.raises(InvalidInput):
        playbook("vm_deploy.yml")


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


def test_a_source_tree_is_no_inventory(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    with pytest.raises(InvalidInput, match="source tree"):
        PlaybookRunner(str(tmp_path), tmp_path / "rt")
