# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The wire contract between the collection (modules, hypervisor and VM scripts) and the
control plane (``lxcloud_py``): defined here once, imported by both sides.

- sessions: OpenNebula's ``"user:secret"`` string, sent as the first argument of every call;
  a VM authenticates as ``vm-ID`` with its callback token;
- the context variables that carry a VM's id, token and the API's URL into the guest;
- the VM action names of ``one.vm.action`` (who may trigger which is the control plane's
  state machine, ``lxcloud_py.lifecycle``);
- OpenNebula's error codes, the third element of every reply;
- the exit codes of the in-VM callback ``lxcloud-callback`` (roles/golden_node), which cron
  and systemd report.

Standard library only, no Ansible and no ``lxcloud_py`` imports: the hypervisor role copies
this file next to ``api_client.py`` for the boot-time script ``lxcloud-register``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

# -- sessions ---------------------------------------------------------------------------------

#: Separates user and secret in a session string (the secret may contain it too).
SESSION_SEPARATOR = ":"
#: The user part of a VM's session is ``vm-`` and the VM's id.
VM_USER_PREFIX = "vm-"
VM_USER_RE = re.compile(r"\Avm-([0-9]{1,10})\Z")


def make_session(user, secret):
    """``user:secret``; refuses an empty part or a separator in the user name."""
    if not user or not secret or SESSION_SEPARATOR in user:
        raise ValueError("a session needs a user without %r and a secret" % SESSION_SEPARATOR)
    return user + SESSION_SEPARATOR + secret


def split_session(session):
    """``(user, secret)`` of a session string; ValueError when it has no non-empty both."""
    if not isinstance(session, str) or SESSION_SEPARATOR not in session:
        raise ValueError("malformed session (expected 'user%ssecret')" % SESSION_SEPARATOR)
    user, secret = session.split(SESSION_SEPARATOR, 1)
    if not user or not secret:
        raise ValueError("malformed session (empty user or secret)")
    return user, secret


def vm_user(vm_id):
    """The user name a VM authenticates as."""
    return "%s%d" % (VM_USER_PREFIX, int(vm_id))


def vm_session(vm_id, token):
    """The session string of VM ``vm_id`` holding its callback ``token``."""
    return make_session(vm_user(vm_id), token)


def vm_id_of_user(user):
    """The VM id when ``user`` is a VM's user name (``vm-ID``), else None."""
    match = VM_USER_RE.match(user) if isinstance(user, str) else None
    return int(match.group(1)) if match else None


# -- the VM's context -------------------------------------------------------------------------

#: Context variables (context.sh on the VM's CONTEXT ISO) the control plane writes and the
#: in-VM callback reads.
CONTEXT_VMID = "VMID"
CONTEXT_API = "LXCLOUD_API"
CONTEXT_TOKEN = "LXCLOUD_TOKEN"  # noqa: S105 - a variable name, not a secret
CONTEXT_LIFETIME = "LIFETIME"

# -- VM actions (one.vm.action) ---------------------------------------------------------------

TERMINATE = "terminate"
TERMINATE_HARD = "terminate-hard"
POWEROFF = "poweroff"
POWEROFF_HARD = "poweroff-hard"
RESUME = "resume"
REBOOT = "reboot"
HOLD = "hold"
RELEASE = "release"
#: Every action ``one.vm.action`` accepts, OpenNebula's names.
VM_ACTIONS = (TERMINATE, TERMINATE_HARD, POWEROFF, POWEROFF_HARD, RESUME, REBOOT, HOLD, RELEASE)

# -- OpenNebula's error codes (docs/api.md) ---------------------------------------------------

SUCCESS = 0x0000
AUTHENTICATION = 0x0100
AUTHORIZATION = 0x0200
NO_EXISTS = 0x0400
ACTION = 0x0800
XML_RPC_API = 0x1000
INTERNAL = 0x2000
ALLOCATE = 0x4000

ERROR_NAMES = {
    SUCCESS: "SUCCESS",
    AUTHENTICATION: "AUTHENTICATION",
    AUTHORIZATION: "AUTHORIZATION",
    NO_EXISTS: "NO_EXISTS",
    ACTION: "ACTION",
    XML_RPC_API: "XML_RPC_API",
    INTERNAL: "INTERNAL",
    ALLOCATE: "ALLOCATE",
}
#: Codes a retry of the same call cannot fix.
PERMANENT_ERRORS = (AUTHENTICATION, AUTHORIZATION, NO_EXISTS)

# -- exit codes of lxcloud-callback (the in-VM self-termination script) -----------------------

CALLBACK_EXIT_TERMINATED = 0
CALLBACK_EXIT_USAGE = 2
CALLBACK_EXIT_NOT_DUE = 3
CALLBACK_EXIT_NOT_DRAINED = 4
CALLBACK_EXIT_API_ERROR = 5
CALLBACK_EXIT_LOCKED = 6
