#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: pool
short_description: Manage an lxcloud provisioning pool (keep N VMs of a template)
version_added: "0.1.0"
description:
  - Creates, updates or deletes a provisioning pool in the lxcloud control plane through its
    XML-RPC API (C(lxcloud.pool.plan), C(allocate), C(update), C(delete)); the control plane's
    pool manager then keeps O(target) VMs of the pool's template running, refills them as they
    end, drains the surplus and backs off on failures (see docs/pools.md).
  - Options not given keep the pool's current values (a new pool takes the defaults). Giving
    O(image) (with O(cpu), O(vcpu), O(memory), O(context)) replaces the template.
  - Idempotent. The control plane compares the request with the pool (the template normalised)
    and the module changes something only when they differ.
author: lxcloud developers (@lxcloud)
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying
      the target.
    support: full
    details: The control plane says what would change (C(lxcloud.pool.plan)); nothing is sent.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in
      check_mode), when in diff mode.
    support: full
    details: The pool's fields before and after.
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the
      second invocation indicates no change.
    support: full
options:
  name:
    description: The pool's name (letters, digits, C(.), C(_), C(-)).
    type: str
    required: true
  state:
    description: C(present) creates or updates the pool, C(absent) deletes it.
    type: str
    choices: [present, absent]
    default: present
  template:
    description: OpenNebula VM template of the pool's VMs (as C(one.vm.allocate) takes it;
      without NAME, LIFETIME and NIC, which the pool and the leases set).
    type: str
  image:
    description: Image the pool's VMs boot, instead of O(template).
    type: str
  cpu:
    description: CPU share of each VM, with O(image).
    type: float
  vcpu:
    description: Virtual CPUs of each VM, with O(image).
    type: int
  memory:
    description: Memory (MiB) of each VM, with O(image).
    type: int
  context:
    description: CONTEXT variables of each VM, with O(image).
    type: dict
  target:
    description: How many active VMs the pool keeps. Lowering it drains the surplus.
    type: int
  lifetime:
    description: Seconds each VM lives before it is asked to drain; C(0) for none.
    type: int
  priority:
    description: Pools with a higher priority are refilled first.
    type: int
  hosts:
    description: Place the pool's VMs only on these hosts (empty list for any).
    type: list
    elements: str
  drain:
    description: How the surplus ends. C(graceful) asks each VM to end itself when its work is
      done; C(hard) terminates it at once.
    type: str
    choices: [graceful, hard]
  backoff_base:
    description: Seconds of the first backoff after an exit code 300-699 (doubling).
    type: int
  backoff_max:
    description: Cap of the backoff, seconds.
    type: int
  enabled:
    description: A disabled pool is left alone (no refill, no drain).
    type: bool
  force:
    description: With O(state=absent), delete the pool even if it still has live VMs (they keep
      running, no longer pooled).
    type: bool
    default: false
extends_documentation_fragment:
  - lxcloud.cloud.api
seealso:
  - name: docs/pools.md
    description: The pool model, refill, drain and backoff rules and the exit codes.
    link: https://github.com/lxcloud/lxcloud/blob/main/docs/pools.md
"""

EXAMPLES = r"""
- name: Keep 4 batch VMs of the golden image, each living two hours
  lxcloud.cloud.pool:
    name: batch
    image: golden
    cpu: 1
    memory: 2048
    target: 4
    lifetime: 7200

- name: A service pool from a full template, pinned to two hosts, refilled first
  lxcloud.cloud.pool:
    name: service
    template: |
      CPU = 0.5
      MEMORY = 512
      DISK = [ IMAGE = "golden" ]
      CONTEXT = [ ROLE = "service" ]
    target: 2
    priority: 10
    hosts: [hv1, hv2]
    api_url: http://10.213.0.1:2633/RPC2
    api_session: "oneadmin:{{ vault_api_password }}"

- name: Drain the batch pool to one VM, terminating the surplus at once
  lxcloud.cloud.pool:
    name: batch
    target: 1
    drain: hard

- name: Remove a pool that no longer has VMs
  lxcloud.cloud.pool:
    name: old
    state: absent
"""

RETURN = r"""
action:
  description: What was done (or would be, in check mode).
  returned: always
  type: str
  choices: [created, updated, deleted, none]
  sample: updated
changes:
  description: One line per field that changed.
  returned: always
  type: list
  elements: str
  sample: ["target 4 -> 1"]
before:
  description: The pool's fields before (empty for a new pool).
  returned: always
  type: dict
  sample: {name: batch, target: 4, lifetime: 7200, priority: 0, drain: graceful}
after:
  description: The pool's fields after (empty once deleted).
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
from ansible_collections.lxcloud.cloud.plugins.module_utils.pool import ensure_pool


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            template=dict(type="str"),
            image=dict(type="str"),
            cpu=dict(type="float"),
            vcpu=dict(type="int"),
            memory=dict(type="int"),
            context=dict(type="dict"),
            target=dict(type="int"),
            lifetime=dict(type="int"),
            priority=dict(type="int"),
            hosts=dict(type="list", elements="str"),
            drain=dict(type="str", choices=["graceful", "hard"]),
            backoff_base=dict(type="int"),
            backoff_max=dict(type="int"),
            enabled=dict(type="bool"),
            force=dict(type="bool", default=False),
            **API_ARGUMENT_SPEC
        ),
        mutually_exclusive=[
            ("template", "image"),
            ("template", "cpu"),
            ("template", "vcpu"),
            ("template", "memory"),
            ("template", "context"),
        ],
        supports_check_mode=True,
    )
    try:
        client = client_from_params(module.params)
        result = ensure_pool(client, module.params, module.check_mode)
    except ApiError as exc:
        module.fail_json(msg=str(exc), api_method=exc.method, api_code=exc.code)
    except ApiConfigError as exc:
        module.fail_json(msg=str(exc))
    if module._diff:
        result["diff"] = dict(before=result["before"], after=result["after"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
