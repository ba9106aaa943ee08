#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: context
short_description: Per-VM context disk (ISO9660, volume id CONTEXT, context.sh)
description:
  - Writes the context ISO a VM reads at boot as its second disk, in OpenNebula's format, a
    file C(context.sh) with one C(KEY='value') line per variable, sorted by key.
  - Keys must match C([A-Z][A-Z0-9_]*); values may not contain a single quote, a newline, a
    carriage return or a NUL byte and are at most 4096 characters.
  - The ISO is built with C(genisoimage -V CONTEXT -J -R) under a temporary name and renamed
    into place. Idempotence compares the C(context.sh) inside the existing ISO (read back with
    C(isoinfo)) with the rendered one, so the ISO's timestamps never cause a change.
  - In diff output the values of variables ending in TOKEN, PASSWORD, SECRET or KEY are masked.
version_added: "0.1.0"
author: lxcloud developers (!UNKNOWN)
options:
  name:
    description: File name of the ISO in I(dir) (letters, digits, C(.), C(_), C(-)).
    type: str
    required: true
  dir:
    description: Directory of the ISO.
    type: path
    default: /var/lib/lxcloud/disks
  state:
    description: Whether the ISO should exist.
    type: str
    choices: [present, absent]
    default: present
  variables:
    description:
      - The context variables, e.g. NAME, ETH0_IP, ETH0_MASK, ETH0_GATEWAY, ETH0_MAC, ETH0_DNS,
        LIFETIME, LXCLOUD_API, VMID, LXCLOUD_TOKEN. Numbers are written in decimal, booleans as
        YES/NO.
      - Required with I(state=present).
    type: dict
  secret_variables:
    description:
      - More context variables, merged into I(variables), whose values Ansible keeps out of its
        output and logs (C(no_log)), e.g. C(LXCLOUD_TOKEN).
    type: dict
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
  - Needs C(genisoimage) and C(isoinfo) (Debian package genisoimage).
"""

EXAMPLES = r"""
- name: Context disk for one VM
  lxcloud.cloud.context:
    name: lxvm-0001.context.iso
    variables:
      NAME: lxvm-0001
      ETH0_IP: 10.10.0.11
      ETH0_MASK: 255.255.255.0
      ETH0_GATEWAY: 10.10.0.1
      ETH0_MAC: "52:54:00:0a:00:0b"
      ETH0_DNS: 10.10.0.1
      LIFETIME: 86400
      LXCLOUD_API: http://10.10.0.1:2633/RPC2
      VMID: 17
    secret_variables:
      LXCLOUD_TOKEN: "{{ vm_token }}"

- name: Remove it
  lxcloud.cloud.context:
    name: lxvm-0001.context.iso
    state: absent
"""

RETURN = r"""
path:
  description: Path of the ISO.
  returned: always
  type: str
  sample: /var/lib/lxcloud/disks/lxvm-0001.context.iso
keys:
  description: The variable names written (sorted).
  returned: when state=present
  type: list
  elements: str
  sample: [ETH0_IP, ETH0_MAC, NAME]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.lxcloud.cloud.plugins.module_utils.context import (
    ContextError,
    ContextSpec,
    ensure_absent,
    ensure_present,
    masked,
    validate_variables,
)
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import InvalidName


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            dir=dict(type="path", default="/var/lib/lxcloud/disks"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            variables=dict(type="dict"),
            secret_variables=dict(type="dict", no_log=True),
        ),
        required_if=[("state", "present", ["variables"])],
        supports_check_mode=True,
    )
    p = module.params

    def run(argv):
        return module.run_command(argv)

    result = dict(changed=False)
    try:
        spec = ContextSpec(p["name"], p["dir"])
        result["path"] = spec.path
        if p["state"] == "present":
            variables = dict(p["variables"])
            for key, value in (p["secret_variables"] or {}).items():
                if key in variables:
                    module.fail_json(msg="context variable %s is in both variables and "
                                         "secret_variables" % key, item=key)
                variables[key] = value
            keys = sorted(validate_variables(variables))
            changed, before, after = ensure_present(run, spec, variables, module.check_mode)
            result.update(changed=changed, keys=keys)
            result["diff"] = dict(
                before_header="%s (context.sh)" % spec.path,
                after_header="%s (context.sh)" % spec.path,
                before=masked(before or ""),
                after=masked(after),
            )
        else:
            changed = ensure_absent(spec, module.check_mode)
            result.update(changed=changed,
                          diff=dict(before={"path": spec.path} if changed else {}, after={}))
    except InvalidName as e:
        module.fail_json(msg=str(e), item=e.what)
    except ContextError as e:
        module.fail_json(msg=e.msg, **e.result)
    except (IOError, OSError) as e:
        module.fail_json(msg="context disk %s: %s" % (p["name"], e))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
