"""``one.template.*`` and ``one.templatepool.info``: VM templates (see lxcloud_py.templates)."""

from __future__ import annotations

from lxcloud_py import templates
from lxcloud_py.model import Conflict, InvalidInput
from lxcloud_py.users import Principal

from . import one_documents
from .errors import ALLOCATE, AUTHORIZATION, ApiFailure
from .namespaces import Namespace, want_bool, want_int, want_str
from .one_common import FilteredPool, check_owner

_MAX_TEMPLATE = 256 * 1024


class TemplateNamespace(Namespace):
    NAME = "one.template"
    METHODS = ("allocate", "info", "update", "delete", "instantiate", "clone")

    def _owned(self, who: Principal, template_id: object, operation: str) -> int:
        tid = want_int(template_id, "template id")
        with self.store.transaction() as conn:
            owner = templates.get(conn, tid)["owner_id"]
        check_owner(who, owner, operation, "VMTEMPLATE", tid)
        return tid

    def _user(self, who: Principal) -> int:
        if who.user_id is None:  # pragma: no cover - VM tokens are refused by the dispatcher
            raise ApiFailure(AUTHORIZATION, "only users own templates")
        return who.user_id

    def allocate(self, who: Principal, text: object) -> int:
        try:
            return templates.allocate(
                self.store, want_str(text, "template", _MAX_TEMPLATE), self._user(who)
            )
        except (InvalidInput, Conflict) as exc:
            raise ApiFailure(ALLOCATE, str(exc)) from None

    def info(
        self, who: Principal, template_id: object, extended: object = False, decrypt: object = False
    ) -> str:
        tid = want_int(template_id, "template id")
        want_bool(extended, "extended")
        with self.store.transaction() as conn:
            tpl = templates.get(conn, tid)
        check_owner(who, tpl["owner_id"], "USE", "VMTEMPLATE", tid)
        return one_documents.template_document(tpl)

    def update(self, who: Principal, template_id: object, text: object, kind: object = 0) -> int:
        tid = self._owned(who, template_id, "MANAGE")
        return templates.update_template(
            self.store, tid, want_str(text, "template", _MAX_TEMPLATE), want_int(kind, "type")
        )

    def delete(self, who: Principal, template_id: object, recursive: object = False) -> int:
        tid = self._owned(who, template_id, "MANAGE")
        want_bool(recursive, "recursive")  # the images are lxcloud's golden images: kept
        return templates.delete_template(self.store, tid)

    def instantiate(
        self,
        who: Principal,
        template_id: object,
        name: object = "",
        hold: object = False,
        extra: object = "",
        persistent: object = False,
    ) -> int:
        tid = self._owned(who, template_id, "USE")
        try:
            return templates.instantiate(
                self.store,
                tid,
                want_str(name, "name", 128),
                want_bool(hold, "hold"),
                want_str(extra, "extra template", _MAX_TEMPLATE),
                self._user(who),
                persistent=want_bool(persistent, "persistent"),
            )
        except InvalidInput as exc:
            raise ApiFailure(ALLOCATE, str(exc), tid) from None

    def clone(
        self, who: Principal, template_id: object, name: object, recursive: object = False
    ) -> int:
        tid = self._owned(who, template_id, "USE")
        want_bool(recursive, "recursive")
        try:
            return templates.clone(self.store, tid, want_str(name, "name", 128), self._user(who))
        except (InvalidInput, Conflict) as exc:
            raise ApiFailure(ALLOCATE, str(exc), tid) from None


class TemplatePoolNamespace(FilteredPool):
    NAME = "one.templatepool"

    def document(self, owner: int | None, start: int, end: int) -> str:
        with self.store.transaction() as conn:
            found = templates.list_templates(conn, owner_id=owner, start_id=start, end_id=end)
        return one_documents.template_pool_document(found)
