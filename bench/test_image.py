#!/usr/bin/env python3
"""The tiny test golden image: build time (cold and cached), sizes, and boot time under TCG.

Builds into a temporary directory (cold, then again: cached), prints the sizes from the
manifest, then boots it ``--boots`` times with qemu directly (TCG, the same devices libvirt
gives it: virtio disk + context ISO + user-mode NIC, serial to a file), timing process start →
boot marker on the serial console → the guest's own poweroff after its callback to a local
XML-RPC server (LIFETIME=1). No libvirt involved, so the figures are the guest's.

    .venv/bin/python bench/test_image.py [--boots 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from xmlrpc.server import SimpleXMLRPCServer

REPO = Path(__file__).resolve().parent.parent
BUILDER = REPO / "images" / "build-test-image"


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.monotonic() - t0


def boot_once(img: Path, work: Path, port: int, i: int) -> tuple[float, float, float]:
    ctx = work / f"ctx{i}"
    ctx.mkdir()
    mac = f"52:54:00:be:0c:{i:02x}"
    (ctx / "context.sh").write_text(
        f"NAME='bench-{i}'\nETH0_IP='10.0.2.50'\nETH0_MASK='255.255.255.0'\n"
        f"ETH0_GATEWAY='10.0.2.2'\nETH0_MAC='{mac}'\nLIFETIME='1'\nVMID='{i}'\n"
        f"LXCLOUD_TOKEN='bench'\nLXCLOUD_API='http://10.0.2.2:{port}/RPC2'\n"
        "DRAIN_CHECK_INTERVAL='1'\n"
    )
    iso, disk, log = work / f"ctx{i}.iso", work / f"disk{i}.qcow2", work / f"serial{i}.log"
    subprocess.run(["genisoimage", "-quiet", "-V", "CONTEXT", "-J", "-R", "-o", iso, ctx],
                   check=True)  # fmt: skip
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", img / "golden.raw",
                    "-F", "raw", disk], check=True)  # fmt: skip
    cmd = [
        "qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "192", "-nodefaults",
        "-display", "none", "-no-reboot", "-serial", f"file:{log}",
        "-kernel", img / "vmlinuz", "-initrd", img / "initrd.img",
        "-append", "console=ttyS0 root=/dev/vda rootfstype=ext4 quiet",
        "-drive", f"file={disk},if=virtio,format=qcow2",
        "-drive", f"file={iso},if=virtio,format=raw,readonly=on",
        "-netdev", "user,id=n0", "-device", f"virtio-net-pci,netdev=n0,mac={mac}",
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen([str(c) for c in cmd])
    marker = None
    while proc.poll() is None and time.monotonic() - t0 < 120:
        if marker is None and log.exists() and "LXCLOUD-BOOTED" in log.read_text(errors="replace"):
            marker = time.monotonic() - t0
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        raise SystemExit(f"boot {i} did not power off within 120 s:\n{log.read_text()}")
    total = time.monotonic() - t0
    text = log.read_text(errors="replace")
    uptime = float(text.split("LXCLOUD-BOOTED", 1)[1].split("uptime=", 1)[1].split()[0])
    return marker or total, uptime, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boots", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lxbench-image-"))
    calls: list[object] = []
    srv = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False)
    srv.register_function(lambda s, a, i: calls.append((s, a, i)) or [True, i, 0], "one.vm.action")
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        out = work / "img"
        cold = timed([str(BUILDER), str(out)])
        cached = timed([str(BUILDER), str(out)])
        m = json.loads((out / "manifest.json").read_text())
        print(f"build: cold {cold:.2f} s, cached {cached * 1000:.0f} ms "
              f"(ratio {cold / cached:.0f}x)")  # fmt: skip
        for f, meta in m["files"].items():
            print(f"  {f:<11} {meta['size'] / 2**20:7.2f} MiB  sha256 {meta['sha256'][:16]}...")
        gz = (out / "golden.raw").stat().st_blocks * 512
        print(f"  golden.raw allocated on disk {gz / 2**20:.2f} MiB; kernel {m['kernel_version']}")
        runs = [boot_once(out, work, srv.server_address[1], i) for i in range(args.boots)]
        mk = [r[0] for r in runs]
        up = [r[1] for r in runs]
        tot = [r[2] for r in runs]
        print(f"boot (qemu TCG, {args.boots} runs): process start -> marker median "
              f"{statistics.median(mk):.2f} s (min {min(mk):.2f}, max {max(mk):.2f}); "
              f"guest uptime at marker median {statistics.median(up):.2f} s")  # fmt: skip
        print(f"  start -> callback -> poweroff (LIFETIME=1) median {statistics.median(tot):.2f} s;"
              f" callbacks received {len(calls)}/{args.boots}")  # fmt: skip
    finally:
        srv.shutdown()
        srv.server_close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
