#!/usr/bin/env python3
"""Testbed figures: time of up/down, memory per host, ansible ping over real SSH.

Runs on a private testbed (own directory, host prefix ``lxb``, bridge ``lxbbr0``, net
``10.213.203.0/24``) so the shared one (lxh*) is not touched. Needs root. Prints figures and
ratios only, no asserts. Usage: ``sudo .venv/bin/python bench/testbed.py [--hosts 16]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTBED = [sys.executable, str(REPO / "testbed" / "testbed.py")]
ANSIBLE = str(REPO / ".venv" / "bin" / "ansible")


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=16, help="size of the big testbed (16)")
    args = ap.parse_args()
    tb_dir = REPO / ".testbed" / f"bench-{os.getpid()}"
    env = {
        **os.environ,
        "LXCLOUD_TESTBED_DIR": str(tb_dir),
        "LXCLOUD_TESTBED_PREFIX": "lxb",
        "LXCLOUD_TESTBED_BRIDGE": "lxbbr0",
        "LXCLOUD_TESTBED_NET": "10.213.203.0/24",
    }
    ansible_env = {**env, "ANSIBLE_CONFIG": str(tb_dir / "ansible.cfg"),
                   "ANSIBLE_DEPRECATION_WARNINGS": "False"}
    rows: list[tuple[str, float]] = []
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    try:
        rows.append(("up 3 (cold: new dir, probes qemu once)", timed([*TESTBED, "up", "3"], env)))
        rows.append(("up 3 again (no-op)", timed([*TESTBED, "up", "3"], env)))
        rows.append(("ansible ping 3 hosts (new ssh connections)",
                     timed([ANSIBLE, "hypervisors", "-m", "ping"], ansible_env)))
        rows.append((f"up {args.hosts} (grow 3 -> {args.hosts})",
                     timed([*TESTBED, "up", str(args.hosts)], env)))
        rows.append((f"ansible ping {args.hosts} hosts (new ssh connections)",
                     timed([ANSIBLE, "hypervisors", "-m", "ping"], ansible_env)))
        rows.append((f"ansible ping {args.hosts} hosts (again)",
                     timed([ANSIBLE, "hypervisors", "-m", "ping"], ansible_env)))
        status = json.loads(subprocess.run([*TESTBED, "status", "--json"], env=env,
                                           capture_output=True, text=True).stdout)
        rss = [h["rss_kib"] / 1024 for h in status["hosts"]]
        pss = [h["pss_kib"] / 1024 for h in status["hosts"]]
        rows.append((f"down ({args.hosts} hosts)", timed([*TESTBED, "down"], env)))
        # down keeps the key and the qemu probe result, as on the shared testbed
        rows.append((f"up {args.hosts} (from nothing, probe cached)",
                     timed([*TESTBED, "up", str(args.hosts)], env)))
        rows.append((f"down ({args.hosts} hosts, again)", timed([*TESTBED, "down"], env)))
    finally:
        subprocess.run([*TESTBED, "down", "--purge"], env=env, capture_output=True)
        shutil.rmtree(tb_dir, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    for name, secs in rows:
        print(f"{name:<{width}}  {secs:6.2f} s")
    print(f"memory per idle host (sshd + virtlogd + libvirtd), {len(rss)} hosts: "
          f"PSS mean {sum(pss) / len(pss):.1f} MiB (max {max(pss):.1f}), "
          f"RSS mean {sum(rss) / len(rss):.1f} MiB (shared libraries counted per process)")
    ping3 = next(s for n, s in rows if n.startswith("ansible ping 3"))
    ping_n = next(s for n, s in rows if n.startswith(f"ansible ping {args.hosts} hosts (new"))
    print(f"ratio ansible ping {args.hosts}/3 hosts: {ping_n / ping3:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
