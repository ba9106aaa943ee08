"""The processes of a host: which run in its namespaces, starting one detached, stopping them
all, their memory."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from .base import CLEAN_ENV, TestbedError, log, ns_inode, pid_alive, read_pid, run
from .layout import Host


def host_daemon_pid(h: Host, pidfile: Path) -> int | None:
    """The pid in pidfile if that process lives and runs inside the host."""
    pid = read_pid(pidfile)
    if not pid_alive(pid):
        return None
    if ns_inode(f"/proc/{pid}/ns/net") != ns_inode(f"/run/netns/{h.name}"):
        return None
    return pid


def sshd_pid(h: Host) -> int | None:
    """The host's sshd pid, if it runs inside the host's network namespace."""
    return host_daemon_pid(h, h.sshd_pidfile)


def libvirtd_pid(h: Host) -> int | None:
    return host_daemon_pid(h, h.libvirtd_pidfile)


def spawn_detached(cmd: list[str], logfile: Path) -> int:
    """Start cmd in a new session, not our child (so it is never our zombie); return its pid."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child
        try:
            os.close(r)
            os.setsid()
            with open(logfile, "ab") as out:
                p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, env=CLEAN_ENV, cwd="/",
                                     close_fds=True)
            os.write(w, str(p.pid).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(child, 0)
    if not data:
        raise TestbedError(f"could not start {cmd[0]}")
    return int(data)


def processes_in(net: tuple[int, int] | None, mnt: tuple[int, int] | None) -> list[int]:
    me = os.getpid()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        pid = int(d)
        in_net = bool(net) and ns_inode(f"/proc/{pid}/ns/net") == net
        in_mnt = bool(mnt) and ns_inode(f"/proc/{pid}/ns/mnt") == mnt
        if (in_net or in_mnt) and pid_alive(pid):
            found.append(pid)
    return found


def kill_namespace_processes(h: Host, grace: float = 5.0) -> int:
    """Stop every process in the host's namespaces (sshd, libvirtd, qemu, ssh sessions...)."""
    net = ns_inode(f"/run/netns/{h.name}")
    mnt = None
    sshd = read_pid(h.sshd_pidfile)
    if pid_alive(sshd) and net and ns_inode(f"/proc/{sshd}/ns/net") == net:
        mnt = ns_inode(f"/proc/{sshd}/ns/mnt")
    if mnt == ns_inode("/proc/self/ns/mnt"):
        mnt = None  # never the root mount namespace
    pids = processes_in(net, mnt) if (net or mnt) else []
    # Daemons whose pid files say they belong to this host, even if their namespace is gone.
    for pf in (h.libvirtd_pidfile, h.virtlogd_pidfile):
        pid = read_pid(pf)
        if (
            pid_alive(pid)
            and pid not in pids
            and _cmdline_has(pid, (b"libvirtd", b"virtlogd"))
            and ns_inode(f"/proc/{pid}/ns/net") != ns_inode("/proc/self/ns/net")
        ):
            pids.append(pid)
    if not pids:
        return 0
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 5)
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.02)
        pids = [p for p in pids if pid_alive(p)]
        if not pids:
            break
    if pids:
        raise TestbedError(f"{h.name}: processes {pids} did not die")
    return 1


def _cmdline_has(pid: int | None, names: tuple[bytes, ...]) -> bool:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return os.path.basename(argv0) in names


def detach_loops_under(root: Path) -> None:
    """Detach loop devices whose backing file lives under root (set up inside a host)."""
    res = run(["losetup", "-l", "-n", "-J", "-O", "NAME,BACK-INO,BACK-MAJ:MIN"], check=False)
    try:
        devs = json.loads(res.stdout or "{}").get("loopdevices", [])
    except ValueError:
        return
    if not devs or not root.is_dir():
        return
    wanted = {}
    for d in devs:
        try:
            maj, mn = (int(x) for x in str(d["back-maj:min"]).split(":"))
            wanted[(os.makedev(maj, mn), int(d["back-ino"]))] = d["name"]
        except (KeyError, ValueError, TypeError):
            continue
    for dirpath, _dirs, files in os.walk(root):
        for fn in files:
            try:
                st = os.lstat(os.path.join(dirpath, fn))
            except OSError:
                continue
            name = wanted.get((st.st_dev, st.st_ino))
            if name:
                log(f"detaching {name} (backing file {os.path.join(dirpath, fn)})")
                run(["losetup", "-d", name], check=False)


def namespace_memory_kib(h: Host) -> dict[str, int]:
    """RSS and PSS (shared pages split between their users) of all processes in the host."""
    net = ns_inode(f"/run/netns/{h.name}")
    total = {"rss_kib": 0, "pss_kib": 0}
    for pid in processes_in(net, None):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Rss:", "Pss:")):
                    total[line[:3].lower() + "_kib"] += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return total
