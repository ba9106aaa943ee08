"""The testbed: namespace hypervisor hosts reached over real SSH, each with its own libvirtd.

The first tests use the session's shared testbed (``testbed`` fixture, 3+ hosts). The lifecycle
test builds a second, private testbed (own directory, host prefix ``lxt``, bridge ``lxtbr0``,
net ``10.213.201.0/24``) so that bringing it down cannot disturb anyone using the shared one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from testbed_helpers import REPO, Testbed, no_testbed_reason, shared_testbed_dir, skip_or_fail

pytestmark = [pytest.mark.testbed]

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>
"""
VIRSH = "virsh -q -c qemu:///system"


def test_ansible_ping_over_ssh_reaches_every_host(testbed: Testbed) -> None:
    hosts = testbed.hosts
    res = subprocess.run(
        [str(REPO / ".venv" / "bin" / "ansible"), "-i", str(testbed.inventory), "hypervisors",
         "-m", "ping"],
        capture_output=True, text=True, env=testbed.ansible_env(), timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    for h in hosts:
        assert re.search(rf"^{h.name} \| SUCCESS", res.stdout, re.M), res.stdout


def test_each_host_has_its_own_identity_and_state_dirs(testbed: Testbed) -> None:
    hosts = testbed.hosts[:3]
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    seen = {}
    for h in hosts:
        out = testbed.ssh(h, (
            "hostname; cat /etc/machine-id; ip -4 -o addr show dev eth0; "
            f"echo {h.name} > /var/lib/lxcloud/{marker}; "
            "test -c /dev/kvm && echo kvm-visible || echo kvm-hidden; "
            "ip route show default | wc -l; "
            f"getent hosts {hosts[-1].name} | cut -d' ' -f1"
        )).stdout.split("\n")
        hostname, machine_id, addr, kvm, default_routes, resolved = out[:6]
        assert resolved == hosts[-1].ip  # /etc/hosts names every testbed host
        assert hostname == h.name
        assert f" {h.ip}/" in addr
        assert kvm == "kvm-hidden"
        assert default_routes == "0"
        seen[h.name] = machine_id
    assert len(set(seen.values())) == len(hosts)
    try:
        for h in hosts:
            # Each host reads back only its own file; the root namespace sees none at that path.
            assert testbed.ssh(h, f"cat /var/lib/lxcloud/{marker}").stdout.strip() == h.name
            assert (h.dir / "var-lib-lxcloud" / marker).read_text().strip() == h.name
        assert not Path(f"/var/lib/lxcloud/{marker}").exists()
    finally:
        for h in hosts:
            (h.dir / "var-lib-lxcloud" / marker).unlink(missing_ok=True)


def test_each_host_runs_its_own_libvirtd(testbed: Testbed) -> None:
    a, b, c = testbed.hosts[:3]
    name = f"tbcheck-{uuid.uuid4().hex[:8]}"
    testbed.ssh(a, f"{VIRSH} define /dev/stdin", input=DOMAIN_XML.format(name=name))
    try:
        assert name in testbed.ssh(a, f"{VIRSH} list --all --name").stdout.split()
        for other in (b, c):
            assert name not in testbed.ssh(other, f"{VIRSH} list --all --name").stdout.split()
        # Python on the host: Debian's python3 with python3-libvirt, as the modules use it.
        out = testbed.ssh(a, ["/usr/bin/python3", "-c",
                              "import libvirt; c = libvirt.open('qemu:///system'); "
                              f"print(c.lookupByName('{name}').name(), c.getHostname())"])
        assert out.stdout.split() == [name, a.name]
    finally:
        testbed.ssh(a, f"{VIRSH} undefine {name}", check=False)


def test_hosts_reach_the_bridge_address_and_each_other(testbed: Testbed) -> None:
    a, b = testbed.hosts[:2]
    srv = socket.create_server((testbed.bridge_ip, 0))
    port = srv.getsockname()[1]
    peers: list[str] = []

    def accept() -> None:
        srv.settimeout(30)
        conn, addr = srv.accept()
        peers.append(addr[0])
        conn.close()

    t = threading.Thread(target=accept)
    t.start()
    try:
        testbed.ssh(a, ["/usr/bin/python3", "-c",
                        f"import socket; socket.create_connection(('{testbed.bridge_ip}', "
                        f"{port}), timeout=10).close()"])
    finally:
        t.join(35)
        srv.close()
    assert peers == [a.ip]
    # Host to host over the bridge (image staging between hypervisors uses this).
    out = testbed.ssh(a, f"ssh-keyscan -T 5 -t ed25519 {b.ip} 2>/dev/null")
    assert "ssh-ed25519" in out.stdout


def test_up_again_is_harmless(testbed: Testbed) -> None:
    before = {h["host"]: h for h in testbed.status()["hosts"]}
    testbed.cli("up", str(len(testbed.hosts)))
    after = {h["host"]: h for h in testbed.status()["hosts"]}
    assert set(before) <= set(after)  # another session may grow it meanwhile, never shrink
    for name, row in before.items():
        assert after[name]["ssh"] and after[name]["libvirtd"], after[name]
        assert after[name]["sshd_pid"] == row["sshd_pid"]
        assert after[name]["libvirtd_pid"] == row["libvirtd_pid"]


# -- lifecycle on a private second testbed ---------------------------------------------------
PRIVATE = {
    "LXCLOUD_TESTBED_PREFIX": "lxt",
    "LXCLOUD_TESTBED_BRIDGE": "lxtbr0",
    "LXCLOUD_TESTBED_NET": "10.213.201.0/24",
}


def _throughput_mbit(sender: list[str], receiver_ip: str, receiver: list[str], mb: int) -> float:
    """Send mb MiB from sender (a command prefix) to a sink run by receiver; return Mbit/s."""
    port = 5201
    sink = subprocess.Popen(
        [*receiver, "/usr/bin/python3", "-c",
         "import socket,time\n"
         f"s=socket.create_server(('{receiver_ip}',{port}));c,_=s.accept();n=0;t=time.monotonic()\n"
         "while (d:=c.recv(1<<20)): n+=len(d)\n"
         "print(n*8/(time.monotonic()-t)/1e6)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        src = (f"import socket,time\nfor _ in range(100):\n"
               f"  try: c=socket.create_connection(('{receiver_ip}',{port})); break\n"
               f"  except OSError: time.sleep(0.05)\n"
               f"b=b'x'*65536\nfor _ in range({mb * 16}): c.sendall(b)\nc.close()")
        subprocess.run([*sender, "/usr/bin/python3", "-c", src], check=True, timeout=60)
        out, _ = sink.communicate(timeout=60)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    return float(out)


def _leftovers(tb_dir: Path, prefix: str, bridge: str) -> list[str]:
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {n}" for n in re.findall(rf"^({prefix}\d+)\b", netns, re.M)]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found += [f"link {n}" for n in re.findall(rf"^\d+: ((?:tb-{prefix}\d+|{bridge}))[@:]",
                                                links, re.M)]
    needle = str(tb_dir).encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            mounts = Path(f"/proc/{pid}/mountinfo").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            argv = cmdline.replace(b"\0", b" ")[:120]
            found.append(f"process {pid}: {argv!r}")
        if needle in mounts:
            found.append(f"mount in process {pid}'s namespace")
    loops = subprocess.run(["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"],
                           capture_output=True, text=True).stdout
    found += [f"loop {line}" for line in loops.splitlines() if str(tb_dir) in line]
    return found


