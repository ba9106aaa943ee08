#!/usr/bin/env python3
"""The LVM guest: a hypervisor host with device-mapper, for tests and benches on a machine
without it.

A small VM under libvirt/qemu (domain type ``qemu``, software emulation) that boots Debian's
kernel with the initramfs of ``images/build-lvm-guest``: it mounts this machine's ``/``
read-only over virtio-9p under a tmpfs overlay, loads dm-mod, dm-snapshot and dm-thin-pool and
runs this machine's own sshd, python3 and lvm2.  Its spare virtual disk ``/dev/vda`` (a sparse
file, new on every ``up``) is for the volume group.  Ansible reaches it over SSH through qemu
user networking (a loopback port forwarded to the guest's port 22), with strict host keys.

    testbed/lvm-guest up [--disk-mb N] [--memory-mb N]   boot it (cached image; ~20-40 s)
    testbed/lvm-guest status [--json]                    exit 1 unless it answers on SSH
    testbed/lvm-guest ssh [COMMAND...]                   a shell or a command in the guest
    testbed/lvm-guest down                               destroy it and remove its disk

State lives in ``$LXCLOUD_LVM_GUEST_DIR`` (default ``<repo>/.cache/lvm-guest``): the built
kernel/initrd, and ``run/`` with the SSH keys, ``sshd_config``, ``ssh_config``,
``known_hosts``, ``inventory.ini`` (group ``lvm_guests``, host ``lxlvm-guest``), the domain XML,
the disk and the console log.  The libvirt domain is named ``lxlvm-guest-<hash of the state
dir>`` (transient: ``down`` or a crash leaves no definition behind).  Needs root, qemu,
libvirt (libvirtd is started when none answers), openssh, busybox-static, linux-image-amd64.
See docs/lvm-guest.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

REPO = Path(__file__).resolve().parents[1]
URI = "qemu:///system"
HOST = "lxlvm-guest"
DEFAULT_DISK_MB = 3072
DEFAULT_MEMORY_MB = 1024
BOOT_TIMEOUT = 120.0
SAFE_PATH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._+-")


class GuestError(Exception):
    pass


def state_root() -> Path:
    return Path(os.environ.get("LXCLOUD_LVM_GUEST_DIR") or REPO / ".cache" / "lvm-guest").resolve()


class Guest:
    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or state_root()).resolve()
        self.run = self.root / "run"
        tag = hashlib.sha256(str(self.root).encode()).hexdigest()[:8]
        self.domain = f"lxlvm-guest-{tag}"

    # paths
    @property
    def inventory(self) -> Path:
        return self.run / "inventory.ini"

    @property
    def ssh_config(self) -> Path:
        return self.run / "ssh_config"

    @property
    def disk(self) -> Path:
        return self.run / "pv0.img"

    @property
    def console(self) -> Path:
        return self.run / "console.log"

    def state(self) -> dict:
        try:
            return json.loads((self.run / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    # libvirt
    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(["virsh", "-q", "-c", URI, *args], capture_output=True, text=True,
                           check=False)
        if check and p.returncode != 0:
            raise GuestError(f"virsh {' '.join(args)}: {p.stderr.strip() or p.stdout.strip()}")
        return p

    def running(self) -> bool:
        p = self.virsh("domstate", self.domain, check=False)
        return p.returncode == 0 and p.stdout.strip() == "running"

    def ssh_argv(self, *command: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), HOST, *command]

    def answers(self, timeout: float = 10) -> bool:
        if not self.ssh_config.exists():
            return False
        try:
            p = subprocess.run(self.ssh_argv("true"), capture_output=True, timeout=timeout,
                               check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False
        return p.returncode == 0

    # up / down
    def up(self, disk_mb: int = DEFAULT_DISK_MB, memory_mb: int = DEFAULT_MEMORY_MB) -> dict:
        if os.geteuid() != 0:
            raise GuestError("needs root (libvirt's system instance, a root qemu for 9p)")
        if not set(str(self.root)) <= SAFE_PATH:
            raise GuestError(f"state directory {self.root} has characters outside "
                             "[A-Za-z0-9/._+-] (it goes on the guest's kernel command line)")
        if self.running() and self.answers():
            return dict(self.state(), started=False)
        t0 = time.monotonic()
        build = subprocess.run([str(REPO / "images" / "build-lvm-guest"), str(self.root)],
                               capture_output=True, text=True, check=False)
        if build.returncode != 0:
            raise GuestError(f"images/build-lvm-guest failed: {build.stderr.strip()}")
        ensure_libvirtd()
        self.virsh("destroy", self.domain, check=False)  # a guest that does not answer
        self.run.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run, 0o700)
        port = free_port()
        self._keys()
        self._configs(port)
        self.disk.unlink(missing_ok=True)
        with open(self.disk, "wb") as f:
            f.truncate(disk_mb * 1024 * 1024)
        self.console.unlink(missing_ok=True)
        xml = self.run / "domain.xml"
        atomic_write(xml, self.domain_xml(port, memory_mb))
        self.virsh("create", str(xml))
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not self.answers(timeout=15):
            if not self.running():
                raise GuestError(f"guest {self.domain} stopped while booting; console: "
                                 f"{tail(self.console)}")
            if time.monotonic() > deadline:
                self.virsh("destroy", self.domain, check=False)
                raise GuestError(f"guest did not answer on SSH within {BOOT_TIMEOUT:.0f} s; "
                                 f"console: {tail(self.console)}")
            time.sleep(0.5)
        st = {"domain": self.domain, "port": port, "disk": str(self.disk),
              "disk_mb": disk_mb, "memory_mb": memory_mb, "inventory": str(self.inventory),
              "ssh_config": str(self.ssh_config), "host": HOST, "pv": "/dev/vda",
              "boot_s": round(time.monotonic() - t0, 1)}
        atomic_write(self.run / "state.json", json.dumps(st, indent=2) + "\n")
        return dict(st, started=True)

    def down(self) -> bool:
        was = self.virsh("destroy", self.domain, check=False).returncode == 0
        self.disk.unlink(missing_ok=True)
        (self.run / "state.json").unlink(missing_ok=True)
        return was

    def status(self) -> dict:
        running = self.running()
        return dict(self.state(), domain=self.domain, running=running,
                    ssh=running and self.answers())

    # files
    def _keys(self) -> None:
        for key in ("id_ed25519", "ssh_host_ed25519_key"):
            if not (self.run / key).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                                f"lxcloud {HOST} {key}", "-f", str(self.run / key)], check=True)

    def _configs(self, port: int) -> None:
        r = self.run
        atomic_write(r / "authorized_keys", (r / "id_ed25519.pub").read_text())
        atomic_write(r / "sshd_config", "\n".join([
            "# sshd of the lxcloud LVM guest (testbed/lvm_guest.py); read inside the guest",
            "Port 22",
            f"HostKey {r}/ssh_host_ed25519_key",
            f"AuthorizedKeysFile {r}/authorized_keys",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "UseDNS no",
            "StrictModes no",  # the repository may lie anywhere (a CI clone)
            "PidFile /run/sshd.pid",
            "MaxSessions 30",
            "MaxStartups 30",
            "LogLevel ERROR",
            "SetEnv PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "Subsystem sftp internal-sftp",
            "",
        ]))
        hostkey = (r / "ssh_host_ed25519_key.pub").read_text().split()
        atomic_write(r / "known_hosts", f"{HOST} {hostkey[0]} {hostkey[1]}\n")
        atomic_write(self.ssh_config, "\n".join([
            f"Host {HOST}",
            "  HostName 127.0.0.1",
            f"  Port {port}",
            "  User root",
            f"  IdentityFile {r}/id_ed25519",
            "  IdentitiesOnly yes",
            f"  HostKeyAlias {HOST}",
            f"  UserKnownHostsFile {r}/known_hosts",
            "  StrictHostKeyChecking yes",
            "  BatchMode yes",
            "  ConnectTimeout 10",
            "  LogLevel ERROR",
            "",
        ]))
        atomic_write(self.inventory, "\n".join([
            "# lxcloud LVM guest inventory (written by testbed/lvm-guest up)",
            "[lvm_guests]",
            f"{HOST} ansible_host=127.0.0.1 ansible_port={port}",
            "",
            "[lvm_guests:vars]",
            "ansible_user=root",
            f"ansible_ssh_private_key_file={r}/id_ed25519",
            f"ansible_ssh_common_args='-F {self.ssh_config}'",
            "ansible_ssh_pipelining=true",
            "ansible_python_interpreter=/usr/bin/python3",
            "lxcloud_lvm_pv=/dev/vda",
            "",
        ]))

    def domain_xml(self, port: int, memory_mb: int) -> str:
        q = quoteattr
        cmdline = f"console=ttyS0 quiet panic=-1 lxlvm.state={self.run}"
        return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{self.domain}</name>
  <memory unit='MiB'>{int(memory_mb)}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{self.root / 'vmlinuz'}</kernel>
    <initrd>{self.root / 'initrd.img'}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_reboot>destroy</on_reboot>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='unsafe'/>
      <source file={q(str(self.disk))}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <filesystem type='mount' accessmode='passthrough' multidevs='remap'>
      <source dir='/'/>
      <target dir='hostroot'/>
      <readonly/>
    </filesystem>
    <serial type='file'>
      <source path={q(str(self.console))}/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=lxlvmnet0,hostfwd=tcp:127.0.0.1:{int(port)}-:22'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=lxlvmnet0,bus=pci.0,addr=0x1e'/>
  </qemu:commandline>
</domain>
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.rename(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no console log)"


def ensure_libvirtd(timeout: float = 60) -> None:
    """Start virtlogd and libvirtd when no libvirtd answers (no systemd here)."""
    def answers() -> bool:
        return subprocess.run(["virsh", "-c", URI, "version"], capture_output=True,
                              check=False).returncode == 0

    if answers():
        return
    for daemon in ("virtlogd", "libvirtd"):
        subprocess.run([daemon, "-d"], capture_output=True, check=False)
    deadline = time.monotonic() + timeout
    while not answers():
        if time.monotonic() > deadline:
            raise GuestError(f"libvirtd did not answer on {URI} within {timeout:.0f} s")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="testbed/lvm-guest", description=__doc__.split("\n\n")[0],
                                 epilog="See docs/lvm-guest.md.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="boot the guest (re-runnable: a guest that answers is kept)")
    up.add_argument("--disk-mb", type=int, default=DEFAULT_DISK_MB,
                    help=f"size of the spare disk /dev/vda (default {DEFAULT_DISK_MB})")
    up.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB,
                    help=f"guest memory (default {DEFAULT_MEMORY_MB})")
    st = sub.add_parser("status", help="state; exit 1 unless the guest answers on SSH")
    st.add_argument("--json", action="store_true")
    sh = sub.add_parser("ssh", help="run a command (or a shell) in the guest")
    sh.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("down", help="destroy the guest and remove its disk")
    args = ap.parse_args(argv)
    g = Guest()
    try:
        if args.cmd == "up":
            st_ = g.up(args.disk_mb, args.memory_mb)
            verb = "started" if st_.get("started") else "already up"
            print(f"lvm-guest: {g.domain} {verb} in {st_.get('boot_s', 0)} s, "
                  f"ssh port {st_.get('port')}, inventory {g.inventory}")
        elif args.cmd == "status":
            s = g.status()
            print(json.dumps(s, indent=2) if args.json else
                  f"{g.domain}: running={s['running']} ssh={s['ssh']} port={s.get('port')}")
            return 0 if s["ssh"] else 1
        elif args.cmd == "ssh":
            cmd = g.ssh_argv(*args.command)  # like ssh: the words make one remote command
            if not args.command:
                cmd.insert(1, "-t")
            os.execvp(cmd[0], cmd)  # noqa: S606 - argument list, no shell
        else:
            print(f"lvm-guest: {g.domain} " + ("destroyed" if g.down() else "was not running"))
    except GuestError as e:
        print(f"lvm-guest: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
