"""The control_plane role's files: the templates render to what their readers accept (the
systemd unit passes ``systemd-analyze verify``, supervise.json loads in lxcloud-supervise,
lxcloud.yml in lxcloud's config loader), and the argument specs match the defaults."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jinja2
import pytest
import yaml
from ansible.plugins.filter.core import combine, to_nice_json, to_nice_yaml

from lxcloud_py.config import load_config
from lxcloud_py.model import InvalidInput

ROLE = Path(__file__).resolve().parents[2] / "roles" / "control_plane"
VALUES: dict[str, Any] = {
    "ansible_managed": "Ansible managed",
    "control_plane_user": "lxcloud",
    "control_plane_group": "lxcloud",
    "control_plane_venv": "/opt/lxcloud",
    "control_plane_config_dir": "/etc/lxcloud",
    "control_plane_data_dir": "/var/lib/lxcloud",
    "control_plane_log_dir": "/var/log/lxcloud",
    "control_plane_run_dir": "/run/lxcloud",
    "control_plane_db_url": "mysql+pymysql://lxcloud:pw@db.example.org/lxcloud",
    "control_plane_admin_password": "a<b&c",
    "control_plane_listen": "0.0.0.0:2633",
    "control_plane_api_settings": {"max_threads": 16},
    "control_plane_scheduler_settings": {},
    "control_plane_service_name": "lxcloud-api",
    "control_plane_restart_backoff_initial": 1,
    "control_plane_restart_backoff_max": 60,
    "control_plane_stop_timeout": 20,
}


def render(name: str, **extra: object) -> str:
    env = jinja2.Environment(  # noqa: S701 - config files, not HTML (as Ansible renders them)
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    env.filters.update(to_nice_json=to_nice_json, to_nice_yaml=to_nice_yaml, combine=combine)
    text = (ROLE / "templates" / f"{name}.j2").read_text()
    return env.from_string(text).render(**{**VALUES, **extra})


def supervise_module() -> ModuleType:
    path = ROLE / "files" / "lxcloud-supervise"
    loader = importlib.machinery.SourceFileLoader("lxcloud_supervise", str(path))
    spec = importlib.util.spec_from_loader("lxcloud_supervise", loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_verifies(tmp_path: Path) -> None:
    unit = render("lxcloud-api.service")
    assert "EnvironmentFile=/etc/lxcloud/lxcloud.env" in unit
    assert "ExecStart=/opt/lxcloud/bin/lxcloud serve --config /etc/lxcloud/lxcloud.yml" in unit
    assert "Restart=always" in unit and "User=lxcloud" in unit
    assert "WantedBy=multi-user.target" in unit
    # verify checks that ExecStart is executable: point it at one that exists here
    lxcloud = Path(sys.executable).parent / "lxcloud"
    (tmp_path / "lxcloud-api.service").write_text(
        unit.replace("/opt/lxcloud/bin/lxcloud", str(lxcloud))
    )
    p = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "lxcloud-api.service")],
                       capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
    # ... and it would catch a broken one
    (tmp_path / "bad.service").write_text(unit.replace("Type=simple", "Type=simplex"))
    p = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "bad.service")],
                       capture_output=True, text=True, check=False)
    assert "simplex" in p.stderr


def test_supervise_json_loads_in_the_supervisor(tmp_path: Path) -> None:
    f = tmp_path / "supervise.json"
    f.write_text(render("supervise.json", control_plane_user="root"))
    conf = supervise_module().load_config(str(f))
    assert conf["command"] == ["/opt/lxcloud/bin/lxcloud", "serve", "--config",
                               "/etc/lxcloud/lxcloud.yml"]
    assert conf["user"] is None  # root: no privilege change
    assert conf["environment_file"] == "/etc/lxcloud/lxcloud.env"
    assert conf["pid_file"] == "/run/lxcloud/lxcloud-api.pid"
    assert conf["log_file"] == "/var/log/lxcloud/lxcloud-api.log"
    data = json.loads(render("supervise.json", control_plane_user="nobody"))
    assert data["user"] == "nobody"


def test_lxcloud_yml_loads_in_lxcloud(tmp_path: Path) -> None:
    f = tmp_path / "lxcloud.yml"
    f.write_text(render("lxcloud.yml"))
    conf = load_config(f)
    assert conf.section("api") == {"listen": "0.0.0.0:2633", "max_threads": 16}
    assert "scheduler" not in yaml.safe_load(f.read_text())
    f.write_text(render("lxcloud.yml", control_plane_scheduler_settings={"strategy": "striping"}))
    assert load_config(f).scheduler.strategy == "striping"
    f.write_text(render("lxcloud.yml", control_plane_scheduler_settings={"strategy": "x"}))
    with pytest.raises(InvalidInput, match="strategy"):
        load_config(f)
    assert "pw@" not in render("lxcloud.yml")  # the DB URL (a secret) is in lxcloud.env only


def test_env_file_and_api_check_body(tmp_path: Path) -> None:
    f = tmp_path / "lxcloud.env"
    f.write_text(render("lxcloud.env"))
    env = supervise_module().read_environment(str(f))  # as lxcloud-supervise reads it
    assert env["LXCLOUD_DB"] == "mysql+pymysql://lxcloud:pw@db.example.org/lxcloud"
    assert env["LXCLOUD_CONFIG"] == "/etc/lxcloud/lxcloud.yml"
    lines = [x for x in f.read_text().splitlines() if x and not x.startswith("#")]
    assert all(re.fullmatch(r"[A-Z_]+=\S+", x) for x in lines), lines  # and as systemd does
    body = render("hostpool_info.xml")
    assert "<methodName>one.hostpool.info</methodName>" in body
    assert "oneadmin:a&lt;b&amp;c" in body  # the password is XML-escaped


def test_argument_specs_match_defaults() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert set(options) - set(defaults) == {"control_plane_admin_password"}
    assert set(defaults) <= set(options)
    for name, spec in options.items():
        assert name.startswith("control_plane_"), name
        assert spec.get("description"), name
        if name in defaults:
            assert spec.get("default") == defaults[name], name
    assert options["control_plane_admin_password"]["required"] is True


def test_every_variable_the_role_uses_is_defined() -> None:
    defined = set(yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()))
    defined |= set(yaml.safe_load((ROLE / "vars" / "main.yml").read_text()))
    defined |= {"control_plane_admin_password"}
    used: set[str] = set()
    for f in [*ROLE.glob("tasks/*.yml"), *ROLE.glob("handlers/*.yml"), *ROLE.glob("templates/*")]:
        text = f.read_text()
        used |= set(re.findall(r"\bcontrol_plane_\w+", text))
        # set_fact and register define facts
        defined |= set(re.findall(r"^\s{4}(control_plane_\w+):", text, re.M))
        defined |= set(re.findall(r"register: (control_plane_\w+)", text))
    assert used - defined == set()
