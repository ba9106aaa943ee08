#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: image
short_description: Install a verified golden image on a hypervisor
description:
  - Reads a compressed golden image (already transferred to the host, or fetched from a URL),
    verifies its sha256, unpacks it streaming into a temporary file in O(storage_dir) (or onto
    a temporary LV for O(backend=lvm)) and renames it atomically to C(NAME-VERSION.raw).
  - The sha256 is that of the B(compressed stream as distributed) (the C(.zst)/C(.gz) file in
    the image repository), so it can be checked while the bytes are unpacked.
  - Other versions stay intact; on a checksum mismatch, a truncated or corrupt stream, a full
    disk or a refused image nothing partial is left behind.
  - Refuses images whose unpacked content is not of the expected O(format) according to
    C(qemu-img info) or that reference a backing file or an external data file.
  - Records the result in a JSON sidecar C(NAME-VERSION.json) next to the image and, when
    O(api_url) is given, reports it to the control plane with C(lxcloud.host.image).
version_added: 0.1.0
author: lxcloud developers (!UNKNOWN)
options:
  name:
    description: Image name (letters, digits, C(.), C(_), C(-)).
    type: str
    required: true
  version:
    description: Image version, same character set as O(name).
    type: str
    required: true
  src:
    description:
      - The compressed image, a path on the host or a C(http://), C(https://) or C(file://) URL
        (streamed, not stored).
      - Required unless the same verified version is already installed (and O(force=false)).
    type: str
  sha256:
    description: sha256 of the compressed stream as distributed (64 hex digits).
    type: str
    required: true
  compression:
    description: How O(src) is compressed.
    type: str
    choices: [zstd, gzip, none]
    default: zstd
  format:
    description: The format the unpacked image must have (C(qemu-img info)).
    type: str
    choices: [raw, qcow2]
    default: raw
  size:
    description:
      - Size of the unpacked image in bytes. Checked when given; needed for O(backend=lvm).
    type: int
  storage_dir:
    description: Where images and their sidecars live.
    type: path
    default: /var/lib/lxcloud/images
  backend:
    description: C(file) writes C(NAME-VERSION.FORMAT) in O(storage_dir); C(lvm) writes the
      LV C(/dev/VG/NAME-VERSION).
    type: str
    choices: [file, lvm]
    default: file
  vg:
    description: Volume group for O(backend=lvm).
    type: str
  thin_pool:
    description:
      - With O(backend=lvm), write the image onto a thin LV in this thin pool of O(vg) (so that
        C(lxcloud.cloud.disk) clones it as thin snapshots); default a plain LV.
    type: str
  force:
    description: Re-install even when the same verified version is present.
    type: bool
    default: false
  remove_src:
    description: Remove the O(src) file after a successful install (local paths only).
    type: bool
    default: false
  report:
    description:
      - Report the result to the control plane with C(lxcloud.host.image) on every run
        (C(verified), or C(failed) when installing failed), so the scheduler only places VMs
        on hosts holding the verified image.
      - Default is to report when O(api_url) is given.
    type: bool
  host_name:
    description: This host's name as registered with the control plane (default the hostname).
    type: str
extends_documentation_fragment:
  - lxcloud.cloud.attributes
  - lxcloud.cloud.api
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
    details: The same verified version present means no change.
notes:
  - Unpacks with C(zstd -d -c) or C(gzip -d -c) through pipes, and checks with C(qemu-img info).
"""

EXAMPLES = r"""
- name: Install the golden image that the staging run left in incoming/
  lxcloud.cloud.image:
    name: slc5-batch
    version: "2024.1"
    src: /var/lib/lxcloud/images/incoming/slc5-batch-2024.1.raw.zst
    sha256: "{{ image_sha256 }}"
    report: true  # credentials from /etc/lxcloud/api.conf
    host_name: "{{ inventory_hostname }}"

- name: Fetch a gzip image from the repository and write it onto an LV
  lxcloud.cloud.image:
    name: slc5-batch
    version: "2024.1"
    src: http://repo.example.org/images/slc5-batch-2024.1.raw.gz
    compression: gzip
    sha256: "{{ image_sha256 }}"
    size: 10737418240
    backend: lvm
    vg: vmvg

- name: The same onto a thin LV, so that VM disks are thin snapshots of it
  lxcloud.cloud.image:
    name: slc5-batch
    version: "2024.1"
    src: /var/lib/lxcloud/images/incoming/slc5-batch-2024.1.raw.zst
    sha256: "{{ image_sha256 }}"
    size: 10737418240
    backend: lvm
    vg: vmvg
    thin_pool: pool
"""

RETURN = r"""
path:
  description: The installed image (file or LV device path).
  returned: always
  type: str
  sample: /var/lib/lxcloud/images/slc5-batch-2024.1.raw
image:
  description: The sidecar record of the installed image.
  returned: always
  type: dict
  sample: {name: slc5-batch, version: "2024.1", sha256: "0f3c...", size: 10737418240,
           format: raw, compression: zstd, state: verified, verified_at: "2024-05-01T10:00:00Z"}
reported:
  description: Whether the control plane was told.
  returned: always
  type: bool
"""

import os
import socket
import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.lxcloud.cloud.plugins.module_utils.api_client import API_ARGUMENT_SPEC
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import InvalidName
from ansible_collections.lxcloud.cloud.plugins.module_utils.staging import (
    Plan,
    StagingError,
    report,
    stage,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            version=dict(type="str", required=True),
            src=dict(type="str"),
            sha256=dict(type="str", required=True),
            compression=dict(type="str", default="zstd", choices=["zstd", "gzip", "none"]),
            format=dict(type="str", default="raw", choices=["raw", "qcow2"]),
            size=dict(type="int"),
            storage_dir=dict(type="path", default="/var/lib/lxcloud/images"),
            backend=dict(type="str", default="file", choices=["file", "lvm"]),
            vg=dict(type="str"),
            thin_pool=dict(type="str"),
            force=dict(type="bool", default=False),
            remove_src=dict(type="bool", default=False),
            report=dict(type="bool"),
            host_name=dict(type="str"),
            **API_ARGUMENT_SPEC
        ),
        required_if=[("backend", "lvm", ("vg", "size"))],
        supports_check_mode=True,
    )
    p = module.params
    do_report = bool(p["api_url"]) if p["report"] is None else p["report"]
    host_name = p["host_name"] or socket.gethostname()

    def tell(state):
        return report(p, host_name, p["name"], p["version"], p["sha256"], state)

    def run(argv):
        return module.run_command(argv)

    try:
        plan = Plan(p["name"], p["version"], p["sha256"], p["storage_dir"], p["format"],
                    p["compression"], p["backend"], p["vg"], p["size"],
                    thin_pool=p["thin_pool"])
        if (not plan.up_to_date() or p["force"]) and not p["src"]:
            module.fail_json(msg="src is required: %s %s is not installed and verified"
                             % (p["name"], p["version"]))
        result = stage(p["src"] or "", p["name"], p["version"], p["sha256"], p["storage_dir"],
                       compression=p["compression"], fmt=p["format"], backend=p["backend"],
                       vg=p["vg"], size=p["size"], force=p["force"], thin_pool=p["thin_pool"],
                       check_mode=module.check_mode, run=run)
    except (StagingError, InvalidName) as exc:
        details = getattr(exc, "details", {})
        if do_report and not module.check_mode:
            try:
                tell("failed")
            except StagingError as rexc:
                module.warn(str(rexc))
        module.fail_json(msg=str(exc), error=type(exc).__name__,
                         exception=traceback.format_exc(), **details)

    if (result["changed"] and p["remove_src"] and not module.check_mode and p["src"]
            and os.path.isfile(p["src"])):
        os.unlink(p["src"])

    reported = False
    if do_report and not module.check_mode:
        try:
            tell("verified")
            reported = True
        except StagingError as exc:
            module.fail_json(msg=str(exc), path=result["path"], image=result["meta"],
                             changed=result["changed"])

    before = result["before"] or {}
    after = result["meta"] or {"sha256": p["sha256"], "state": "verified"}
    module.exit_json(
        changed=result["changed"],
        path=result["path"],
        image=result["meta"] or {},
        reported=reported,
        diff={"before": before, "after": after},
    )


if __name__ == "__main__":
    main()
