"""Golden image staging, the control-plane side: distribution strategies, progress, results.

The host side is the module ``lxcloud.cloud.image_relay`` (agent logic in
``plugins/module_utils/chain.py``), started by the playbook ``lxcloud.cloud.stage_image``
through the runner adapter and reporting to the in-process coordinator, and the module
``lxcloud.cloud.image`` (verify + unpack + record).
"""

from .hosts import Host, RepoImage, StagingFailed, find_image, list_repo, load_inventory
from .progress import Progress
from .strategies import STRATEGIES, stage

__all__ = [
    "STRATEGIES",
    "Host",
    "Progress",
    "RepoImage",
    "StagingFailed",
    "find_image",
    "list_repo",
    "load_inventory",
    "stage",
]
