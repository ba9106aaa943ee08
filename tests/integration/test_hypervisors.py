"""The hypervisor role on 3 testbed hosts against a real control plane.

``testbed/up 3``, ``lxcloud db init`` on a temporary SQLite database, ``lxcloud serve`` on the
testbed bridge (10.213.0.1), then ``playbooks/hypervisors.yml`` with the venv's
ansible-playbook over SSH. lxh1 and lxh2 read a local lease file, lxh3 gets its leases from
the control plane's lease table. Everything the tests look at comes from the API
(``one.hostpool.info``) or from the hosts over SSH.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible_collections.lxcloud.cloud.plugins.module_utils.api_client import ApiClient

from lxcloud_py.api.launcher import ServeProcess, free_port

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LISTEN_HOST = "10.213.0.1"
HOSTS = ["lxh1", "lxh2", "lxh3"]
# Local lease files (lxh1, lxh2) and the control plane's lease table (lxh3).
LOCAL_LEASES = {
    "lxh1": [
        {"ip": "10.213.1.11", "mac": "02:00:0a:d5:01:0b", "name": "vm11.lxcloud.test"},
        {"ip": "10.213.1.12", "mac": "02:00:0a:d5:01:0c", "name": "vm12.lxcloud.test"},
    ],
    "lxh2": [{"ip": "10.213.1.21", "mac": "02:00:0a:d5:01:15", "name": "vm21.lxcloud.test"}],
    "lxh3": [],
}
API_LEASES = [
    ("10.213.1.31", "02:00:0a:d5:01:1f", "vm31.lxcloud.test", "lxh3"),
    ("10.213.1.32", "02:00:0a:d5:01:20", "vm32.lxcloud.test", "lxh3"),
]
TIMINGS: dict[str, float] = {}
# What the role installs in the root filesystem, which all testbed hosts (and this machine)
# share; removed after the tests if it was not there before.
SHARED_FILES = [
    "/usr/local/sbin/lxcloud-register",
    "/usr/local/lib/lxcloud",
    "/etc/init.d/lxcloud-register",
    "/etc/cron.d/lxcloud-heartbeat",
]


CRON_RUNNING = 'kill -0 "$(cat /run/crond.pid 2>/dev/null)" 2>/dev/null'


def remove_shared_files() -> None:
    subprocess.run(["update-rc.d", "-f", "lxcloud-register", "remove"], capture_output=True,
                   check=False)
    subprocess.run(["rm", "-rf", "--", *SHARED_FILES], check=True)


class ControlPlane:
    """``lxcloud serve`` on the testbed bridge with a temporary SQLite database."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.db = f"sqlite:///{workdir / 'lxcloud.db'}"
        self.password = secrets.token_urlsafe(16)
        self.session = f"oneadmin:{self.password}"
        self.port = free_port(LISTEN_HOST)
        self.url = f"http://{LISTEN_HOST}:{self.port}/RPC2"
        self.server: ServeProcess | None = None

    def lxcloud(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BIN / "lxcloud", "--db", self.db, *args],
            capture_output=True, text=True, check=check, timeout=120,
        )

    def start(self, *serve_args: str) -> None:
        if not (self.dir / "lxcloud.db").exists():
            self.lxcloud("db", "init", "--admin-password", self.password)
        self.server = ServeProcess(self.db, self.dir / "serve.log", LISTEN_HOST, self.port,
                                   serve_args).start()

    def stop(self) -> None:
        if self.server:
            self.server.stop()

    @property
    def client(self) -> ApiClient:
        return ApiClient(self.url, self.session, retries=0)

    def pool(self) -> dict[str, dict]:
        hosts = self.client.hostpool()
        names = [h["name"] for h in hosts]
        assert len(names) == len(set(names)), f"duplicate hosts in one.hostpool.info: {names}"
        return {h["name"]: h for h in hosts}


