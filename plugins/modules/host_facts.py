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
author: lxcloud developers
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  name:
    description: Host name as registered in the control plane. Defaults to the short hostname.
    type: str
  storage_backend:
    description: Where VM disks live.
    type: str
    choices: [dir, lvm]
    default: dir
  storage_dir:
    description: Storage directory (backend C(dir)).
    type: path
    default: /var/lib/lxcloud
  storage_vg:
    description: LVM volume group (backend C(lvm)).
    type: str
  images_dir:
    description: Directory of staged golden images and their C(.json) sidecars.
    type: path
    default: /var/lib/lxcloud/images
  lease_source:
    description:
      - C(file) reads O(lease_file), C(api) asks the control plane, C(none) reports no leases.
      - C(auto) uses the file when it exists, else the API when credentials are available.
    type: str
    choices: [auto, file, api, none]
    default: auto
  lease_file:
    description: Local lease file, CSV C(ip,mac,name,host).
    type: path
    default: /etc/lxcloud/leases.csv
  libvirt_uri:
    description: libvirt connection URI (opened read-only).
    type: str
    default: qemu:///system
  api_url:
    description: Control plane XML-RPC URL; defaults to C(url) in O(api_config).
    type: str
  api_session:
    description: Session string C(user:secret); defaults to C(session) in O(api_config).
    type: str
  api_config:
    description: Credentials file (mode 0600, INI or C(KEY=value) with C(url) and C(session)).
    type: path
    default: /etc/lxcloud/api.conf
  api_timeout:
    description: Seconds per API call attempt.
    type: float
    default: 10
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
    ApiClient,
    ApiConfigError,
    ApiError,
    resolve_credentials,
)
from ansible_collections.lxcloud.cloud.plugins.module_utils.host_probe import (
    ProbeError,
    probe,
)
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import InvalidName


def api_client_for(module, required):
    """An ApiClient from options or the credentials file; None when not required and absent."""
    p = module.params
    try:
        url, session = resolve_credentials(p["api_url"], p["api_session"], p["api_config"])
    except ApiConfigError:
        if required:
            raise
        return None
    return ApiClient(url, session, timeout=p["api_timeout"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str"),
            storage_backend=dict(type="str", choices=["dir", "lvm"], default="dir"),
            storage_dir=dict(type="path", default="/var/lib/lxcloud"),
            storage_vg=dict(type="str"),
            images_dir=dict(type="path", default="/var/lib/lxcloud/images"),
            lease_source=dict(
                type="str", choices=["auto", "file", "api", "none"], default="auto"
            ),
            lease_file=dict(type="path", default="/etc/lxcloud/leases.csv"),
            libvirt_uri=dict(type="str", default="qemu:///system"),
            api_url=dict(type="str"),
            api_session=dict(type="str", no_log=True),
            api_config=dict(type="path", default="/etc/lxcloud/api.conf"),
            api_timeout=dict(type="float", default=10.0),
        ),
        required_if=[("storage_backend", "lvm", ["storage_vg"])],
        supports_check_mode=True,
    )
    p = module.params
    try:
        client = api_client_for(module, required=p["lease_source"] == "api")
        facts = probe(
            host=p["name"],
            storage_backend=p["storage_backend"],
            storage_dir=p["storage_dir"],
            storage_vg=p["storage_vg"],
            images_dir=p["images_dir"],
            lease_source=p["lease_source"],
            lease_file=p["lease_file"],
            libvirt_uri=p["libvirt_uri"],
            client=client,
            run=module.run_command,
        )
    except ProbeError as exc:
        module.fail_json(msg=exc.msg, **exc.details)
    except (ApiError, ApiConfigError, InvalidName) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, host=facts)


if __name__ == "__main__":
    main()
