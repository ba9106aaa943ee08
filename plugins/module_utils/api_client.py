# -*- coding: utf-8 -*-
# Copyright: lxcloud developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Client of the lxcloud XML-RPC API (OpenNebula's calling convention), standard library only.

Every call sends the session string ``"user:secret"`` first; every reply is
``[success, body_or_message, error_code(, object_id)]``.  A failed reply becomes an
:class:`ApiError` carrying OpenNebula's numeric code; connection problems are retried with
exponential backoff and end as :class:`ApiConnectionError`.

Used by the modules (``host_register``, ``host_facts``) and, copied to the hypervisor under
``/usr/local/lib/lxcloud``, by the boot-time script ``lxcloud-register``: one implementation.
It must not import ``lxcloud_py`` or Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import configparser
import http.client
import os
import socket
import stat
import time
import xml.etree.ElementTree as ET
import xmlrpc.client

# The error codes are re-exported: host scripts (lxcloud-register) and modules read them here.
from ansible_collections.lxcloud.cloud.plugins.module_utils.wire import (  # noqa: F401 pylint: disable=unused-import
    ACTION,
    ALLOCATE,
    AUTHENTICATION,
    AUTHORIZATION,
    ERROR_NAMES,
    INTERNAL,
    NO_EXISTS,
    SUCCESS,
    XML_RPC_API,
    split_session,
)

DEFAULT_CONFIG = "/etc/lxcloud/api.conf"
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.5

# OpenNebula's error codes: the wire contract (module_utils/wire.py), re-exported here.
#: Pseudo code for "never got a reply" (not an OpenNebula code).
CONNECTION = -1

CODE_NAMES = dict(ERROR_NAMES)
CODE_NAMES[CONNECTION] = "CONNECTION"


class ApiError(Exception):
    """The API answered ``[false, message, code]`` (or something unusable)."""

    def __init__(self, method, code, message):
        self.method = method
        self.code = code
        self.message = message
        super(ApiError, self).__init__(
            "%s failed: %s (%s 0x%04x)"
            % (method, message, CODE_NAMES.get(code, "ERROR"), code & 0xFFFF)
            if code >= 0
            else "%s failed: %s" % (method, message)
        )


class ApiConnectionError(ApiError):
    """No reply after all retries (refused, unreachable, timed out, HTTP error)."""

    def __init__(self, method, message):
        super(ApiConnectionError, self).__init__(method, CONNECTION, message)


class ApiConfigError(Exception):
    """The credentials file is missing, unreadable, too open or incomplete."""


def _parse_config_text(text):
    """Return ``{key: value}`` from an INI file (any section) or plain ``KEY=value`` lines."""
    values = {}
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
        for section in parser.sections():
            for key, value in parser.items(section):
                values.setdefault(key.lower(), value.strip())
    except configparser.MissingSectionHeaderError:
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if "=" not in line:
                raise ApiConfigError("line %r is not KEY=value" % line) from None
            key, value = line.split("=", 1)
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            values[key.strip().lower()] = value
    except configparser.Error as exc:
        raise ApiConfigError("cannot parse: %s" % exc) from exc
    # Accept the shell-style spellings too (LXCLOUD_API_URL=..., API_SESSION=...).
    for key in list(values):
        for prefix in ("lxcloud_api_", "api_", "lxcloud_"):
            if key.startswith(prefix) and key[len(prefix):] in ("url", "session"):
                values.setdefault(key[len(prefix):], values[key])
    return values


def load_config(path=DEFAULT_CONFIG, require_private=True):
    """Read ``url`` and ``session`` from the credentials file.

    The file holds a secret: with ``require_private`` it must not be readable or writable by
    group or others (mode 0600 or stricter).
    """
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ApiConfigError("cannot read %s: %s" % (path, exc.strerror or exc)) from exc
    if require_private and stat.S_IMODE(st.st_mode) & 0o077:
        raise ApiConfigError(
            "%s holds the API secret and must be mode 0600 (it is %04o)"
            % (path, stat.S_IMODE(st.st_mode))
        )
    try:
        values = _parse_config_text(text)
    except ApiConfigError as exc:
        raise ApiConfigError("%s: %s" % (path, exc)) from exc
    missing = [k for k in ("url", "session") if not values.get(k)]
    if missing:
        raise ApiConfigError("%s has no %s" % (path, " and no ".join(missing)))
    return {"url": values["url"], "session": values["session"]}


def resolve_credentials(api_url=None, api_session=None, config_path=DEFAULT_CONFIG):
    """Module options win; whatever is missing comes from the credentials file."""
    if api_url and api_session:
        return api_url, api_session
    conf = load_config(config_path)
    return api_url or conf["url"], api_session or conf["session"]


