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
author: lxcloud developers (!UNKNOWN)
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
extends_documentation_fragment:
  - lxcloud.cloud.attributes
  - lxcloud.cloud.probe
  - lxcloud.cloud.api
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
    register,
)
from ansible_collections.lxcloud.cloud.plugins.module_utils.names import InvalidName


def main():
    module = AnsibleModule(
        argument_spec=dict(
            PROBE_ARGUMENT_SPEC,
            heartbeat=dict(type="bool", default=False),
            cpu=dict(type="float"),
            memory_mb=dict(type="int"),
            disk_mb=dict(type="int"),
            **API_ARGUMENT_SPEC
        ),
        required_if=PROBE_REQUIRED_IF,
        supports_check_mode=True,
    )
    p = module.params
    for key in ("cpu", "memory_mb", "disk_mb"):
        if p[key] is not None and p[key] <= 0:
            module.fail_json(msg="%s must be positive, got %s" % (key, p[key]))
    try:
        client = client_from_params(p)
        facts = probe_from_params(p, client, module.run_command)
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
