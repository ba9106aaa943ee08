# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Copy-on-write clones of a golden image: lvm (classic and thin snapshots), qcow2 overlays,
reflink copies and plain sparse copies.

Every external command goes through ``run(argv) -> (rc, stdout, stderr)`` with an argument
list (the module passes ``module.run_command``; unit tests pass a recorder).  Errors raise
:class:`DiskError`, which carries the failed command's output for ``fail_json``.

File backends (qcow2, reflink, copy) create ``.NAME.tmp-XXXX`` in the target directory and
rename it into place, removing the partial file on failure.  The reflink and copy backends
cannot tell from the file which base it came from, so they write a small record
``.NAME.lxclone`` (JSON) next to the clone; qcow2 records its base in the image header and
lvm in the snapshot's origin.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil
import tempfile

from ansible_collections.lxcloud.cloud.plugins.module_utils.names import (
    InvalidName,
    validate_abs_path,
    validate_name,
)

BACKENDS = ("qcow2", "reflink", "copy", "lvm")
FILE_BACKENDS = ("qcow2", "reflink", "copy")
GOLDEN_REFUSED = "golden image references a backing or data file"


class DiskError(Exception):
    """A clone could not be inspected, created or removed.  ``result`` holds cmd/rc/stdout/
    stderr of the failed command (if any) for the caller's fail_json."""

    def __init__(self, msg, **result):
        super(DiskError, self).__init__(msg)
        self.msg = msg
        self.result = result


def _check(run, argv, what):
    rc, out, err = run(argv)
    if rc != 0:
        raise DiskError(
            "%s failed (rc=%s): %s" % (what, rc, (err or out or "").strip()),
            cmd=list(argv),
            rc=rc,
            stdout=out,
            stderr=err,
        )
    return out


# ---------------------------------------------------------------------------------------------
# image inspection


def image_info(run, path):
    """``qemu-img info --output=json`` of ``path`` (``-U``: a running VM may hold its lock)."""
    out = _check(run, ["qemu-img", "info", "-U", "--output=json", path], "qemu-img info")
    try:
        return json.loads(out)
    except ValueError:
        raise DiskError("qemu-img info printed no JSON for %s" % path, stdout=out) from None


def golden_problem(info):
    """The reason a base image is unusable as a golden image, or None.

    A golden image must be self-contained: a backing file or an external data file would make
    every clone depend on a file lxcloud does not manage (and lets an image name any file on
    the host as its backing)."""
    if info.get("backing-filename") or info.get("full-backing-filename"):
        return "%s (backing file %r)" % (
            GOLDEN_REFUSED,
            info.get("full-backing-filename") or info.get("backing-filename"),
        )
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        return "%s (data file %r)" % (GOLDEN_REFUSED, data["data-file"])
    return None


def check_golden(run, path, expected_format=None):
    """Inspect the base image; raise unless it is self-contained.  Returns its format."""
    info = image_info(run, path)
    problem = golden_problem(info)
    if problem:
        raise DiskError("%s: %s" % (path, problem), base=path)
    fmt = info.get("format")
    if expected_format and fmt != expected_format:
        raise DiskError(
            "base image %s is %s, not the declared base_format %s" % (path, fmt, expected_format),
            base=path,
        )
    return fmt


# ---------------------------------------------------------------------------------------------
# spec and results


class CloneSpec:
    """What the caller wants.  ``path`` is derived: DIR/NAME for files, /dev/VG/NAME for lvm."""

    def __init__(self, name, backend, base, directory=None, base_format=None, size=None,
                 vg=None, lvm_snapshot="auto"):
        self.name = validate_name(name, "disk name")
        if backend not in BACKENDS:
            raise InvalidName("backend", backend, "must be one of %s" % ", ".join(BACKENDS))
        self.backend = backend
        self.base_format = base_format
        self.size = size
        self.lvm_snapshot = lvm_snapshot
        if backend == "lvm":
            self.vg = validate_name(vg, "volume group")
            self.base = validate_name(base, "base logical volume")
            self.path = "/dev/%s/%s" % (self.vg, self.name)
            if lvm_snapshot not in ("auto", "classic", "thin"):
                raise InvalidName("lvm_snapshot", lvm_snapshot, "must be auto, classic or thin")
        else:
            self.vg = None
            self.directory = validate_abs_path(directory, "disk directory")
            self.base = validate_abs_path(base, "base image")
            self.path = os.path.join(self.directory, self.name)
            if self.path == self.base:
                raise InvalidName("disk name", name, "is the base image itself")

    def describe(self):
        d = {"path": self.path, "backend": self.backend, "base": self.base}
        if self.backend == "lvm":
            d["vg"] = self.vg
        return d


