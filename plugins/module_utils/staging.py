# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install a compressed golden image on a hypervisor: verify, unpack streaming, rename atomically.

Hypervisor side: stdlib only (plus ``names``, and ``ansible.module_utils.urls`` to fetch an
http(s)/file URL), runs under ``/usr/bin/python3``.

The checksum is the sha256 of the **compressed stream as distributed** (the ``.zst``/``.gz``
file in the image repository, the bytes that travel over the network), so a host can verify
what it received before and while unpacking, and every distribution strategy can verify the
same figure.  The unpacked image's size is recorded next to it.

Layout in the storage directory (file backend)::

    NAME-VERSION.raw        the unpacked image (or .qcow2 when format=qcow2)
    NAME-VERSION.json       sidecar: name, version, sha256, compression, size, format, verified_at
    .NAME-VERSION.*.tmp     only while unpacking; removed on any failure

For the ``lvm`` backend the image is written onto ``/dev/VG/NAME-VERSION`` through a temporary
LV ``NAME-VERSION-staging`` (a thin LV in ``thin_pool`` when one is named, so that clones of it
are thin snapshots) that is renamed once everything checked out; the sidecar still lives in the
storage directory.  A full volume group or pool fails before anything is written and leaves no
LV behind; a staging LV left by a killed run is removed first; an installed LV that classic
snapshots (VM disks) depend on is never replaced.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time

from ansible_collections.lxcloud.cloud.plugins.module_utils.api_client import (
    ApiConfigError,
    ApiError,
    client_from_params,
)
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import (
    InvalidName,
    validate_abs_path,
    validate_name,
)

CHUNK = 1 << 20
COMPRESSIONS = ("zstd", "gzip", "none")
FORMATS = ("raw", "qcow2")
DECOMPRESS = {
    "zstd": ["zstd", "-d", "-c", "-q"],
    "gzip": ["gzip", "-d", "-c"],
}
SUFFIX = {"zstd": ".zst", "gzip": ".gz", "none": ""}


class StagingError(Exception):
    """Base of every staging failure; ``details`` go into fail_json."""

    def __init__(self, msg, **details):
        super(StagingError, self).__init__(msg)
        self.msg = msg
        self.details = details


class ChecksumMismatch(StagingError):
    pass


class UnpackError(StagingError):
    pass


class DiskFull(StagingError):
    pass


class RefusedImage(StagingError):
    pass


class ReportError(StagingError):
    pass


def _default_run(argv):
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode(
        "utf-8", "replace"
    )


def image_basename(name, version):
    validate_name(name, "image name")
    validate_name(version, "image version")
    return validate_name("%s-%s" % (name, version), "image name-version")


def sidecar_path(storage_dir, name, version):
    return os.path.join(storage_dir, image_basename(name, version) + ".json")


def read_sidecar(storage_dir, name, version):
    try:
        with open(sidecar_path(storage_dir, name, version)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _atomic_write_json(path, data):
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path):
    with contextlib.suppress(OSError):
        os.unlink(path)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(CHUNK)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def open_source(src, timeout=60):
    """A readable binary stream for ``src``: a local path, file:// or http(s):// URL."""
    if src.startswith(("http://", "https://", "file://")):
        from urllib.error import URLError

        from ansible.module_utils.urls import ConnectionError as UrlConnectionError
        from ansible.module_utils.urls import open_url

        try:
            return open_url(src, timeout=timeout)
        except (URLError, OSError, UrlConnectionError) as exc:
            raise StagingError("cannot fetch %s: %s" % (src, exc)) from None
    try:
        validate_abs_path(src, "src")
    except InvalidName as exc:
        raise StagingError(str(exc)) from None
    try:
        return open(src, "rb")
    except OSError as exc:
        raise StagingError("cannot open %s: %s" % (src, exc)) from None


