"""``lxcloud deploy``: the executor's passes (destroy what is in SHUTDOWN, deploy what is in
PROLOG), once or in a loop, with progress lines and a result table per pass.

Settings come from the ``executor`` section of the config file (see
:class:`lxcloud_py.executor.ExecutorConfig`), overridden by the options.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import yaml

from lxcloud_py.config import load_config
from lxcloud_py.executor import DISK_BACKENDS, Executor, ExecutorConfig, Outcome
from lxcloud_py.model import InvalidInput
from lxcloud_py.store import Store
from lxcloud_py.table import render


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "deploy",
        help="executor: destroy VMs asked to terminate, deploy placed VMs (playbooks)",
        description="One executor pass: vm_destroy.yml for the VMs in ACTIVE/SHUTDOWN (they "
        "become DONE, their leases free), then vm_deploy.yml once for every VM in ACTIVE/PROLOG "
        "(RUNNING, or PROLOG_FAILURE/BOOT_FAILURE with the error). Without --once, a pass "
        "every --interval seconds.",
    )
    p.add_argument("--once", action="store_true", help="one pass and exit")
    p.add_argument("--inventory", "-i", help="Ansible inventory of the hypervisors")
    p.add_argument(
        "--api-url",
        default=os.environ.get("LXCLOUD_API_URL") or None,
        help="the API URL as the guests reach it (context LXCLOUD_API; default "
        "$LXCLOUD_API_URL, else executor.api_url)",
    )
    p.add_argument("--config", metavar="FILE", help="control-plane config (YAML)")
    p.add_argument("--forks", type=int, help="ansible forks (default 50)")
    p.add_argument("--timeout", type=int, help="seconds per playbook run")
    p.add_argument("--disk-backend", choices=DISK_BACKENDS, help="clone backend for VM disks")
    p.add_argument("--runtime-dir", help="where job directories are made (mode 0700)")
    p.add_argument(
        "--keep-artifacts",
        action="store_true",
        default=None,
        help="keep each job's directory (holds callback tokens; owner-only)",
    )
    p.add_argument(
        "-e",
        "--extra-vars",
        action="append",
        default=[],
        metavar="KEY=VALUE|@FILE",
        help="playbook variable for every run (JSON value or string), or @FILE (YAML mapping)",
    )
    p.add_argument("--interval", type=float, default=10.0, help="seconds between passes")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_deploy)


def parse_extra_vars(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if item.startswith("@"):
            try:
                data = yaml.safe_load(Path(item[1:]).read_text())
            except (OSError, yaml.YAMLError) as exc:
                raise InvalidInput(f"--extra-vars {item}: {exc}") from exc
            if not isinstance(data, dict):
                raise InvalidInput(f"--extra-vars {item}: not a mapping")
            out.update(data)
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise InvalidInput(f"--extra-vars {item!r}: use KEY=VALUE or @FILE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def format_outcomes(outcomes: list[Outcome]) -> str:
    rows = [
        [o.vm_id, o.name, o.host, o.action, o.result, f"{o.seconds:.1f}"] for o in outcomes
    ]
    lines = [render(["vm", "name", "host", "action", "result", "seconds"], rows)]
    lines += [f"  VM {o.vm_id}: {o.message}" for o in outcomes if not o.ok and o.message]
    return "\n".join(lines)


def cmd_deploy(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    base = ExecutorConfig.from_config(
        config,
        inventory=args.inventory,
        api_url=args.api_url,
        forks=args.forks,
        timeout=args.timeout,
        disk_backend=args.disk_backend,
        runtime_dir=args.runtime_dir,
        keep_artifacts=args.keep_artifacts,
    )
    extra = parse_extra_vars(args.extra_vars)
    if extra:
        base.vars = {**base.vars, **extra}
        base.validate()
    store = Store(args.db)

    def say(line: str) -> None:
        if not args.quiet:
            print(line, flush=True)

    executor = Executor(store, base, progress=say)
    stop = {"flag": False}

    def on_signal(signum: int, frame: Any) -> None:
        stop["flag"] = True
        executor.runner.cancel()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    failed = False
    try:
        while True:
            t0 = time.monotonic()
            outcomes = executor.reconcile_once()
            if outcomes:
                print(format_outcomes(outcomes), flush=True)
            failed = any(not o.ok and o.result != "unchanged" for o in outcomes)
            n_ok = sum(o.ok for o in outcomes)
            print(
                f"pass: {len(outcomes)} VM(s), {n_ok} ok, {len(outcomes) - n_ok} not, "
                f"in {time.monotonic() - t0:.1f} s",
                flush=True,
            )
            if args.once or stop["flag"]:
                break
            deadline = time.monotonic() + max(0.1, args.interval)
            while not stop["flag"] and time.monotonic() < deadline:
                time.sleep(0.1)
            if stop["flag"]:
                break
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        store.dispose()
    if stop["flag"] and not args.once:
        return 0
    return 1 if failed else 0

