"""Each host's daemons: sshd (which also creates the host's namespaces) and libvirtd."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from pathlib import Path

from .base import (
    CLEAN_ENV,
    DIR_BINDS,
    ENTRY,
    FILE_BINDS,
    TestbedError,
    atomic_write,
    log,
    pid_alive,
    read_pid,
    run,
)
from .layout import Host, Layout
from .procs import (
    host_daemon_pid,
    kill_namespace_processes,
    libvirtd_pid,
    spawn_detached,
    sshd_pid,
)


def ensure_sshd(tb: Layout, h: Host) -> bool:
    """Start the host's namespaces and sshd unless they run. True if (re)started."""
    if sshd_pid(h):
        return False
    # A half-dead host (sshd gone, maybe libvirtd left): clear it out, start afresh.
    kill_namespace_processes(h)
    (h.path("run") / "sshd.pid").unlink(missing_ok=True)
    cmd = ["ip", "netns", "exec", h.name, "unshare", "-m", "-u", "--propagation", "private",
           sys.executable, str(ENTRY), "--dir", str(tb.dir), "_host-init", h.name]
    logf = h.dir / "log" / "sshd.log"
    pid = spawn_detached(cmd, logf)
    atomic_write(h.sshd_pidfile, f"{pid}\n")
    return True


def ensure_binds(h: Host) -> None:
    """Add any of the host's bind mounts that its running mount namespace lacks."""
    sshd = sshd_pid(h)
    if not sshd:
        return
    with open(f"/proc/{sshd}/mountinfo") as f:
        mounted = {line.split()[4] for line in f}
    binds = [(h.path(sub), t) for sub, t in DIR_BINDS] + [
        (h.dir / sub, t) for sub, t in FILE_BINDS if os.path.exists(t)
    ]
    for src, target in binds:
        if target not in mounted:
            log(f"{h.name}: adding bind mount {target}")
            run(["nsenter", "-t", str(sshd), "-m", "--", "mount", "--bind", str(src), target])


def wait_sshd(h: Host, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = read_pid(h.sshd_pidfile)
        if not pid_alive(pid):
            raise TestbedError(f"{h.name}: sshd exited; see {h.dir / 'log' / 'sshd.log'}")
        try:
            socket.create_connection((h.ip, 22), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TestbedError(f"{h.name}: sshd did not listen on {h.ip}:22 within {timeout}s")


def caps_template(tb: Layout) -> Path:
    d = tb.dir / "libvirt-caps"
    d.mkdir(exist_ok=True)
    return d


def ensure_libvirtd(h: Host, seed: Path) -> None:
    sshd = sshd_pid(h)
    if not sshd:
        raise TestbedError(f"{h.name}: sshd is not running")
    enter = ["nsenter", "-t", str(sshd), "-m", "-u", "-n", "--"]
    if not host_daemon_pid(h, h.virtlogd_pidfile):
        run([*enter, "virtlogd", "-d"], env=CLEAN_ENV, cwd="/")
    if libvirtd_pid(h):
        return
    # libvirt probes qemu (1-12 s) on a host's first call unless its cache holds the result:
    # seed it with the probe of the first host (same binaries, same kernel, no /dev/kvm).
    caps = h.path("var-cache-libvirt") / "qemu" / "capabilities"
    if any(seed.glob("*.xml")) and not (caps.is_dir() and any(caps.glob("*.xml"))):
        caps.mkdir(parents=True, exist_ok=True)
        for x in seed.glob("*.xml"):
            shutil.copy2(x, caps / x.name)
    h.libvirt_sock.unlink(missing_ok=True)
    run([*enter, "libvirtd", "-d"], env=CLEAN_ENV, cwd="/")


def wait_libvirtd(h: Host, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if h.libvirt_sock.exists():
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(h.libvirt_sock))
                return
            except OSError:
                pass
        if not libvirtd_pid(h) and time.monotonic() > deadline - timeout + 5:
            raise TestbedError(
                f"{h.name}: libvirtd is not running; see {h.path('var-log-libvirt')}"
            )
        time.sleep(0.05)
    raise TestbedError(f"{h.name}: libvirtd socket did not appear within {timeout}s")


def warm_caps(h: Host, template: Path) -> None:
    log(f"{h.name}: probing qemu once for the libvirt capabilities cache")
    sshd = sshd_pid(h)
    run(["nsenter", "-t", str(sshd), "-m", "-u", "-n", "--", "virsh", "-q", "-c",
         "qemu:///system", "domcapabilities", "--virttype", "qemu"], env=CLEAN_ENV, cwd="/")
    caps = h.path("var-cache-libvirt") / "qemu" / "capabilities"
    for x in caps.glob("*.xml"):
        shutil.copy2(x, template / x.name)