class Plan:
    """What a staging run would do, computed without touching anything."""

    def __init__(self, name, version, sha256, storage_dir, fmt="raw", compression="zstd",
                 backend="file", vg=None, size=None, dev_root="/dev", thin_pool=None):
        self.base = image_basename(name, version)
        self.name, self.version = name, version
        if not (isinstance(sha256, str) and len(sha256) == 64
                and all(c in "0123456789abcdef" for c in sha256.lower())):
            raise StagingError("sha256 must be 64 hex digits, got %r" % (sha256,))
        self.sha256 = sha256.lower()
        if compression not in COMPRESSIONS:
            raise StagingError("compression must be one of %s" % ", ".join(COMPRESSIONS))
        if fmt not in FORMATS:
            raise StagingError("format must be one of %s" % ", ".join(FORMATS))
        if backend not in ("file", "lvm"):
            raise StagingError("backend must be file or lvm")
        self.storage_dir = validate_abs_path(storage_dir, "storage_dir")
        self.format, self.compression, self.backend = fmt, compression, backend
        self.size = size
        if backend == "lvm":
            if not vg:
                raise StagingError("backend=lvm needs vg")
            validate_name(vg, "vg")
            if not size:
                raise StagingError("backend=lvm needs size (the unpacked size in bytes)")
            self.vg = vg
            self.thin_pool = validate_name(thin_pool, "thin_pool") if thin_pool else None
            self.tmp_lv = self.base + "-staging"
            self.target = os.path.join(dev_root, vg, self.base)
            self.tmp_target = os.path.join(dev_root, vg, self.tmp_lv)
        else:
            self.vg = self.thin_pool = None
            self.target = os.path.join(self.storage_dir, "%s.%s" % (self.base, fmt))
            self.tmp_target = None

    @property
    def sidecar(self):
        return os.path.join(self.storage_dir, self.base + ".json")

    def current(self):
        """The recorded state of this name+version, or None when absent or not trustworthy."""
        meta = read_sidecar(self.storage_dir, self.name, self.version)
        if not meta or not os.path.exists(self.target):
            return None
        if self.backend == "file":
            try:
                if os.path.getsize(self.target) != meta.get("size"):
                    return None
            except OSError:
                return None
        return meta

    def up_to_date(self):
        meta = self.current()
        return bool(
            meta
            and meta.get("state") == "verified"
            and meta.get("sha256") == self.sha256
            and meta.get("format") == self.format
        )


def _check_image(run, path, fmt):
    """Refuse images qemu-img sees as another format or that reference other files."""
    rc, out, err = run(["qemu-img", "info", "--output=json", path])
    if rc != 0:
        raise UnpackError("qemu-img info failed on the unpacked image", rc=rc, stdout=out,
                          stderr=err)
    try:
        info = json.loads(out)
    except ValueError:
        raise UnpackError("qemu-img info printed no JSON", stdout=out, stderr=err) from None
    found = info.get("format")
    if found != fmt:
        raise RefusedImage("image format is %r, expected %r" % (found, fmt), info=info)
    for key in ("backing-filename", "full-backing-filename"):
        if info.get(key):
            raise RefusedImage("image references a backing file %r" % info[key], info=info)
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        raise RefusedImage("image references a data file %r" % data["data-file"], info=info)
    return info


