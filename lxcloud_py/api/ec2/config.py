"""The ``ec2`` section of the config file: listener, region, zone, sizes.

Example::

    ec2:
      listen: 127.0.0.1:4567
      region: lxcloud-1            # what clients give as their region (SigV4 scope)
      zone: lxcloud-1a             # the one availability zone
      key_file: /var/lib/lxcloud/ec2-secrets.key
      max_count: 20                # instances one RunInstances may start
      default_instance_type: m1.small
      instance_types:              # replaces the table below when given
        t2.micro: {vcpu: 1, memory_mb: 1024}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxcloud_py.model import InvalidInput

from .keys import default_key_file

DEFAULT_LISTEN = "127.0.0.1:4567"
_NAME_RE = re.compile(r"\A[a-z0-9][a-z0-9.-]{0,63}\Z")


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpu: int
    memory_mb: int


DEFAULT_TYPES: tuple[InstanceType, ...] = (
    InstanceType("t2.nano", 1, 512),
    InstanceType("t2.micro", 1, 1024),
    InstanceType("t2.small", 1, 2048),
    InstanceType("t2.medium", 2, 4096),
    InstanceType("t2.large", 2, 8192),
    InstanceType("m1.small", 1, 1740),
    InstanceType("m1.medium", 1, 3840),
    InstanceType("m1.large", 2, 7680),
)


@dataclass(frozen=True)
class Ec2Config:
    listen: str = DEFAULT_LISTEN
    region: str = "lxcloud-1"
    zone: str = "lxcloud-1a"
    key_file: Path = field(default_factory=default_key_file)
    max_count: int = 20
    default_instance_type: str = "m1.small"
    instance_types: dict[str, InstanceType] = field(
        default_factory=lambda: {t.name: t for t in DEFAULT_TYPES}
    )


_KEYS = ("listen", "region", "zone", "key_file", "max_count", "default_instance_type",
         "instance_types")


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidInput(f"ec2.{what}: {value!r} is not a name (a-z 0-9 . -, up to 64)")
    return value


def _count(value: object, what: str, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise InvalidInput(f"ec2.{what}: {value!r} is not a whole number 1..{high}")
    return value


def from_section(data: dict[str, Any]) -> Ec2Config:
    """The config section, checked; an unknown key or bad value is an error naming it."""
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise InvalidInput(f"ec2: unknown key(s) {', '.join(map(repr, unknown))} "
                           f"(known: {', '.join(_KEYS)})")
    kw: dict[str, Any] = {}
    if "listen" in data:
        kw["listen"] = str(data["listen"])
    if "region" in data:
        kw["region"] = _name(data["region"], "region")
    kw["zone"] = _name(data.get("zone", f"{kw.get('region', Ec2Config.region)}a"), "zone")
    if data.get("key_file"):
        kw["key_file"] = Path(str(data["key_file"]))
    if "max_count" in data:
        kw["max_count"] = _count(data["max_count"], "max_count", 1000)
    if "instance_types" in data:
        table = data["instance_types"]
        if not isinstance(table, dict) or not table:
            raise InvalidInput("ec2.instance_types must be a non-empty mapping")
        types = {}
        for name, spec in table.items():
            _name(name, "instance_types")
            if not isinstance(spec, dict) or set(spec) != {"vcpu", "memory_mb"}:
                raise InvalidInput(f"ec2.instance_types.{name}: give vcpu and memory_mb")
            types[name] = InstanceType(
                name,
                _count(spec["vcpu"], f"instance_types.{name}.vcpu", 1024),
                _count(spec["memory_mb"], f"instance_types.{name}.memory_mb", 4 * 1024 * 1024),
            )
        kw["instance_types"] = types
    cfg = Ec2Config(**kw)
    default = _name(data.get("default_instance_type", cfg.default_instance_type),
                    "default_instance_type")
    if default not in cfg.instance_types:
        raise InvalidInput(f"ec2.default_instance_type {default!r} is not in instance_types")
    return Ec2Config(**{**kw, "default_instance_type": default})
