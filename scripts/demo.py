"""The demo farm on the embedded default (SQLite), as an operator and the hosts would drive it.

Every step runs the real thing: the ``lxcloud`` command for the operator's steps, and the
XML-RPC API over a socket (OpenNebula's protocol) for what hosts and VMs do. Run it with
``make demo``; it leaves its database and files in ``demo/`` for a look afterwards.

Part two, the real farm (as root where network namespaces work; ``--no-farm`` skips it): a
private testbed of 3 hypervisor hosts (namespaces with their own sshd and libvirtd, see
docs/testbed.md) that register through the API with the hypervisors playbook, the test golden
image captured and staged to them with the chain strategy, VMs requested, placed, deployed by the
executor (ansible-runner), booted (software emulation), one ending itself by its lifetime and
cleaned up. The private testbed is torn down at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path

from lxcloud_py.api.launcher import ServeProcess

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

HOSTS = [f"hv{i:02d}" for i in range(1, 7)]
LEASES_PER_HOST = 5
BIG = {"cpu": 8, "memory_mb": 32768, "disk_mb": 400_000}
SMALL = {"cpu": 4, "memory_mb": 16384, "disk_mb": 200_000}
IMAGE = ("slc5-batch", "2010.11")


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m" if sys.stdout.isatty() else f"\n== {title}", flush=True)


def lxcloud(
    *args: str, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / "lxcloud"), *args]
    print("$ lxcloud " + " ".join(args), flush=True)
    res = subprocess.run(cmd, env=env, text=True, capture_output=True)
    out = (res.stdout + res.stderr).rstrip()
    if out:
        print(out, flush=True)
    if check and res.returncode != 0:
        raise SystemExit(f"demo: `lxcloud {' '.join(args)}` failed with exit code {res.returncode}")
    return res


def call(proxy: xmlrpc.client.ServerProxy, method: str, session: str, *args: object) -> object:
    """One OpenNebula-convention call: returns the body, raises on [False, msg, code]."""
    fn = proxy
    for part in method.split("."):
        fn = getattr(fn, part)
    ok, body, code, *_ = fn(session, *args)
    if not ok:
        raise RuntimeError(f"{method}: error 0x{code:04x}: {body}")
    return body


def write_leases(path: Path) -> None:
    lines = ["ip,mac,name,host"]
    for h, host in enumerate(HOSTS, start=1):
        for n in range(1, LEASES_PER_HOST + 1):
            ip, mac = f"10.100.{h}.{10 + n}", f"02:00:0a:64:{h:02x}:{10 + n:02x}"
            lines.append(f"{ip},{mac},vm{h:02d}-{n}.farm.example,{host}")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default=str(REPO / "demo"), help="where the demo keeps its files")
    parser.add_argument("--vms", type=int, default=24, help="batch VMs to request")
    parser.add_argument("--no-farm", dest="farm", action="store_false",
                        help="skip part two (the real farm on a private testbed)")
    parser.add_argument("--farm-vms", type=int, default=5, help="VMs of the real farm (3-6)")
    opts = parser.parse_args()

    work = Path(opts.dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    password = secrets.token_urlsafe(12)
    (work / "admin.secret").write_text(password + "\n")
    (work / "admin.secret").chmod(0o600)
    env = dict(
        os.environ, LXCLOUD_DB=f"sqlite:///{work / 'lxcloud.db'}", LXCLOUD_ADMIN_PASSWORD=password
    )
    admin = f"oneadmin:{password}"

    step("1. Create the store (SQLite, the embedded default) and the admin user")
    lxcloud("db", "init", env=env)

    step(
        f"2. Import the fixed lease file: {len(HOSTS) * LEASES_PER_HOST} IP/MAC/DNS names, "
        "each pinned to a host"
    )
    write_leases(work / "leases.csv")
    lxcloud("lease", "import", str(work / "leases.csv"), env=env)
    print("-- importing the same file again changes nothing:")
    lxcloud("lease", "import", str(work / "leases.csv"), env=env)
    bad = work / "bad-leases.csv"
    bad.write_text(
        "ip,mac,name,host\n10.100.9.1,02:00:0a:64:09:01,ok.farm.example,hv01\n"
        "10.100.9.300,02:00:0a:64:09:02,bad-ip.farm.example,hv01\n"
        "10.100.9.3,zz:00:0a:64:09:03,bad-mac.farm.example,hv01\n"
    )
    print("-- a file with bad rows is refused as a whole, every bad row named:")
    lxcloud("lease", "import", str(bad), env=env, check=False)
    lxcloud("lease", "export", "--format", "dnsmasq", "-o", str(work / "dnsmasq.hosts"), env=env)
    print("dnsmasq dhcp-hostsfile, first lines:")
    print("".join((work / "dnsmasq.hosts").read_text().splitlines(keepends=True)[:3]), end="")

    step("3. Start the API server (XML-RPC, OpenNebula protocol)")
    server = ServeProcess(env["LXCLOUD_DB"], work / "serve.log", env=env)
    try:
        server.start()
        url = server.url
        api = xmlrpc.client.ServerProxy(url, allow_none=False)
        print(f"listening on {url}; {call(api, 'one.system.version', admin)}")

        step(f"4. {len(HOSTS)} hypervisors register at boot with their capacity and allowed MACs")
        for h, host in enumerate(HOSTS, start=1):
            macs = [f"02:00:0a:64:{h:02x}:{10 + n:02x}" for n in range(1, LEASES_PER_HOST + 1)]
            cap = BIG if h <= 4 else SMALL
            hid = call(
                api, "lxcloud.host.register", admin, host, cap, macs, {"libvirt_version": "9.0.0"}
            )
            print(
                f"  {host}: id {hid}, {cap['cpu']} cores, {cap['memory_mb']} MiB, {len(macs)} MACs"
            )
        lxcloud("host", "list", env=env)

        step("5. The golden image is captured and staged; hv06 has not verified it yet")
        name, version = IMAGE
        call(
            api,
            "lxcloud.image.register",
            admin,
            name,
            version,
            "ab" * 32,
            float(10 * 2**30),
            "raw",
            "zstd",
        )  # XML-RPC ints are 32-bit
        for host in HOSTS[:-1]:
            call(api, "lxcloud.host.image", admin, host, name, version, "ab" * 32, "verified")
        print(f"  {name} {version} verified on {', '.join(HOSTS[:-1])}")

        step(
            f"6. {opts.vms} batch VMs are requested (OpenNebula templates), plus 2 that fit nowhere"
        )
        tpl = (
            'NAME = "batch-{i:03d}"\nCPU = 1\nVCPU = 1\nMEMORY = 4096\n'
            f'DISK = [ IMAGE = "{name}" ]\nLIFETIME = 86400\n'
            'CONTEXT = [ BATCH_QUEUE = "grid" ]\n'
        )
        ids = [
            call(api, "one.vm.allocate", admin, tpl.format(i=i), False)
            for i in range(1, opts.vms + 1)
        ]
        for i in (1, 2):
            ids.append(
                call(
                    api,
                    "one.vm.allocate",
                    admin,
                    f'NAME = "huge-{i}"\nCPU = 16\nMEMORY = 65536\nDISK = [ IMAGE = "{name}" ]\n',
                    False,
                )
            )
        print(f"  VM ids {ids[0]}..{ids[-1]} PENDING")

        step("7. One scheduling cycle: each VM is bound to a free lease, which fixes its host")
        lxcloud("schedule", "--once", env=env)
        lxcloud("host", "list", env=env)

        step("8. A VM past its lifetime asks the API to terminate itself, with its own token")
        vm_id = int(ids[0])
        token = call(api, "lxcloud.vm.token", admin, vm_id)
        own = f"vm-{vm_id}:{token}"
        try:
            call(api, "one.vm.action", own, "terminate", int(ids[1]))
        except RuntimeError as exc:
            print(f"  its token on another VM is refused: {exc}")
        call(api, "one.vm.action", own, "terminate", vm_id)
        print(f"  VM {vm_id} asked to terminate itself: accepted")
        lxcloud("vm", "list", env=env)
    finally:
        server.stop()
    print(f"\nThe demo's database, lease file and server log are in {work}/")
    if not opts.farm:
        return 0
    problem = farm_unavailable()
    if problem:
        step("Part two, the real farm: skipped")
        print(f"  {problem}")
        return 0
    return Farm(work / "farm", max(3, min(6, opts.farm_vms))).run()


# -- part two: the real farm on a private testbed ------------------------------------------------
FARM_TB = {  # a testbed of its own: never collides with the shared test testbed (lxh*/lxbr0)
    "LXCLOUD_TESTBED_DIR": str(REPO / ".cache" / "demo-testbed"),
    "LXCLOUD_TESTBED_PREFIX": "lxdm",
    "LXCLOUD_TESTBED_BRIDGE": "lxdmbr0",
    "LXCLOUD_TESTBED_NET": "10.213.210.0/24",
}
FARM_HOSTS = ["lxdm1", "lxdm2", "lxdm3"]
VM_NET = "10.213.9"  # the VMs' slirp subnet (docs/context.md): not the API's 10.213.210.0/24
FARM_IMAGE = "batch-node"
TEST_IMAGE = REPO / ".cache" / "test-image"
SHARED_FILES = [  # what the hypervisor role installs in the root filesystem the hosts share
    "/usr/local/sbin/lxcloud-register",
    "/usr/local/lib/lxcloud",
    "/etc/init.d/lxcloud-register",
    "/etc/cron.d/lxcloud-heartbeat",
]


def farm_unavailable() -> str | None:
    """Why the real farm cannot run here, or None."""
    if os.geteuid() != 0:
        return "the real farm needs root (network namespaces, bind mounts, sshd)"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    for tool in ("ip", "unshare", "nsenter", "ssh", "libvirtd", "virsh", "qemu-system-x86_64"):
        if not shutil.which(tool, path=path):
            return f"{tool} is not installed (scripts/bootstrap installs it)"
    res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if res.returncode != 0:
        return f"network namespaces do not work here: {res.stderr.strip()}"
    return None


def stream(argv: list[str], env: dict[str, str], show: str | None = None,
           filt: re.Pattern[str] | None = None) -> str:
    """Run a command, printing its output as it comes (only lines matching ``filt``)."""
    print("$ " + (show or " ".join(argv)), flush=True)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    assert proc.stdout is not None
    out = []
    try:
        for line in proc.stdout:
            out.append(line)
            if filt is None or filt.search(line):
                print("  " + line.rstrip() if filt else line.rstrip(), flush=True)
    except BaseException:  # Ctrl-C, SIGTERM: stop the child too (it cancels its own work)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    rc = proc.wait()
    text = "".join(out)
    if rc != 0:
        if filt is not None:
            print(text[-4000:])
        raise SystemExit(f"demo: `{show or ' '.join(argv)}` failed with exit code {rc}")
    return text


class Farm:
    def __init__(self, work: Path, n_vms: int) -> None:
        self.work = work
        self.n_vms = n_vms
        self.tb_dir = Path(FARM_TB["LXCLOUD_TESTBED_DIR"])
        self.password = secrets.token_urlsafe(12)
        self.session = f"oneadmin:{self.password}"
        self.db = f"sqlite:///{work / 'lxcloud.db'}"
        self.env = dict(os.environ, **FARM_TB, LXCLOUD_DB=self.db,
                        LXCLOUD_ADMIN_PASSWORD=self.password, ANSIBLE_NOCOLOR="1",
                        PATH=f"{BIN}:{os.environ.get('PATH', '')}")
        self.server: ServeProcess | None = None
        self.figures: dict[str, float] = {}

    def testbed(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/usr/bin/python3", str(REPO / "testbed" / "testbed.py"), *args],
                              env=self.env, text=True, capture_output=True, check=check,
                              timeout=600)

    def ssh(self, host: str, command: str) -> str:
        return subprocess.run(["ssh", "-F", str(self.tb_dir / "ssh_config"), host, command],
                              capture_output=True, text=True, timeout=60).stdout

    def run(self) -> int:
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        installed_before = any(os.path.lexists(p) for p in SHARED_FILES)
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        t0 = time.monotonic()
        try:
            self._run()
            return 0
        except KeyboardInterrupt:
            print("\ndemo: interrupted; cleaning up", flush=True)
            return 130
        finally:
            step("F9. Tear the private testbed down (hosts, guests, daemons, links)")
            self._stop_server()
            res = self.testbed("down", "--force", check=False)
            print((res.stdout + res.stderr).strip() or "testbed down", flush=True)
            if not installed_before:
                subprocess.run(["update-rc.d", "-f", "lxcloud-register", "remove"],
                               capture_output=True, check=False)
                subprocess.run(["rm", "-rf", "--", *SHARED_FILES], check=False)
            signal.signal(signal.SIGTERM, old_term)
            self.figures["farm_total_s"] = time.monotonic() - t0
            print("\nfarm figures: " + ", ".join(f"{k} {v:.1f}"
                                                 for k, v in self.figures.items()))
            print(f"The farm's database, logs and image repository are in {self.work}/")

    def _stop_server(self) -> None:
        if self.server:
            self.server.stop()

    def _run(self) -> None:
        env = self.env
        step(f"F1. A private testbed: {len(FARM_HOSTS)} hypervisor hosts (network namespaces, "
             "each with its own sshd and libvirtd)")
        if (self.tb_dir / "state.json").exists():  # an earlier demo that did not finish
            self.testbed("down", "--force", check=False)
        t = time.monotonic()
        self.testbed("up", str(len(FARM_HOSTS)))
        self.figures["testbed_up_s"] = time.monotonic() - t
        print(self.testbed("status", check=False).stdout.rstrip())
        info = json.loads((self.tb_dir / "hosts.json").read_text())
        bridge_ip, inventory = info["bridge_ip"], info["inventory"]

        step(f"F2. The control plane on the testbed bridge {bridge_ip}, and the lease file "
             "(every lease pinned to one host)")
        lxcloud("db", "init", env=env)
        self.server = ServeProcess(self.db, self.work / "serve.log", bridge_ip, env=env).start()
        self.url = self.server.url
        print(f"API: {self.url}")
        rows = ["ip,mac,name,host"]
        for h, host in enumerate(FARM_HOSTS, start=1):
            for n in (1, 2):
                rows.append(f"{VM_NET}.{10 * h + n},52:54:00:d5:{h:02x}:{n:02x},"
                            f"wn{h}{n}.farm.test,{host}")
        (self.work / "leases.csv").write_text("\n".join(rows) + "\n")
        lxcloud("lease", "import", str(self.work / "leases.csv"), env=env)

        step("F3. The hypervisors playbook: every host is configured and registers itself "
             "through the API")
        hv_vars = self.work / "hypervisors-vars.json"
        fd = os.open(hv_vars, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"hypervisor_api_url": self.url, "hypervisor_api_session": self.session,
                       "hypervisor_apt_update_cache": False}, fh)
        t = time.monotonic()
        stream([str(BIN / "ansible-playbook"), "-i", inventory, "-e", f"@{hv_vars}",
                str(REPO / "playbooks" / "hypervisors.yml")], env,
               show="ansible-playbook -i INVENTORY playbooks/hypervisors.yml",
               filt=re.compile(r"^(PLAY RECAP|\S+\s+: ok=)"))
        self.figures["hypervisors_playbook_s"] = time.monotonic() - t
        lxcloud("host", "list", env=env)

        step("F4. The golden image: captured into the repository, registered, staged to every "
             "host with the chain strategy (verified and installed on each)")
        stream([str(REPO / "images" / "build-test-image"), str(TEST_IMAGE)], env,
               show="images/build-test-image", filt=re.compile(r"^$a"))
        version = (TEST_IMAGE / "golden.raw.sha256").read_text().split()[0][:12]
        repo = self.work / "repo"
        cap_vars = self.work / "capture-vars.json"
        fd = os.open(cap_vars, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"image_name": FARM_IMAGE, "image_version": version,
                       "image_source": str(TEST_IMAGE / "golden.raw"), "image_repo": str(repo),
                       "image_api_url": self.url, "image_api_session": self.session}, fh)
        stream([str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                "-e", f"@{cap_vars}", str(REPO / "playbooks" / "image_capture.yml")], env,
               show="ansible-playbook playbooks/image_capture.yml -e image_name=... "
               "image_source=golden.raw", filt=re.compile(r"sha256=|^localhost\s+: ok="))
        t = time.monotonic()
        stream([str(BIN / "lxcloud"), "image", "stage", FARM_IMAGE, "--version", version,
                "--strategy", "chain", "--inventory", inventory, "--repo", str(repo),
                "--api-url", self.url], env,
               show=f"lxcloud image stage {FARM_IMAGE} --strategy chain --inventory INVENTORY")
        self.figures["stage_chain_s"] = time.monotonic() - t

        step(f"F5. {self.n_vms} VMs are requested (one.vm.allocate); one scheduling cycle "
             "places them (the lease fixes the host)")
        api = xmlrpc.client.ServerProxy(self.url)
        tpl = ('NAME = "{name}"\nCPU = 0.5\nVCPU = 1\nMEMORY = 256\n'
               f'DISK = [ IMAGE = "{FARM_IMAGE}" ]\nLIFETIME = {{life}}\n'
               'CONTEXT = [ DRAIN_CHECK_INTERVAL = "1", BATCH_QUEUE = "grid" ]\n')
        ids = []
        for i in range(1, self.n_vms + 1):
            life = 8 if i == self.n_vms else 3600
            ids.append(int(call(api, "one.vm.allocate", self.session,
                                tpl.format(name=f"wn-{i}", life=life), False)))
        self.short = ids[-1]
        print(f"  VMs {ids[0]}..{ids[-1]} PENDING; VM {self.short} has LIFETIME = 8 s")
        lxcloud("schedule", "--once", env=env)

        step("F6. The executor deploys the batch: one vm_deploy.yml run through ansible-runner "
             "(clone, context ISO, define, start), per-VM results")
        deploy_vars = self.work / "deploy-vars.json"
        deploy_vars.write_text(json.dumps({
            "lxcloud_vm_network": "user",
            "lxcloud_vm_user_subnet": {"address": f"{VM_NET}.0", "prefix": 24},
            "lxcloud_vm_gateway": f"{VM_NET}.2", "lxcloud_vm_dns": f"{VM_NET}.3",
            "lxcloud_vm_kernel": str(TEST_IMAGE / "vmlinuz"),
            "lxcloud_vm_initrd": str(TEST_IMAGE / "initrd.img"),
            "lxcloud_vm_cmdline": "console=ttyS0 root=/dev/vda rootfstype=ext4 quiet",
        }))
        self.deploy_argv = [str(BIN / "lxcloud"), "deploy", "--once", "--inventory", inventory,
                            "--api-url", self.url, "--disk-backend", "qcow2",
                            "--runtime-dir", str(self.work / "runtime"),
                            "-e", f"@{deploy_vars}"]
        t = time.monotonic()
        stream(self.deploy_argv, env, show="lxcloud deploy --once --inventory INVENTORY "
               f"--api-url {self.url}")
        t_deployed = time.monotonic()
        self.figures[f"deploy_pass_{self.n_vms}_vms_s"] = t_deployed - t

        print("\nSerial consoles (/var/lib/lxcloud/disks/one-ID.console.log on each host):")
        placed = self._placements(ids)
        pending = dict(placed)
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            for host in sorted(set(pending.values())):
                found = self.ssh(host, "grep -H LXCLOUD-BOOTED "
                                 "/var/lib/lxcloud/disks/one-*.console.log 2>/dev/null")
                for ln in found.splitlines():
                    m = re.search(r"/one-(\d+)\.console\.log:(.*)", ln)
                    if m and int(m.group(1)) in pending:
                        print(f"  {host} one-{m.group(1)}: {m.group(2).strip()}", flush=True)
                        del pending[int(m.group(1))]
            time.sleep(0.5)
        if pending:
            raise SystemExit(f"demo: no boot marker from VMs {sorted(pending)}")
        self.figures["deploy_to_all_markers_s"] = time.monotonic() - t_deployed

        step(f"F7. VM {self.short} is past its lifetime: it asks the API to terminate itself "
             "(with its own token), the executor cleans up")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            doc = call(api, "one.vm.info", self.session, self.short)
            if "<LCM_STATE>12</LCM_STATE>" in str(doc):
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"demo: VM {self.short} did not ask to terminate in time")
        t_shutdown = time.monotonic()
        self.figures["deploy_to_self_terminate_s"] = t_shutdown - t_deployed
        host = placed[self.short]
        log_text = self.ssh(host, f"cat /var/lib/lxcloud/disks/one-{self.short}.console.log")
        for ln in log_text.splitlines():
            if "LXCLOUD-CALLBACK" in ln:
                print(f"  {host} one-{self.short}: {ln.strip()}")
        lxcloud("vm", "list", env=env)
        stream(self.deploy_argv, env, show="lxcloud deploy --once ...")
        self.figures["self_terminate_to_cleanup_s"] = time.monotonic() - t_shutdown
        left = self.ssh(host, f"virsh -q list --all --name; ls /var/lib/lxcloud/disks | "
                        f"grep -c '^one-{self.short}\\.' || true").split()
        print(f"  on {host}: domain one-{self.short} "
              f"{'still defined' if f'one-{self.short}' in left else 'gone'}, "
              f"{left[-1] if left else '?'} files of it left")
        lxcloud("lease", "list", "--host", host, env=env, check=False)

        step("F8. The farm now")
        lxcloud("host", "list", env=env)
        lxcloud("vm", "list", "--all", env=env)

    def _placements(self, ids: list[int]) -> dict[int, str]:
        res = subprocess.run([str(BIN / "lxcloud"), "vm", "list", "--all"], env=self.env,
                             capture_output=True, text=True, check=True)
        out = {}
        for line in res.stdout.splitlines():
            cols = line.split()
            if cols and cols[0].isdigit() and int(cols[0]) in ids and len(cols) > 3:
                out[int(cols[0])] = cols[3]
        return out


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