def ssh(testbed_dir: Path, host: str, *argv: str, check: bool = True,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    # ssh hands the remote shell one string: quote each argument.
    return subprocess.run(
        ["ssh", "-F", str(testbed_dir / "ssh_config"), host, "--", shlex.join(argv)],
        capture_output=True, text=True, check=check, timeout=120, input=stdin,
    )


def run_playbook(cp: ControlPlane, inventory: Path, workdir: Path, *extra: str):
    extra_vars = {
        "hypervisor_api_url": cp.url,
        "hypervisor_api_session": cp.session,
        "hypervisor_apt_update_cache": False,
        "lxcloud_test_leases": LOCAL_LEASES,
        "hypervisor_local_leases": "{{ lxcloud_test_leases[inventory_hostname] }}",
    }
    vars_file = workdir / "extra-vars.json"
    vars_file.write_text(json.dumps(extra_vars))
    vars_file.chmod(0o600)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    t0 = time.monotonic()
    proc = subprocess.run(
        [BIN / "ansible-playbook", "-i", str(inventory), "-e", f"@{vars_file}",
         str(REPO / "playbooks" / "hypervisors.yml"),
         # The testbed may hold more hosts (other tests): these tests own lxh1..3.
         *([] if "--limit" in extra else ["--limit", ",".join(HOSTS)]), *extra],
        capture_output=True, text=True, env=env, timeout=900, check=False,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return proc.stdout, elapsed


def recap(stdout: str) -> dict[str, dict[str, int]]:
    out = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", stdout, re.M):
        out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return out


@pytest.fixture(scope="module")
def farm(testbed_factory, tmp_path_factory) -> Iterator[dict]:
    """3 testbed hosts, a control plane, and the hypervisors playbook run once."""
    tb = testbed_factory(3)
    tb_dir, inventory = Path(tb.dir), Path(tb.inventory)
    work = tmp_path_factory.mktemp("hypervisors")
    installed_before = any(os.path.lexists(p) for p in SHARED_FILES)
    # The role starts cron on hosts without it; stop those crons again afterwards.
    cron_before = {h: ssh(tb_dir, h, "sh", "-c", CRON_RUNNING, check=False).returncode == 0
                   for h in HOSTS}
    cp = ControlPlane(work)
    cp.start()
    try:
        csv = work / "api-leases.csv"
        csv.write_text("ip,mac,name,host\n" + "".join(",".join(r) + "\n" for r in API_LEASES))
        cp.lxcloud("lease", "import", str(csv))
        # A previous run on the same testbed may have left lease files behind.
        for h in HOSTS:
            ssh(tb_dir, h, "rm", "-f", "/etc/lxcloud/leases.csv")
        out, first = run_playbook(cp, inventory, work)
        TIMINGS["playbook_first_s"] = first
        yield {"cp": cp, "tb_dir": tb_dir, "inventory": inventory, "work": work,
               "first_stdout": out}
    finally:
        cp.stop()
        for h in HOSTS:
            ssh(tb_dir, h, "rm", "-f", "/etc/lxcloud/leases.csv", check=False)
            if not cron_before[h]:
                ssh(tb_dir, h, "sh", "-c", f'{CRON_RUNNING} && kill "$(cat /run/crond.pid)"',
                    check=False)
        if not installed_before:
            remove_shared_files()
        print(f"\nhypervisors playbook timings (3 hosts): {TIMINGS}")


def expected_macs(host: str) -> list[str]:
    if LOCAL_LEASES[host]:
        return sorted(x["mac"] for x in LOCAL_LEASES[host])
    return sorted(r[1] for r in API_LEASES if r[3] == host)


def test_hostpool_lists_the_hosts_with_capacity_and_macs(farm):
    pool = farm["cp"].pool()
    assert set(HOSTS) <= set(pool)
    with open("/proc/meminfo") as fh:
        mem_mb = int(fh.readline().split()[1]) // 1024
    for h in HOSTS:
        rec = pool[h]
        assert rec["state"] == 2, rec  # MONITORED
        assert rec["cpu"] == os.cpu_count()  # testbed hosts share this machine's CPUs
        assert rec["memory_mb"] == mem_mb
        assert rec["disk_mb"] > 0
        assert rec["macs"] == expected_macs(h), h
    # The first run did something on every host.
    first = recap(farm["first_stdout"])
    assert all(first[h]["changed"] > 0 for h in HOSTS), first


def test_second_run_changes_nothing(farm):
    out, _ = run_playbook(farm["cp"], farm["inventory"], farm["work"], "--check", "--diff")
    rc = recap(out)
    assert {h: rc[h]["changed"] for h in HOSTS} == dict.fromkeys(HOSTS, 0), out[-3000:]
    out, second = run_playbook(farm["cp"], farm["inventory"], farm["work"])
    TIMINGS["playbook_second_s"] = second
    rc = recap(out)
    assert set(HOSTS) <= set(rc)
    assert {h: rc[h]["changed"] for h in HOSTS} == dict.fromkeys(HOSTS, 0), out[-3000:]
    assert all(rc[h]["failed"] == 0 and rc[h]["unreachable"] == 0 for h in HOSTS)


def test_boot_script_re_registers_without_duplicates(farm):
    cp, tb_dir = farm["cp"], farm["tb_dir"]
    before = cp.pool()
    p = ssh(tb_dir, "lxh2", "/etc/init.d/lxcloud-register", "start")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["host"] == "lxh2" and out["action"] == "register" and not out["changed"]
    assert out["host_id"] == before["lxh2"]["id"]
    after = cp.pool()
    assert set(after) == set(before)
    assert after["lxh2"]["id"] == before["lxh2"]["id"]
    assert after["lxh2"]["macs"] == before["lxh2"]["macs"]
    log = ssh(tb_dir, "lxh2", "tail", "-n", "1", "/var/log/lxcloud/register.log").stdout
    assert '"action": "register"' in log


def test_local_lease_file_change_shows_up(farm):
    cp, tb_dir = farm["cp"], farm["tb_dir"]
    new = "10.213.1.13,02:00:0a:d5:01:0d,vm13.lxcloud.test,lxh1\n"
    ssh(tb_dir, "lxh1", "sh", "-c", "cat >> /etc/lxcloud/leases.csv", stdin=new)
    try:
        p = ssh(tb_dir, "lxh1", "/etc/init.d/lxcloud-register", "start")
        assert json.loads(p.stdout.strip().splitlines()[-1])["changed"] is True
        assert cp.pool()["lxh1"]["macs"] == sorted([*expected_macs("lxh1"), "02:00:0a:d5:01:0d"])
    finally:
        # Put the file back as the role writes it, and register again.
        run_playbook(farm["cp"], farm["inventory"], farm["work"], "--limit", "lxh1")
    assert cp.pool()["lxh1"]["macs"] == expected_macs("lxh1")


def test_control_plane_lease_change_shows_up(farm):
    cp, tb_dir = farm["cp"], farm["tb_dir"]
    csv = farm["work"] / "api-leases-2.csv"
    rows = [*API_LEASES, ("10.213.1.33", "02:00:0a:d5:01:21", "vm33.lxcloud.test", "lxh3")]
    csv.write_text("ip,mac,name,host\n" + "".join(",".join(r) + "\n" for r in rows))
    cp.lxcloud("lease", "import", str(csv))
    assert cp.pool()["lxh3"]["macs"] == expected_macs("lxh3")  # not yet: the host reports it
    p = ssh(tb_dir, "lxh3", "/usr/local/sbin/lxcloud-register")
    out = json.loads(p.stdout)
    assert out["changed"] and out["lease_source"] == "api"
    assert cp.pool()["lxh3"]["macs"] == sorted(
        [*expected_macs("lxh3"), "02:00:0a:d5:01:21"]
    )


def test_stopped_host_goes_to_error_and_comes_back(farm):
    """lxh3's cron (which sends its heartbeat) is stopped; lxh1 and lxh2 keep sending
    heartbeats (faster than their cron would). The control plane's staleness monitor
    (``lxcloud serve --monitor-interval 1.5 --missed-intervals 2``) turns lxh3 to ERROR and
    leaves the others MONITORED; lxh3's next heartbeat brings it back."""
    cp, tb_dir = farm["cp"], farm["tb_dir"]
    beat = ["/usr/local/sbin/lxcloud-register", "--heartbeat", "--quiet"]

    def heartbeat(*names: str) -> None:
        procs = [
            subprocess.Popen(["ssh", "-F", str(tb_dir / "ssh_config"), h, "--", shlex.join(beat)])
            for h in names
        ]
        assert [p.wait(60) for p in procs] == [0] * len(names)

    # The role started a cron per host (its pid file is in the host's own /run).
    for h in HOSTS:
        ssh(tb_dir, h, "sh", "-c", 'kill -0 "$(cat /run/crond.pid)"')
    ssh(tb_dir, "lxh3", "sh", "-c", 'kill "$(cat /run/crond.pid)"')
    cp.stop()
    cp.start("--monitor-interval", "1.5", "--missed-intervals", "2")
    try:
        heartbeat(*HOSTS)
        seen_error = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not seen_error:
            heartbeat("lxh1", "lxh2")
            pool = cp.pool()
            seen_error = pool["lxh3"]["state"] == 3  # ERROR
            time.sleep(0.3)
        assert seen_error, "lxh3 never went to ERROR"
        heartbeat("lxh1", "lxh2")
        pool = cp.pool()
        assert pool["lxh1"]["state"] == 2 and pool["lxh2"]["state"] == 2
        assert pool["lxh3"]["state"] == 3
        heartbeat("lxh3")
        assert cp.pool()["lxh3"]["state"] == 2  # MONITORED again
    finally:
        cp.stop()
        cp.start()
        ssh(tb_dir, "lxh3", "cron", check=False)  # as the role left it


def test_lvm_backend_creates_the_vg_once_and_registers_its_size(farm, tmp_path):
    """Backend lvm on lxh1: the role creates the VG on a loop device (pvcreate/vgcreate work
    here; LVs do not, and the role creates none), registers the VG's size, and a second run
    changes nothing. lxh1 is put back on the dir backend afterwards."""
    import shutil

    if shutil.which("vgcreate") is None or shutil.which("losetup") is None:
        pytest.skip("lvm2/losetup not installed")
    backing = tmp_path / "pv.img"
    with open(backing, "wb") as fh:
        fh.truncate(64 << 20)
    loop = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                          text=True, check=False)
    if loop.returncode != 0:
        pytest.skip(f"no loop device: {loop.stderr.strip()}")
    dev = loop.stdout.strip()
    vg = f"lxtest_{secrets.token_hex(4)}"
    lvm = ["-e", json.dumps({"hypervisor_storage_backend": "lvm", "hypervisor_storage_vg": vg,
                             "hypervisor_storage_pvs": [dev]}), "--limit", "lxh1"]
    try:
        out, _ = run_playbook(farm["cp"], farm["inventory"], farm["work"], *lvm)
        assert recap(out)["lxh1"]["changed"] > 0
        vgs = subprocess.run(
            ["vgs", "--reportformat", "json", "--units", "m", "--nosuffix", "-o",
             "vg_name,vg_size,pv_name", "--", vg],
            capture_output=True, text=True, check=True,
        )
        row = json.loads(vgs.stdout)["report"][0]["vg"][0]
        assert row["vg_name"] == vg
        assert farm["cp"].pool()["lxh1"]["disk_mb"] == int(float(row["vg_size"]))
        out, _ = run_playbook(farm["cp"], farm["inventory"], farm["work"], *lvm)
        assert recap(out)["lxh1"]["changed"] == 0, out[-3000:]
    finally:
        subprocess.run(["vgremove", "-f", "--", vg], capture_output=True, check=False)
        subprocess.run(["pvremove", "-f", "--", dev], capture_output=True, check=False)
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)
    run_playbook(farm["cp"], farm["inventory"], farm["work"], "--limit", "lxh1")
    assert farm["cp"].pool()["lxh1"]["disk_mb"] != int(float(row["vg_size"]))