def _loop_mount(tmp: Path) -> tuple[Path, str]:
    img, mnt = tmp / "fs.img", tmp / "mnt"
    subprocess.run(["truncate", "-s", "8M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(img)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    dev = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True,
                         text=True, check=True).stdout.strip()
    return mnt, dev


@pytest.mark.slow
def test_lifecycle_up_grow_shape_down_leaves_nothing(tmp_path: Path) -> None:
    tb_dir = shared_testbed_dir() / f"selftest-{os.getpid()}"
    env = {**PRIVATE, "LXCLOUD_TESTBED_DIR": str(tb_dir)}
    if subprocess.run(["ip", "link", "show", PRIVATE["LXCLOUD_TESTBED_BRIDGE"]],
                      capture_output=True).returncode == 0:
        pytest.skip("another private testbed (bridge lxtbr0) is up: a concurrent run")
    problem = no_testbed_reason()
    if problem:
        skip_or_fail(problem)
    tb_dir.mkdir(parents=True)
    tb: Testbed | None = None
    # Someone else's loop-mounted filesystem while hosts are created: the hosts must not keep
    # it busy once its owner unmounts it (their loop device must be released).
    mnt, loopdev = _loop_mount(tmp_path) if shutil.which("mkfs.ext4") else (None, "")
    try:
        t0 = time.monotonic()
        res = subprocess.run(
            ["/usr/bin/python3", str(REPO / "testbed" / "testbed.py"), "up", "2",
             "--rate", "20mbit"],
            capture_output=True, text=True, env={**os.environ, **env}, timeout=300,
        )
        assert res.returncode == 0, res.stderr
        print(f"private testbed up 2: {time.monotonic() - t0:.2f}s")
        tb = Testbed(tb_dir, env)
        assert [h.name for h in tb.hosts] == ["lxt1", "lxt2"]
        if mnt:
            subprocess.run(["umount", str(mnt)], check=True)
            mnt = None
            time.sleep(0.2)
            loops = subprocess.run(["losetup", "-l", "-n", "-O", "NAME"], capture_output=True,
                                   text=True).stdout.split()
            assert loopdev not in loops, f"{loopdev} still held after umount"
        first = {r["host"]: r for r in tb.status()["hosts"]}
        assert all(r["ssh"] and r["libvirtd"] and r["rate"] == "20Mbit" for r in first.values())

        # Shaping limits both directions of a host's link (unshaped: several Gbit/s).
        ns = ["ip", "netns", "exec", "lxt1"]
        up = _throughput_mbit(ns, tb.bridge_ip, [], 3)
        down = _throughput_mbit([], tb.hosts[0].ip, ns, 3)
        print(f"shaped 20mbit: upload {up:.1f} Mbit/s, download {down:.1f} Mbit/s")
        assert up < 30 and down < 30
        tb.cli("shape", "off")
        assert all(r["rate"] == "-" for r in tb.status()["hosts"])
        free = _throughput_mbit(ns, tb.bridge_ip, [], 20)
        print(f"unshaped upload {free:.0f} Mbit/s")
        assert free > 60

        # Up again: nothing restarts. Up with more hosts: adds one, keeps the others.
        tb.cli("up", "2")
        tb.cli("up", "3")
        tb.refresh()
        again = {r["host"]: r for r in tb.status()["hosts"]}
        assert sorted(again) == ["lxt1", "lxt2", "lxt3"]
        for name in ("lxt1", "lxt2"):
            assert again[name]["sshd_pid"] == first[name]["sshd_pid"]
            assert again[name]["libvirtd_pid"] == first[name]["libvirtd_pid"]
        assert again["lxt3"]["ssh"] and again["lxt3"]["libvirtd"]

        # Up repairs: a dead libvirtd is restarted; a host whose sshd died is rebuilt.
        os.kill(again["lxt2"]["libvirtd_pid"], signal.SIGKILL)
        os.kill(again["lxt3"]["sshd_pid"], signal.SIGKILL)
        time.sleep(0.2)
        broken = {r["host"]: r for r in tb.status()["hosts"]}
        assert not broken["lxt2"]["libvirtd"] and not broken["lxt3"]["ssh"]
        tb.cli("up", "3")
        fixed = {r["host"]: r for r in tb.status()["hosts"]}
        assert all(r["ssh"] and r["libvirtd"] for r in fixed.values()), fixed
        assert fixed["lxt2"]["sshd_pid"] == again["lxt2"]["sshd_pid"]
        assert fixed["lxt2"]["libvirtd_pid"] != again["lxt2"]["libvirtd_pid"]
        assert fixed["lxt3"]["sshd_pid"] != again["lxt3"]["sshd_pid"]
        assert tb.ssh("lxt3", "hostname").stdout.strip() == "lxt3"

        # Leave real work behind for down: a running qemu, a loop device, an ssh session.
        a = tb.hosts[0]
        tb.ssh(a, f"{VIRSH} define /dev/stdin && {VIRSH} start lxtprobe",
               input=DOMAIN_XML.format(name="lxtprobe"))
        assert "lxtprobe" in tb.ssh(a, f"{VIRSH} list --name").stdout
        if shutil.which("losetup"):
            tb.ssh(a, "truncate -s 16M /var/lib/lxcloud/disk.img && "
                      "losetup -f --show /var/lib/lxcloud/disk.img")
        sleeper = subprocess.Popen(["ssh", "-F", str(tb.ssh_config), "lxt2", "sleep", "600"],
                                   stdin=subprocess.DEVNULL)
    finally:
        if mnt:
            subprocess.run(["umount", str(mnt)], check=False)
        t0 = time.monotonic()
        subprocess.run(["/usr/bin/python3", str(REPO / "testbed" / "testbed.py"), "down",
                        "--purge"], env={**os.environ, **env}, timeout=300, check=False)
        print(f"private testbed down: {time.monotonic() - t0:.2f}s")
    try:
        sleeper.wait(10)  # its connection dies with the host's sshd
    except subprocess.TimeoutExpired:
        sleeper.kill()
        sleeper.wait()
        pytest.fail("an ssh session to a removed host is still open")
    assert _leftovers(tb_dir, "lxt", PRIVATE["LXCLOUD_TESTBED_BRIDGE"]) == []
    assert not tb_dir.exists()
