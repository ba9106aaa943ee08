#!/usr/bin/python3
"""The lxcloud testbed: N hypervisor hosts on this one machine.

Each host ``lxhI`` is a network namespace on a veth attached to the bridge ``lxbr0`` in the root
namespace, plus a private mount and UTS namespace (hostname = host name) in which it has its own
``/run``, ``/tmp``, ``/root``, ``/etc/libvirt``, ``/var/lib/libvirt``, ``/var/lib/lxcloud`` ...
(bind mounts of per-host directories under the testbed directory) and no ``/dev/kvm``. In there run
the host's own sshd (root login with the testbed's key only) and its own virtlogd and libvirtd, so
``virsh -c qemu:///system`` over SSH on one host sees only that host's domains.

Commands (run as root; stdlib only)::

    testbed.py up N [--rate RATE|off]   create hosts lxh1..lxhN (re-runnable; grows, repairs)
    testbed.py down [--purge]           remove everything (namespaces, processes, links, dirs)
    testbed.py status [--json]          table: host, IP, sshd pid, libvirtd, shaped rate
    testbed.py shape RATE|off           change link shaping of a running testbed
    testbed.py ssh HOST [CMD...]        ssh to a host with the testbed's key and config

Environment: ``LXCLOUD_TESTBED_DIR`` (state; default ``<repo>/.testbed``) and
``LXCLOUD_TESTBED_NET`` (default ``10.213.0.0/24``: bridge ``.1``, host I ``.(10+I)``).

This file holds the operations and the command line; the parts they use are in ``lxtb/`` beside
it (layout, generated files, network, processes, daemons, what runs inside a host).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import socket
import sys
from pathlib import Path

# The parts live in testbed/lxtb/; this file is run as a script and loaded by path (tests).
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from lxtb.base import (
    TestbedError,
    list_netns,
    log,
    parse_rate,
    preflight,
    run,
)
from lxtb.daemons import (
    caps_template,
    ensure_binds,
    ensure_libvirtd,
    ensure_sshd,
    wait_libvirtd,
    wait_sshd,
    warm_caps,
)
from lxtb.files import (
    ensure_host_dirs,
    ensure_keys,
    write_client_files,
    write_etc_hosts,
)
from lxtb.hostinit import host_init
from lxtb.layout import RELOCATED_ROOT, Host, Layout, state_dir
from lxtb.net import apply_rate, ensure_bridge, ensure_link, link_rate
from lxtb.procs import (
    detach_loops_under,
    kill_namespace_processes,
    libvirtd_pid,
    namespace_memory_kib,
    sshd_pid,
)

__all__ = ["RELOCATED_ROOT", "Testbed", "TestbedError", "main", "parse_rate", "state_dir"]


class Testbed(Layout):
    """The operations on a testbed: up, shape, down, status."""

    def up(self, n: int, rate: str | None = None, owner: str = "manual") -> None:
        preflight()
        if not 1 <= n <= self.max_hosts:
            raise TestbedError(f"number of hosts must be 1..{self.max_hosts}, not {n}")
        if rate is not None and rate != "off":
            rate = parse_rate(rate)[0]
        with self.lock():
            self.state = self.load_state()
            if not self.state.get("hosts"):
                self.state["owner"] = owner  # who created it (a fixture tears down its own)
            if rate is not None:
                self.state["rate"] = None if rate == "off" else rate
            have = set(self.state.get("hosts", []))
            wanted = sorted(have | set(range(1, n + 1)))
            self.state["hosts"] = wanted
            self.state.setdefault("created_mountpoints", [])
            self.save_state()
            ensure_keys(self)
            ensure_bridge(self)
            hosts = self.hosts()
            for h in hosts:
                ensure_host_dirs(self, h)
                ensure_link(self, h)
            write_client_files(self, hosts)
            write_etc_hosts(self, hosts)
            # sshd first (it creates the namespaces), all at once, then libvirt daemons.
            started = [h for h in hosts if ensure_sshd(self, h)]
            for h in hosts:
                wait_sshd(h)
                if h not in started:
                    ensure_binds(h)  # a host started by an older testbed.py
            template = caps_template(self)
            if not any(template.glob("*.xml")):
                # The first host probes qemu once; every other host starts from its result.
                ensure_libvirtd(hosts[0], seed=template)
                wait_libvirtd(hosts[0])
                warm_caps(hosts[0], template)
            for h in hosts:
                ensure_libvirtd(h, seed=template)
            for h in hosts:
                wait_libvirtd(h)
            apply_rate(hosts, self.state.get("rate"))
            self.save_state()
        log(
            f"{len(hosts)} host(s) up ({len(started)} started), inventory {self.inventory}, "
            f"API for hosts at {self.api_url}"
        )

    def shape(self, rate: str) -> None:
        preflight()
        if rate != "off":
            rate = parse_rate(rate)[0]
        with self.lock():
            self.state = self.load_state()
            if not self.state.get("hosts"):
                raise TestbedError("no testbed is up (testbed/up N first)")
            self.state["rate"] = None if rate == "off" else rate
            apply_rate(self.hosts(), self.state["rate"])
            self.save_state()
        log(f"links of {len(self.hosts())} host(s): {rate}")

    def known_hosts_everywhere(self) -> list[Host]:
        """Hosts in the state, plus any PREFIX<N> namespace, veth or host dir left behind."""
        idx = set(self.state.get("hosts", []))
        names = list_netns()
        for line in run(["ip", "-o", "link", "show"]).stdout.splitlines():
            m = re.match(r"^\d+: tb-([a-z0-9]+)[@:]", line)
            if m:
                names.append(m.group(1))
        hd = self.dir / "hosts"
        if hd.is_dir():
            names += [p.name for p in hd.iterdir()]
        for name in names:
            m = self.host_re.match(name)
            if m:
                idx.add(int(m.group(1)))
        return [self.host(i) for i in sorted(idx) if 1 <= i <= self.max_hosts]

    def in_use(self) -> bool:
        """True while a pytest session holds its shared lease (tests/integration/conftest.py)."""
        path = self.dir / "users.lock"
        if not path.exists():
            return False
        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
        return False

    def down(self, purge: bool = False, force: bool = False) -> bool:
        """Remove the testbed; False if deferred because a test session still uses it."""
        preflight()
        with self.lock():
            self.state = self.load_state()
            if not force and self.state.get("hosts") and self.in_use():
                # Its last test session tears it down (as for a testbed a fixture created).
                self.state["owner"] = "fixture"
                self.save_state()
                log("a pytest session is using the testbed: left up, that session removes it "
                    "when it ends (down --force removes it now)")
                return False
            hosts = self.known_hosts_everywhere()
            for h in hosts:
                kill_namespace_processes(h)
            detach_loops_under(self.dir / "hosts")
            for h in hosts:
                if Path(f"/run/netns/{h.name}").exists():
                    run(["ip", "netns", "del", h.name], check=False)
                if run(["ip", "link", "show", h.veth], check=False).returncode == 0:
                    run(["ip", "link", "del", h.veth], check=False)
            if run(["ip", "link", "show", self.bridge], check=False).returncode == 0:
                run(["ip", "link", "del", self.bridge])
            shutil.rmtree(self.dir / "hosts", ignore_errors=True)
            # The empty mount point dirs made in the root filesystem (created_mountpoints) stay:
            # removing one would silently unmount it in every other testbed's hosts.
            for name in ("state.json", "inventory.ini", "ssh_config", "known_hosts",
                         "ansible.cfg", "hosts.json"):
                (self.dir / name).unlink(missing_ok=True)
            if purge:
                shutil.rmtree(self.dir, ignore_errors=True)
            self.state = {}
        names = " ".join(h.name for h in hosts)
        log(f"down: removed {len(hosts)} host(s) {names}" + (f" and {self.dir}" if purge else ""))
        return True

    def status_rows(self) -> list[dict]:
        rows = []
        for h in self.known_hosts_everywhere():
            sshd = sshd_pid(h)
            ssh_ok = False
            if sshd:
                try:
                    socket.create_connection((h.ip, 22), timeout=0.5).close()
                    ssh_ok = True
                except OSError:
                    pass
            lv = libvirtd_pid(h)
            lv_ok = False
            if lv and h.libvirt_sock.exists():
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.settimeout(1)
                        s.connect(str(h.libvirt_sock))
                    lv_ok = True
                except OSError:
                    pass
            netns = Path(f"/run/netns/{h.name}").exists()
            rows.append({
                "host": h.name, "ip": h.ip, "netns": netns, "sshd_pid": sshd, "ssh": ssh_ok,
                "libvirtd_pid": lv, "libvirtd": lv_ok,
                "rate": link_rate(h) if netns else "-",
                **(namespace_memory_kib(h) if netns else {"rss_kib": 0, "pss_kib": 0}),
            })
        return rows

    def status(self, as_json: bool = False) -> int:
        rows = self.status_rows()
        if as_json:
            print(json.dumps({"dir": str(self.dir), "bridge": self.bridge,
                              "bridge_ip": self.bridge_ip, "hosts": rows}, indent=2))
        elif not rows:
            print(f"no testbed hosts ({self.dir})")
        else:
            print(f"testbed {self.dir}  bridge {self.bridge} {self.bridge_ip}  "
                  f"API for hosts {self.api_url}")
            hdr = ("HOST", "IP", "SSHD PID", "SSH", "LIBVIRTD", "RATE", "MEM (PSS)")
            table = [hdr] + [(
                r["host"], r["ip"], str(r["sshd_pid"] or "-"), "up" if r["ssh"] else "DOWN",
                f"alive ({r['libvirtd_pid']})" if r["libvirtd"] else "DEAD", r["rate"],
                f"{r['pss_kib'] / 1024:.1f} MiB",
            ) for r in rows]
            widths = [max(len(row[i]) for row in table) for i in range(len(hdr))]
            for row in table:
                print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        healthy = bool(rows) and all(r["ssh"] and r["libvirtd"] for r in rows)
        return 0 if healthy else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="testbed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", help="testbed directory (default $LXCLOUD_TESTBED_DIR or "
                                  "<repo>/.testbed)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="create or grow the testbed to N hosts (re-runnable)")
    p.add_argument("n", type=int, nargs="?", default=3)
    p.add_argument("--rate", help="shape every host link, both ways (e.g. 100mbit; off)")
    p.add_argument("--owner", default="manual", choices=["manual", "fixture"],
                   help=argparse.SUPPRESS)
    p = sub.add_parser("down", help="remove all hosts, links, processes and host dirs")
    p.add_argument("--purge", action="store_true", help="also remove keys and the qemu cache")
    p.add_argument("--force", action="store_true",
                   help="even while a pytest session uses it (else deferred to its end)")
    p = sub.add_parser("status", help="table of hosts (exit 1 unless all are healthy)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("shape", help="set link shaping of a running testbed")
    p.add_argument("rate", help="tc rate (100mbit, 1gbit ...) or off")
    p = sub.add_parser("ssh", help="ssh to a host with the testbed key")
    p.add_argument("host")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("_host-init", help=argparse.SUPPRESS)
    p.add_argument("host")
    args = ap.parse_args(argv)
    try:
        tb = Testbed(Path(args.dir) if args.dir else None)
        if args.cmd == "up":
            tb.up(args.n, rate=args.rate, owner=args.owner)
        elif args.cmd == "down":
            tb.down(purge=args.purge, force=args.force)
        elif args.cmd == "status":
            return tb.status(as_json=args.json)
        elif args.cmd == "shape":
            tb.shape(args.rate)
        elif args.cmd == "ssh":
            if not tb.ssh_config.exists():
                raise TestbedError("no testbed is up (testbed/up N first)")
            argv = ["ssh", "-F", str(tb.ssh_config), args.host, *args.command]
            os.execvp("ssh", argv)  # noqa: S606 - argument list, no shell
        elif args.cmd == "_host-init":
            host_init(tb, args.host)
    except TestbedError as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
