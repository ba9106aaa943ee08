# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Options of every module that talks to the control plane's XML-RPC API
    (argument spec: module_utils.api_client.API_ARGUMENT_SPEC)."""

    DOCUMENTATION = r"""
options:
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
attributes:
  action_group:
    description:
      - Part of the action group C(lxcloud.cloud.api) (C(meta/runtime.yml)), so the API options
        can be set once for every module that talks to the control plane, with
        C(module_defaults) and C(group/lxcloud.cloud.api).
    support: full
    membership:
      - lxcloud.cloud.api
"""
