"""The demo farm on the embedded default (SQLite), as an operator and the hosts would drive it.

Every step runs the real thing: the ``lxcloud`` command for the operator's steps, and the
XML-RPC API over a socket (OpenNebula's protocol) for what hosts and VMs do. Run it with
``make demo``; it leaves its database and files in ``demo/`` for a look afterwards.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("demo: the API server exited early (see demo/serve.log)")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("demo: the API server did not listen in time")


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
    port = free_port()
    log = open(work / "serve.log", "wb")  # noqa: SIM115 - the server writes it until the end
    server = subprocess.Popen(
        [str(BIN / "lxcloud"), "serve", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        wait_listening(port, server)
        url = f"http://127.0.0.1:{port}/RPC2"
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
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    print(f"\nThe demo's database, lease file and server log are in {work}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