def record_path(path):
    d, n = os.path.split(path)
    return os.path.join(d, ".%s.lxclone" % n)


def _read_record(path):
    try:
        with open(record_path(path)) as f:
            return json.load(f)
    except (IOError, OSError, ValueError):
        return None


def _write_record(path, data):
    rec = record_path(path)
    fd, tmp = tempfile.mkstemp(prefix=".lxclone-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, sort_keys=True)
        os.rename(tmp, rec)
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path):
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# file backends


def file_state(run, spec):
    """What exists at spec.path: None, or a dict describing the clone found there."""
    if not os.path.lexists(spec.path):
        return None
    if os.path.islink(spec.path) or not os.path.isfile(spec.path):
        return {"path": spec.path, "backend": None, "base": None,
                "problem": "is not a regular file"}
    info = image_info(run, spec.path)
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    if info.get("format") == "qcow2" and backing:
        if not backing.startswith("/"):
            backing = os.path.normpath(os.path.join(os.path.dirname(spec.path), backing))
        st = {"path": spec.path, "backend": "qcow2", "base": backing,
              "base_format": info.get("backing-filename-format"),
              "virtual_size": info.get("virtual-size")}
        return st
    rec = _read_record(spec.path)
    if rec:
        return {"path": spec.path, "backend": rec.get("backend"), "base": rec.get("base"),
                "base_format": rec.get("base_format"), "virtual_size": info.get("virtual-size")}
    return {"path": spec.path, "backend": None, "base": None,
            "problem": "exists but is not a clone lxcloud made (%s image without a backing file "
                       "or clone record)" % info.get("format")}


def mismatch(spec, state):
    """Why the existing clone does not match the spec (None when it does)."""
    if state.get("problem"):
        return "%s %s" % (spec.path, state["problem"])
    if state.get("backend") != spec.backend:
        return "%s is a %s clone, not %s" % (spec.path, state.get("backend"), spec.backend)
    if spec.backend == "lvm" and spec.lvm_snapshot != "auto" and \
            state.get("thin") != (spec.lvm_snapshot == "thin"):
        return "%s is a %s snapshot, not %s" % (
            spec.path, "thin" if state.get("thin") else "classic", spec.lvm_snapshot)
    if state.get("base") != spec.base and os.path.realpath(state.get("base") or "") != \
            os.path.realpath(spec.base):
        return "%s is a clone of %s, not of %s" % (spec.path, state.get("base"), spec.base)
    return None