def _stream_unpack(src_stream, compression, out_argv_or_fd, expected_sha):
    """Pump ``src_stream`` through the decompressor into the output, hashing the compressed
    bytes on the way.  ``out_argv_or_fd``: an open fd (file backend) or an argv (``dd`` onto a
    device).  Returns (sha256 hex, compressed bytes); raises on checksum/unpack/space errors
    after every child has exited."""
    h = hashlib.sha256()
    total = 0
    procs = []
    errfiles = []

    def errfile():
        f = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally
        errfiles.append(f)
        return f

    try:
        if isinstance(out_argv_or_fd, int):
            final_out = out_argv_or_fd
            writer = None
        else:
            writer = subprocess.Popen(out_argv_or_fd, stdin=subprocess.PIPE, stderr=errfile())
            procs.append(("writer", writer))
            final_out = writer.stdin
        if compression == "none":
            sink = os.fdopen(os.dup(final_out if isinstance(final_out, int)
                                    else final_out.fileno()), "wb")
            dec = None
        else:
            dec = subprocess.Popen(DECOMPRESS[compression], stdin=subprocess.PIPE,
                                   stdout=final_out, stderr=errfile())
            procs.insert(0, ("decompressor", dec))
            if writer is not None:
                writer.stdin.close()  # the decompressor holds the pipe now
            sink = dec.stdin
        broken = None
        while True:
            try:
                b = src_stream.read(CHUNK)
            except OSError as exc:
                raise StagingError("reading the source failed: %s" % exc) from None
            if not b:
                break
            h.update(b)
            total += len(b)
            if broken is None:
                try:
                    sink.write(b)
                except OSError as exc:  # EPIPE: the decompressor gave up; ENOSPC: raw copy
                    broken = exc
        try:
            sink.close()
        except OSError as exc:
            broken = broken or exc
        if writer is not None and compression == "none":
            writer.stdin.close()
        results = []
        for what, p in procs:
            rc = p.wait()
            results.append((what, rc))
        digest = h.hexdigest()
        if digest != expected_sha:
            raise ChecksumMismatch(
                "sha256 mismatch: got %s, expected %s (of the compressed stream, %d bytes)"
                % (digest, expected_sha, total), sha256=digest, bytes=total)
        messages = []
        for f in errfiles:
            f.seek(0)
            messages.append(f.read().decode("utf-8", "replace").strip())
        stderr = "\n".join(m for m in messages if m)
        nospace = "No space left" in stderr or (
            isinstance(broken, OSError) and broken.errno == errno.ENOSPC)
        failed = [(w, rc) for w, rc in results if rc != 0]
        if nospace:
            raise DiskFull("no space left while unpacking", stderr=stderr)
        if failed or broken is not None:
            raise UnpackError(
                "unpacking failed (%s)" % ", ".join(
                    ["%s rc=%d" % f for f in failed] + ([str(broken)] if broken else [])),
                stderr=stderr)
        return digest, total
    finally:
        for _w, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in errfiles:
            f.close()


def stage(src, name, version, sha256, storage_dir, compression="zstd", fmt="raw",
          backend="file", vg=None, size=None, force=False, check_mode=False, run=None,
          dev_root="/dev", now=None, thin_pool=None):
    """Install the image; return a result dict with ``changed``, ``path``, ``meta``.

    Raises a StagingError subclass on any failure; nothing partial is left behind and a
    previously installed version (or the same version, verified earlier) is untouched.
    """
    run = run or _default_run
    plan = Plan(name, version, sha256, storage_dir, fmt, compression, backend, vg, size,
                dev_root, thin_pool)
    before = plan.current()
    if plan.up_to_date() and not force:
        return {"changed": False, "path": plan.target, "meta": before, "before": before}
    if check_mode:
        return {"changed": True, "path": plan.target, "meta": None, "before": before}
    if not os.path.isdir(plan.storage_dir):
        os.makedirs(plan.storage_dir, 0o755)
    if size and backend == "file":
        free = shutil.disk_usage(plan.storage_dir).free
        if free < size:
            raise DiskFull("not enough space in %s: %d bytes free, image needs %d"
                           % (plan.storage_dir, free, size))
    stream = open_source(src)
    try:
        if backend == "file":
            meta = _stage_file(plan, stream, run)
        else:
            meta = _stage_lvm(plan, stream, run)
    finally:
        stream.close()
    meta["verified_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now or time.time()))
    _atomic_write_json(plan.sidecar, meta)
    return {"changed": True, "path": plan.target, "meta": meta, "before": before}


def _meta(plan, digest, nbytes, size):
    return {
        "name": plan.name,
        "version": plan.version,
        "sha256": digest,
        "compression": plan.compression,
        "compressed_size": nbytes,
        "size": size,
        "format": plan.format,
        "backend": plan.backend,
        "path": plan.target,
        "state": "verified",
    }


def _stage_file(plan, stream, run):
    fd, tmp = tempfile.mkstemp(prefix="." + plan.base + ".", suffix=".tmp", dir=plan.storage_dir)
    try:
        try:
            digest, nbytes = _stream_unpack(stream, plan.compression, fd, plan.sha256)
            os.fsync(fd)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFull("no space left while unpacking: %s" % exc) from None
            raise
        finally:
            os.close(fd)
        _check_image(run, tmp, plan.format)
        size = os.path.getsize(tmp)
        if plan.size and size != plan.size:
            raise UnpackError("unpacked size is %d bytes, expected %d" % (size, plan.size))
        os.chmod(tmp, 0o644)
        os.rename(tmp, plan.target)
    except BaseException:
        _unlink(tmp)
        raise
    return _meta(plan, digest, nbytes, size)


def lvm_commands(plan):
    """The exact commands of the lvm backend, in order (also what the unit tests check)."""
    if plan.thin_pool:
        create = ["lvcreate", "--yes", "--name", plan.tmp_lv, "--virtualsize",
                  "%db" % plan.size, "--thin", "%s/%s" % (plan.vg, plan.thin_pool)]
    else:
        create = ["lvcreate", "--yes", "--name", plan.tmp_lv, "--size", "%db" % plan.size,
                  plan.vg]
    return {
        "create": create,
        "write": ["dd", "of=" + plan.tmp_target, "bs=4M", "iflag=fullblock", "conv=fsync",
                  "status=none"],
        "snapshots": ["lvs", "--noheadings", "--separator", ",", "-o",
                      "lv_name,origin,segtype", plan.vg],
        "remove_old": ["lvremove", "--yes", "%s/%s" % (plan.vg, plan.base)],
        "rename": ["lvrename", plan.vg, plan.tmp_lv, plan.base],
        "remove_tmp": ["lvremove", "--yes", "%s/%s" % (plan.vg, plan.tmp_lv)],
    }


def _classic_snapshots_of(plan, run, cmds):
    """Names of the classic snapshots of the installed LV (lvremove would take them along)."""
    rc, out, err = run(cmds["snapshots"])
    if rc != 0:
        raise StagingError("lvs failed", rc=rc, stdout=out, stderr=err, cmd=cmds["snapshots"])
    names = []
    for line in out.splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) == 3 and cols[1] == plan.base and cols[2] != "thin":
            names.append(cols[0])
    return names


