# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validation of every name that reaches a path, libvirt XML or a command line.

Shared by all modules of the collection and by the control plane.  Plain Python (no Ansible,
no lxcloud_py imports) so hypervisors can run it under ``/usr/bin/python3``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import os
import re

NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
MAC_RE = re.compile(r"\A[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
PATH_PART_RE = re.compile(r"\A[A-Za-z0-9._+-]+\Z")
UUID_RE = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


class InvalidName(ValueError):
    """A name, address or path was refused; ``what`` says which input it came from."""

    def __init__(self, what, value, reason):
        self.what = what
        self.value = value
        self.reason = reason
        super(InvalidName, self).__init__("invalid %s %r: %s" % (what, value, reason))


def validate_name(value, what="name"):
    """Return ``value`` if it is a safe single path component / libvirt name, else raise.

    Allowed: ``^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`` and no ``..`` anywhere.
    """
    if not isinstance(value, str):
        raise InvalidName(what, value, "must be a string")
    if value == "":
        raise InvalidName(what, value, "must not be empty")
    if len(value) > 63:
        raise InvalidName(what, value, "longer than 63 characters")
    if not NAME_RE.match(value):
        raise InvalidName(
            what,
            value,
            "only letters, digits, '.', '_' and '-' are allowed, starting with a letter or digit",
        )
    if ".." in value:
        raise InvalidName(what, value, "must not contain '..'")
    return value


HOST_LABEL_RE = re.compile(r"\A[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def validate_hostname(value, what="hostname"):
    """Return a DNS host name (RFC 1123 labels joined by dots, at most 253 characters)."""
    if not isinstance(value, str) or value == "":
        raise InvalidName(what, value, "must be a non-empty string")
    if len(value) > 253:
        raise InvalidName(what, value, "longer than 253 characters")
    for label in value.rstrip(".").split("."):
        if not HOST_LABEL_RE.match(label):
            raise InvalidName(what, value, "label %r is not a DNS label" % label)
    return value


def validate_mac(value, what="mac"):
    """Return the MAC in canonical lower-case colon form, else raise."""
    if not isinstance(value, str):
        raise InvalidName(what, value, "must be a string")
    mac = value.strip().lower().replace("-", ":")
    if not MAC_RE.match(mac):
        raise InvalidName(what, value, "not a MAC address like 52:54:00:12:34:56")
    if int(mac[:2], 16) & 1:
        raise InvalidName(what, value, "multicast MAC address")
    return mac


def validate_ipv4(value, what="ip"):
    """Return the dotted IPv4 address as a string, else raise."""
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except (ipaddress.AddressValueError, ValueError):
        raise InvalidName(what, value, "not an IPv4 address") from None


def validate_ip(value, what="ip"):
    """Return an IPv4 or IPv6 address as a normalized string, else raise."""
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise InvalidName(what, value, "not an IP address") from None


def validate_netmask(value, what="netmask"):
    """Accept a dotted netmask (255.255.255.0) or a prefix length; return the dotted mask."""
    try:
        return str(ipaddress.IPv4Network("0.0.0.0/%s" % str(value).strip()).netmask)
    except (ipaddress.NetmaskValueError, ValueError):
        raise InvalidName(what, value, "not an IPv4 netmask or prefix length") from None


def validate_prefix(value, what="prefix"):
    """Return an IPv4 prefix length 0..32 as int."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InvalidName(what, value, "not an integer prefix length") from None
    if not 0 <= n <= 32 or str(value).strip() not in (str(n),):
        raise InvalidName(what, value, "prefix length must be 0..32")
    return n


def validate_uuid(value, what="uuid"):
    text = str(value).lower()
    if not UUID_RE.match(text):
        raise InvalidName(what, value, "not a UUID")
    return text


def validate_abs_path(value, what="path"):
    """Return a normalized absolute path without '..' components or control characters."""
    if not isinstance(value, str) or value == "":
        raise InvalidName(what, value, "must be a non-empty string")
    if not value.startswith("/"):
        raise InvalidName(what, value, "must be an absolute path")
    if any(c in value for c in "\0\n\r\t") or any(ord(c) < 32 for c in value):
        raise InvalidName(what, value, "contains control characters")
    parts = value.split("/")
    if ".." in parts:
        raise InvalidName(what, value, "must not contain '..'")
    for part in parts:
        if part and not PATH_PART_RE.match(part):
            raise InvalidName(
                what, value, "path component %r has characters outside [A-Za-z0-9._-]" % part
            )
    return os.path.normpath(value)


def path_under(root, name, what="name"):
    """Join a validated single-component ``name`` under ``root`` and check it stays there."""
    root = validate_abs_path(root, what="%s root" % what)
    validate_name(name, what)
    path = os.path.normpath(os.path.join(root, name))
    if os.path.dirname(path) != root:
        raise InvalidName(what, name, "escapes %s" % root)
    return path


def check_under(root, path, what="path"):
    """Raise unless the normalized absolute ``path`` lies inside ``root`` (following symlinks
    of the parts that exist)."""
    root = os.path.realpath(validate_abs_path(root, what="%s root" % what))
    path = validate_abs_path(path, what)
    real = os.path.realpath(path)
    if real != root and not real.startswith(root.rstrip("/") + "/"):
        raise InvalidName(what, path, "is not under %s" % root)
    return path
