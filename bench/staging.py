#!/usr/bin/env python3
"""Golden image distribution benchmark: every strategy, side by side, on one shaped testbed.

N namespace hosts (a private testbed: prefix ``lxs``, bridge ``lxsbr0``, 10.213.202.0/24, so the
shared one is not disturbed), every host link shaped to the same rate B both ways
(``testbed up N --rate B``, tbf), an incompressible "compressed image" of S MiB in a repository
on the control-plane side.  For each strategy: wall time from the start of the run (the relays
started by the playbook lxcloud.cloud.stage_image through the runner adapter included) until
100% of the hosts hold the image with its sha256 verified on the host, and its ratio to S/B,
the time one link needs for the image.  Target: chain <= 1.25.

    .venv/bin/python bench/staging.py [--hosts 16] [--rate 100mbit] [--size-mib 128]
                                      [--strategies chain,torrent,wave,sequential] [--keep]

Needs root (the testbed).  Takes a few minutes (sequential alone is about N x S/B).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lxcloud_py.staging import load_inventory, stage  # noqa: E402
from lxcloud_py.staging.hosts import RepoImage  # noqa: E402
from lxcloud_py.table import render  # noqa: E402

TESTBED = REPO / "testbed" / "testbed.py"
MiB = 1 << 20
ENV = {
    "LXCLOUD_TESTBED_DIR": str(REPO / ".cache" / "bench-staging-testbed"),
    "LXCLOUD_TESTBED_PREFIX": "lxs",
    "LXCLOUD_TESTBED_BRIDGE": "lxsbr0",
    "LXCLOUD_TESTBED_NET": "10.213.202.0/24",
}
RATE_FACTORS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


def testbed(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/bin/python3", str(TESTBED), *args], capture_output=True,
                          text=True, env={**os.environ, **ENV}, check=False)


def rate_bits(rate: str) -> float:
    for unit, f in RATE_FACTORS.items():
        if rate.endswith(unit):
            return float(rate[: -len(unit)]) * f
    raise SystemExit(f"rate must end in kbit/mbit/gbit: {rate}")


def make_image(size: int, workdir: Path) -> RepoImage:
    """Random bytes: incompressible, so S is what crosses every link."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "bench-1.raw.zst"
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            b = os.urandom(min(left, 4 * MiB))
            h.update(b)
            fh.write(b)
            left -= len(b)
    return RepoImage("bench", "1", h.hexdigest(), size, size, "raw", "zstd", path)


def clean_hosts(inventory: Path, hosts: list[str]) -> None:
    for h in hosts:
        subprocess.run(["ssh", "-F", str(Path(ENV["LXCLOUD_TESTBED_DIR"]) / "ssh_config"), h,
                        "rm -rf /var/lib/lxcloud/images/incoming"], check=False,
                       capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--rate", default="25mbit")
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--strategies", default="chain,torrent,wave,sequential")
    ap.add_argument("--keep", action="store_true", help="leave the bench testbed up")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--quiet", action="store_true", help="no live progress lines")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/staging.py needs root (network namespaces)", file=sys.stderr)
        return 2

    t = time.monotonic()
    up = testbed("up", str(args.hosts), "--rate", args.rate)
    if up.returncode != 0:
        print(up.stdout + up.stderr, file=sys.stderr)
        return 1
    print(f"testbed: {args.hosts} hosts, every link {args.rate} both ways "
          f"(up in {time.monotonic() - t:.0f}s)")
    size = args.size_mib * MiB
    workdir = REPO / ".cache" / "bench-staging-repo"
    image = make_image(size, workdir)
    inventory = Path(ENV["LXCLOUD_TESTBED_DIR"]) / "inventory.ini"
    hosts = load_inventory(str(inventory))[: args.hosts]
    link_s = size * 8 / rate_bits(args.rate)
    print(f"image: {args.size_mib} MiB; S/B = {link_s:.1f}s at {args.rate}")
    results = []
    try:
        for strategy in [s for s in args.strategies.split(",") if s]:
            clean_hosts(inventory, [h.name for h in hosts])
            print(f"\n== {strategy}", flush=True)
            progress = stage(image, hosts, strategy, inventory=str(inventory),
                             out=None if args.quiet else sys.stdout,
                             deadline=max(600.0, 3 * args.hosts * link_s))
            rows = progress.rows()
            ok = [r for r in rows if r["state"] == "verified"]
            wall = max((r["seconds"] or 0.0) for r in rows)
            first = min((r["seconds"] for r in ok), default=None)
            byte0 = min((r["first_byte"] for r in rows if r["first_byte"] is not None),
                        default=None)
            results.append({"strategy": strategy, "verified": len(ok), "hosts": len(rows),
                            "wall_s": wall, "first_s": first, "ratio": wall / link_s,
                            "first_byte_s": byte0})
            print(progress.table())
    finally:
        clean_hosts(inventory, [h.name for h in hosts])
        image.path.unlink(missing_ok=True)
        if not args.keep:
            down = testbed("down")
            if down.returncode != 0:
                print(down.stdout + down.stderr, file=sys.stderr)

    print(f"\nImage distribution: N={args.hosts} hosts, S={args.size_mib} MiB, "
          f"B={args.rate} per host link (both ways), S/B={link_s:.1f}s")
    print(render(
        ["strategy", "verified", "wall s", "x S/B", "first host s", "first byte s",
         "after first byte x S/B"],
        [[r["strategy"], f"{r['verified']}/{r['hosts']}", f"{r['wall_s']:.1f}",
          f"{r['ratio']:.2f}x", "-" if r["first_s"] is None else f"{r['first_s']:.1f}",
          "-" if r["first_byte_s"] is None else f"{r['first_byte_s']:.1f}",
          "-" if r["first_byte_s"] is None
          else f"{(r['wall_s'] - r['first_byte_s']) / link_s:.2f}x"]
         for r in results]))
    print("wall: from the start of the run (relays started through Ansible included) until "
          "every host holds the image, sha256 verified on the host; first byte: when the first "
          "host got its first bytes (Ansible/relay/tracker start-up before that)")
    chain = next((r for r in results if r["strategy"] == "chain"), None)
    if chain:
        verdict = "meets" if chain["ratio"] <= 1.25 and chain["verified"] == chain["hosts"] \
            else "misses"
        print(f"chain: {chain['ratio']:.2f} x S/B ({verdict} the 1.25 x S/B target)")
    if args.json:
        Path(args.json).write_text(json.dumps({"hosts": args.hosts, "rate": args.rate,
                                               "size_mib": args.size_mib, "s_over_b": link_s,
                                               "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
