#!/usr/bin/env python3
"""Time playbooks/hypervisors.yml on testbed hosts: first run, second (no-change) run, ratio.

    .venv/bin/python bench/hypervisor_playbook.py [--hosts lxh1,lxh2,lxh3] [--fresh]

Needs a running testbed (``testbed/up N``). Starts a throw-away control plane (temporary
SQLite, ``lxcloud serve`` on the testbed bridge) and stops it at the end. ``--fresh`` first
removes what the role installed (per host: api.conf, host.conf, leases.csv, logs; shared by
all testbed hosts: the script, its library, the init script and its links, the cron entry),
so the first run installs everything; do not use it while other tests use the testbed.
Prints seconds per run and the ratio; no asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lxcloud_py.api.launcher import ServeProcess

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARED = [
    "/usr/local/sbin/lxcloud-register",
    "/usr/local/lib/lxcloud",
    "/etc/init.d/lxcloud-register",
    "/etc/cron.d/lxcloud-heartbeat",
]
PER_HOST = [
    "/etc/lxcloud/api.conf",
    "/etc/lxcloud/host.conf",
    "/etc/lxcloud/leases.csv",
    "/var/log/lxcloud/register.log",
    "/var/log/lxcloud/heartbeat.log",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", default="lxh1,lxh2,lxh3")
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args()
    hosts = args.hosts.split(",")
    tb = json.loads((REPO / ".testbed" / "hosts.json").read_text())
    ssh_config = tb["ssh_config"]
    bridge = tb["bridge_ip"]

    if args.fresh:
        for path in SHARED:
            subprocess.run(["rm", "-rf", "--", path], check=True)
        for rc in Path("/etc").glob("rc?.d/[SK][0-9][0-9]lxcloud-register"):
            rc.unlink()
        for h in hosts:
            subprocess.run(["ssh", "-F", ssh_config, h, "--", "rm", "-rf", "--", *PER_HOST],
                           check=True)

    work = Path(tempfile.mkdtemp(prefix="lxcloud-bench-"))
    db = f"sqlite:///{work / 'lxcloud.db'}"
    pw = secrets.token_urlsafe(12)
    subprocess.run([BIN / "lxcloud", "--db", db, "db", "init", "--admin-password", pw],
                   check=True, capture_output=True)
    serve = ServeProcess(db, work / "serve.log", bridge).start()
    try:
        extra = work / "vars.json"
        extra.write_text(json.dumps({"hypervisor_api_url": serve.url,
                                     "hypervisor_api_session": f"oneadmin:{pw}",
                                     "hypervisor_apt_update_cache": False}))
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
        times = []
        for run in ("first", "second"):
            t0 = time.monotonic()
            p = subprocess.run(
                [BIN / "ansible-playbook", "-i", tb["inventory"], "--limit", ",".join(hosts),
                 "-e", f"@{extra}", str(REPO / "playbooks" / "hypervisors.yml")],
                capture_output=True, text=True, env=env, check=False,
            )
            times.append(time.monotonic() - t0)
            changed = sum(int(x) for x in re.findall(r"changed=(\d+)", p.stdout))
            print(f"{run:6s} run: {times[-1]:6.1f} s  rc={p.returncode}  changed={changed}"
                  f"  ({len(hosts)} hosts)")
            if p.returncode != 0:
                print(p.stdout[-3000:])
                return 1
        print(f"second/first: {times[1] / times[0]:.2f}")
        with open("/proc/loadavg") as fh:
            print(f"load average: {fh.read().split()[0]} on {os.cpu_count()} CPUs")
    finally:
        serve.stop()
        subprocess.run(["rm", "-rf", "--", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
