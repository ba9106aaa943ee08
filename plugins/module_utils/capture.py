# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Capture a golden image into the image repository: ``dd`` piped into a compressor.

Produces, in the repository directory::

    NAME-VERSION.raw.zst     (or .raw.gz) the compressed image as distributed
    NAME-VERSION.json        name, version, sha256 (of the compressed file), size (unpacked
                             bytes), format, compression, compressed_size, file, captured_at

Stdlib only; the checksum is computed on the compressed bytes while they are written.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
import time

from ansible_collections.lxcloud.cloud.plugins.module_utils.api_client import (
    ApiConfigError,
    ApiError,
    client_from_params,
)
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import (
    validate_abs_path,
    validate_name,
)
from ansible_collections.lxcloud.cloud.plugins.module_utils.staging import (
    SUFFIX,
    StagingError,
    _atomic_write_json,
    _check_image,
    _default_run,
)

CHUNK = 1 << 20


def compressor_argv(compression, level=None, threads=0):
    """The compressor command: zstd multi-threaded (fast default), pigz or gzip."""
    if compression == "zstd":
        return ["zstd", "-q", "-c", "-T%d" % threads, "-%d" % (level or 3)]
    if compression == "pigz":
        argv = ["pigz", "-c", "-%d" % (level or 6)]
        if threads:
            argv[1:1] = ["-p", str(threads)]
        return argv
    if compression == "gzip":
        return ["gzip", "-c", "-%d" % (level or 6)]
    raise StagingError("compression must be zstd, pigz or gzip, got %r" % (compression,))


def dd_argv(source):
    return ["dd", "if=" + source, "bs=4M", "status=none"]


def repo_paths(repo_dir, name, version, compression):
    validate_name(name, "image name")
    validate_name(version, "image version")
    base = "%s-%s" % (name, version)
    suffix = SUFFIX["gzip" if compression in ("gzip", "pigz") else compression]
    return (os.path.join(repo_dir, base + ".raw" + suffix), os.path.join(repo_dir, base + ".json"))


def read_meta(repo_dir, name, version):
    validate_name(name, "image name")
    validate_name(version, "image version")
    try:
        with open(os.path.join(repo_dir, "%s-%s.json" % (name, version))) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def capture(source, name, version, repo_dir, compression="zstd", level=None, threads=0,
            force=False, check_mode=False, run=None):
    """dd ``source`` (a block device or an image file) into the compressor; returns a dict with
    ``changed`` and ``meta``.  An existing capture of the same name+version is kept (no
    change) unless ``force``: versions are immutable once distributed."""
    run = run or _default_run
    source = validate_abs_path(source, "source")
    repo_dir = validate_abs_path(repo_dir, "repo_dir")
    out, meta_path = repo_paths(repo_dir, name, version, compression)
    before = read_meta(repo_dir, name, version)
    if before and os.path.exists(os.path.join(repo_dir, before.get("file", ""))) and not force:
        return {"changed": False, "meta": before, "path": out}
    if not os.path.exists(source):
        raise StagingError("source %s does not exist" % source)
    info = _check_image(run, source, _probe_format(run, source))
    fmt = info["format"]
    if check_mode:
        return {"changed": True, "meta": None, "path": out}
    if not os.path.isdir(repo_dir):
        os.makedirs(repo_dir, 0o755)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(out) + ".", suffix=".tmp",
                               dir=repo_dir)
    h = hashlib.sha256()
    nbytes = 0
    with contextlib.ExitStack() as stack:
        err_dd = stack.enter_context(tempfile.TemporaryFile())
        err_c = stack.enter_context(tempfile.TemporaryFile())
        dd = subprocess.Popen(dd_argv(source), stdout=subprocess.PIPE, stderr=err_dd)
        comp = subprocess.Popen(compressor_argv(compression, level, threads), stdin=dd.stdout,
                                stdout=subprocess.PIPE, stderr=err_c)
        dd.stdout.close()
        try:
            with os.fdopen(fd, "wb") as fh:
                while True:
                    b = comp.stdout.read(CHUNK)
                    if not b:
                        break
                    h.update(b)
                    nbytes += len(b)
                    fh.write(b)
                fh.flush()
                os.fsync(fh.fileno())
            comp.stdout.close()
            rc_c, rc_dd = comp.wait(), dd.wait()
            if rc_dd or rc_c:
                err_dd.seek(0)
                err_c.seek(0)
                raise StagingError("capture failed (dd rc=%d, compressor rc=%d)" % (rc_dd, rc_c),
                                   stderr=(err_dd.read() + err_c.read()).decode("utf-8",
                                                                                "replace"))
            os.chmod(tmp, 0o644)
            os.rename(tmp, out)
        except BaseException:
            comp.stdout.close()
            for p in (dd, comp):
                if p.poll() is None:
                    p.kill()
                    p.wait()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    meta = {
        "name": name,
        "version": version,
        "sha256": h.hexdigest(),
        "size": _source_size(source),
        "format": fmt,
        "compression": "gzip" if compression == "pigz" else compression,
        "compressed_size": nbytes,
        "file": os.path.basename(out),
        "captured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _atomic_write_json(meta_path, meta)
    return {"changed": True, "meta": meta, "path": out}


def _probe_format(run, source):
    rc, out, err = run(["qemu-img", "info", "--output=json", source])
    if rc != 0:
        raise StagingError("qemu-img info failed on %s" % source, stderr=err)
    fmt = json.loads(out).get("format")
    if fmt not in ("raw", "qcow2"):
        raise StagingError("source format %r is neither raw nor qcow2" % (fmt,))
    return fmt


def _source_size(source):
    with open(source, "rb") as fh:
        return fh.seek(0, os.SEEK_END)


def xmlrpc_size(n):
    """XML-RPC ints are 32-bit: larger sizes travel as a double (exact up to 2**53)."""
    return n if n < 2**31 else float(n)


def register(params, meta):
    """``lxcloud.image.register`` the captured image; returns the image id. ``params`` are the
    module's API options (missing URL or session come from ``/etc/lxcloud/api.conf``)."""
    try:
        return client_from_params(params).call(
            "lxcloud.image.register", meta["name"], meta["version"], meta["sha256"],
            xmlrpc_size(meta["size"]), meta["format"], meta["compression"])
    except (ApiError, ApiConfigError) as exc:
        raise StagingError("registering %s %s with the control plane failed: %s"
                           % (meta["name"], meta["version"], exc)) from None
