#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: host_register
short_description: Register a hypervisor with the lxcloud control plane, or heartbeat it
version_added: "0.1.0"
description:
  - Probes the host (as M(lxcloud.cloud.host_facts) does) and registers it through the XML-RPC
    API (C(lxcloud.host.register)) with its capacity (CPU cores, memory MiB, total storage MiB)
    and its allowed MACs.
  - Idempotent. The control plane's record (C(one.hostpool.info)) is compared with what would be
    sent, capacity and the MAC set; the module registers and reports C(changed) only when they
    differ. Registering again updates the record, it never creates a second host.
  - An unchanged host is sent a heartbeat (C(lxcloud.host.heartbeat)) instead, so the control
    plane still sees it report; that is not a change.
  - With O(heartbeat=true) only the heartbeat is sent (last_seen; ERROR back to MONITORED), and
    the result is never changed.
author: lxcloud developers
attributes:
  check_mode:
    support: full
    details: Computes C(changed) and the diff from the control plane's record; sends nothing.
  diff_mode:
    support: full
    details: Capacity and MACs before and after.
  idempotent:
    support: full
options:
  name:
    description: Host name in the control plane. Defaults to the short hostname.
    type: str
  heartbeat:
    description: Only report liveness (C(lxcloud.host.heartbeat)); the host must be registered.
    type: bool
    default: false
  cpu:
    description: Override the probed CPU cores offered to VMs.
    type: float
  memory_mb:
    description: Override the probed memory (MiB) offered to VMs.
    type: int
  disk_mb:
    description: Override the probed storage size (MiB).
    type: int
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
      - Where the allowed IP/MAC pairs come from. C(file) is O(lease_file), C(api) the control
        plane's lease table, C(auto) the file when it exists else the API, C(none) no MACs.
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
  api_retries:
    description: Extra attempts after a connection error (exponential backoff from 0.5 s).
    type: int
    default: 3
seealso:
  - module: lxcloud.cloud.host_facts
"""

EXAMPLES = r"""
- name: Register this hypervisor (credentials from /etc/lxcloud/api.conf)
  lxcloud.cloud.host_register:

- name: Register with explicit credentials, leases from the control plane
  lxcloud.cloud.host_register:
    name: "{{ inventory_hostname }}"
    lease_source: api
    api_url: http://10.213.0.1:2633/RPC2
    api_session: "oneadmin:{{ vault_api_password }}"

- name: Keep 2 GiB for the hypervisor itself
  lxcloud.cloud.host_register:
    memory_mb: "{{ (ansible_memtotal_mb - 2048) | int }}"

- name: Heartbeat only
  lxcloud.cloud.host_register:
    heartbeat: true
"""

RETURN = r"""
host_id:
  description: The host's id in the control plane (None in check mode for a new host).
  returned: always
  type: int
  sample: 3
action:
  description: What was sent; C(register), C(heartbeat), or C(none) in check mode.
  returned: always
  type: str
  sample: register
before:
  description: The control plane's capacity and MACs before (empty for a new host).
  returned: unless heartbeat
  type: dict
  sample: {cpu: 2.0, memory_mb: 24105, disk_mb: 100000, macs: ["02:00:0a:d5:01:0a"]}
after:
  description: Capacity and MACs registered.
  returned: unless heartbeat
  type: dict
facts:
  description: The probe (see M(lxcloud.cloud.host_facts)).
  returned: always
  type: dict
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
    register,
)
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import InvalidName


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str"),
            heartbeat=dict(type="bool", default=False),
            cpu=dict(type="float"),
            memory_mb=dict(type="int"),
            disk_mb=dict(type="int"),
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
            api_retries=dict(type="int", default=3),
        ),
        required_if=[("storage_backend", "lvm", ["storage_vg"])],
        supports_check_mode=True,
    )
    p = module.params
    for key in ("cpu", "memory_mb", "disk_mb"):
        if p[key] is not None and p[key] <= 0:
            module.fail_json(msg="%s must be positive, got %s" % (key, p[key]))
    try:
        url, session = resolve_credentials(p["api_url"], p["api_session"], p["api_config"])
        client = ApiClient(url, session, timeout=p["api_timeout"], retries=p["api_retries"])
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
        result = register(
            client,
            facts,
            check_mode=module.check_mode,
            heartbeat=p["heartbeat"],
            capacity={"cpu": p["cpu"], "memory_mb": p["memory_mb"], "disk_mb": p["disk_mb"]},
        )
    except ProbeError as exc:
        module.fail_json(msg=exc.msg, **exc.details)
    except ApiError as exc:
        module.fail_json(msg=str(exc), api_method=exc.method, api_code=exc.code)
    except (ApiConfigError, InvalidName) as exc:
        module.fail_json(msg=str(exc))

    out = dict(
        changed=result["changed"],
        host_id=result["host_id"],
        action=result["action"],
        facts=facts,
    )
    if not p["heartbeat"]:
        out["before"] = result["before"]
        out["after"] = result["after"]
        if module._diff:
            out["diff"] = dict(before=result["before"], after=result["after"])
    module.exit_json(**out)


if __name__ == "__main__":
    main()
