"""Domain vocabulary shared by the store, the API and the scheduler.

State numbers are OpenNebula's, so that clients written for OpenNebula read them unchanged.
"""

from __future__ import annotations

from enum import IntEnum


class VMState(IntEnum):
    """OpenNebula VM STATE."""

    INIT = 0
    PENDING = 1
    HOLD = 2
    ACTIVE = 3
    STOPPED = 4
    SUSPENDED = 5
    DONE = 6
    FAILED = 7  # deprecated in OpenNebula, kept for numbering
    POWEROFF = 8
    UNDEPLOYED = 9
    CLONING = 10
    CLONING_FAILURE = 11


class LCMState(IntEnum):
    """OpenNebula VM LCM_STATE (the sub-state of ACTIVE) — the ones lxcloud uses."""

    LCM_INIT = 0
    PROLOG = 1
    BOOT = 2
    RUNNING = 3
    SHUTDOWN = 12
    CLEANUP_RESUBMIT = 15
    UNKNOWN = 16
    SHUTDOWN_POWEROFF = 18
    BOOT_POWEROFF = 20
    CLEANUP_DELETE = 23
    BOOT_FAILURE = 36
    PROLOG_FAILURE = 39
    EPILOG_FAILURE = 40


class HostState(IntEnum):
    """OpenNebula HOST STATE."""

    INIT = 0
    MONITORING_MONITORED = 1
    MONITORED = 2
    ERROR = 3
    DISABLED = 4
    MONITORING_ERROR = 5
    MONITORING_INIT = 6
    MONITORING_DISABLED = 7
    OFFLINE = 8


#: VM states that hold a lease and count against a host's capacity.
LIVE_VM_STATES = (VMState.PENDING, VMState.HOLD, VMState.ACTIVE, VMState.POWEROFF)
#: Host states the scheduler may place VMs on.
SCHEDULABLE_HOST_STATES = (HostState.MONITORED, HostState.MONITORING_MONITORED, HostState.INIT)


class LeaseState:
    FREE = "free"
    USED = "used"


class ImageState:
    VERIFIED = "verified"
    FAILED = "failed"
    ABSENT = "absent"


class LxcloudError(Exception):
    """Base of the control plane's domain errors."""


class NotFound(LxcloudError):
    pass


class Conflict(LxcloudError):
    pass


class InvalidInput(LxcloudError):
    pass