#: The options of every module that talks to the API (doc fragment lxcloud.cloud.api).
API_ARGUMENT_SPEC = dict(
    api_url=dict(type="str"),
    api_session=dict(type="str", no_log=True),
    api_config=dict(type="path", default=DEFAULT_CONFIG),
    api_timeout=dict(type="float", default=DEFAULT_TIMEOUT),
    api_retries=dict(type="int", default=DEFAULT_RETRIES),
)


def api_params(api_url=None, api_session=None, **overrides):
    """The API options as a module receives them (the spec's defaults filled in), for code
    outside a module that calls functions taking a module's ``params``."""
    params = dict((key, spec.get("default")) for key, spec in API_ARGUMENT_SPEC.items())
    params.update(api_url=api_url, api_session=api_session, **overrides)
    return params


def client_from_params(params, required=True):
    """An ApiClient from a module's API options, else the credentials file.

    Without credentials anywhere: ApiConfigError when ``required``, else None.
    """
    try:
        url, session = resolve_credentials(
            params["api_url"], params["api_session"], params["api_config"]
        )
    except ApiConfigError:
        if required:
            raise
        return None
    return ApiClient(url, session, timeout=params["api_timeout"], retries=params["api_retries"])


class _TimeoutTransport(xmlrpc.client.Transport):
    def __init__(self, timeout):
        xmlrpc.client.Transport.__init__(self)
        self._timeout = timeout

    def make_connection(self, host):
        conn = xmlrpc.client.Transport.make_connection(self, host)
        conn.timeout = self._timeout
        return conn


class _TimeoutSafeTransport(xmlrpc.client.SafeTransport):
    def __init__(self, timeout):
        xmlrpc.client.SafeTransport.__init__(self)
        self._timeout = timeout

    def make_connection(self, host):
        conn = xmlrpc.client.SafeTransport.make_connection(self, host)
        conn.timeout = self._timeout
        return conn


#: Errors after which the same call is tried again (nothing reached the server's logic, or a
#: gateway/overload answer).  Faults and ``[false, ...]`` replies are never retried.
_RETRY_HTTP = (502, 503, 504)


class ApiClient:
    """One control plane endpoint with one session string."""

    def __init__(
        self,
        url,
        session,
        timeout=DEFAULT_TIMEOUT,
        retries=DEFAULT_RETRIES,
        backoff=DEFAULT_BACKOFF,
        sleep=time.sleep,
    ):
        if not url or not url.startswith(("http://", "https://")):
            raise ApiConfigError("API URL must start with http:// or https://, got %r" % url)
        try:
            split_session(session)
        except ValueError:
            raise ApiConfigError("API session must look like user:secret") from None
        self.url = url
        self.session = session
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        self._sleep = sleep

    def _proxy(self):
        transport_cls = _TimeoutSafeTransport if self.url.startswith("https") else _TimeoutTransport
        return xmlrpc.client.ServerProxy(
            self.url, transport=transport_cls(self.timeout), allow_none=True
        )

    def call(self, method, *args):
        """Call ``method(session, *args)``; return the body of a successful reply."""
        if method.startswith("_") or ".." in method:
            raise ApiError(method, XML_RPC_API, "refusing method name")
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff * (2 ** (attempt - 1)))
            proxy = self._proxy()
            try:
                reply = getattr(proxy, method)(self.session, *args)
                break
            except xmlrpc.client.Fault as exc:
                raise ApiError(method, INTERNAL, "XML-RPC fault %s: %s" % (
                    exc.faultCode, exc.faultString)) from exc
            except xmlrpc.client.ProtocolError as exc:
                last = "HTTP %s %s from %s" % (exc.errcode, exc.errmsg, self.url)
                if exc.errcode not in _RETRY_HTTP:
                    raise ApiConnectionError(method, last) from exc
            except (OSError, socket.timeout, http.client.HTTPException) as exc:
                last = "cannot reach %s: %s" % (self.url, exc)
            finally:
                proxy("close")()  # no keep-alive socket left behind
        else:
            raise ApiConnectionError(
                method, "%s (after %d attempts)" % (last, self.retries + 1)
            )
        return unpack_reply(method, reply)

    # -- the calls the hypervisor side makes -------------------------------------------------

    def host_register(self, name, capacity, macs, info):
        return self.call("lxcloud.host.register", name, capacity, list(macs), info)

    def host_heartbeat(self, name, info):
        return self.call("lxcloud.host.heartbeat", name, info)

    def lease_list(self, host=""):
        return self.call("lxcloud.lease.list", host)

    def hostpool(self):
        """All hosts as dicts (see :func:`parse_host`)."""
        return parse_host_pool(self.call("one.hostpool.info"))

    def host_info(self, host_id):
        return parse_host_pool(self.call("one.host.info", int(host_id)))[0]

    def find_host(self, name):
        """The control plane's record of host ``name``, or None if it is not registered."""
        for host in self.hostpool():
            if host["name"] == name:
                return host
        return None