def _stage_lvm(plan, stream, run):
    cmds = lvm_commands(plan)
    if os.path.exists(plan.target):
        snaps = _classic_snapshots_of(plan, run, cmds)
        if snaps:
            raise StagingError(
                "cannot replace %s/%s: classic snapshots depend on it (VM disks: %s); remove "
                "them first" % (plan.vg, plan.base, ", ".join(snaps)), snapshots=snaps)
    if os.path.exists(plan.tmp_target):  # left by a killed run
        run(cmds["remove_tmp"])
    rc, out, err = run(cmds["create"])
    if rc != 0:
        if os.path.exists(plan.tmp_target):  # lvcreate may leave it half-made
            run(cmds["remove_tmp"])
        text = (err or out).strip()
        where = ("thin pool %s/%s" % (plan.vg, plan.thin_pool) if plan.thin_pool
                 else "volume group %s" % plan.vg)
        if "free space" in text or "full" in text:
            raise DiskFull("%s has not enough free space for %s (%d bytes): %s"
                           % (where, plan.base, plan.size, text), rc=rc, stdout=out,
                           stderr=err, cmd=cmds["create"])
        raise StagingError("lvcreate in %s failed: %s" % (where, text), rc=rc, stdout=out,
                           stderr=err, cmd=cmds["create"])
    try:
        digest, nbytes = _stream_unpack(stream, plan.compression, cmds["write"], plan.sha256)
        _check_image(run, plan.tmp_target, plan.format)
        if os.path.exists(plan.target):
            rc, out, err = run(cmds["remove_old"])
            if rc != 0:
                raise StagingError("lvremove of the unverified old LV failed", rc=rc, stdout=out,
                                   stderr=err)
        rc, out, err = run(cmds["rename"])
        if rc != 0:
            raise StagingError("lvrename failed", rc=rc, stdout=out, stderr=err)
    except BaseException:
        run(cmds["remove_tmp"])
        raise
    meta = _meta(plan, digest, nbytes, plan.size)
    if plan.thin_pool:
        meta["thin_pool"] = plan.thin_pool
    return meta


def report(params, host, name, version, sha256, state):
    """Tell the control plane (``lxcloud.host.image``) what this host holds; ``params`` are
    the module's API options (missing URL or session come from ``/etc/lxcloud/api.conf``)."""
    try:
        client = client_from_params(params)
        return client.call("lxcloud.host.image", host, name, version, sha256, state)
    except (ApiError, ApiConfigError) as exc:
        raise ReportError("reporting %s %s (%s) to the control plane failed: %s"
                          % (name, version, state, exc)) from None