def remove_stale_temps(directory, name):
    """Remove ``.NAME.tmp-*`` left behind by an interrupted run (a killed process cannot clean
    up after itself); returns the paths removed."""
    removed = []
    prefix = ".%s.tmp-" % name
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for entry in entries:
        if entry.startswith(prefix):
            path = os.path.join(directory, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                _unlink(path)
            removed.append(path)
    return removed


def _tmp_name(spec):
    fd, tmp = tempfile.mkstemp(prefix=".%s.tmp-" % spec.name, dir=spec.directory)
    os.close(fd)
    return tmp


def create_file_clone(run, spec, base_format):
    """Create the clone under a temporary name and rename it into place."""
    if not os.path.isdir(spec.directory):
        raise DiskError("disk directory %s does not exist" % spec.directory)
    remove_stale_temps(spec.directory, spec.name)
    tmp = _tmp_name(spec)
    try:
        if spec.backend == "qcow2":
            argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", spec.base,
                    "-F", base_format, tmp]
            if spec.size:
                argv.append(str(spec.size))
            _check(run, argv, "qemu-img create")
        elif spec.backend == "reflink":
            rc, out, err = run(["cp", "--reflink=always", "--", spec.base, tmp])
            if rc != 0:
                raise DiskError(
                    "cannot reflink %s to %s: the filesystem of %s must support reflinks "
                    "(btrfs, or xfs made with -m reflink=1) and hold the base image too: %s"
                    % (spec.base, spec.path, spec.directory, (err or out).strip()),
                    cmd=["cp", "--reflink=always", "--", spec.base, tmp], rc=rc,
                    stdout=out, stderr=err)
        else:
            _check(run, ["cp", "--sparse=always", "--", spec.base, tmp], "cp")
        if spec.backend in ("reflink", "copy"):
            _write_record(spec.path, {"backend": spec.backend, "base": spec.base,
                                      "base_format": base_format})
        os.chmod(tmp, 0o600)
        os.rename(tmp, spec.path)
    except BaseException:
        _unlink(tmp)
        if spec.backend in ("reflink", "copy") and not os.path.exists(spec.path):
            _unlink(record_path(spec.path))
        raise


def remove_file_clone(path):
    """Remove a file clone and its record; True when something was removed."""
    removed = _unlink(path)
    removed = _unlink(record_path(path)) or removed
    return removed


# ---------------------------------------------------------------------------------------------
# lvm

LVS_FIELDS = "lv_name,vg_name,origin,pool_lv,segtype,lv_size,lv_attr,snap_percent"


def lvs(run, vg):
    """Logical volumes of ``vg`` as dicts (parsed from ``lvs --reportformat json``)."""
    argv = ["lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
            "-o", LVS_FIELDS, vg]
    out = _check(run, argv, "lvs")
    return parse_lvs(out)


def parse_lvs(text):
    try:
        data = json.loads(text)
    except ValueError:
        raise DiskError("lvs printed no JSON", stdout=text) from None
    result = []
    for report in data.get("report", []):
        for lv in report.get("lv", []):
            result.append(dict(lv))
    return result


def snapshot_overflowed(lv):
    """True for a classic snapshot whose copy-on-write space filled up: the kernel invalidated
    it (``lv_attr`` state ``I``) and the clone's data is gone."""
    attr = lv.get("lv_attr") or ""
    return len(attr) > 4 and attr[0] in "sS" and attr[4] == "I"


def lvm_state(run, spec):
    for lv in lvs(run, spec.vg):
        if lv.get("lv_name") == spec.name:
            seg = lv.get("segtype")
            st = {"path": spec.path, "backend": "lvm", "base": lv.get("origin") or None,
                  "vg": spec.vg, "thin": seg == "thin", "segtype": seg,
                  "lv_attr": lv.get("lv_attr"), "overflowed": snapshot_overflowed(lv),
                  "problem": None}
            if lv.get("origin") and seg != "thin" and lv.get("snap_percent") not in (None, ""):
                st["cow_used_percent"] = float(lv["snap_percent"])
            if not lv.get("origin"):
                st["problem"] = "is a logical volume that is not a snapshot"
            elif st["overflowed"]:
                st["problem"] = (
                    "is a snapshot that overflowed: its copy-on-write space (%s bytes) filled "
                    "up and the kernel invalidated it, the VM's writes are lost"
                    % lv.get("lv_size"))
            return st
    return None


def lvm_base(run, spec):
    for lv in lvs(run, spec.vg):
        if lv.get("lv_name") == spec.base:
            return lv
    raise DiskError("base logical volume %s/%s does not exist" % (spec.vg, spec.base))


def lvm_create_argv(spec, thin):
    if thin:
        return ["lvcreate", "-s", "-ay", "-K", "-n", spec.name, "%s/%s" % (spec.vg, spec.base)]
    if not spec.size:
        raise DiskError("a classic LVM snapshot needs size (its copy-on-write space, e.g. 2G)")
    return ["lvcreate", "-s", "-n", spec.name, "-L", str(spec.size),
            "%s/%s" % (spec.vg, spec.base)]


