"""Boot-time registration files of the hypervisor role: systemd units and the LSB init script.

This machine has no systemd as PID 1, but ``systemd-analyze verify`` checks unit files
offline; the init script runs under ``sh``.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import jinja2
import pytest

ROLE = Path(__file__).resolve().parents[2] / "roles" / "hypervisor"
SCRIPT = ROLE / "files" / "lxcloud-register"
UNITS = ("lxcloud-register.service", "lxcloud-heartbeat.service", "lxcloud-heartbeat.timer")


def render(name: str, **extra: object) -> str:
    text = (ROLE / "templates" / f"{name}.j2").read_text()
    values = {"ansible_managed": "Ansible managed", "hypervisor_heartbeat_minutes": 5, **extra}
    return jinja2.Template(text, undefined=jinja2.StrictUndefined).render(**values)


def test_units_say_what_the_issue_asks():
    reg = render("lxcloud-register.service")
    assert "Type=oneshot" in reg
    assert "After=network-online.target libvirtd.service" in reg
    assert "WantedBy=multi-user.target" in reg
    assert "ExecStart=/usr/local/sbin/lxcloud-register --boot" in reg
    assert "OnUnitActiveSec=5min" in render("lxcloud-heartbeat.timer")
    assert "--heartbeat" in render("lxcloud-heartbeat.service")
    cron = render("lxcloud-heartbeat.cron")
    assert "*/5 * * * * root" in cron and "--heartbeat" in cron


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_units_verify(tmp_path):
    # The script's installed path may not exist on this machine: point at the repository's copy
    # (verify checks that ExecStart is executable).
    for name in UNITS:
        text = render(name).replace("/usr/local/sbin/lxcloud-register", str(SCRIPT))
        (tmp_path / name).write_text(text)
    p = subprocess.run(
        ["systemd-analyze", "verify", *[str(tmp_path / n) for n in UNITS]],
        capture_output=True, text=True, check=False,
    )
    assert p.returncode == 0, p.stderr
    # And verify does catch a broken unit.
    (tmp_path / "bad.service").write_text(render(UNITS[0]).replace("oneshot", "oneshotx"))
    p = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "bad.service")],
                       capture_output=True, text=True, check=False)
    assert "oneshotx" in p.stderr


def test_init_script_lsb_header_and_actions(tmp_path):
    init = ROLE / "files" / "lxcloud-register.init"
    text = init.read_text()
    assert "### BEGIN INIT INFO" in text and "### END INIT INFO" in text
    assert "# Provides:          lxcloud-register" in text
    assert "# Default-Start:     2 3 4 5" in text
    assert "$network" in text
    assert subprocess.run(["sh", "-n", str(init)], check=False).returncode == 0
    for f in (init, SCRIPT):
        assert os.stat(f).st_mode & stat.S_IXUSR, f"{f} must be executable in the repository"
    p = subprocess.run(["sh", str(init), "bogus"], capture_output=True, text=True, check=False)
    assert p.returncode == 3 and "Usage" in p.stderr
