"""A subset of Amazon's EC2 Query API (version 2016-11-15) over the store: docs/ec2.md."""

from __future__ import annotations

from .config import Ec2Config, from_section
from .server import Ec2Server, serve

__all__ = ["Ec2Config", "Ec2Server", "from_section", "serve"]
