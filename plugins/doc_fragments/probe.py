# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Options of the hypervisor probe
    (argument spec: module_utils.host_probe.PROBE_ARGUMENT_SPEC)."""

    DOCUMENTATION = r"""
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
      - Where the allowed IP/MAC pairs come from. C(file) reads O(lease_file), C(api) asks the
        control plane's lease table, C(none) reports no leases.
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
"""
