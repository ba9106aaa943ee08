#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: image_capture
short_description: Capture a golden image into the image repository
description:
  - Reads a golden node's volume (a block device such as an LV) or an image file with C(dd),
    pipes it into a compressor (C(zstd -T0), the fast default; C(pigz) or C(gzip) as in the
    original farm) and writes C(NAME-VERSION.raw.zst) (or C(.raw.gz)) into O(repo_dir).
  - Computes the sha256 of the compressed bytes as they are written (the checksum every host
    verifies) and writes the metadata C(NAME-VERSION.json) (name, version, sha256, size,
    format, compression) next to it, atomically.
  - Refuses sources that reference a backing file or a data file.
  - When O(api_url) is given, registers the image with C(lxcloud.image.register) (idempotent
    on the control plane, done on every run).
  - A captured name+version is immutable, so a second run reports no change unless O(force).
version_added: 0.1.0
author: lxcloud developers (!UNKNOWN)
options:
  name:
    description: Image name.
    type: str
    required: true
  version:
    description: Image version.
    type: str
    required: true
  source:
    description: The volume or image file to capture (absolute path).
    type: path
    required: true
  repo_dir:
    description: The image repository directory.
    type: path
    default: /var/lib/lxcloud/repo
  compression:
    description: Compressor.
    type: str
    choices: [zstd, pigz, gzip]
    default: zstd
  level:
    description: Compression level (zstd default 3, gzip/pigz default 6).
    type: int
  threads:
    description: Compressor threads (C(0) = all cores for zstd; pigz default all cores).
    type: int
    default: 0
  force:
    description: Capture again even if this name+version exists.
    type: bool
    default: false
  register:
    description: Register the image with the control plane (implied by O(api_url)).
    type: bool
    default: false
extends_documentation_fragment:
  - lxcloud.cloud.attributes
  - lxcloud.cloud.api
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
"""

EXAMPLES = r"""
- name: Capture the golden node's LV into the repository
  lxcloud.cloud.image_capture:
    name: slc5-batch
    version: "2024.1"
    source: /dev/vmvg/golden-slc5
    api_url: http://127.0.0.1:2633/RPC2
    api_session: "oneadmin:{{ lxcloud_api_password }}"

- name: The original farm's gzip, with pigz
  lxcloud.cloud.image_capture:
    name: slc5-batch
    version: "2024.1"
    source: /srv/golden/slc5.raw
    compression: pigz
"""

RETURN = r"""
path:
  description: The compressed image in the repository.
  returned: always
  type: str
  sample: /var/lib/lxcloud/repo/slc5-batch-2024.1.raw.zst
image:
  description: The metadata written next to it.
  returned: success
  type: dict
  sample: {name: slc5-batch, version: "2024.1", sha256: "0f3c...", size: 10737418240,
           format: raw, compression: zstd, compressed_size: 1234567890,
           file: slc5-batch-2024.1.raw.zst}
image_id:
  description: The control plane's image id, when registered.
  returned: when registering and not in check mode
  type: int
"""

import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.lxcloud.cloud.plugins.module_utils.api_client import API_ARGUMENT_SPEC
from ansible_collections.lxcloud.cloud.plugins.module_utils.capture import capture, register
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import InvalidName
from ansible_collections.lxcloud.cloud.plugins.module_utils.staging import StagingError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            version=dict(type="str", required=True),
            source=dict(type="path", required=True),
            repo_dir=dict(type="path", default="/var/lib/lxcloud/repo"),
            compression=dict(type="str", default="zstd", choices=["zstd", "pigz", "gzip"]),
            level=dict(type="int"),
            threads=dict(type="int", default=0),
            force=dict(type="bool", default=False),
            register=dict(type="bool", default=False),
            **API_ARGUMENT_SPEC
        ),
        supports_check_mode=True,
    )
    p = module.params

    def run(argv):
        return module.run_command(argv)

    try:
        res = capture(p["source"], p["name"], p["version"], p["repo_dir"], p["compression"],
                      p["level"], p["threads"], p["force"], module.check_mode, run)
        image_id = None
        if (p["register"] or p["api_url"]) and not module.check_mode:
            image_id = register(p, res["meta"])
    except (StagingError, InvalidName) as exc:
        module.fail_json(msg=str(exc), exception=traceback.format_exc(),
                         **getattr(exc, "details", {}))
    module.exit_json(changed=res["changed"], path=res["path"], image=res["meta"] or {},
                     image_id=image_id)


if __name__ == "__main__":
    main()