def wants_thin(spec, base_lv):
    return spec.lvm_snapshot == "thin" or (
        spec.lvm_snapshot == "auto" and base_lv.get("segtype") == "thin")


def vg_free(run, vg):
    """Free bytes in ``vg`` (None when vgs cannot tell)."""
    rc, out, _err = run(["vgs", "--noheadings", "--units", "b", "--nosuffix", "-o", "vg_free", vg])
    try:
        return int(out.strip()) if rc == 0 else None
    except ValueError:
        return None


def create_lvm_clone(run, spec, base_lv):
    thin = wants_thin(spec, base_lv)
    argv = lvm_create_argv(spec, thin)
    rc, out, err = run(argv)
    if rc != 0:
        # lvcreate may leave the LV half-made (e.g. activation failed): remove what it left.
        if any(lv.get("lv_name") == spec.name for lv in _lvs_quiet(run, spec.vg)):
            run(lvm_remove_argv(spec.vg, spec.name))
        text = (err or out).strip()
        if "insufficient free space" in text or "Insufficient free space" in text:
            free = vg_free(run, spec.vg)
            msg = "volume group %s is full: %s, the snapshot %s needs %s: %s" % (
                spec.vg, "unknown free space" if free is None else "%d bytes free" % free,
                spec.name, spec.size, text)
        elif "pool" in text and ("full" in text or "out of" in text):
            msg = "the thin pool of %s/%s is full: %s" % (spec.vg, spec.base, text)
        else:
            msg = "lvcreate failed (rc=%s): %s" % (rc, text)
        raise DiskError(msg, cmd=argv, rc=rc, stdout=out, stderr=err)
    return thin


def _lvs_quiet(run, vg):
    try:
        return lvs(run, vg)
    except DiskError:
        return []


def lvm_remove_argv(vg, name):
    return ["lvremove", "-f", "%s/%s" % (vg, name)]


# ---------------------------------------------------------------------------------------------
# the operations the module runs


def current_state(run, spec):
    if spec.backend == "lvm":
        return lvm_state(run, spec)
    return file_state(run, spec)


def ensure_present(run, spec, check_mode=False, force=False):
    """Make the clone exist.  Returns (changed, before, after)."""
    before = current_state(run, spec)
    if before is not None:
        why = mismatch(spec, before)
        if why is None:
            return False, before, before
        if not force:
            raise DiskError("%s; remove it first (state=absent) or set force=true" % why,
                            path=spec.path)
    base_format = None
    if spec.backend == "lvm":
        base_lv = lvm_base(run, spec)
        if os.path.exists("/dev/%s/%s" % (spec.vg, spec.base)):
            check_golden(run, "/dev/%s/%s" % (spec.vg, spec.base), spec.base_format)
    else:
        if not os.path.isfile(spec.base):
            raise DiskError("base image %s does not exist" % spec.base, base=spec.base)
        base_format = check_golden(run, spec.base, spec.base_format)
    after = dict(spec.describe(), base_format=base_format)
    if check_mode:
        return True, before, after
    if before is not None:
        _remove(run, spec, before)
    if spec.backend == "lvm":
        after["thin"] = create_lvm_clone(run, spec, base_lv)
    else:
        create_file_clone(run, spec, base_format)
    return True, before, current_state(run, spec) or after


def _remove(run, spec, state):
    if spec.backend == "lvm":
        _check(run, lvm_remove_argv(spec.vg, spec.name), "lvremove")
    else:
        remove_file_clone(spec.path)


def ensure_absent(run, spec, check_mode=False):
    """Remove the clone.  Returns (changed, before, after=None)."""
    if spec.backend == "lvm":
        before = lvm_state(run, spec)
    else:
        before = None
        if os.path.lexists(spec.path) or os.path.lexists(record_path(spec.path)):
            before = {"path": spec.path, "backend": spec.backend}
        if not check_mode:
            remove_stale_temps(spec.directory, spec.name)
    if before is None:
        return False, None, None
    if not check_mode:
        _remove(run, spec, before)
    return True, before, None
