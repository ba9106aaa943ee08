#!/usr/bin/env python3
"""Clone + define + start latency of one VM, per disk backend; with --guest, clone latency of
LVM classic and thin snapshots next to qcow2 overlays and reflink copies in the LVM guest.

For each backend (qcow2 overlay, reflink on a btrfs loop filesystem made here, plain sparse
copy; lvm is reported as skipped with the reason when device-mapper is missing) it runs N
iterations of: clone the golden image (lxcloud's disk_backends), write the context ISO, define
the domain (ElementTree XML, software emulation) and start it; then forces it off, undefines it
and removes its files (teardown, timed apart).  Prints p50/p99 per phase and backend, and the
ratios of the totals to qcow2's.  Cleans up everything it created (domains, files, mount, loop
device; libvirtd only if it started it).

    sudo .venv/bin/python bench/clone_latency.py [-n 10] [--data-mb 256]

The golden image is the test image (images/build-test-image) padded with --data-mb MiB of
random data after its filesystem, so that copying it costs what copying real data costs.

    sudo .venv/bin/python bench/clone_latency.py --guest [-n 50] [--data-mb 64]

--guest boots (or reuses) the LVM guest (testbed/lvm-guest: device-mapper, software emulation)
and runs there, in one python3 process, N clones per backend with lxcloud's disk_backends
(what lxcloud.cloud.disk does, without Ansible): lvm-classic (lvcreate -s -L 8M of a plain LV),
lvm-thin (lvcreate -s of a thin LV), qcow2 (overlay) and reflink (cp --reflink=always), the file
backends on an xfs (reflink=1) filesystem on an LV of the same disk.  Clones are kept until all N
are made (the Nth snapshot of an origin is not the first).  Prints p50/p99 of the whole clone
(lvs/qemu-img checks included) and of the creating command alone; then removes everything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from ansible_collections.lxcloud.cloud.plugins.module_utils import context as ctx  # noqa: E402
from ansible_collections.lxcloud.cloud.plugins.module_utils import disk_backends as db  # noqa: E402
from ansible_collections.lxcloud.cloud.plugins.module_utils import domain as D  # noqa: E402

IMAGE = os.path.join(REPO, ".cache", "test-image")


def run(argv):
    p = subprocess.run(argv, capture_output=True, text=True, check=False)
    return p.returncode, p.stdout, p.stderr


def pct(values, q):
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, round(q / 100 * (len(s) - 1))))
    return s[k]


def make_golden(path, data_mb):
    shutil.copyfile(os.path.join(IMAGE, "golden.raw"), path)
    with open(path, "r+b") as f:
        f.seek(0, os.SEEK_END)
        chunk = os.urandom(1024 * 1024)
        for _ in range(data_mb):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())  # staged images are on disk; a first reflink would flush them
    os.chmod(path, 0o644)


class LoopBtrfs:
    def __init__(self, size_mb):
        self.top = tempfile.mkdtemp(prefix="lxvm-bench-btrfs-", dir="/var/tmp")
        self.img = os.path.join(self.top, "fs.img")
        self.mnt = os.path.join(self.top, "mnt")
        self.loop = None
        self.mounted = False
        os.mkdir(self.mnt)
        with open(self.img, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)

    def __enter__(self):
        rc, out, err = run(["losetup", "-f", "--show", self.img])
        if rc != 0:
            raise RuntimeError("losetup: " + err)
        self.loop = out.strip()
        mount = ["mount", "-t", "btrfs", self.loop, self.mnt]
        for argv in (["mkfs.btrfs", "-q", self.loop], mount):
            rc, out, err = run(argv)
            if rc != 0:
                raise RuntimeError(f"{argv[0]}: {err}")
        self.mounted = True
        for d in (self.top, self.mnt):
            os.chmod(d, 0o755)  # noqa: S103 - qemu (libvirt-qemu) must traverse it
        return self.mnt

    def __exit__(self, *exc):
        if self.mounted:
            run(["umount", self.mnt])
        if self.loop:
            run(["losetup", "-d", self.loop])
        shutil.rmtree(self.top, ignore_errors=True)


def lvm_reason():
    top = tempfile.mkdtemp(prefix="lxvm-bench-lvm-", dir="/var/tmp")
    img = os.path.join(top, "pv.img")
    with open(img, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    vg = "lxvmbench" + uuid.uuid4().hex[:6]
    loop = None
    try:
        rc, out, err = run(["losetup", "-f", "--show", img])
        if rc != 0:
            return "losetup failed: " + err.strip()
        loop = out.strip()
        run(["pvcreate", "-q", loop])
        run(["vgcreate", "-q", vg, loop])
        rc, out, err = run(["lvcreate", "-q", "-L", "16M", "-n", "golden", vg])
        if rc != 0:
            lines = [x.strip() for x in err.splitlines() if "device-mapper" in x]
            return ("lvcreate fails: " + (lines[0] if lines else err.strip()[-200:])
                    + "; --guest measures lvm in the LVM guest")
        return "lvm works here, but this benchmark drives lvm in the LVM guest: use --guest"
    finally:
        run(["vgremove", "-f", "-q", vg])
        if loop:
            run(["pvremove", "-f", "-q", loop])
            run(["losetup", "-d", loop])
        shutil.rmtree(top, ignore_errors=True)


def one(conn, backend, golden, disks, i):
    name = f"lxvm-bench-{backend}-{i}-{uuid.uuid4().hex[:4]}"
    ext = "qcow2" if backend == "qcow2" else "raw"
    t = {}
    t0 = time.perf_counter()
    spec = db.CloneSpec(f"{name}.{ext}", backend, golden, directory=disks, base_format="raw")
    db.ensure_present(run, spec)
    t1 = time.perf_counter()
    cspec = ctx.ContextSpec(f"{name}.context.iso", disks)
    ctx.ensure_present(run, cspec, {"NAME": name, "ETH0_IP": "10.0.2.15", "VMID": i})
    t2 = time.perf_counter()
    want = D.make_spec(
        name=name, disk=spec.path, disk_format=ext, virt_type="qemu", memory_mb=128,
        context=cspec.path, kernel=os.path.join(IMAGE, "vmlinuz"),
        initrd=os.path.join(IMAGE, "initrd.img"), cmdline="console=ttyS0 root=/dev/vda",
        network="user", console_log=os.path.join(disks, f"{name}.console.log"),
    )
    dom = D.define(conn, D.build_xml(want))
    t3 = time.perf_counter()
    D.start(dom)
    t4 = time.perf_counter()
    t.update(clone=t1 - t0, context=t2 - t1, define=t3 - t2, start=t4 - t3, total=t4 - t0)
    gone = D.DomainRequest(name, "absent", storage_dir=disks, remove_console_log=True)
    r = D.ensure(conn, gone)
    t["teardown"] = time.perf_counter() - t4
    assert r["state"] == "absent"
    leftovers = [f for f in os.listdir(disks) if name in f]
    assert not leftovers, leftovers
    return t


GUEST_VG = "lxlvmbench"
GUEST_MNT = "/mnt/lxlvm-bench"
GUEST_BACKENDS = ("lvm-classic", "lvm-thin", "qcow2", "reflink")


def in_lvm_guest():
    """True only inside the LVM guest (its kernel command line and hostname): --in-guest makes
    a volume group on /dev/vda, which on a host may be its root disk."""
    try:
        with open("/proc/cmdline") as f:
            cmdline = f.read().split()
    except OSError:
        return False
    return any(a.startswith("lxlvm.state=") for a in cmdline) and os.uname()[1] == "lxlvm-guest"


def sh(*argv):
    rc, out, err = run(list(argv))
    if rc != 0:
        raise RuntimeError(f"{' '.join(argv)}: rc={rc} {err.strip()}")
    return out


def guest_bench(n, data_mb):
    """Runs in the guest: N clones per backend; returns {backend: {clone: [s], create: [s]}}."""
    if not in_lvm_guest():
        sys.exit("--in-guest runs only inside the LVM guest (testbed/lvm-guest); refusing")
    golden_src = os.path.join(IMAGE, "golden.raw")
    size = os.path.getsize(golden_src) + data_mb * 2**20
    for vg in sh("vgs", "--noheadings", "-o", "vg_name").split():
        sh("vgremove", "-ff", "-y", vg)
    run(["pvremove", "-ff", "-y", "/dev/vda"])
    sh("wipefs", "-qa", "/dev/vda")
    sh("vgcreate", "-q", "-y", GUEST_VG, "/dev/vda")
    local = "/var/tmp/lxlvm-golden.raw"
    make_golden_from(golden_src, local, data_mb)
    sh("lvcreate", "-q", "-y", "-L", f"{size}b", "-n", "golden", GUEST_VG)
    sh("lvcreate", "-q", "-y", "--type", "thin-pool", "-L", "1G", "-n", "pool", GUEST_VG)
    sh("lvcreate", "-q", "-y", "-V", f"{size}b", "-T", f"{GUEST_VG}/pool", "-n", "tgolden")
    sh("lvcreate", "-q", "-y", "-L", "1G", "-n", "files", GUEST_VG)
    for lv in ("golden", "tgolden"):
        sh("dd", f"if={local}", f"of=/dev/{GUEST_VG}/{lv}", "bs=4M", "conv=fsync", "status=none")
    sh("mkfs.xfs", "-q", "-m", "reflink=1", f"/dev/{GUEST_VG}/files")
    os.makedirs(GUEST_MNT, exist_ok=True)
    sh("mount", f"/dev/{GUEST_VG}/files", GUEST_MNT)
    results = {}
    try:
        golden = os.path.join(GUEST_MNT, "golden.raw")
        shutil.copyfile(local, golden)
        with open(golden, "rb+") as f:
            os.fsync(f.fileno())
        os.unlink(local)
        for backend in GUEST_BACKENDS:
            created = []
            times = {"clone": [], "create": []}

            def timed(argv, _t=times):
                t0 = time.perf_counter()
                r = run(argv)
                if argv[0] in ("lvcreate", "cp") or argv[:2] == ["qemu-img", "create"]:
                    _t["create"].append(time.perf_counter() - t0)
                return r

            for i in range(n):
                if backend.startswith("lvm"):
                    thin = backend == "lvm-thin"
                    spec = db.CloneSpec(f"vm{i}", "lvm", "tgolden" if thin else "golden",
                                        vg=GUEST_VG, size=None if thin else "8M",
                                        lvm_snapshot="thin" if thin else "classic")
                else:
                    spec = db.CloneSpec(f"vm{i}.{backend}", backend, golden,
                                        directory=GUEST_MNT, base_format="raw")
                t0 = time.perf_counter()
                db.ensure_present(timed, spec)
                times["clone"].append(time.perf_counter() - t0)
                created.append(spec)
            for spec in created:
                db.ensure_absent(run, spec)
            results[backend] = times
    finally:
        run(["umount", GUEST_MNT])
        run(["vgremove", "-ff", "-y", GUEST_VG])
        run(["pvremove", "-ff", "-y", "/dev/vda"])
    return {"iterations": n, "golden_mib": size / 2**20, "results": results}


def make_golden_from(src, path, data_mb):
    shutil.copyfile(src, path)
    with open(path, "r+b") as f:
        f.seek(0, os.SEEK_END)
        for _ in range(data_mb):
            f.write(os.urandom(1024 * 1024))
        f.flush()
        os.fsync(f.fileno())


def guest_main(args):
    """On the host: boot (or reuse) the LVM guest, run the clones there, print the table."""
    import importlib.util

    if os.geteuid() != 0:
        sys.exit("needs root (the LVM guest runs under libvirt's system instance)")
    subprocess.run([os.path.join(REPO, "images", "build-test-image")], check=True,
                   capture_output=True)
    spec = importlib.util.spec_from_file_location(
        "lxcloud_lvm_guest", os.path.join(REPO, "testbed", "lvm_guest.py"))
    lg = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = lg
    spec.loader.exec_module(lg)
    guest = lg.Guest()
    st = guest.up()
    try:
        coll = "/tmp/lxlvm-bench-collections"
        remote = (f"mkdir -p {coll}/ansible_collections/lxcloud && "
                  f"ln -sfn {REPO} {coll}/ansible_collections/lxcloud/cloud && "
                  f"PYTHONPATH={coll} /usr/bin/python3 {os.path.abspath(__file__)} --in-guest "
                  f"-n {int(args.iterations)} --data-mb {int(args.data_mb)}")
        p = subprocess.run(guest.ssh_argv(remote), capture_output=True, text=True, check=False)
        if p.returncode != 0:
            sys.exit(f"the guest bench failed (rc={p.returncode}): {p.stderr[-3000:]}")
        doc = json.loads(p.stdout)
    finally:
        if st.get("started"):
            guest.down()
    print(f"clone latency in the LVM guest (software emulation, 1 vCPU), {doc['iterations']} "
          f"clones per backend kept until the last, golden image {doc['golden_mib']:.0f} MiB, "
          "times in ms")
    print(f"{'backend':<12}{'clone p50':>11}{'p99':>9}{'create cmd p50':>16}{'p99':>9}")
    res = doc["results"]
    for backend, t in res.items():
        c = [x * 1000 for x in t["clone"]]
        k = [x * 1000 for x in t["create"]]
        print(f"{backend:<12}{statistics.median(c):>11.0f}{pct(c, 99):>9.0f}"
              f"{statistics.median(k):>16.0f}{pct(k, 99):>9.0f}")
    if "qcow2" in res:
        ref = statistics.median(res["qcow2"]["clone"])
        print("clone p50 relative to qcow2: " + ", ".join(
            f"{b} {statistics.median(t['clone']) / ref:.2f}x" for b, t in res.items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--iterations", type=int, default=10)
    ap.add_argument("--data-mb", type=int, default=256,
                    help="MiB of random data appended to the golden image (default 256)")
    ap.add_argument("--backends", default="qcow2,reflink,copy,lvm")
    ap.add_argument("--guest", action="store_true",
                    help="measure lvm-classic, lvm-thin, qcow2 and reflink clones in the LVM "
                         "guest (default -n 50, --data-mb 64)")
    ap.add_argument("--in-guest", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.guest or args.in_guest:
        if "-n" not in sys.argv and "--iterations" not in sys.argv:
            args.iterations = 50
        if "--data-mb" not in sys.argv:
            args.data_mb = 64
    if args.in_guest:
        print(json.dumps(guest_bench(args.iterations, args.data_mb)))
        return
    if args.guest:
        guest_main(args)
        return
    if os.geteuid() != 0:
        sys.exit("needs root (loop devices, mounts, libvirtd)")
    if not os.path.exists(os.path.join(IMAGE, "golden.raw")):
        subprocess.run([os.path.join(REPO, "images", "build-test-image")], check=True)

    import libvirt_helpers as h

    started = h.ensure_libvirtd()
    conn = D.connect(h.URI)
    results, skipped = {}, {}
    work = tempfile.mkdtemp(prefix="lxvm-bench-", dir="/var/tmp")
    os.chmod(work, 0o755)  # noqa: S103 - qemu (libvirt-qemu) must traverse it
    try:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        for backend in backends:
            if backend == "lvm":
                skipped["lvm"] = lvm_reason()
                continue
            if backend == "reflink":
                fs = LoopBtrfs(size_mb=args.data_mb * 2 + 512)
                top = fs.__enter__()
            else:
                fs, top = None, work
            try:
                golden = os.path.join(top, "golden.raw")
                disks = os.path.join(top, f"disks-{backend}")
                os.makedirs(disks, exist_ok=True)
                os.chmod(disks, 0o755)  # noqa: S103 - as above
                make_golden(golden, args.data_mb)
                runs = [one(conn, backend, golden, disks, i) for i in range(args.iterations)]
                results[backend] = runs
                os.unlink(golden)
            finally:
                if fs is not None:
                    fs.__exit__(None, None, None)
    finally:
        h.cleanup_domains("lxvm-bench-")
        conn.close()
        shutil.rmtree(work, ignore_errors=True)
        h.release_libvirtd(started, ("lxvm-",))

    size = os.path.getsize(os.path.join(IMAGE, "golden.raw")) // 2**20 + args.data_mb
    print(f"clone + context + define + start, {args.iterations} iterations, golden image "
          f"{size} MiB ({args.data_mb} MiB random data), domain type qemu, times in ms")
    phases = ["clone", "context", "define", "start", "total", "teardown"]
    print(f"{'backend':<9}" + "".join(f"{p + ' p50':>14}{'p99':>8}" for p in phases))
    for backend, runs in results.items():
        row = f"{backend:<9}"
        for p in phases:
            vals = [r[p] * 1000 for r in runs]
            row += f"{statistics.median(vals):>14.1f}{pct(vals, 99):>8.1f}"
        print(row)
    for backend, why in skipped.items():
        print(f"{backend:<9} skipped: {why}")
    if "qcow2" in results:
        ref = statistics.median(r["total"] for r in results["qcow2"])
        refc = statistics.median(r["clone"] for r in results["qcow2"])
        for backend, runs in results.items():
            tot = statistics.median(r["total"] for r in runs)
            cl = statistics.median(r["clone"] for r in runs)
            print(f"ratio {backend}/qcow2: total p50 {tot / ref:.2f}x, clone p50 {cl / refc:.2f}x")


if __name__ == "__main__":
    main()