def test_host_facts_on_a_testbed_host(farm):
    """The probe over SSH with /usr/bin/python3 and Debian's python3-libvirt: the host's own
    libvirtd (qemu:///system inside its namespaces) and staged image sidecars."""
    tb_dir = farm["tb_dir"]
    d = "/tmp/lxcloud-facts-test"  # the host's private /tmp
    sidecar = json.dumps({"name": "golden", "version": "7", "sha256": "ab" * 32, "size": 1})
    ssh(tb_dir, "lxh2", "sh", "-c",
        f"mkdir -p {d} && printf x > {d}/golden-7.raw && cat > {d}/golden-7.json", stdin=sidecar)
    try:
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
                   ANSIBLE_CALLBACK_RESULT_FORMAT="json", ANSIBLE_NOCOLOR="1")
        p = subprocess.run(
            [BIN / "ansible", "-i", str(farm["inventory"]), "lxh2", "--check",
             "-m", "lxcloud.cloud.host_facts", "-a", json.dumps({"images_dir": d})],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )
        assert p.returncode == 0, p.stdout + p.stderr
        facts = json.loads(p.stdout.split(" => ", 1)[1])
        assert facts["changed"] is False
        host = facts["host"]
        virsh = ssh(tb_dir, "lxh2", "virsh", "-r", "-c", "qemu:///system", "version",
                    "--daemon").stdout
        assert host["name"] == "lxh2"
        assert host["libvirt"]["available"] and host["libvirt"]["via"] == "python"
        assert f"Running against daemon: {host['libvirt']['version']}" in virsh
        assert host["libvirt"]["hypervisor"] == "qemu"
        running = ssh(tb_dir, "lxh2", "virsh", "-r", "-c", "qemu:///system", "list",
                      "--name", "--state-running").stdout.split()
        assert host["libvirt"]["domains"] == sorted(running)
        assert host["images"] == [{"file": "golden-7.json", "name": "golden", "version": "7",
                                   "sha256": "ab" * 32, "size": 1, "present": True}]
        assert host["macs"] == expected_macs("lxh2")
    finally:
        ssh(tb_dir, "lxh2", "rm", "-rf", d, check=False)
