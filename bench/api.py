#!/usr/bin/env python3
"""API throughput over a real socket: the calls a farm of hundreds of hypervisors and
thousands of VM callbacks makes.

Starts the XML-RPC server on a free loopback port over a fresh SQLite database, registers
``--hosts`` hosts and allocates ``--vms`` VMs through the API, then measures heartbeats per
second from ``--threads`` client threads, ``one.vm.info`` with admin and with VM-token
sessions, and the cost of the pool documents. Prints figures and ratios; asserts nothing.

    .venv/bin/python bench/api.py [--hosts 500] [--vms 2000] [--threads 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import xmlrpc.client
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lxcloud_py import users, vms
from lxcloud_py.api import ApiServer
from lxcloud_py.store import Store

SESSION = "oneadmin:bench"
TEMPLATE = 'CPU = 0.5\nMEMORY = 512\nDISK = [ IMAGE = "golden" ]\nLIFETIME = 3600\n'


def timed(n: int, threads: int, call) -> float:
    """Calls per second of ``call(i, proxy)`` for i in range(n), over ``threads`` threads."""
    counter = iter(range(n))
    lock = threading.Lock()

    def worker(url: str) -> None:
        proxy = xmlrpc.client.ServerProxy(url)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            reply = call(i, proxy)
            if reply[0] is not True:
                raise RuntimeError(reply)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(URL,)) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return n / (time.perf_counter() - t0)


def main() -> int:
    global URL
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=500)
    ap.add_argument("--vms", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lxcloud-bench-api-") as tmp:
        store = Store(f"sqlite:///{tmp}/lxcloud.db")
        store.create_schema()
        users.ensure_admin(store, "bench")
        server = ApiServer(store, ("127.0.0.1", 0))
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        URL = f"http://127.0.0.1:{server.port}/RPC2"
        try:
            cap = {"cpu": 32.0, "memory_mb": 131072, "disk_mb": 500000}
            rate = timed(
                args.hosts,
                args.threads,
                lambda i, p: p.lxcloud.host.register(
                    SESSION, f"hv{i:04d}", cap, [f"52:54:00:00:{i // 256:02x}:{i % 256:02x}"], {}
                ),
            )
            print(f"host.register      {args.hosts:6d} calls  {rate:8.0f} /s")
            rate = timed(args.vms, args.threads, lambda i, p: p.one.vm.allocate(SESSION, TEMPLATE))
            print(f"vm.allocate        {args.vms:6d} calls  {rate:8.0f} /s")
            hb = timed(
                args.hosts * 2,
                args.threads,
                lambda i, p: p.lxcloud.host.heartbeat(
                    SESSION, f"hv{i % args.hosts:04d}", {"disk_free_mb": 1000}
                ),
            )
            print(f"host.heartbeat     {args.hosts * 2:6d} calls  {hb:8.0f} /s")
            n = min(args.vms, 1000)
            admin = timed(n, args.threads, lambda i, p: p.one.vm.info(SESSION, i + 1))
            print(f"vm.info (admin)    {n:6d} calls  {admin:8.0f} /s")
            tokens = {i + 1: vms.issue_token(store, i + 1) for i in range(n)}
            vm = timed(
                n, args.threads, lambda i, p: p.one.vm.info(f"vm-{i + 1}:{tokens[i + 1]}", i + 1)
            )
            print(f"vm.info (token)    {n:6d} calls  {vm:8.0f} /s")
            proxy = xmlrpc.client.ServerProxy(URL)
            t0 = time.perf_counter()
            body = proxy.one.vmpool.info(SESSION, -2, -1, -1, -1)[1]
            pool_s = time.perf_counter() - t0
            print(
                f"vmpool.info        {args.vms:6d} VMs    {pool_s:8.3f} s  {len(body) / 1e6:.1f} MB"
            )
            t0 = time.perf_counter()
            body = proxy.one.hostpool.info(SESSION)[1]
            hpool_s = time.perf_counter() - t0
            print(
                f"hostpool.info      {args.hosts:6d} hosts  {hpool_s:8.3f} s  "
                f"{len(body) / 1e6:.1f} MB"
            )
            interval = 60.0
            print(
                f"heartbeat capacity at one per host per {interval:.0f} s: "
                f"{hb * interval:.0f} hosts ({hb * interval / args.hosts:.0f}x this farm)"
            )
            print(f"token vs admin session cost ratio: {admin / vm:.2f}")
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
            store.dispose()
    return 0


URL = ""

if __name__ == "__main__":
    sys.exit(main())
