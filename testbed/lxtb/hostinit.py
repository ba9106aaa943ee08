"""Inside a new host: runs as ``ip netns exec H unshare -m -u ... testbed.py _host-init H``,
binds the host's own directories over the shared root filesystem and becomes its sshd."""

from __future__ import annotations

import ctypes
import errno
import os
import socket

from .base import DIR_BINDS, FILE_BINDS, REPO, SSHD, TestbedError
from .layout import Host, Layout, replaced_by_hosts

MS_BIND = 4096
MS_REC = 16384
MNT_DETACH = 2
LOOP_MAJOR = 7


def _libc_call(fn: str, *args: object) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, fn)(*args) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{fn}{args}: {os.strerror(e)}")


def _bind_repo_into_host(h: Host) -> str | None:
    """Bind REPO into the per-host dir that will replace the path it lies under; that dir's
    name in DIR_BINDS, or None when the repository is not under a replaced path."""
    for sub, target in DIR_BINDS:
        if replaced_by_hosts(REPO) == target:
            inside = h.path(sub) / REPO.relative_to(target)
            inside.mkdir(parents=True, exist_ok=True)
            _libc_call("mount", str(REPO).encode(), str(inside).encode(), None, MS_BIND, None)
            return sub
    return None


def host_init(tb: Layout, name: str) -> None:
    m = tb.host_re.match(name)
    if not m:
        raise TestbedError(f"bad host name {name!r}")
    h = tb.host(int(m.group(1)))
    socket.sethostname(h.name)
    # Loop-backed filesystems mounted elsewhere on the machine, copied into this private
    # namespace, would stay busy here after their owner unmounts them: drop them.
    with open("/proc/self/mountinfo") as f:
        infos = [line.split() for line in f]
    for fields in reversed(infos):
        target, majmin = fields[4], fields[2]
        if majmin.startswith(f"{LOOP_MAJOR}:") and target != "/":
            try:
                _libc_call("umount2", target.encode(), MNT_DETACH)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOENT):
                    raise
    # The repository stays visible inside the host at its own path, also when it lies under
    # a path the host replaces (a clone in /tmp or /root): tests and the demo hand hosts
    # paths in it (the test kernel, golden images). It is bound into the host's own copy of
    # that path, which then goes over the path recursively. The bind lives in this host's
    # private mount namespace only; in the root namespace the mount point is an empty dir.
    repo_sub = _bind_repo_into_host(h)
    for sub, target in DIR_BINDS:
        flags = MS_BIND | (MS_REC if sub == repo_sub else 0)
        _libc_call("mount", str(h.path(sub)).encode(), target.encode(), None, flags, None)
    for sub, target in FILE_BINDS:
        if os.path.exists(target):
            _libc_call("mount", str(h.dir / sub).encode(), target.encode(), None, MS_BIND, None)
    argv = [SSHD, "-D", "-f", str(h.dir / "sshd_config"), "-E", str(h.dir / "log" / "sshd.log")]
    os.execv(SSHD, argv)  # noqa: S606 - fixed argument list, no shell