def unpack_reply(method, reply):
    """``[True, body, 0]`` → body; ``[False, message, code, ...]`` → :class:`ApiError`."""
    if not isinstance(reply, (list, tuple)) or len(reply) < 2:
        raise ApiError(method, INTERNAL, "malformed reply %r" % (reply,))
    ok, body = reply[0], reply[1]
    code = reply[2] if len(reply) > 2 and isinstance(reply[2], int) else INTERNAL
    if ok is True:
        return body
    raise ApiError(method, code, str(body))


# -- <HOST> documents ----------------------------------------------------------------------


def _text(elem, path, default=None):
    found = elem.find(path)
    if found is None or found.text is None:
        return default
    return found.text.strip()


def _num(elem, paths, conv=float):
    for path in paths:
        value = _text(elem, path)
        if value not in (None, ""):
            try:
                return conv(float(value))
            except ValueError:
                continue
    return None


def _macs(elem):
    """Allowed MACs of a ``<HOST>``: ``TEMPLATE/MACS`` (space/comma separated) or repeated
    ``MAC`` elements under ``TEMPLATE``, ``MACS`` or ``HOST``."""
    found = []
    for path in ("TEMPLATE/MACS", "MACS", "TEMPLATE/ALLOWED_MACS"):
        node = elem.find(path)
        if node is None:
            continue
        children = list(node)
        if children:
            found.extend(c.text.strip() for c in children if c.text and c.text.strip())
        elif node.text:
            found.extend(p for p in node.text.replace(",", " ").split() if p)
    for path in ("TEMPLATE/MAC", "MAC"):
        found.extend(n.text.strip() for n in elem.findall(path) if n.text and n.text.strip())
    return sorted({m.lower() for m in found})


def parse_host(elem):
    """A ``<HOST>`` element → ``{id, name, state, cpu, memory_mb, disk_mb, macs, last_seen}``.

    Capacity is read the OpenNebula way: ``HOST_SHARE/TOTAL_CPU`` is cores x 100,
    ``TOTAL_MEM`` is KiB, ``TOTAL_DISK``/``MAX_DISK`` is MiB.
    """
    cpu_pct = _num(elem, ["HOST_SHARE/TOTAL_CPU", "HOST_SHARE/MAX_CPU"])
    mem_kb = _num(elem, ["HOST_SHARE/TOTAL_MEM", "HOST_SHARE/MAX_MEM"], int)
    disk = _num(elem, ["HOST_SHARE/TOTAL_DISK", "HOST_SHARE/MAX_DISK"], int)
    state = _num(elem, ["STATE"], int)
    last = _num(elem, ["LAST_MON_TIME", "TEMPLATE/LAST_SEEN"])
    return {
        "id": _num(elem, ["ID"], int),
        "name": _text(elem, "NAME"),
        "state": state,
        "cpu": round(cpu_pct / 100.0, 2) if cpu_pct is not None else None,
        "memory_mb": mem_kb // 1024 if mem_kb is not None else None,
        "disk_mb": disk,
        "macs": _macs(elem),
        "last_seen": last,
    }


def parse_host_pool(xml_text):
    root = ET.fromstring(xml_text)  # noqa: S314 - our own control plane's reply
    hosts = [root] if root.tag == "HOST" else root.findall("HOST")
    return [parse_host(h) for h in hosts]


# -- registration: what would change ------------------------------------------------------


def registration_view(cpu, memory_mb, disk_mb, macs):
    """The comparable part of a registration: capacity and the MAC set."""
    return {
        "cpu": round(float(cpu), 2),
        "memory_mb": int(memory_mb),
        "disk_mb": int(disk_mb),
        "macs": sorted({m.lower() for m in macs}),
    }


def registration_changes(current, desired):
    """``(changed, before, after)`` for ``current`` (a :func:`parse_host` dict or None) and
    ``desired`` (a :func:`registration_view` dict).  Unknown fields in ``current`` (None)
    count as different."""
    if current is None:
        return True, {}, dict(desired)
    before = {k: current.get(k) for k in ("cpu", "memory_mb", "disk_mb", "macs")}
    if before["cpu"] is not None:
        before["cpu"] = round(float(before["cpu"]), 2)
    before["macs"] = sorted(before["macs"] or [])
    return before != desired, before, dict(desired)
