#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: image_relay
short_description: Receive a golden image on a hypervisor during a staging run
description:
  - The host side of C(lxcloud image stage). Receives the compressed image into
    C(IMAGE_DIR/incoming/FILE) (C(FILE.part) while incomplete), verifies its sha256 on the
    host and renames it; on a mismatch or any failure nothing partial is left behind.
  - O(mode=relay) is a member of lxcloud's pipelined chain (listens on O(listen), writes what
    arrives and forwards it at once to the next host, routing around dead ones);
    O(mode=watch) hashes the file while C(scp) writes it (strategies C(sequential) and
    C(wave)); O(mode=torrent) runs C(aria2c) as a BitTorrent peer and seeds until the run ends.
  - Progress and the verdict travel live over a TCP connection to the coordinator of the
    staging run (O(coordinator), authenticated with O(token)), which also tells torrent peers
    when to stop; the verdict is the module's result as well.
  - Started by the playbook C(lxcloud.cloud.stage_image) (play C(relay)), which
    C(lxcloud image stage) runs; not useful on its own.
author:
  - lxcloud developers (!UNKNOWN)
options:
  mode:
    description: What this host does in the run.
    type: str
    choices: [relay, watch, torrent]
    required: true
  file:
    description: Where the verified image lands (normally C(IMAGE_DIR/incoming/FILE)).
    type: path
    required: true
  size:
    description: Size of the compressed image in bytes.
    type: int
    required: true
  sha256:
    description: sha256 of the compressed image (64 hex digits).
    type: str
    required: true
  coordinator:
    description: C(ADDR:PORT) of the coordinator of the staging run (on the control plane).
    type: str
    required: true
  token:
    description: The run's secret, proving to the coordinator that this is one of its relays.
    type: str
    required: true
  host_name:
    description: This host's name in the run (its inventory name).
    type: str
    required: true
  listen:
    description: C(ADDR:PORT) the chain relay listens on (O(mode=relay)).
    type: str
  torrent_hex:
    description: The C(.torrent) file's bytes, hex-encoded (O(mode=torrent)).
    type: str
  listen_port:
    description: BitTorrent listen port of C(aria2c) (O(mode=torrent)).
    type: int
    default: 6881
  timeout:
    description: Seconds of silence after which a chain peer counts as dead.
    type: float
    default: 10
  idle_timeout:
    description: Give up when no new bytes arrived for this many seconds.
    type: float
    default: 120
  deadline:
    description: Give up after this many seconds (0 for no deadline).
    type: float
    default: 0
  rate:
    description: Send (relay) or download (torrent) at most this many bytes/s; 0 for no limit.
    type: float
    default: 0
  sndbuf:
    description: SO_SNDBUF of the relay's sending socket (0 for the system default).
    type: int
    default: 0
  interval:
    description: Seconds between two progress reports.
    type: float
    default: 0.5
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying
      target.
    support: full
    details: Receives nothing; reports a change unless O(file) already holds the image.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode).
    support: none
    details: The image is binary; the result reports its sha256.
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second
      invocation indicates no change.
    support: none
    details: Every run transfers the image again (the install step, M(lxcloud.cloud.image), is
      idempotent and removes the file from C(incoming/)).
notes:
  - Needs only the Python standard library on the host, plus C(aria2c) for O(mode=torrent).
  - The host must reach the coordinator over TCP; chain relays must reach the next host on the
    O(listen) port.
"""

EXAMPLES = r"""
# Normally written by lxcloud image stage into the playbook lxcloud.cloud.stage_image
- name: Be a member of the chain for slc5-batch 2024.1
  lxcloud.cloud.image_relay:
    mode: relay
    file: /var/lib/lxcloud/images/incoming/slc5-batch-2024.1.raw.zst
    size: 1073741824
    sha256: "{{ image_sha256 }}"
    listen: "{{ ansible_host }}:7420"
    coordinator: 10.0.0.1:41234
    token: "{{ stage_token }}"
    host_name: "{{ inventory_hostname }}"
"""

RETURN = r"""
verified:
  description: Whether the host holds the image with its sha256 verified.
  returned: always
  type: bool
path:
  description: The verified image on the host.
  returned: success
  type: str
  sample: /var/lib/lxcloud/images/incoming/slc5-batch-2024.1.raw.zst
bytes:
  description: Bytes received.
  returned: always
  type: int
seconds:
  description: Seconds from the first byte to the verdict.
  returned: when something was received
  type: float
sha256:
  description: sha256 of what was received.
  returned: when something was received
  type: str
forwarded_to:
  description: The chain peers this relay sent the image to (O(mode=relay)).
  returned: when O(mode=relay)
  type: list
  elements: str
dead:
  description: Chain peers this relay gave up on and routed around (O(mode=relay)).
  returned: when O(mode=relay)
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.lxcloud.cloud.plugins.module_utils.chain import (
    CoordinatorClient,
    Params,
    holds,
    run,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            mode=dict(type="str", required=True, choices=["relay", "watch", "torrent"]),
            file=dict(type="path", required=True),
            size=dict(type="int", required=True),
            sha256=dict(type="str", required=True),
            coordinator=dict(type="str", required=True),
            token=dict(type="str", required=True, no_log=True),
            host_name=dict(type="str", required=True),
            listen=dict(type="str"),
            torrent_hex=dict(type="str"),
            listen_port=dict(type="int", default=6881),
            timeout=dict(type="float", default=10.0),
            idle_timeout=dict(type="float", default=120.0),
            deadline=dict(type="float", default=0.0),
            rate=dict(type="float", default=0.0),
            sndbuf=dict(type="int", default=0),
            interval=dict(type="float", default=0.5),
        ),
        required_if=[("mode", "relay", ("listen",)), ("mode", "torrent", ("torrent_hex",))],
        supports_check_mode=True,
    )
    p = module.params
    if not os.path.isabs(p["file"]):
        module.fail_json(msg="file must be an absolute path, got %r" % p["file"])
    if len(p["sha256"]) != 64 or p["sha256"].strip("0123456789abcdef"):
        module.fail_json(msg="sha256 must be 64 lowercase hex digits, got %r" % p["sha256"])
    if p["size"] <= 0:
        module.fail_json(msg="size must be positive, got %d" % p["size"])

    if module.check_mode:
        held = holds(p["file"], p["size"], p["sha256"])
        module.exit_json(changed=not held, verified=held, bytes=p["size"] if held else 0)

    try:
        reporter = CoordinatorClient(p["coordinator"], p["token"], p["host_name"],
                                     timeout=p["timeout"])
    except (OSError, ValueError) as exc:
        module.fail_json(msg="cannot reach the coordinator at %s: %s" % (p["coordinator"], exc),
                         verified=False, bytes=0)
    options = dict((k, p[k]) for k in ("file", "size", "sha256", "listen", "torrent_hex",
                                       "listen_port", "timeout", "idle_timeout", "deadline",
                                       "rate", "sndbuf", "interval"))
    try:
        verdict = run(p["mode"], Params(**options), reporter)
    finally:
        reporter.close()
    result = dict(verified=bool(verdict.pop("ok")), **verdict)
    error = result.pop("error", None)
    if not result["verified"]:
        module.fail_json(msg=error or "the image was not received", changed=False, **result)
    module.exit_json(changed=True, path=p["file"], **result)


if __name__ == "__main__":
    main()
