# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Provisioning pools through the control plane's API, for the ``lxcloud.cloud.pool`` module.

The control plane holds the one pool model (``lxcloud_py.pools``): ``lxcloud.pool.plan`` says
what a request would change (the template normalised, fields merged over the current pool), so
check mode predicts exactly what the real run does, and a second run reports no change.
Standard library only; no ``lxcloud_py`` or Ansible imports.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.lxcloud.cloud.plugins.module_utils.api_client import ApiError
from ansible_collections.lxcloud.cloud.plugins.module_utils.wire import NO_EXISTS

#: The pool fields the module passes on (None: not given, keep the current value).
POOL_FIELDS = (
    "template",
    "image",
    "cpu",
    "vcpu",
    "memory",
    "context",
    "target",
    "lifetime",
    "priority",
    "hosts",
    "drain",
    "backoff_base",
    "backoff_max",
    "enabled",
)


def request_from_params(params):
    """The ``lxcloud.pool.*`` struct for the module's options: the name and the fields given."""
    data = {"name": params["name"]}
    for key in POOL_FIELDS:
        if params.get(key) is not None:
            data[key] = params[key]
    return data


def pool_exists(client, name):
    try:
        client.call("lxcloud.pool.info", name)
    except ApiError as exc:
        if exc.code == NO_EXISTS:
            return False
        raise
    return True


def ensure_pool(client, params, check_mode):
    """Make the pool match ``params`` (``state`` present or absent); returns a dict with
    ``changed``, ``action`` (created, updated, deleted, none), ``changes``, ``before``,
    ``after``. In check mode the control plane is asked, nothing is changed."""
    name = params["name"]
    if params["state"] == "absent":
        if not pool_exists(client, name):
            return dict(changed=False, action="none", changes=[], before={}, after={})
        plan = client.call("lxcloud.pool.plan", {"name": name})
        if not check_mode:
            client.call("lxcloud.pool.delete", name, bool(params.get("force")))
        return dict(
            changed=True, action="deleted", changes=["delete"], before=plan["before"], after={}
        )
    data = request_from_params(params)
    plan = client.call("lxcloud.pool.plan", data)
    action = "none"
    if plan["changed"]:
        action = "updated" if plan["exists"] else "created"
        if not check_mode:
            if plan["exists"]:
                client.call("lxcloud.pool.update", name, data, True)
            else:
                client.call("lxcloud.pool.allocate", data)
    return dict(
        changed=bool(plan["changed"]),
        action=action,
        changes=list(plan["changes"]),
        before=plan["before"],
        after=plan["after"],
    )
