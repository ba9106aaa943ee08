"""Settings: flag > env > config file > default, the source of each, errors naming the key,
the OpenNebula names mapped onto the scheduler's keys, and ``lxcloud config show``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lxcloud_py.cli import main
from lxcloud_py.config import SETTINGS, effective, load_config
from lxcloud_py.model import InvalidInput


def conf(tmp_path: Path, text: str) -> str:
    path = tmp_path / "lxcloud.yml"
    path.write_text(text)
    return str(path)


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    path = conf(tmp_path, "daemon:\n  sched_interval: 7\n  executor_interval: 8\n"
                "  pools_interval: 9\n")  # fmt: skip
    env = {"LXCLOUD_SCHED_INTERVAL": "3", "LXCLOUD_EXECUTOR_INTERVAL": "4"}
    s = effective(load_config(path), {"sched_interval": "1.5"}, env)
    assert s["daemon.sched_interval"] == 1.5
    assert s.sources["daemon.sched_interval"] == "flag --sched-interval"
    assert s["daemon.executor_interval"] == 4.0
    assert s.sources["daemon.executor_interval"] == "env LXCLOUD_EXECUTOR_INTERVAL"
    assert s["daemon.pools_interval"] == 9.0
    assert s.sources["daemon.pools_interval"] == f"file {path}"
    assert s["daemon.shutdown_timeout"] == 300.0
    assert s.sources["daemon.shutdown_timeout"] == "default"
    # An empty environment variable counts as not set.
    s = effective(load_config(path), {}, {"LXCLOUD_SCHED_INTERVAL": ""})
    assert s.sources["daemon.sched_interval"] == f"file {path}"


def test_opennebula_names_map_onto_the_scheduler_section(tmp_path: Path) -> None:
    path = conf(tmp_path, "scheduler:\n  max_placements_per_cycle: 20\n  strategy: striping\n")
    s = effective(load_config(path), {"max_host": "2"}, {"LXCLOUD_MAX_DISPATCH": "50"})
    sched = s.scheduler()
    assert (sched.max_placements_per_cycle, sched.dispatch_limit) == (50, 2)
    assert sched.strategy == "striping"  # the file's other keys stay
    assert s.source_of("scheduler", "strategy") == f"file {path}"
    assert s.source_of("scheduler", "filters") == "default"
    names = {x.onename: x.key for x in SETTINGS if x.onename}
    assert names == {
        "SCHED_INTERVAL": "daemon.sched_interval",
        "RECONCILE_INTERVAL": "daemon.reconcile_interval",
        "MAX_DISPATCH": "scheduler.max_placements_per_cycle",
        "MAX_HOST": "scheduler.dispatch_limit",
    }
    s = effective(load_config(path), {"max_dispatch": "none"}, {})
    assert s.scheduler().max_placements_per_cycle is None


@pytest.mark.parametrize(
    ("flags", "env", "text", "needle"),
    [
        ({"sched_interval": "0"}, {}, "", "daemon.sched_interval (flag --sched-interval)"),
        ({}, {"LXCLOUD_MAX_HOST": "-2"}, "", "scheduler.dispatch_limit (env LXCLOUD_MAX_HOST)"),
        ({}, {}, "daemon:\n  log_format: xml\n", "daemon.log_format (file "),
        ({}, {}, "daemon:\n  sched_intervall: 3\n", "'sched_intervall'"),
        ({}, {}, "api:\n  listen_on: x\n", "'listen_on'"),
        ({}, {}, "daemon: [1]\n", "section 'daemon' must be a mapping"),
        ({"forks": "many"}, {}, "", "executor.forks (flag --forks)"),
    ],
)
def test_bad_values_name_the_setting_and_its_source(
    tmp_path: Path, flags: dict, env: dict, text: str, needle: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        effective(load_config(conf(tmp_path, text)), flags, env)
    assert needle in str(err.value)


def test_stage_list_from_env(tmp_path: Path) -> None:
    s = effective(load_config(None), {}, {"LXCLOUD_STAGES": "api, scheduler"})
    assert s["daemon.stages"] == ["api", "scheduler"]


def test_config_show_lists_values_and_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = conf(tmp_path, "scheduler:\n  strategy: striping\nexecutor:\n  forks: 7\n"
                "  vars: {secret_password: hunter2}\n")  # fmt: skip
    monkeypatch.setenv("LXCLOUD_SCHED_INTERVAL", "2")
    assert main(["config", "show", "--config", path, "--max-dispatch", "9", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    by_key = {r["key"]: r for r in out["settings"]}
    assert by_key["daemon.sched_interval"]["source"] == "env LXCLOUD_SCHED_INTERVAL"
    assert by_key["scheduler.max_placements_per_cycle"]["value"] == 9
    assert by_key["scheduler.max_placements_per_cycle"]["source"] == "flag --max-dispatch"
    assert by_key["scheduler.strategy"] == {**by_key["scheduler.strategy"], "value": "striping",
                                            "source": f"file {path}"}  # fmt: skip
    assert by_key["executor.forks"]["value"] == 7
    assert by_key["executor.vars"]["value"] == ["secret_password"]  # names, never values
    assert main(["config", "show", "--config", path]) == 0
    text = capsys.readouterr().out
    assert "hunter2" not in text
    assert "scheduler.max_placements_per_cycle" in text and "LXCLOUD_MAX_DISPATCH" in text
    assert main(["config", "show", "--sched-interval", "-1"]) == 1
    assert "daemon.sched_interval" in capsys.readouterr().err


def test_limits_section_bounds_allocation(tmp_path: Path) -> None:
    """The `limits` section (or its flags) is what every allocation of the daemon checks."""
    from lxcloud_py import vms
    from lxcloud_py.daemon.core import apply_limits

    path = conf(tmp_path, "limits:\n  max_memory_mb: 1024\n")
    old = vms.limits()
    try:
        apply_limits(effective(load_config(path), {"max_vm_vcpu": "2"}, {}))
        with pytest.raises(InvalidInput, match="MEMORY 2048 is more than the limit 1024"):
            vms.parse_spec("MEMORY = 2048")
        with pytest.raises(InvalidInput, match="VCPU 4 is more than the limit 2"):
            vms.parse_spec("VCPU = 4")
        with pytest.raises(InvalidInput, match="limits"):
            effective(load_config(conf(tmp_path, "limits:\n  max_ram: 1\n")), {}, {})
    finally:
        vms.configure_limits(old)
