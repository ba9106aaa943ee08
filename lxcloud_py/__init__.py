"""lxcloud control plane: store, OpenNebula-protocol API, scheduler."""

__version__ = "0.1.0"
