"""The API's methods, one namespace class per area (OpenNebula's names where they exist).

A namespace lists the methods it exposes in ``METHODS``; nothing else is callable. Each method
takes the authenticated :class:`~lxcloud_py.users.Principal` first, then the call's arguments
after the session string, validates them (bad arguments: XML_RPC_API) and calls the domain
modules (:mod:`lxcloud_py.hosts`, :mod:`~lxcloud_py.vms`, :mod:`~lxcloud_py.images`,
:mod:`~lxcloud_py.leases`), whose exceptions the dispatcher maps to OpenNebula's codes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lxcloud_py import __version__, hosts, images, leases, lifecycle, pools, vms
from lxcloud_py.model import Conflict, InvalidInput, NotFound
from lxcloud_py.store import Store
from lxcloud_py.users import Principal

from . import documents
from .errors import ACTION, ALLOCATE, AUTHORIZATION, NO_EXISTS, XML_RPC_API, ApiFailure
from .one_enrich import enrich_hosts, enrich_vms

#: XML-RPC's int is 32-bit signed.
_INT_MAX = 2**31 - 1


def want_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiFailure(XML_RPC_API, f"{what} must be an integer, got {type(value).__name__}")
    return value


def want_str(value: object, what: str, max_len: int = 4096) -> str:
    if not isinstance(value, str):
        raise ApiFailure(XML_RPC_API, f"{what} must be a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise ApiFailure(XML_RPC_API, f"{what} is longer than {max_len} characters")
    return value


def want_bool(value: object, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ApiFailure(XML_RPC_API, f"{what} must be a boolean")


def want_struct(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ApiFailure(XML_RPC_API, f"{what} must be a struct")
    return value


class Namespace:
    """Base: the store and the names of the exposed methods."""

    NAME: ClassVar[str] = ""
    METHODS: ClassVar[tuple[str, ...]] = ()
    #: methods a VM's callback token may call (the method checks the VM id itself)
    VM_METHODS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    def admin_only(who: Principal, method: str, what: str = "") -> None:
        if not who.is_admin:
            raise ApiFailure(
                AUTHORIZATION,
                f"User [{who.name}] : Not authorized to perform {method}{what}.",
            )


class SystemNamespace(Namespace):
    NAME = "one.system"
    METHODS = ("version",)

    def version(self, who: Principal) -> str:
        return __version__


class HostNamespace(Namespace):
    NAME = "one.host"
    METHODS = ("allocate", "info", "status", "delete")

    def allocate(
        self,
        who: Principal,
        name: object,
        im_mad: object,
        vmm_mad: object,
        cluster_or_vnm: object = -1,
        cluster_id: object = -1,
    ) -> int:
        """OpenNebula 5+: (name, im_mad, vmm_mad, cluster_id); 4.x also sent vnm_mad before
        the cluster id: both are accepted (clusters and vnm_mad are ignored)."""
        if isinstance(cluster_or_vnm, str):
            want_int(cluster_id, "cluster id")
        else:
            want_int(cluster_or_vnm, "cluster id")
        try:
            return hosts.allocate(
                self.store,
                want_str(name, "name", 64),
                want_str(im_mad, "im_mad", 32),
                want_str(vmm_mad, "vmm_mad", 32),
            )
        except (Conflict, InvalidInput) as exc:
            raise ApiFailure(ALLOCATE, str(exc)) from None

    def info(self, who: Principal, host_id: object, decrypt: object = False) -> str:
        hid = want_int(host_id, "host id")
        with self.store.transaction() as conn:
            found = enrich_hosts(conn, hosts.list_hosts(conn, ids=[hid]))
        if not found:
            raise ApiFailure(NO_EXISTS, f"Error getting host [{hid}].", hid)
        return documents.host_document(found[0])

    def status(self, who: Principal, host_id: object, status: object) -> int:
        return hosts.set_status(
            self.store, want_int(host_id, "host id"), want_int(status, "status")
        )

    def delete(self, who: Principal, host_id: object) -> int:
        return hosts.delete_host(self.store, want_int(host_id, "host id"))


class HostPoolNamespace(Namespace):
    NAME = "one.hostpool"
    METHODS = ("info",)

    def info(self, who: Principal) -> str:
        with self.store.transaction() as conn:
            return documents.host_pool_document(enrich_hosts(conn, hosts.list_hosts(conn)))


class VmNamespace(Namespace):
    NAME = "one.vm"
    METHODS = ("allocate", "info", "action")
    VM_METHODS = ("info", "action")

    @staticmethod
    def _own(who: Principal, method: str, vm_id: int, what: str) -> None:
        if who.is_vm and who.vm_id != vm_id:
            raise ApiFailure(
                AUTHORIZATION,
                f"User [{who.name}] : Not authorized to perform {what} VM [{vm_id}].",
                vm_id,
            )

    def allocate(self, who: Principal, text: object, hold: object = False) -> int:
        if who.user_id is None:  # pragma: no cover - VMs are refused before
            raise ApiFailure(AUTHORIZATION, "only users allocate VMs")
        try:
            vm_id, _token = vms.allocate(
                self.store,
                want_str(text, "template", 256 * 1024),
                who.user_id,
                hold=want_bool(hold, "hold"),
            )
        except InvalidInput as exc:
            raise ApiFailure(ALLOCATE, str(exc)) from None
        return vm_id

    def info(self, who: Principal, vm_id: object, decrypt: object = False) -> str:
        vid = want_int(vm_id, "VM id")
        self._own(who, "one.vm.info", vid, "USE")
        try:
            with self.store.transaction() as conn:
                vm = enrich_vms(conn, [vms.get(conn, vid)])[0]
        except NotFound:
            raise ApiFailure(NO_EXISTS, f"Error getting virtual machine [{vid}].", vid) from None
        return documents.vm_document(vm)

    def action(self, who: Principal, name: object, vm_id: object) -> int:
        action = want_str(name, "action", 32)
        # OpenNebula before 5.0 called terminate "shutdown": 2010-era images still send it
        action = vms.LEGACY_ACTIONS.get(action, action)
        vid = want_int(vm_id, "VM id")
        self._own(who, "one.vm.action", vid, "MANAGE")
        actor = lifecycle.Actor.VM if who.is_vm else lifecycle.Actor.USER
        if who.is_vm and not lifecycle.may_trigger(actor, action):
            raise ApiFailure(
                AUTHORIZATION,
                f"User [{who.name}] : Not authorized to perform {action} on VM [{vid}].",
                vid,
            )
        if action not in vms.ACTIONS:  # OpenNebula's answer, also to its actions lxcloud lacks
            raise ApiFailure(ACTION, f'Virtual machine action "{action}" is not supported', vid)
        try:
            return vms.action(self.store, vid, action, actor)
        except NotFound:
            raise ApiFailure(NO_EXISTS, f"Error getting virtual machine [{vid}].", vid) from None


class VmPoolNamespace(Namespace):
    NAME = "one.vmpool"
    METHODS = ("info",)

    def info(
        self,
        who: Principal,
        filter_flag: object,
        start_id: object = -1,
        end_id: object = -1,
        state: object = -1,
        kv_filter: object = "",
    ) -> str:
        flag = want_int(filter_flag, "filter flag")
        start = want_int(start_id, "start id")
        end = want_int(end_id, "end id")
        st = want_int(state, "state")
        if want_str(kv_filter, "filter", 1024):
            raise ApiFailure(XML_RPC_API, "KEY=VALUE filters are not supported")
        owner: int | None
        if flag == -2:
            owner = None  # all VMs
        elif flag < 0:
            owner = who.user_id  # <= -3 mine; -1 mine and my group's (one group here)
        else:
            owner = flag
        offset = limit = None
        if end < -1:  # OpenNebula's pagination: start is the offset, -end the page size
            if start < 0:
                raise ApiFailure(
                    XML_RPC_API, "with a page size (end < -1), start is an offset >= 0"
                )
            offset, limit, start, end = start, -end, -1, -1
        with self.store.transaction() as conn:
            found = vms.list_vms(
                conn,
                owner_id=owner,
                start_id=start,
                end_id=end,
                state=st,
                offset=offset,
                limit=limit,
            )
            enrich_vms(conn, found)
        return documents.vm_pool_document(found)


class LxHostNamespace(Namespace):
    NAME = "lxcloud.host"
    METHODS = ("register", "heartbeat", "image")

    def register(
        self, who: Principal, name: object, capacity: object, macs: object, info: object = None
    ) -> int:
        cap = want_struct(capacity, "capacity")
        for key in ("cpu", "memory_mb"):
            if key not in cap:
                raise ApiFailure(XML_RPC_API, f"capacity lacks {key!r}")
        unknown = sorted(set(cap) - {"cpu", "memory_mb", "disk_mb"})
        if unknown:
            raise ApiFailure(XML_RPC_API, f"capacity has unknown key(s) {', '.join(unknown)}")
        if not isinstance(macs, list):
            raise ApiFailure(XML_RPC_API, "macs must be an array")
        return hosts.register(
            self.store,
            want_str(name, "name", 64),
            cap["cpu"],
            cap["memory_mb"],
            cap.get("disk_mb", 0),
            macs,
            want_struct(info, "info") if info is not None else None,
        )

    def heartbeat(self, who: Principal, name: object, info: object = None) -> int:
        return hosts.heartbeat(
            self.store,
            want_str(name, "name", 64),
            want_struct(info, "info") if info is not None else None,
        )

    def image(
        self,
        who: Principal,
        host: object,
        name: object,
        version: object,
        sha256: object,
        state: object,
    ) -> int:
        return hosts.report_image(
            self.store,
            want_str(host, "host", 64),
            want_str(name, "image name", 64),
            want_str(version, "version", 64),
            want_str(sha256, "sha256", 64),
            want_str(state, "state", 16),
        )


class LxVmNamespace(Namespace):
    NAME = "lxcloud.vm"
    METHODS = ("token", "exit")
    VM_METHODS = ("exit",)

    def exit(self, who: Principal, vm_id: object, code: object, message: object = "") -> int:
        """The VM ends itself with a Vac exit code (100..700) and a message: both are stored
        and the VM is terminated (a VM's token may end only that VM, as one.vm.action)."""
        vid = want_int(vm_id, "VM id")
        VmNamespace._own(who, "lxcloud.vm.exit", vid, "MANAGE")
        try:
            return vms.exit_vm(
                self.store, vid, want_int(code, "exit code"), want_str(message, "message", 4096)
            )
        except NotFound:
            raise ApiFailure(NO_EXISTS, f"Error getting virtual machine [{vid}].", vid) from None

    def token(self, who: Principal, vm_id: object) -> str:
        vid = want_int(vm_id, "VM id")
        try:
            return vms.issue_token(self.store, vid)
        except NotFound:
            raise ApiFailure(NO_EXISTS, f"Error getting virtual machine [{vid}].", vid) from None


class LxImageNamespace(Namespace):
    NAME = "lxcloud.image"
    METHODS = ("register",)

    def register(
        self,
        who: Principal,
        name: object,
        version: object,
        sha256: object,
        size: object,
        fmt: object = "raw",
        compression: object = "zstd",
    ) -> int:
        if isinstance(size, bool) or not isinstance(size, int | float):
            raise ApiFailure(XML_RPC_API, "size must be a number of bytes (int or double)")
        try:
            return images.register(
                self.store,
                want_str(name, "name", 64),
                want_str(version, "version", 64),
                want_str(sha256, "sha256", 64),
                size,
                want_str(fmt, "format", 16),
                want_str(compression, "compression", 16),
            )
        except Conflict as exc:
            raise ApiFailure(ALLOCATE, str(exc)) from None


class LxLeaseNamespace(Namespace):
    NAME = "lxcloud.lease"
    METHODS = ("list",)

    def list(self, who: Principal, host: object = "") -> list[dict[str, Any]]:
        name = want_str(host, "host", 64)
        if name:
            hosts.check_name(name)
        with self.store.transaction() as conn:
            rows = leases.list_leases(conn, host=name or None)
        return [
            {
                "ip": r["ip"],
                "mac": r["mac"],
                "name": r["name"],
                "host": r["host"],
                "state": r["state"],
                "vm_id": int(r["vm_id"]) if r["vm_id"] is not None else -1,
            }
            for r in rows
        ]


def _pool_key(value: object) -> str | int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ApiFailure(XML_RPC_API, "pool must be given by name (string) or id (integer)")
    return value


class LxPoolNamespace(Namespace):
    """Provisioning pools (lxcloud_py.pools): a pool is a struct of the fields of
    ``PoolSpec`` (``template`` text, or ``image`` + ``cpu``/``vcpu``/``memory``/``context``)."""

    NAME = "lxcloud.pool"
    METHODS = ("allocate", "info", "update", "delete", "plan")

    def plan(self, who: Principal, data: object) -> dict[str, Any]:
        """What setting the pool to ``data`` would change, changing nothing: a struct with
        ``exists``, ``changed``, ``changes`` (texts), ``before`` and ``after`` (the pool's
        fields; lifetime 0 is none). Check mode and diff of the Ansible module."""
        return pools.plan_request(self.store, want_struct(data, "pool"))

    def allocate(self, who: Principal, data: object) -> int:
        try:
            return pools.create_pool(
                self.store, pools.spec_from_mapping(want_struct(data, "pool"))
            )
        except (Conflict, InvalidInput) as exc:
            raise ApiFailure(ALLOCATE, str(exc)) from None

    def info(self, who: Principal, pool: object) -> str:
        key = _pool_key(pool)
        with self.store.transaction() as conn:
            try:
                row = pools.find(conn, key)
            except NotFound:
                raise ApiFailure(NO_EXISTS, f"Error getting pool [{key}].") from None
            (status,) = pools.pool_status(conn, [row])
            status["decisions"] = pools.decisions_of(conn, row.id)
        return documents.pool_document(status)

    def update(self, who: Principal, pool: object, data: object, merge: object = True) -> int:
        """Change a pool: with ``merge`` (default) the fields given replace the current ones;
        without, the struct is the whole pool (fields not given take their defaults)."""
        key = _pool_key(pool)
        changes = want_struct(data, "pool")
        with self.store.transaction() as conn:
            row = pools.find(conn, key)
        if changes.get("name", row.name) != row.name:
            raise ApiFailure(XML_RPC_API, "a pool's name cannot change")
        if want_bool(merge, "merge"):
            base = pools.merged_mapping(pools.get_spec_of(row), changes)
        else:
            base = dict(changes)
        pools.update_pool(self.store, row.name, pools.spec_from_mapping(base, row.name))
        return int(row.id)

    def delete(self, who: Principal, pool: object, force: object = False) -> int:
        key = _pool_key(pool)
        with self.store.transaction() as conn:
            row = pools.find(conn, key)
        return pools.delete_pool(self.store, row.name, force=want_bool(force, "force"))


class LxPoolPoolNamespace(Namespace):
    NAME = "lxcloud.poolpool"
    METHODS = ("info",)

    def info(self, who: Principal) -> str:
        with self.store.transaction() as conn:
            return documents.pool_pool_document(pools.list_pools(conn))


NAMESPACES: tuple[type[Namespace], ...] = (
    SystemNamespace,
    HostNamespace,
    HostPoolNamespace,
    VmNamespace,
    VmPoolNamespace,
    LxHostNamespace,
    LxVmNamespace,
    LxImageNamespace,
    LxLeaseNamespace,
    LxPoolNamespace,
    LxPoolPoolNamespace,
)
