"""The EC2 actions over lxcloud's store: instances are VMs, images are golden images.

* Instance ids are ``i-`` and the VM id as 17 hex digits (stable, one per VM); image ids are
  ``ami-`` and the image's id as 17 hex digits; reservation ids ``r-`` and the first VM's id.
* A user sees and acts on the VMs they own, the admin on all; another user's instance is
  ``InvalidInstanceID.NotFound``, as one that does not exist.
* States: PENDING, HOLD, ACTIVE/PROLOG, BOOT, BOOT_POWEROFF and the PROLOG/BOOT failures are
  ``pending``; ACTIVE/RUNNING and UNKNOWN ``running``; ACTIVE/SHUTDOWN and EPILOG_FAILURE
  ``shutting-down``; ACTIVE/SHUTDOWN_POWEROFF ``stopping``; POWEROFF ``stopped``; DONE
  ``terminated`` (shown for an hour after it ended, as EC2 does, or when asked for by id).
* RunInstances builds an OpenNebula template (CPU, VCPU, MEMORY from the instance type,
  DISK/IMAGE from the image, CONTEXT/USER_DATA from UserData) and allocates through
  :func:`lxcloud_py.vms.parse_spec` and :func:`lxcloud_py.vms.insert_vm`, the path of
  ``one.vm.allocate``: the same validation, the same states, the same scheduler.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, insert, or_, select
from sqlalchemy.exc import IntegrityError

from lxcloud_py import images, template, vms
from lxcloud_py.lifecycle import WrongState
from lxcloud_py.model import InvalidInput, LCMState, VMState
from lxcloud_py.store import Store, now, schema

from .config import Ec2Config, InstanceType
from .protocol import Ec2Error, Params, invalid, xml_safe

_T, _C, _V, _I = schema.ec2_tags, schema.ec2_client_tokens, schema.vms, schema.images
_ID_RE = re.compile(r"\A(i|ami)-([0-9a-f]{8}|[0-9a-f]{17})\Z")
MAX_TAGS = 50
MAX_USER_DATA = 16 * 1024
TERMINATED_SHOWN = 3600.0
A, L = VMState, LCMState


@dataclass(frozen=True)
class Caller:
    user_id: int
    name: str
    is_admin: bool


# -- ids and states --------------------------------------------------------------------------------
def instance_id(vm_id: int) -> str:
    return f"i-{vm_id:017x}"


def ami_id(image_id: int) -> str:
    return f"ami-{image_id:017x}"


def parse_id(text: str, kind: str) -> int:
    m = _ID_RE.match(text)
    if m is None or m.group(1) != kind:
        code = "InvalidInstanceID.Malformed" if kind == "i" else "InvalidAMIID.Malformed"
        raise Ec2Error(code, f"Invalid id: \"{text[:64]}\"")
    return int(m.group(2), 16)


_PENDING_LCM = (L.LCM_INIT, L.PROLOG, L.BOOT, L.BOOT_POWEROFF, L.PROLOG_FAILURE, L.BOOT_FAILURE)


def ec2_state(state: int, lcm: int) -> tuple[int, str]:
    """EC2's (code, name) for a VM's (STATE, LCM_STATE)."""
    if state in (A.PENDING, A.HOLD, A.INIT) or (state == A.ACTIVE and lcm in _PENDING_LCM):
        return 0, "pending"
    if state == A.ACTIVE and lcm in (L.RUNNING, L.UNKNOWN):
        return 16, "running"
    if state == A.ACTIVE and lcm == L.SHUTDOWN_POWEROFF:
        return 64, "stopping"
    if state == A.POWEROFF:
        return 80, "stopped"
    if state in (A.DONE, A.FAILED):
        return 48, "terminated"
    return 32, "shutting-down"  # ACTIVE/SHUTDOWN, EPILOG_FAILURE, CLEANUP_*


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _page_token(last: int) -> str:
    return base64.urlsafe_b64encode(f"after:{last}".encode()).decode()


def _after(token: str | None) -> int:
    if not token:
        return 0
    try:
        kind, _, n = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind == "after" and n.isdigit():
            return int(n)
    except (ValueError, binascii.Error):
        pass
    raise invalid("NextToken is not one this server gave")


def _tags_in(params: Params, prefix: str, need_value: bool) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for t in params.structs(prefix):
        key = t.get("Key")
        if key is None or key == "":
            raise Ec2Error("MissingParameter", f"{prefix}.N.Key is required")
        if len(key) > 128 or key.lower().startswith("aws:"):
            raise invalid(f"Tag key {key[:64]!r}: up to 128 characters, not starting with aws:")
        value = t.get("Value")
        if value is None and need_value:
            value = ""
        if value is not None and len(value) > 256:
            raise invalid(f"Tag value of {key[:64]!r}: up to 256 characters")
        safe = None if value is None else xml_safe(value, "Tag value")
        out.append((xml_safe(key, "Tag key"), safe))
    return out


class Service:
    """One instance per listener; each action takes the caller and the parameters."""

    ACTIONS = (
        "RunInstances", "DescribeInstances", "TerminateInstances", "RebootInstances",
        "StopInstances", "StartInstances", "DescribeImages", "DescribeInstanceTypes",
        "CreateTags", "DeleteTags", "DescribeTags", "DescribeRegions",
        "DescribeAvailabilityZones",
    )  # fmt: skip

    def __init__(self, store: Store, config: Ec2Config, endpoint: str = "") -> None:
        self.store = store
        self.config = config
        self.endpoint = endpoint

    def call(self, action: str, who: Caller, params: Params) -> dict[str, Any]:
        if action not in self.ACTIONS:
            raise Ec2Error("InvalidAction", f"The action {action[:64]} is not valid for this "
                           "web service (see docs/ec2.md for the supported subset).")
        fn: Callable[[Caller, Params], dict[str, Any]] = getattr(self, _snake(action))
        return fn(who, params)

    # -- instances -------------------------------------------------------------------------------
    def _visible(self, conn: Connection, who: Caller, ids: Iterable[int] | None = None,
                 ) -> list[dict[str, Any]]:
        return vms.list_vms(conn, owner_id=None if who.is_admin else who.user_id, state=-2,
                            ids=ids)

    def _listed_ids(self, conn: Connection, who: Caller, after: int) -> list[int]:
        """Ids of the caller's VMs above ``after`` that a listing shows: all but those DONE
        more than :data:`TERMINATED_SHOWN` seconds ago (the query stays off old history)."""
        stmt = (
            select(_V.c.id)
            .where(_V.c.id > after)
            .where(or_(_V.c.state != int(A.DONE), _V.c.ended >= now() - TERMINATED_SHOWN))
            .order_by(_V.c.id)
        )
        if not who.is_admin:
            stmt = stmt.where(_V.c.owner_id == who.user_id)
        return [int(i) for i in conn.execute(stmt).scalars()]

    def _requested(self, conn: Connection, who: Caller, params: Params) -> list[dict[str, Any]]:
        """The VMs of ``InstanceId.N``, all visible to the caller (else NotFound naming them)."""
        texts = params.strings("InstanceId")
        if not texts:
            raise Ec2Error("MissingParameter", "The request must contain InstanceId.N")
        wanted = {t: parse_id(t, "i") for t in texts}
        rows = {r["id"]: r for r in self._visible(conn, who, set(wanted.values()))}
        missing = [t for t, n in wanted.items() if n not in rows]
        if missing:
            raise Ec2Error("InvalidInstanceID.NotFound",
                           f"The instance IDs '{', '.join(missing)}' do not exist")
        return [rows[n] for n in dict.fromkeys(wanted.values())]

    def _tags_of(self, conn: Connection, vm_ids: list[int]) -> dict[int, dict[str, str]]:
        out: dict[int, dict[str, str]] = {i: {} for i in vm_ids}
        if vm_ids:
            for r in conn.execute(select(_T).where(_T.c.vm_id.in_(vm_ids)).order_by(_T.c.key)):
                out[r.vm_id][r.key] = r.value
        return out

    def _image_ids(self, conn: Connection) -> dict[str, int]:
        """Image name -> the id of its newest registration."""
        out: dict[str, int] = {}
        for r in conn.execute(select(_I.c.id, _I.c.name).order_by(_I.c.id)):
            out[r.name] = int(r.id)
        return out

    def _type_of(self, vm: dict[str, Any], tpl: template.Template) -> str:
        name = tpl.get("EC2_INSTANCE_TYPE")
        if name:
            return name
        for t in self.config.instance_types.values():
            if (t.vcpu, t.memory_mb) == (vm["vcpu"], vm["memory_mb"]):
                return t.name
        return "lxcloud.custom"

    def _instance(self, vm: dict[str, Any], tags: dict[str, str], names: dict[str, int],
                  index: int = 0) -> dict[str, Any]:
        tpl = template.parse(vm["template"])
        code, state = ec2_state(vm["state"], vm["lcm_state"])
        image = tpl.get("EC2_IMAGE_ID")
        if image is None and vm["image_id"] is not None:
            image = ami_id(vm["image_id"])
        if image is None and vm["image_name"] in names:
            image = ami_id(names[vm["image_name"]])
        lease = vm["lease"] or {}
        failed = vm["lcm_state"] in (L.PROLOG_FAILURE, L.BOOT_FAILURE, L.EPILOG_FAILURE)
        return {
            "instanceId": instance_id(vm["id"]),
            "imageId": image,
            "instanceState": {"code": code, "name": state},
            "privateDnsName": lease.get("name", ""),
            "dnsName": "",
            "reason": vm["sched_message"] or "",
            "amiLaunchIndex": index,
            "instanceType": self._type_of(vm, tpl),
            "launchTime": _iso(vm["created"]),
            "placement": {"availabilityZone": self.config.zone, "tenancy": "default"},
            "monitoring": {"state": "disabled"},
            "privateIpAddress": lease.get("ip"),
            "groupSet": [],
            "architecture": "x86_64",
            "rootDeviceType": "instance-store",
            "virtualizationType": "hvm",
            "stateReason": (
                {"code": "Server.InternalError", "message": vm["sched_message"] or ""}
                if failed else None
            ),
            "tagSet": [{"key": k, "value": v} for k, v in tags.items()] or None,
        }

    def _reservation(self, who: Caller, rows: list[dict[str, Any]], conn: Connection,
                     ) -> dict[str, Any]:
        tags = self._tags_of(conn, [r["id"] for r in rows])
        names = self._image_ids(conn)
        return {
            "reservationId": f"r-{rows[0]['id']:017x}",
            "ownerId": f"{rows[0]['owner_id']:012d}",
            "groupSet": [],
            "instancesSet": [
                self._instance(r, tags[r["id"]], names, i) for i, r in enumerate(rows)
            ],
        }

    def run_instances(self, who: Caller, p: Params) -> dict[str, Any]:
        cfg = self.config
        low = p.integer("MinCount", None, 1, 2**31 - 1)
        high = p.integer("MaxCount", None, 1, 2**31 - 1)
        if low is None or high is None:
            raise Ec2Error("MissingParameter", "The request must contain MinCount and MaxCount")
        if low > high:
            raise invalid(f"MinCount {low} is more than MaxCount {high}")
        if low > cfg.max_count:
            raise Ec2Error("InstanceLimitExceeded", f"at most {cfg.max_count} instances per "
                           f"request here (MinCount {low})")
        count = min(high, cfg.max_count)
        ami = p.required("ImageId")
        type_name = p.get("InstanceType") or cfg.default_instance_type
        itype = cfg.instance_types.get(type_name)
        if itype is None:
            raise invalid(f"Invalid value '{type_name[:64]}' for InstanceType (known: "
                          f"{', '.join(cfg.instance_types)})")
        user_data = p.get("UserData")
        if user_data:
            try:
                raw = base64.b64decode(user_data, validate=True)
            except binascii.Error:
                raise invalid("UserData must be base64") from None
            if len(raw) > MAX_USER_DATA:
                raise invalid(f"UserData is {len(raw)} bytes, the limit is {MAX_USER_DATA}")
        tags: list[tuple[str, str | None]] = []
        for spec in p.structs("TagSpecification"):
            kind = spec.get("ResourceType")
            if kind != "instance":
                raise invalid(f"TagSpecification ResourceType {str(kind)[:32]!r}: only "
                              "'instance' is supported")
            tags += _tags_in(spec, "Tag", need_value=True)
        if len({k for k, _ in tags}) > MAX_TAGS:
            raise Ec2Error("TagLimitExceeded", f"more than {MAX_TAGS} tags")
        token = p.get("ClientToken")
        if token is not None and not (0 < len(token) <= 64 and token.isascii()):
            raise invalid("ClientToken: 1 to 64 ASCII characters")
        digest = hashlib.sha256(
            repr(sorted((k, v) for k, v in p.raw.items()
                        if k not in ("ClientToken",) and not k.startswith("X-Amz-"))).encode()
        ).hexdigest()
        image_id = parse_id(ami, "ami")
        try:
            return self._launch(who, image_id, ami, itype, user_data, tags, count, token, digest)
        except IntegrityError:
            if token is None:
                raise
            # a concurrent request with the same ClientToken won: answer with its instances
            return self._launch(who, image_id, ami, itype, user_data, tags, count, token, digest)

    def _launch(self, who: Caller, image_id: int, ami: str, itype: InstanceType,
                user_data: str | None, tags: list[tuple[str, str | None]], count: int,
                token: str | None, digest: str) -> dict[str, Any]:
        with self.store.transaction() as conn:
            row = conn.execute(select(_I.c.name).where(_I.c.id == image_id)).first()
            if row is None:
                raise Ec2Error("InvalidAMIID.NotFound", f"The image id '[{ami}]' does not exist")
            tpl = template.Template()
            for key, value in (("CPU", str(itype.vcpu)), ("VCPU", str(itype.vcpu)),
                               ("MEMORY", str(itype.memory_mb)), ("EC2_INSTANCE_TYPE", itype.name),
                               ("EC2_IMAGE_ID", ami)):
                tpl.add(key, value)
            tpl.add("DISK", {"IMAGE": row.name})
            if user_data:
                tpl.add("CONTEXT", {"USER_DATA": user_data, "USERDATA_ENCODING": "base64"})
            try:
                spec_ = vms.parse_spec(tpl.to_text())
            except InvalidInput as exc:
                raise invalid(str(exc)) from None
            if token is not None:
                done = self._token_vms(conn, who, token, digest)
                if done is not None:
                    return self._reservation(who, done, conn)
            ids = [
                vms.insert_vm(conn, spec_, who.user_id, note=f"EC2 RunInstances by {who.name}")[0]
                for _ in range(count)
            ]
            for vm_id in ids:
                for name, text in dict(tags).items():
                    conn.execute(insert(_T).values(vm_id=vm_id, key=name, value=text or ""))
            if token is not None:
                conn.execute(insert(_C).values(
                    user_id=who.user_id, token=token, request_hash=digest,
                    vm_ids=",".join(map(str, ids)), created=now(),
                ))
            return self._reservation(who, vms.list_vms(conn, state=-2, ids=ids), conn)

    def _token_vms(self, conn: Connection, who: Caller, token: str, digest: str,
                   ) -> list[dict[str, Any]] | None:
        row = conn.execute(self.store.for_update(
            select(_C).where(_C.c.user_id == who.user_id, _C.c.token == token)
        )).first()
        if row is None:
            return None
        if row.request_hash != digest:
            raise Ec2Error("IdempotentParameterMismatch", f"ClientToken {token!r} was used "
                           "with other parameters")
        return vms.list_vms(conn, state=-2, ids=[int(i) for i in row.vm_ids.split(",")])

    def describe_instances(self, who: Caller, p: Params) -> dict[str, Any]:
        filters = p.filters(("instance-state-name", "tag-key", "image-id", "instance-type",
                             "instance-id"))
        limit = p.integer("MaxResults", None, 5, 1000)
        explicit = bool(p.strings("InstanceId"))
        if explicit and limit is not None:
            raise Ec2Error("InvalidParameterCombination",
                           "The parameter instancesSet cannot be used with MaxResults")
        after = _after(p.get("NextToken"))
        with self.store.transaction() as conn:
            if explicit:
                rows = [r for r in self._requested(conn, who, p) if r["id"] > after]
            else:
                rows = self._visible(conn, who, self._listed_ids(conn, who, after))
            tags = self._tags_of(conn, [r["id"] for r in rows])
            names = self._image_ids(conn)
            out = []
            for r in rows:
                inst = self._instance(r, tags[r["id"]], names)
                if all(_match(name, values, inst, tags[r["id"]]) for name, values in filters):
                    out.append((r, inst))
        token = None
        if limit is not None and len(out) > limit:
            out = out[:limit]
            token = _page_token(out[-1][0]["id"])
        return {
            "reservationSet": [
                {"reservationId": f"r-{r['id']:017x}", "ownerId": f"{r['owner_id']:012d}",
                 "groupSet": [], "instancesSet": [inst]}
                for r, inst in out
            ],
            "nextToken": token,
        }

    def _act(self, who: Caller, p: Params, action: str) -> dict[str, Any]:
        items = []
        with self.store.transaction() as conn:
            for vm in self._requested(conn, who, p):
                before = ec2_state(vm["state"], vm["lcm_state"])
                if vm["state"] != A.DONE:
                    try:
                        vms.action_in(self.store, conn, vm["id"], action,
                                      why=f"EC2 by {who.name}")
                    except WrongState as exc:
                        raise Ec2Error("IncorrectInstanceState", str(exc)) from None
                after = vms.get(conn, vm["id"])
                now_ = ec2_state(after["state"], after["lcm_state"])
                items.append({
                    "instanceId": instance_id(vm["id"]),
                    "currentState": {"code": now_[0], "name": now_[1]},
                    "previousState": {"code": before[0], "name": before[1]},
                })
        return {"instancesSet": items}

    def terminate_instances(self, who: Caller, p: Params) -> dict[str, Any]:
        return self._act(who, p, "terminate")

    def reboot_instances(self, who: Caller, p: Params) -> dict[str, Any]:
        self._act(who, p, "reboot")
        return {"return": True}

    def _no_power(self, who: Caller, p: Params) -> dict[str, Any]:
        with self.store.transaction() as conn:
            self._requested(conn, who, p)  # the ids are checked first, as EC2 does
        raise Ec2Error("UnsupportedOperation", "lxcloud VMs cannot be stopped and started: "
                       "the executor does not carry out poweroff/resume; terminate and run "
                       "a new instance instead")

    stop_instances = _no_power
    start_instances = _no_power

    # -- images, types, places --------------------------------------------------------------
    def describe_images(self, who: Caller, p: Params) -> dict[str, Any]:
        filters = p.filters(("name", "image-id", "state"))
        wanted = {parse_id(t, "ami") for t in p.strings("ImageId")}
        with self.store.transaction() as conn:
            rows = images.list_images(conn)
        have = {r["id"] for r in rows}
        missing = [ami_id(i) for i in sorted(wanted - have)]
        if missing:
            raise Ec2Error("InvalidAMIID.NotFound",
                           f"The image id '[{', '.join(missing)}]' does not exist")
        out = []
        for r in rows:
            if wanted and r["id"] not in wanted:
                continue
            doc = {
                "imageId": ami_id(r["id"]),
                "imageLocation": f"lxcloud/{r['name']}/{r['version']}",
                "imageState": "available",
                "imageOwnerId": "000000000000",
                "creationDate": _iso(r["created"]),
                "isPublic": True,
                "architecture": "x86_64",
                "imageType": "machine",
                "name": f"{r['name']}-{r['version']}",
                "description": f"{r['name']} {r['version']} sha256:{r['sha256']}",
                "rootDeviceType": "instance-store",
                "virtualizationType": "hvm",
            }
            fields = {"name": str(doc["name"]), "image-id": str(doc["imageId"]),
                      "state": "available"}
            if all(_glob_any(fields[n], v) for n, v in filters):
                out.append(doc)
        return {"imagesSet": out}

    def describe_instance_types(self, who: Caller, p: Params) -> dict[str, Any]:
        names = p.strings("InstanceType")
        unknown = [n for n in names if n not in self.config.instance_types]
        if unknown:
            raise Ec2Error("InvalidInstanceType",
                           f"The following supplied instance types do not exist: "
                           f"[{', '.join(u[:64] for u in unknown)}]")
        out = [
            {"instanceType": t.name, "currentGeneration": True,
             "vCpuInfo": {"defaultVCpus": t.vcpu}, "memoryInfo": {"sizeInMiB": t.memory_mb}}
            for t in self.config.instance_types.values()
            if not names or t.name in names
        ]
        return {"instanceTypeSet": out}

    def describe_regions(self, who: Caller, p: Params) -> dict[str, Any]:
        region = self.config.region
        asked = p.strings("RegionName")
        if asked and region not in asked:
            raise invalid(f"Invalid region: {asked[0][:64]} (this cloud has {region})")
        return {"regionInfo": [{"regionName": region, "regionEndpoint": self.endpoint,
                                "optInStatus": "opt-in-not-required"}]}

    def describe_availability_zones(self, who: Caller, p: Params) -> dict[str, Any]:
        zone = self.config.zone
        asked = p.strings("ZoneName")
        if asked and zone not in asked:
            raise invalid(f"The zone '{asked[0][:64]}' does not exist (this cloud has {zone})")
        return {"availabilityZoneInfo": [{
            "zoneName": zone, "zoneState": "available", "regionName": self.config.region,
            "zoneId": f"{self.config.region}-az1", "zoneType": "availability-zone",
            "messageSet": [],
        }]}

    # -- tags ------------------------------------------------------------------------------------
    def _resources(self, conn: Connection, who: Caller, p: Params) -> list[int]:
        texts = p.strings("ResourceId")
        if not texts:
            raise Ec2Error("MissingParameter", "The request must contain ResourceId.N")
        for t in texts:
            if t.startswith("ami-"):
                raise Ec2Error("UnsupportedOperation", "only instances can be tagged here")
        return [r["id"] for r in self._requested(conn, who, Params(
            {f"InstanceId.{i}": t for i, t in enumerate(texts, 1)}))]

    def create_tags(self, who: Caller, p: Params) -> dict[str, Any]:
        tags = dict(_tags_in(p, "Tag", need_value=True))
        if not tags:
            raise Ec2Error("MissingParameter", "The request must contain Tag.N")
        with self.store.transaction() as conn:
            ids = self._resources(conn, who, p)
            have = self._tags_of(conn, ids)
            for vm_id in ids:
                if len(set(have[vm_id]) | set(tags)) > MAX_TAGS:
                    raise Ec2Error("TagLimitExceeded", f"{instance_id(vm_id)}: more than "
                                   f"{MAX_TAGS} tags")
                conn.execute(delete(_T).where(_T.c.vm_id == vm_id, _T.c.key.in_(list(tags))))
                for key, value in tags.items():
                    conn.execute(insert(_T).values(vm_id=vm_id, key=key, value=value or ""))
        return {"return": True}

    def delete_tags(self, who: Caller, p: Params) -> dict[str, Any]:
        tags = _tags_in(p, "Tag", need_value=False)
        with self.store.transaction() as conn:
            for vm_id in self._resources(conn, who, p):
                if not tags:  # no Tag.N: every tag of the resource, as EC2
                    conn.execute(delete(_T).where(_T.c.vm_id == vm_id))
                for key, value in tags:
                    stmt = delete(_T).where(_T.c.vm_id == vm_id, _T.c.key == key)
                    if value is not None:
                        stmt = stmt.where(_T.c.value == value)
                    conn.execute(stmt)
        return {"return": True}

    def describe_tags(self, who: Caller, p: Params) -> dict[str, Any]:
        filters = p.filters(("resource-id", "resource-type", "key", "value"))
        limit = p.integer("MaxResults", None, 5, 1000)
        after = _after(p.get("NextToken"))
        with self.store.transaction() as conn:
            visible = self._listed_ids(conn, who, after)
            out: list[dict[str, Any]] = []
            token = None
            for vm_id, tags in sorted(self._tags_of(conn, visible).items()):
                if limit is not None and len(out) >= limit:  # pages end between resources
                    token = _page_token(vm_id - 1)
                    break
                for key, value in tags.items():
                    fields = {"resource-id": instance_id(vm_id), "resource-type": "instance",
                              "key": key, "value": value}
                    if all(_glob_any(fields[n], v) for n, v in filters):
                        out.append({"resourceId": fields["resource-id"],
                                    "resourceType": "instance", "key": key, "value": value})
        return {"tagSet": out, "nextToken": token}


def _glob_any(value: str, patterns: list[str]) -> bool:
    """EC2 filter values: any of them matches; ``*`` and ``?`` are wildcards."""
    from fnmatch import fnmatchcase

    return any(fnmatchcase(value, pat.replace("[", "[[]")) for pat in patterns)


def _match(name: str, values: list[str], inst: dict[str, Any], tags: dict[str, str]) -> bool:
    if name == "instance-state-name":
        return _glob_any(inst["instanceState"]["name"], values)
    if name == "tag-key":
        return any(_glob_any(k, values) for k in tags)
    if name.startswith("tag:"):
        key = name[4:]
        return key in tags and _glob_any(tags[key], values)
    field = {"image-id": "imageId", "instance-type": "instanceType",
             "instance-id": "instanceId"}[name]
    return _glob_any(inst[field] or "", values)


def _snake(action: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", action).lower()


