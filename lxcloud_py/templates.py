"""VM templates (OpenNebula's ``one.template.*``) and template updates of existing objects
(``one.vm.update``, ``one.vm.updateconf``, ``one.host.update``), plus a VM's owner and
permission bits (``one.vm.chown``, ``one.vm.chmod``).

A VM template is a named body in OpenNebula syntax, stored without its NAME and validated at
allocation with the same rules as ``one.vm.allocate`` (:func:`lxcloud_py.vms.parse_spec`).
Instantiating it merges the extra template over the body the way OpenNebula's
``Template::merge`` does (an attribute of the extra template replaces every attribute of the
same name), adds ``TEMPLATE_ID`` and allocates the VM with :func:`lxcloud_py.vms.allocate`:
same validation, scheduler, leases and callback token as any VM.

Updates take OpenNebula's type argument: 0 replaces the object's (user) template, 1 merges
into it. Attributes lxcloud derives or acts on (a VM's CPU, MEMORY, DISK, LIFETIME ...; a
host's MACS, LAST_SEEN ...) are refused with a message naming them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from ansible_collections.lxcloud.cloud.plugins.module_utils.names import (
    InvalidName,
    validate_name,
)
from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from lxcloud_py import vms
from lxcloud_py.model import Conflict, InvalidInput, NotFound, VMState
from lxcloud_py.store import Store, now, schema
from lxcloud_py.template import Template, parse

log = logging.getLogger("lxcloud.templates")

_T, _V, _U = schema.vm_templates, schema.vms, schema.users
_VP, _HT, _H = schema.vm_permissions, schema.host_templates, schema.hosts

#: OpenNebula's default permissions for new objects (umask 177): OWNER_U and OWNER_M.
DEFAULT_PERMISSIONS = 0o600
UPDATE_REPLACE, UPDATE_MERGE = 0, 1
#: A VM's attributes that live in its TEMPLATE or that lxcloud acts on: kept by one.vm.update.
VM_SYSTEM_KEYS = frozenset(
    ("NAME", "CPU", "VCPU", "MEMORY", "DISK", "NIC", "CONTEXT", "TEMPLATE_ID", "VMID", "LIFETIME")
)
#: Attributes the documents generate (refused in updates).
VM_GENERATED_KEYS = frozenset(("DEADLINE", "SCHED_MESSAGE"))
#: The sections one.vm.updateconf accepts in OpenNebula; lxcloud supports CONTEXT.
UPDATECONF_SECTIONS = frozenset(
    ("OS", "CPU_MODEL", "FEATURES", "INPUT", "GRAPHICS", "VIDEO", "RAW", "CONTEXT", "BACKUP_CONFIG")
)
#: Host template attributes lxcloud generates from registrations and reports.
HOST_GENERATED_KEYS = frozenset(("MACS", "LAST_SEEN", "REGISTERED", "MAX_DISPATCH", "IMAGE"))
#: VM states in which the context may still change (the VM has not been deployed yet).
_UNDEPLOYED = (int(VMState.PENDING), int(VMState.HOLD))


def merge(base: Template, extra: Template) -> Template:
    """OpenNebula's merge: every attribute of ``extra`` replaces all of ``base``'s attributes
    of the same name; the others keep their order."""
    replaced = set(extra.keys())
    out = Template([(k, v) for k, v in base if k not in replaced])
    for key, value in extra:
        out.add(key, value)
    return out


def _update_type(kind: int) -> bool:
    """True for merge (1), False for replace (0)."""
    if kind not in (UPDATE_REPLACE, UPDATE_MERGE):
        raise InvalidInput(f"update type must be 0 (replace) or 1 (merge), got {kind}")
    return kind == UPDATE_MERGE


def check_template_name(name: object) -> str:
    try:
        return str(validate_name(name, "template NAME"))
    except InvalidName as exc:
        raise InvalidInput(str(exc)) from None


def _split_name(text: str) -> tuple[str | None, Template]:
    """(NAME or None, the body without NAME), the body validated as a VM template."""
    tpl = parse(text)
    names = tpl.get_all("NAME")
    if len(names) > 1:
        raise InvalidInput("NAME given more than once")
    name = check_template_name(names[0]) if names else None
    body = _without_name(tpl)
    vms.parse_spec(body.to_text())
    return name, body


def _owned_row(conn: Connection, store: Store, template_id: int) -> Any:
    row = conn.execute(store.for_update(select(_T).where(_T.c.id == template_id))).first()
    if row is None:
        raise NotFound(f"Error getting VM template [{template_id}].")
    return row


def _insert(conn: Connection, name: str, owner_id: int, body: Template) -> int:
    taken = conn.execute(
        select(_T.c.id).where(_T.c.owner_id == owner_id, _T.c.name == name)
    ).scalar_one_or_none()
    if taken is not None:
        raise Conflict(f"NAME is already taken by TEMPLATE {taken}.")
    try:
        res = conn.execute(
            insert(_T).values(
                name=name,
                owner_id=owner_id,
                template=body.to_text(),
                permissions=DEFAULT_PERMISSIONS,
                created=now(),
            )
        )
    except IntegrityError:  # a concurrent allocate took the name
        raise Conflict(f"NAME {name!r} is already taken") from None
    pk = res.inserted_primary_key
    if pk is None:  # pragma: no cover - autoincrement key
        raise RuntimeError("INSERT returned no primary key")
    template_id = int(pk[0])
    Store.record(conn, "template", template_id, None, None, f"allocated {name}")
    return template_id


# -- VM templates -------------------------------------------------------------------------------
def allocate(store: Store, text: str, owner_id: int) -> int:
    """A new VM template from ``text`` (which must carry NAME); returns its id."""
    name, body = _split_name(text)
    if name is None:
        raise InvalidInput("the template needs a NAME")
    with store.transaction() as conn:
        template_id = _insert(conn, name, owner_id, body)
    log.info("VM template %d %s allocated", template_id, name)
    return template_id


def get(conn: Connection, template_id: int) -> dict[str, Any]:
    found = list_templates(conn, ids=[template_id])
    if not found:
        raise NotFound(f"Error getting VM template [{template_id}].")
    return found[0]


def list_templates(
    conn: Connection,
    owner_id: int | None = None,
    start_id: int = -1,
    end_id: int = -1,
    ids: Iterable[int] | None = None,
) -> list[dict[str, Any]]:
    """Templates in id order, with ``owner`` (the user's name)."""
    stmt = select(_T, _U.c.name.label("owner")).join(_U, _U.c.id == _T.c.owner_id)
    if owner_id is not None:
        stmt = stmt.where(_T.c.owner_id == owner_id)
    if start_id >= 0:
        stmt = stmt.where(_T.c.id >= start_id)
    if end_id >= 0:
        stmt = stmt.where(_T.c.id <= end_id)
    if ids is not None:
        stmt = stmt.where(_T.c.id.in_(list(ids)))
    return [dict(r._mapping) for r in conn.execute(stmt.order_by(_T.c.id))]


def find_id(conn: Connection, name_or_id: str) -> int:
    """A template id from a name or a numeric id (CLI convenience)."""
    if name_or_id.isdigit():
        found = conn.execute(select(_T.c.id).where(_T.c.id == int(name_or_id))).all()
    else:
        found = conn.execute(select(_T.c.id).where(_T.c.name == name_or_id)).all()
    if len(found) != 1:
        what = "no" if not found else "more than one"
        raise NotFound(f"{what} VM template {name_or_id!r}")
    return int(found[0].id)


def update_template(store: Store, template_id: int, text: str, kind: int) -> int:
    """Replace (0) or merge into (1) the template's body; a NAME in ``text`` is ignored
    (``one.template.rename`` renames in OpenNebula)."""
    merging = _update_type(kind)
    new = _without_name(parse(text))
    with store.transaction() as conn:
        row = _owned_row(conn, store, template_id)
        body = merge(parse(row.template), new) if merging else new
        vms.parse_spec(body.to_text())
        conn.execute(update(_T).where(_T.c.id == template_id).values(template=body.to_text()))
        Store.record(conn, "template", template_id, None, None, "merged" if merging else "replaced")
    return template_id


def _without_name(tpl: Template) -> Template:
    return Template([(k, v) for k, v in tpl if k != "NAME"])


def delete_template(store: Store, template_id: int) -> int:
    with store.transaction() as conn:
        _owned_row(conn, store, template_id)
        conn.execute(delete(_T).where(_T.c.id == template_id))
        Store.record(conn, "template", template_id, None, None, "deleted")
    log.info("VM template %d deleted", template_id)
    return template_id


def clone(store: Store, template_id: int, name: str, owner_id: int) -> int:
    """A copy of the template under ``name``, owned by ``owner_id``; returns the new id."""
    check_template_name(name)
    with store.transaction() as conn:
        row = _owned_row(conn, store, template_id)
        new_id = _insert(conn, name, owner_id, parse(row.template))
    log.info("VM template %d cloned to %d %s", template_id, new_id, name)
    return new_id


def instantiate(
    store: Store,
    template_id: int,
    name: str,
    hold: bool,
    extra: str,
    owner_id: int,
    persistent: bool = False,
) -> int:
    """A VM from the template with ``extra`` merged over it; returns the VM id. An empty
    ``name`` leaves the VM its default name (``one-ID``)."""
    if persistent:
        raise Conflict("persistent instances are not supported: lxcloud disks are clones")
    with store.transaction() as conn:
        row = _owned_row(conn, store, template_id)
    tpl = merge(parse(row.template), parse(extra) if extra.strip() else Template())
    tpl = Template([(k, v) for k, v in tpl if k not in ("NAME", "TEMPLATE_ID")])
    if name:
        tpl.add("NAME", name)
    tpl.add("TEMPLATE_ID", str(template_id))
    vm_id, _token = vms.allocate(store, tpl.to_text(), owner_id, hold=hold)
    log.info("VM %d instantiated from template %d", vm_id, template_id)
    return vm_id


# -- VMs: user template, context, owner, permissions ---------------------------------------------
def _vm_row(conn: Connection, store: Store, vm_id: int) -> Any:
    row = conn.execute(store.for_update(select(_V).where(_V.c.id == vm_id))).first()
    if row is None:
        raise NotFound(f"Error getting virtual machine [{vm_id}].")
    return row


def vm_owner(conn: Connection, vm_id: int) -> int:
    owner = conn.execute(select(_V.c.owner_id).where(_V.c.id == vm_id)).scalar_one_or_none()
    if owner is None:
        raise NotFound(f"Error getting virtual machine [{vm_id}].")
    return int(owner)


def _refuse_keys(new: Template, refused: Iterable[str], what: str) -> None:
    bad = sorted(set(new.keys()) & set(refused))
    if bad:
        raise InvalidInput(f"{', '.join(bad)} cannot be set by {what}")


def _store_vm_template(conn: Connection, vm_id: int, tpl: Template, message: str) -> None:
    vms.parse_spec(tpl.to_text())
    conn.execute(update(_V).where(_V.c.id == vm_id).values(template=tpl.to_text()))
    Store.record(conn, "vm", vm_id, None, None, message)


def update_vm(store: Store, vm_id: int, text: str, kind: int) -> int:
    """``one.vm.update``: replace (0) or merge into (1) the VM's user template (LABELS and the
    other free attributes); the attributes lxcloud acts on are refused."""
    merging = _update_type(kind)
    new = parse(text)
    _refuse_keys(new, VM_SYSTEM_KEYS | VM_GENERATED_KEYS, "one.vm.update (see one.vm.updateconf)")
    with store.transaction() as conn:
        row = _vm_row(conn, store, vm_id)
        old = parse(row.template)
        if merging:
            tpl = merge(old, new)
        else:
            tpl = Template([(k, v) for k, v in old if k in VM_SYSTEM_KEYS])
            for key, value in new:
                tpl.add(key, value)
        _store_vm_template(
            conn, vm_id, tpl, "user template " + ("merged" if merging else "replaced")
        )
    return vm_id


def updateconf_vm(store: Store, vm_id: int, text: str, kind: int = UPDATE_REPLACE) -> int:
    """``one.vm.updateconf``: only CONTEXT maps to something lxcloud does, and only before the
    VM is deployed (PENDING or HOLD): its context is written at deployment. Sections OpenNebula
    knows but lxcloud does not act on (OS, GRAPHICS ...) are refused."""
    merging = _update_type(kind)
    new = parse(text)
    unknown = sorted(set(new.keys()) - UPDATECONF_SECTIONS)
    if unknown:
        raise InvalidInput(f"{', '.join(unknown)} cannot be updated by one.vm.updateconf")
    unsupported = sorted(set(new.keys()) - {"CONTEXT"})
    if unsupported:
        raise Conflict(
            f"lxcloud does not configure {', '.join(unsupported)}: only CONTEXT can be updated"
        )
    with store.transaction() as conn:
        row = _vm_row(conn, store, vm_id)
        if int(row.state) not in _UNDEPLOYED:
            raise Conflict(
                f"the context of VM {vm_id} is written at deployment: it can change only while "
                f"the VM is PENDING or HOLD, not {vms.state_text(dict(row._mapping))}"
            )
        old = parse(row.template)
        if merging and old.vectors("CONTEXT") and new.vectors("CONTEXT"):
            ctx = {**old.vectors("CONTEXT")[0], **new.vectors("CONTEXT")[0]}
            new = Template([("CONTEXT", ctx)])
        _store_vm_template(conn, vm_id, merge(old, new), "context updated")
    return vm_id


def chown_vm(store: Store, vm_id: int, user_id: int, group_id: int) -> int:
    """``one.vm.chown``: a new owner (``-1`` keeps it); lxcloud has one group, id 0."""
    if group_id not in (-1, 0):
        raise NotFound(f"Error getting group [{group_id}].")
    with store.transaction() as conn:
        row = _vm_row(conn, store, vm_id)
        if user_id == -1 or user_id == row.owner_id:
            return vm_id
        if conn.execute(select(_U.c.id).where(_U.c.id == user_id)).first() is None:
            raise NotFound(f"Error getting user [{user_id}].")
        conn.execute(update(_V).where(_V.c.id == vm_id).values(owner_id=user_id))
        Store.record(conn, "vm", vm_id, None, None, f"owner {row.owner_id} -> {user_id}")
    return vm_id


def chmod_vm(store: Store, vm_id: int, bits: list[int]) -> int:
    """``one.vm.chmod``: nine bits (owner use/manage/admin, group ..., other ...), each 1, 0
    or -1 (keep)."""
    if len(bits) != 9 or any(b not in (-1, 0, 1) for b in bits):
        raise InvalidInput("chmod takes nine permission bits, each -1, 0 or 1")
    with store.transaction() as conn:
        _vm_row(conn, store, vm_id)
        mode = permissions(conn, [vm_id]).get(vm_id, DEFAULT_PERMISSIONS)
        for i, bit in enumerate(bits):
            mask = 1 << (8 - i)  # OWNER_U = 0o400 ... OTHER_A = 0o001
            if bit == 1:
                mode |= mask
            elif bit == 0:
                mode &= ~mask
        conn.execute(delete(_VP).where(_VP.c.vm_id == vm_id))
        if mode != DEFAULT_PERMISSIONS:
            conn.execute(insert(_VP).values(vm_id=vm_id, permissions=mode))
        Store.record(conn, "vm", vm_id, None, None, f"permissions {mode:03o}")
    return vm_id


def permissions(conn: Connection, vm_ids: Iterable[int]) -> dict[int, int]:
    """The VMs' permission bits that differ from the default."""
    ids = list(vm_ids)
    if not ids:
        return {}
    rows = conn.execute(select(_VP).where(_VP.c.vm_id.in_(ids)))
    return {int(r.vm_id): int(r.permissions) for r in rows}


# -- hosts --------------------------------------------------------------------------------------
def update_host(store: Store, host_id: int, text: str, kind: int) -> int:
    """``one.host.update``: replace (0) or merge into (1) the attributes operators set on the
    host (LABELS ...); what registrations and reports generate is refused."""
    merging = _update_type(kind)
    new = parse(text)
    _refuse_keys(new, HOST_GENERATED_KEYS, "one.host.update (the host reports it)")
    with store.transaction() as conn:
        if conn.execute(select(_H.c.id).where(_H.c.id == host_id)).first() is None:
            raise NotFound(f"Error getting host [{host_id}].")
        old = host_templates(conn, [host_id]).get(host_id, Template())
        tpl = merge(old, new) if merging else new
        conn.execute(delete(_HT).where(_HT.c.host_id == host_id))
        conn.execute(insert(_HT).values(host_id=host_id, template=tpl.to_text(), updated=now()))
        Store.record(
            conn, "host", host_id, None, None, "template " + ("merged" if merging else "replaced")
        )
    return host_id


def host_templates(conn: Connection, host_ids: Iterable[int]) -> dict[int, Template]:
    ids = list(host_ids)
    if not ids:
        return {}
    rows = conn.execute(select(_HT).where(_HT.c.host_id.in_(ids)))
    return {int(r.host_id): parse(r.template) for r in rows}
