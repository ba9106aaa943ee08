"""``one.vm.update|chown|chmod|updateconf`` and ``one.vmpool.infoextended``."""

from __future__ import annotations

from lxcloud_py import templates
from lxcloud_py.users import Principal

from .errors import AUTHORIZATION, ApiFailure
from .namespaces import Namespace, VmPoolNamespace, want_int, want_str
from .one_common import check_owner

_MAX_TEMPLATE = 256 * 1024


class VmUpdateNamespace(Namespace):
    """The ``one.vm`` methods that change a VM's template, owner or permissions."""

    NAME = "one.vm"
    METHODS = ("update", "updateconf", "chown", "chmod")

    def _owned(self, who: Principal, vm_id: object, operation: str) -> int:
        vid = want_int(vm_id, "VM id")
        with self.store.transaction() as conn:
            owner = templates.vm_owner(conn, vid)
        check_owner(who, owner, operation, "VM", vid)
        return vid

    def update(self, who: Principal, vm_id: object, text: object, kind: object = 0) -> int:
        vid = self._owned(who, vm_id, "MANAGE")
        return templates.update_vm(
            self.store, vid, want_str(text, "template", _MAX_TEMPLATE), want_int(kind, "type")
        )

    def updateconf(self, who: Principal, vm_id: object, text: object, kind: object = 0) -> int:
        vid = self._owned(who, vm_id, "MANAGE")
        return templates.updateconf_vm(
            self.store, vid, want_str(text, "template", _MAX_TEMPLATE), want_int(kind, "type")
        )

    def chown(self, who: Principal, vm_id: object, user_id: object, group_id: object) -> int:
        vid = self._owned(who, vm_id, "MANAGE")
        uid = want_int(user_id, "user id")
        if uid != -1 and not who.is_admin:  # OpenNebula: changing the owner needs ADMIN
            raise ApiFailure(
                AUTHORIZATION,
                f"User [{who.name}] : Not authorized to perform ADMIN VM [{vid}].",
                vid,
            )
        return templates.chown_vm(self.store, vid, uid, want_int(group_id, "group id"))

    def chmod(self, who: Principal, vm_id: object, *bits: object) -> int:
        """(id, owner_u, owner_m, owner_a, group_u, group_m, group_a, other_u, other_m,
        other_a), each -1 (keep), 0 or 1."""
        vid = self._owned(who, vm_id, "MANAGE")
        return templates.chmod_vm(self.store, vid, [want_int(b, "permission bit") for b in bits])


class VmPoolExtendedNamespace(VmPoolNamespace):
    """``one.vmpool.infoextended``: lxcloud's ``one.vmpool.info`` documents are complete
    already, so the extended pool is the same document."""

    METHODS = ("infoextended",)

    def infoextended(
        self,
        who: Principal,
        filter_flag: object,
        start_id: object = -1,
        end_id: object = -1,
        state: object = -1,
        kv_filter: object = "",
    ) -> str:
        return self.info(who, filter_flag, start_id, end_id, state, kv_filter)
