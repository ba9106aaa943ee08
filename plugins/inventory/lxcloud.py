# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: lxcloud
short_description: The hypervisors (and optionally the VMs) of an lxcloud control plane
description:
  - Reads the hosts registered with an lxcloud control plane through its XML-RPC API
    (C(one.hostpool.info), OpenNebula's protocol), and with O(include_vms) its VMs
    (C(one.vmpool.info)).
  - Hosts go into the group O(hosts_group) and into C(lxcloud_state_<state>) (C(monitored),
    C(error), C(disabled), ...) and C(lxcloud_cluster_<cluster>); VMs into O(vms_group),
    C(lxcloud_vm_<state>) and C(lxcloud_pool_<pool>) for pool VMs.
  - Each host gets the variables C(lxcloud_id), C(lxcloud_state), C(lxcloud_cluster),
    C(lxcloud_cpu), C(lxcloud_memory_mb), C(lxcloud_disk_mb), C(lxcloud_last_seen); each VM
    C(lxcloud_id), C(lxcloud_state), C(lxcloud_lcm_state), C(lxcloud_host), C(lxcloud_pool) and
    C(ansible_host) (its lease's IP).
  - O(compose), O(groups) and O(keyed_groups) work as in the standard constructable plugins;
    results can be cached (O(cache)).
  - The file must end in C(lxcloud.yml) or C(lxcloud.yaml).
version_added: "0.1.0"
author:
  - lxcloud developers (!UNKNOWN)
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: The name of this plugin; it must be C(lxcloud.cloud.lxcloud).
    required: true
    choices: [lxcloud.cloud.lxcloud]
    type: str
  api_url:
    description:
      - The control plane's XML-RPC endpoint, for example C(http://10.0.0.1:2633/RPC2).
      - Default from C(LXCLOUD_API_URL), else the C(api_url) of O(api_config).
    type: str
    env:
      - name: LXCLOUD_API_URL
  api_session:
    description:
      - The session string C(user:secret).
      - Default from C(LXCLOUD_API_SESSION), else the C(session) of O(api_config).
    type: str
    env:
      - name: LXCLOUD_API_SESSION
  api_config:
    description: The client config file (owner-only) with C(api_url) and C(session).
    type: path
    default: /etc/lxcloud/api.conf
  timeout:
    description: Seconds per API call.
    type: float
    default: 30
  include_vms:
    description: Also list the VMs that are not DONE, by name, with their lease's IP.
    type: bool
    default: false
  hosts_group:
    description: The group every host joins.
    type: str
    default: hypervisors
  vms_group:
    description: The group every VM joins (with O(include_vms)).
    type: str
    default: lxcloud_vms
"""

EXAMPLES = r"""
# lxcloud.yml
plugin: lxcloud.cloud.lxcloud
api_url: http://10.0.0.1:2633/RPC2
include_vms: true
keyed_groups:
  - key: lxcloud_state
    prefix: state
compose:
  ansible_host: lxcloud_name ~ '.farm.example'
groups:
  big: lxcloud_memory_mb > 65536
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/lxcloud-inventory
cache_timeout: 60
"""

import re
import xml.etree.ElementTree as ET

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible_collections.lxcloud.cloud.plugins.module_utils.api_client import (
    ApiClient,
    ApiConfigError,
    ApiError,
    parse_host_pool,
    resolve_credentials,
)

HOST_STATES = {0: "init", 1: "monitoring_monitored", 2: "monitored", 3: "error", 4: "disabled",
               5: "monitoring_error", 6: "monitoring_init", 7: "monitoring_disabled", 8: "offline"}
VM_STATES = {0: "init", 1: "pending", 2: "hold", 3: "active", 4: "stopped", 5: "suspended",
             6: "done", 7: "failed", 8: "poweroff", 9: "undeployed"}
_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def _group(text):
    return re.sub(r"[^A-Za-z0-9_]", "_", str(text)).lower()


def _text(elem, path):
    found = elem.find(path)
    return found.text.strip() if found is not None and found.text else None


def parse_vms(xml_text):
    """``<VM_POOL>`` -> [{id, name, state, lcm_state, host, ip, pool}]."""
    out = []
    for vm in ET.fromstring(xml_text).findall("VM"):  # noqa: S314 - our own API's reply
        hosts = [h.text for h in vm.findall("HISTORY_RECORDS/HISTORY/HOSTNAME") if h.text]
        out.append({
            "id": int(_text(vm, "ID") or -1),
            "name": _text(vm, "NAME") or "",
            "state": int(_text(vm, "STATE") or 0),
            "lcm_state": int(_text(vm, "LCM_STATE") or 0),
            "host": hosts[-1] if hosts else None,
            "ip": _text(vm, "TEMPLATE/NIC/IP"),
            "pool": _text(vm, "USER_TEMPLATE/LXCLOUD_POOL") or _text(vm, "USER_TEMPLATE/POOL"),
        })
    return out


def parse_clusters(xml_text):
    """host name -> cluster name (``CLUSTER``, default ``default``)."""
    root = ET.fromstring(xml_text)  # noqa: S314 - our own API's reply
    hosts = [root] if root.tag == "HOST" else root.findall("HOST")
    return {_text(h, "NAME"): _text(h, "CLUSTER") or "default" for h in hosts}


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "lxcloud.cloud.lxcloud"

    def verify_file(self, path):
        return super(InventoryModule, self).verify_file(path) and path.endswith(
            ("lxcloud.yml", "lxcloud.yaml"))

    def _fetch(self):
        try:
            # plain str: Ansible's tagged strings cannot be marshalled to XML-RPC
            url, session = (
                str(v) if v else v
                for v in resolve_credentials(self.get_option("api_url"),
                                             self.get_option("api_session"),
                                             self.get_option("api_config"))
            )
            client = ApiClient(url, session, timeout=self.get_option("timeout"))
            host_xml = client.call("one.hostpool.info")
            data = {"hosts": parse_host_pool(host_xml), "clusters": parse_clusters(host_xml),
                    "vms": []}
            if self.get_option("include_vms"):
                data["vms"] = parse_vms(client.call("one.vmpool.info", -2, -1, -1, -1))
            return data
        except (ApiConfigError, ApiError, ET.ParseError) as exc:
            raise AnsibleParserError("lxcloud inventory: %s" % exc) from None

    def parse(self, inventory, loader, path, cache=True):
        super(InventoryModule, self).parse(inventory, loader, path, cache)
        self._read_config_data(path)
        key = self.get_cache_key(path)
        use_cache = self.get_option("cache") and cache
        data = None
        if use_cache:
            try:
                data = self._cache[key]
            except KeyError:
                data = None
        if data is None:
            data = self._fetch()
            if self.get_option("cache"):
                self._cache[key] = data
        self._populate(data)

    def _add(self, name, group, variables):
        if not name or not _NAME.match(name):
            self.display.warning("lxcloud inventory: skipping bad name %r" % (name,))
            return
        self.inventory.add_group(group)
        self.inventory.add_host(name, group=group)
        for k, v in variables.items():
            self.inventory.set_variable(name, k, v)
        strict = self.get_option("strict")
        self._set_composite_vars(self.get_option("compose"), variables, name, strict=strict)
        self._add_host_to_composed_groups(self.get_option("groups"), variables, name,
                                          strict=strict)
        self._add_host_to_keyed_groups(self.get_option("keyed_groups"), variables, name,
                                       strict=strict)

    def _populate(self, data):
        for h in data["hosts"]:
            state = HOST_STATES.get(h.get("state"), str(h.get("state")))
            cluster = data["clusters"].get(h["name"], "default")
            hv = {"lxcloud_id": h.get("id"), "lxcloud_name": h["name"], "lxcloud_state": state,
                  "lxcloud_cluster": cluster, "lxcloud_cpu": h.get("cpu"),
                  "lxcloud_memory_mb": h.get("memory_mb"), "lxcloud_disk_mb": h.get("disk_mb"),
                  "lxcloud_last_seen": h.get("last_seen")}
            self._add(h["name"], self.get_option("hosts_group"), hv)
            for group in ("lxcloud_state_" + _group(state), "lxcloud_cluster_" + _group(cluster)):
                self.inventory.add_group(group)
                self.inventory.add_child(group, h["name"])
        for vm in data["vms"]:
            state = VM_STATES.get(vm["state"], str(vm["state"]))
            if state == "done":
                continue
            variables = {"lxcloud_id": vm["id"], "lxcloud_name": vm["name"],
                         "lxcloud_state": state, "lxcloud_lcm_state": vm["lcm_state"],
                         "lxcloud_host": vm["host"], "lxcloud_pool": vm["pool"]}
            if vm["ip"]:
                variables["ansible_host"] = vm["ip"]
            self._add(vm["name"], self.get_option("vms_group"), variables)
            groups = ["lxcloud_vm_" + _group(state)]
            if vm["pool"]:
                groups.append("lxcloud_pool_" + _group(vm["pool"]))
            for group in groups:
                self.inventory.add_group(group)
                self.inventory.add_child(group, vm["name"])
