"""Golden image staging, the control-plane side: distribution strategies, progress, results.

The host side is ``plugins/module_utils/chain.py`` (the agent, shipped over ssh) and the
``lxcloud.cloud.image`` module (verify + unpack + record).
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
