"""``lxcloud image``: list the image repository, stage an image onto every hypervisor."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from lxcloud_py.runner import PlaybookRunner, playbook
from lxcloud_py.staging import STRATEGIES, find_image, list_repo, load_inventory, stage
from lxcloud_py.staging.hosts import DEFAULT_REPO_DIR
from lxcloud_py.table import render

MB = 1_000_000


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("image", help="golden images: list the repository, stage to hosts")
    sub = p.add_subparsers(dest="image_command", metavar="ACTION", required=True)

    ls = sub.add_parser("list", help="images in the repository")
    ls.add_argument("--repo", default=DEFAULT_REPO_DIR,
                    help="image repository directory (default $LXCLOUD_REPO or %(default)s)")
    ls.set_defaults(func=cmd_list)

    st = sub.add_parser(
        "stage",
        help="distribute an image to every host of an inventory, verify it there, install it",
        description="Distribute the compressed image to every host (live progress per host), "
        "verify its sha256 on each host, then install it with the lxcloud.cloud.image module "
        "(the install play of the playbook lxcloud.cloud.stage_image, whose relay play receives "
        "the image on the hosts). Ends with a table: host, time, rate, "
        "checksum verdict. Exit code 1 if any host does not hold the verified image.",
    )
    st.add_argument("name")
    st.add_argument("--version", help="image version (default: the latest captured)")
    st.add_argument("--strategy", choices=sorted(STRATEGIES), default="chain")
    st.add_argument("--inventory", "-i", required=True, help="Ansible inventory of the hosts")
    st.add_argument("--group", help="inventory group (default: hypervisors, else all hosts)")
    st.add_argument("--limit", help="comma-separated host names")
    st.add_argument("--repo", default=DEFAULT_REPO_DIR,
                    help="image repository directory (default $LXCLOUD_REPO or %(default)s)")
    st.add_argument("--timeout", type=float, default=10.0,
                    help="seconds of silence after which a host counts as dead (chain)")
    st.add_argument("--deadline", type=float, default=3600.0, help="give up after S seconds")
    st.add_argument("--port", type=int, default=7420, help="TCP port of the chain relays")
    st.add_argument("--peer-key", help="ssh key hosts use to reach each other (wave; default: "
                    "the inventory's key, which must then exist on the hosts)")
    st.add_argument("--repo-address", help="address hosts reach the repository/tracker at "
                    "(torrent; default: this machine's address towards the first host)")
    st.add_argument("--no-install", dest="install", action="store_false",
                    help="only distribute and verify; leave the file in IMAGE_DIR/incoming/")
    st.add_argument("--api-url", default=os.environ.get("LXCLOUD_API_URL"),
                    help="report installed images to this control plane ($LXCLOUD_API_URL; "
                    "default: the inventory's hypervisor_api_url)")
    st.add_argument("--no-report", dest="report", action="store_false",
                    help="do not report installed images to the control plane")
    st.add_argument("--json", metavar="FILE", help="also write the per-host results as JSON")
    st.add_argument("--quiet", "-q", action="store_true", help="no live progress")
    st.set_defaults(func=cmd_stage)


def cmd_list(args: argparse.Namespace) -> int:
    rows = [
        [i.name, i.version, i.format, i.compression, f"{i.size / MB:.1f}",
         f"{i.compressed_size / MB:.1f}", i.sha256[:16], i.meta.get("captured_at", "")]
        for i in list_repo(args.repo)
    ]
    print(render(["name", "version", "format", "compression", "size MB", "compressed MB",
                  "sha256", "captured"], rows))
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    image = find_image(args.repo, args.name, args.version)
    limit = [h for h in (args.limit or "").split(",") if h] or None
    hosts = load_inventory(args.inventory, args.group, limit)
    print(f"staging {image.name} {image.version} ({image.compressed_size / MB:.1f} MB "
          f"{image.compression}, sha256 {image.sha256[:16]}...) to {len(hosts)} host(s) "
          f"with {args.strategy}", flush=True)
    progress = stage(image, hosts, args.strategy, inventory=args.inventory,
                     out=None if args.quiet else sys.stdout, timeout=args.timeout,
                     deadline=args.deadline, port=args.port,
                     peer_key=args.peer_key, repo_address=args.repo_address)
    wall = max((r["seconds"] or 0) for r in progress.rows())
    rows = progress.rows()
    verified = [r["host"] for r in rows if r["state"] == "verified"]
    print()
    print(progress.table())
    print(f"\n{len(verified)}/{len(rows)} hosts hold the verified image after {wall:.1f}s "
          f"({args.strategy})")
    installed_ok = True
    if args.install and verified:
        installed_ok = install(args, image.name, image.version, verified, len(hosts))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"image": {"name": image.name, "version": image.version, "sha256": image.sha256,
                       "compressed_size": image.compressed_size},
             "strategy": args.strategy, "wall_seconds": wall, "hosts": rows}, indent=2) + "\n")
    return 0 if len(verified) == len(rows) and installed_ok else 1


def install(args: argparse.Namespace, name: str, version: str, hosts: list[str],
            forks: int) -> bool:
    """The install play of lxcloud.cloud.stage_image (module lxcloud.cloud.image) on ``hosts``,
    through the runner adapter; per-host results from its event stream."""
    variables = {"image_name": name, "image_version": version,
                 "image_repo": str(Path(args.repo).resolve()),
                 "stage_hosts": args.group or "all",
                 **({"hypervisor_api_url": args.api_url} if args.api_url else {}),
                 **({} if args.report else {"stage_report": False})}
    errors: dict[str, str] = {}

    def on_event(ev: dict[str, Any]) -> None:
        data = ev.get("event_data") or {}
        if ev.get("event") in ("runner_on_failed", "runner_on_unreachable"):
            errors[str(data.get("host"))] = str((data.get("res") or {}).get("msg", ""))[:300]

    print(f"installing on {len(hosts)} host(s): lxcloud.cloud.stage_image --tags install",
          flush=True)
    runner = PlaybookRunner(args.inventory, forks=max(50, forks))
    result = runner.run(playbook("stage_image"), variables, on_event=on_event, limit=hosts,
                        tags=["install"])
    rows = []
    for h in hosts:
        st = result.hosts.get(h)
        state = "missing" if st is None else "failed" if st.failed else \
            "changed" if st.changed else "ok"
        rows.append([h, state, errors.get(h, "")])
    print(render(["host", "install", "note"], rows))
    bad = [r for r in rows if r[1] in ("failed", "missing")]
    if not result.ok or bad:
        print(f"install: {result.status} (rc {result.rc}); {len(bad)} host(s) failed"
              + (f"; runner artifacts kept in {result.artifacts}" if result.artifacts else ""),
              file=sys.stderr)
        return False
    return True
