#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vm_info
short_description: The libvirt domains of a hypervisor, as lxcloud manages them
description:
  - Lists domains with the fields M(lxcloud.cloud.vm) manages (disk, context, NIC MAC, memory,
    vCPUs, kernel, console log) and their state, for reconciling the control plane's view with
    what a host really runs.
version_added: "0.1.0"
author: lxcloud developers (!UNKNOWN)
requirements:
  - libvirt Python bindings (Debian python3-libvirt, or libvirt-python from PyPI)
options:
  uri:
    description: libvirt connection URI.
    type: str
    default: qemu:///system
  names:
    description: Only these domains (missing ones are left out of the result).
    type: list
    elements: str
  prefix:
    description: Only domains whose name starts with this.
    type: str
extends_documentation_fragment:
  - lxcloud.cloud.attributes
attributes:
  check_mode:
    support: full
    details: Read-only.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Read-only.
"""

EXAMPLES = r"""
- name: What runs here
  lxcloud.cloud.vm_info:
    prefix: lxvm-
  register: here

- name: One VM
  lxcloud.cloud.vm_info:
    names: [lxvm-0001]
"""

RETURN = r"""
domains:
  description: The domains, sorted by name (in the order of I(names) when given).
  returned: always
  type: list
  elements: dict
  sample:
    - name: lxvm-0001
      uuid: 0b7e3c0a-9d3e-5f55-9d43-3b2c1a0e8f11
      state: running
      active: true
      persistent: true
      type: kvm
      vcpus: 2
      memory_mb: 2048
      disk: {path: /var/lib/lxcloud/disks/lxvm-0001.qcow2, format: qcow2, type: file}
      context: /var/lib/lxcloud/disks/lxvm-0001.context.iso
      nic: {mode: bridge, mac: "52:54:00:0a:00:0b", bridge: br0, subnet: null}
      console_log: /var/lib/lxcloud/disks/lxvm-0001.console.log
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.lxcloud.cloud.plugins.module_utils import domain as D
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import InvalidName


def main():
    module = AnsibleModule(
        argument_spec=dict(
            uri=dict(type="str", default="qemu:///system"),
            names=dict(type="list", elements="str"),
            prefix=dict(type="str"),
        ),
        mutually_exclusive=[("names", "prefix")],
        supports_check_mode=True,
    )
    if not D.HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib("libvirt-python (Debian: python3-libvirt)"),
                         exception="".join(traceback.format_exception_only(
                             type(D.LIBVIRT_IMPORT_ERROR), D.LIBVIRT_IMPORT_ERROR)))
    conn = None
    try:
        conn = D.connect(module.params["uri"])
        domains = D.list_domains(conn, module.params["names"], module.params["prefix"])
    except InvalidName as e:
        module.fail_json(msg=str(e), item=e.what)
    except D.DomainError as e:
        module.fail_json(msg=e.msg, **e.result)
    finally:
        if conn is not None:
            conn.close()
    module.exit_json(changed=False, domains=domains)


if __name__ == "__main__":
    main()
