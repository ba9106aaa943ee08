#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: disk
short_description: Copy-on-write clone of a golden image for one VM
description:
  - Creates or removes a VM disk cloned from a staged golden image with one of four backends
    C(qcow2) (an overlay with the golden image as backing file), C(reflink) (C(cp --reflink=always)
    on btrfs or xfs), C(copy) (a plain sparse copy) and C(lvm) (a classic or thin snapshot of the
    staged logical volume).
  - A golden image that itself references a backing file or an external data file is refused.
  - File clones are created under a temporary name and renamed into place; a failed clone
    leaves nothing behind.
  - An existing clone of a different base or backend is reported as an error rather than
    silently kept (or replaced when I(force=true)).
version_added: "0.1.0"
author: lxcloud developers (!UNKNOWN)
options:
  name:
    description:
      - File name (file backends) or logical volume name (C(lvm)) of the clone.
      - Letters, digits, C(.), C(_) and C(-), at most 63 characters, no C(..).
    type: str
    required: true
  state:
    description: Whether the clone should exist.
    type: str
    choices: [present, absent]
    default: present
  backend:
    description: How the clone is made.
    type: str
    choices: [qcow2, reflink, copy, lvm]
    default: qcow2
  base:
    description:
      - The golden image. For file backends an absolute path, or a file name looked up in
        I(image_dir). For C(lvm) the name of the staged logical volume in I(vg).
      - Required with I(state=present).
    type: str
  base_format:
    description:
      - Format of the golden image, passed to C(qemu-img create -F). Detected with
        C(qemu-img info) when not given; when given, the detected format must match.
    type: str
    choices: [raw, qcow2]
  dir:
    description: Directory the clone is created in (file backends).
    type: path
    default: /var/lib/lxcloud/disks
  image_dir:
    description: Directory a bare I(base) name is looked up in (file backends).
    type: path
    default: /var/lib/lxcloud/images
  size:
    description:
      - C(lvm) classic snapshots, the copy-on-write space (C(lvcreate -L), e.g. C(2G)).
      - C(qcow2), an optional virtual size larger than the base's, applied at creation only.
    type: str
  vg:
    description: Volume group of the base and the snapshot (C(lvm)).
    type: str
  lvm_snapshot:
    description:
      - C(classic) (C(lvcreate -s -L SIZE)), C(thin) (C(lvcreate -s -ay -K) of a thin volume),
        or C(auto) (thin when the base is a thin volume).
    type: str
    choices: [auto, classic, thin]
    default: auto
  force:
    description: Replace an existing clone whose backend or base differs instead of failing.
    type: bool
    default: false
extends_documentation_fragment:
  - lxcloud.cloud.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
notes:
  - Needs C(qemu-img) (qemu-utils); C(lvm) needs lvm2 and device-mapper.
"""

EXAMPLES = r"""
- name: qcow2 overlay of the staged golden image
  lxcloud.cloud.disk:
    name: lxvm-0001.qcow2
    base: /var/lib/lxcloud/images/debian12.raw
    backend: qcow2

- name: Reflink clone on a btrfs storage directory
  lxcloud.cloud.disk:
    name: lxvm-0002.raw
    base: debian12.raw
    image_dir: /srv/lxcloud/images
    dir: /srv/lxcloud/disks
    backend: reflink

- name: Classic LVM snapshot of the staged logical volume
  lxcloud.cloud.disk:
    name: lxvm-0003
    backend: lvm
    vg: vg_farm
    base: golden-debian12
    size: 4G

- name: Remove the clone
  lxcloud.cloud.disk:
    name: lxvm-0001.qcow2
    state: absent
"""

RETURN = r"""
path:
  description: Path of the clone (C(/dev/VG/NAME) for lvm).
  returned: always
  type: str
  sample: /var/lib/lxcloud/disks/lxvm-0001.qcow2
backend:
  description: The backend.
  returned: always
  type: str
  sample: qcow2
base:
  description: The resolved golden image (path, or logical volume name for lvm).
  returned: when state=present
  type: str
  sample: /var/lib/lxcloud/images/debian12.raw
format:
  description:
    - Disk format to give the hypervisor, C(qcow2) for overlays, otherwise the base's format.
  returned: when state=present
  type: str
  sample: qcow2
clone:
  description: The clone found after the run (null when absent).
  returned: always
  type: dict
  sample: {"path": "/var/lib/lxcloud/disks/lxvm-0001.qcow2", "backend": "qcow2",
           "base": "/var/lib/lxcloud/images/debian12.raw", "base_format": "raw"}
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.lxcloud.cloud.plugins.module_utils.disk_backends import (
    CloneSpec,
    DiskError,
    ensure_absent,
    ensure_present,
)
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import InvalidName


def _resolve_base(p):
    base = p["base"]
    if p["backend"] == "lvm" or base is None or base.startswith("/"):
        return base
    return os.path.join(p["image_dir"], base)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            backend=dict(type="str", default="qcow2", choices=["qcow2", "reflink", "copy", "lvm"]),
            base=dict(type="str"),
            base_format=dict(type="str", choices=["raw", "qcow2"]),
            dir=dict(type="path", default="/var/lib/lxcloud/disks"),
            image_dir=dict(type="path", default="/var/lib/lxcloud/images"),
            size=dict(type="str"),
            vg=dict(type="str"),
            lvm_snapshot=dict(type="str", default="auto", choices=["auto", "classic", "thin"]),
            force=dict(type="bool", default=False),
        ),
        required_if=[("state", "present", ["base"]), ("backend", "lvm", ["vg"])],
        supports_check_mode=True,
    )
    p = module.params

    def run(argv):
        return module.run_command(argv)

    try:
        base = _resolve_base(p)
        if base is None:  # state=absent needs no base; the spec still validates the name
            base = "/" if p["backend"] != "lvm" else "lxcloud-none"
        spec = CloneSpec(
            name=p["name"], backend=p["backend"], base=base, directory=p["dir"],
            base_format=p["base_format"], size=p["size"], vg=p["vg"],
            lvm_snapshot=p["lvm_snapshot"],
        )
        if p["state"] == "present":
            changed, before, after = ensure_present(run, spec, module.check_mode, p["force"])
        else:
            changed, before, after = ensure_absent(run, spec, module.check_mode)
    except InvalidName as e:
        module.fail_json(msg=str(e), item=e.what)
    except DiskError as e:
        module.fail_json(msg=e.msg, **e.result)
    except (IOError, OSError) as e:
        module.fail_json(msg="disk %s: %s" % (p["name"], e))

    result = dict(
        changed=changed,
        path=spec.path,
        backend=spec.backend,
        clone=after,
        diff=dict(before=before or {}, after=after or {}),
    )
    if p["state"] == "present":
        result["base"] = spec.base
        result["format"] = "qcow2" if spec.backend == "qcow2" else (
            (after or {}).get("base_format") or "raw")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
