#!/usr/bin/env python3
"""Executor figures on a private testbed: deploy pass time for N VMs, deploy → boot marker,
destroy pass time, per batch size; and the ratio of per-VM pass time to the 1-VM pass.

A private testbed (``lxbe1..H``, bridge ``lxbebr0``, 10.213.211.0/24, dir
``.cache/bench-executor-testbed``) so it never touches the shared one; a temporary SQLite
control plane (``lxcloud serve`` on the bridge); hosts registered and the test image reported
verified straight through the API (the hypervisor role and staging have their own benches); then
for each N: allocate N VMs, ``schedule --once``, ``deploy --once`` (timed), wait for every
``LXCLOUD-BOOTED`` marker, terminate all, ``deploy --once`` (destroy, timed). The testbed is torn
down at the end.

    sudo .venv/bin/python bench/executor.py [--hosts 3] [--sizes 1,3,6]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path

from lxcloud_py.api.launcher import ServeProcess

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
IMAGE_DIR = REPO / ".cache" / "test-image"
TB = {
    "LXCLOUD_TESTBED_DIR": str(REPO / ".cache" / "bench-executor-testbed"),
    "LXCLOUD_TESTBED_PREFIX": "lxbe",
    "LXCLOUD_TESTBED_BRIDGE": "lxbebr0",
    "LXCLOUD_TESTBED_NET": "10.213.211.0/24",
}
NET = "10.213.9"
IMAGE, VERSION = "benchnode", "1"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--sizes", default="1,3,6", help="batch sizes (VMs per deploy pass)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="lxcloud-bench-executor-"))
    env = dict(os.environ, **TB, ANSIBLE_NOCOLOR="1", PATH=f"{BIN}:{os.environ['PATH']}")
    tb_dir = Path(TB["LXCLOUD_TESTBED_DIR"])

    def testbed(*a: str) -> None:
        subprocess.run(["/usr/bin/python3", str(REPO / "testbed" / "testbed.py"), *a], env=env,
                       check=True, capture_output=True, text=True)

    def lxcloud(*a: str, check: bool = True) -> str:
        res = subprocess.run([str(BIN / "lxcloud"), "--db", db, *a], env=env, text=True,
                             capture_output=True)
        if check and res.returncode != 0:
            raise SystemExit(f"lxcloud {' '.join(a)}: {res.stdout[-2000:]}{res.stderr[-2000:]}")
        return res.stdout

    db = f"sqlite:///{work / 'lxcloud.db'}"
    password = secrets.token_urlsafe(12)
    session = f"oneadmin:{password}"
    server = None
    rows = []
    try:
        subprocess.run([str(REPO / "images" / "build-test-image"), str(IMAGE_DIR)], check=True,
                       capture_output=True)
        testbed("up", str(args.hosts))
        info = json.loads((tb_dir / "hosts.json").read_text())
        bridge, inventory = info["bridge_ip"], info["inventory"]
        hosts = [h["name"] for h in info["hosts"]][: args.hosts]
        lxcloud("db", "init", "--admin-password", password)
        server = ServeProcess(db, work / "serve.log", bridge).start()
        url = server.url
        api = xmlrpc.client.ServerProxy(url)

        def call(method: str, *a: object) -> object:
            fn = api
            for part in method.split("."):
                fn = getattr(fn, part)
            ok, body, *_ = fn(session, *a)
            if not ok:
                raise SystemExit(f"{method}: {body}")
            return body

        per_host = max(sizes)
        lines = ["ip,mac,name,host"]
        for h, host in enumerate(hosts, start=1):
            for n in range(per_host):
                lines.append(f"{NET}.{h * 30 + n},52:54:00:be:{h:02x}:{n:02x},"
                             f"b{h}-{n}.bench.test,{host}")
        (work / "leases.csv").write_text("\n".join(lines) + "\n")
        lxcloud("lease", "import", str(work / "leases.csv"))
        golden = IMAGE_DIR / "golden.raw"
        sha = hashlib.sha256(golden.read_bytes()).hexdigest()
        call("lxcloud.image.register", IMAGE, VERSION, sha, golden.stat().st_size, "raw", "none")
        for h in info["hosts"][: args.hosts]:
            call("lxcloud.host.register", h["name"], {"cpu": 64, "memory_mb": 65536}, [], {})
            dest = Path(h["dir"]) / "var-lib-lxcloud" / "images"
            dest.mkdir(parents=True, exist_ok=True)
            (dest.parent / "disks").mkdir(exist_ok=True)  # what the hypervisor role makes
            subprocess.run(["cp", "--sparse=always", str(golden),
                            str(dest / f"{IMAGE}-{VERSION}.raw")], check=True)
            call("lxcloud.host.image", h["name"], IMAGE, VERSION, sha, "verified")
        (work / "vars.json").write_text(json.dumps({
            "lxcloud_vm_network": "user",
            "lxcloud_vm_user_subnet": {"address": f"{NET}.0", "prefix": 24},
            "lxcloud_vm_gateway": f"{NET}.2", "lxcloud_vm_dns": f"{NET}.3",
            "lxcloud_vm_kernel": str(IMAGE_DIR / "vmlinuz"),
            "lxcloud_vm_initrd": str(IMAGE_DIR / "initrd.img"),
            "lxcloud_vm_cmdline": "console=ttyS0 root=/dev/vda rootfstype=ext4 quiet"}))
        deploy = ["--inventory", inventory, "--api-url", url,
                  "--disk-backend", "qcow2", "--runtime-dir", str(work / "rt"),
                  "-e", f"@{work / 'vars.json'}"]
        tpl = (f'CPU = 0.1\nMEMORY = 192\nDISK = [ IMAGE = "{IMAGE}" ]\nLIFETIME = 0\n')
        for n in sizes:
            ids = [int(call("one.vm.allocate", tpl, False)) for _ in range(n)]  # type: ignore
            lxcloud("schedule", "--once")
            t0 = time.monotonic()
            out = lxcloud("deploy", "--once", *deploy)
            t_deploy = time.monotonic() - t0
            running = len(re.findall(r"\bdeploy\s+RUNNING\b", out))
            pending = set(ids)
            t1 = time.monotonic()
            while pending and time.monotonic() - t1 < 180:
                for h in hosts:
                    found = subprocess.run(
                        ["ssh", "-F", str(tb_dir / "ssh_config"), h,
                         "grep -l LXCLOUD-BOOTED /var/lib/lxcloud/disks/one-*.console.log"],
                        capture_output=True, text=True).stdout
                    pending -= {int(m) for m in re.findall(r"one-(\d+)\.console", found)}
                time.sleep(0.3)
            t_markers = time.monotonic() - t1
            for i in ids:
                lxcloud("vm", "terminate", str(i))
            t2 = time.monotonic()
            out = lxcloud("deploy", "--once", *deploy)
            t_destroy = time.monotonic() - t2
            done = len(re.findall(r"\bdestroy\s+DONE\b", out))
            rows.append((n, running, t_deploy, t_markers, len(pending), done, t_destroy))
    finally:
        if server:
            server.stop()
        subprocess.run(["/usr/bin/python3", str(REPO / "testbed" / "testbed.py"), "down",
                        "--force"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0][2] / rows[0][0] if rows else 1.0
    print(f"executor on {args.hosts} testbed hosts (software emulation, qcow2 clones)")
    print(f"{'VMs':>4} {'running':>7} {'deploy s':>9} {'s/VM':>6} {'vs 1st':>6} "
          f"{'→markers s':>11} {'no marker':>9} {'done':>5} {'destroy s':>9}")
    for n, running, t_dep, t_mark, missing, done, t_des in rows:
        print(f"{n:>4} {running:>7} {t_dep:>9.1f} {t_dep / n:>6.2f} {t_dep / n / base:>6.2f} "
              f"{t_mark:>11.1f} {missing:>9} {done:>5} {t_des:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
