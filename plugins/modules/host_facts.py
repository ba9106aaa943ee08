#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: host_facts
short_description: Probe a hypervisor (CPU, memory, storage, allowed MACs, libvirt, images)
version_added: "0.1.0"
description:
  - Reads what a lxcloud hypervisor offers and may run, without changing anything.
  - CPU cores and memory come from the kernel; storage is the filesystem of O(storage_dir) or
    the LVM volume group O(storage_vg) (C(vgs --reportformat json)).
  - The allowed IP/MAC pairs come from the local lease file O(lease_file) (CSV C(ip,mac,name,host),
    the control plane's format, rows filtered to this host) or from the control plane's lease
    table (C(lxcloud.lease.list)).
  - libvirt is asked through python3-libvirt when importable, else through C(virsh -r).
  - Images are the staged image sidecars (C(NAME-VERSION.json)) in O(images_dir).
author: lxcloud developers (!UNKNOWN)
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
extends_documentation_fragment:
  - lxcloud.cloud.attributes
  - lxcloud.cloud.probe
  - lxcloud.cloud.api
notes:
  - The API is only contacted for O(lease_source=api), or O(lease_source=auto) without a lease
    file when credentials are available.
"""

EXAMPLES = r"""
- name: Probe the hypervisor
  lxcloud.cloud.host_facts:
  register: probe

- name: Probe an LVM-backed host, leases from the control plane
  lxcloud.cloud.host_facts:
    storage_backend: lvm
    storage_vg: vg_lxcloud
    lease_source: api
    api_url: http://10.213.0.1:2633/RPC2
    api_session: "oneadmin:{{ vault_api_password }}"
"""

RETURN = r"""
host:
  description: The probe.
  returned: success
  type: dict
  contains:
    name:
      description: Host name.
      type: str
      sample: lxh1
    cpu:
      description: Logical CPUs.
      type: int
      sample: 2
    memory_mb:
      description: Total memory in MiB.
      type: int
      sample: 24105
    disk_mb:
      description: Total storage in MiB (directory's filesystem or volume group).
      type: int
    disk_free_mb:
      description: Free storage in MiB.
      type: int
    storage:
      description: Backend details (backend, path or vg, total_mb, free_mb).
      type: dict
    lease_source:
      description: Where the leases came from (file, api or none).
      type: str
    leases:
      description: Allowed leases of this host (ip, mac, name), sorted by MAC.
      type: list
      elements: dict
    macs:
      description: Allowed MACs, sorted.
      type: list
      elements: str
    libvirt:
      description: available, via (python or virsh), version, hypervisor, domains (running), error.
      type: dict
    images:
      description: Staged image sidecars (file, name, version, sha256, present).
      type: list
      elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.lxcloud.cloud.plugins.module_utils.api_client import (
    API_ARGUMENT_SPEC,
    ApiConfigError,
    ApiError,
    client_from_params,
)
from ansible_collections.lxcloud.cloud.plugins.module_utils.host_probe import (
    PROBE_ARGUMENT_SPEC,
    PROBE_REQUIRED_IF,
    ProbeError,
    probe_from_params,
)
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import InvalidName


def main():
    module = AnsibleModule(
        argument_spec=dict(PROBE_ARGUMENT_SPEC, **API_ARGUMENT_SPEC),
        required_if=PROBE_REQUIRED_IF,
        supports_check_mode=True,
    )
    p = module.params
    try:
        client = client_from_params(p, required=p["lease_source"] == "api")
        facts = probe_from_params(p, client, module.run_command)
    except ProbeError as exc:
        module.fail_json(msg=exc.msg, **exc.details)
    except (ApiError, ApiConfigError, InvalidName) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, host=facts)


if __name__ == "__main__":
    main()
