"""The namespaces added so that OpenNebula's own clients (community.general's one_* modules
and inventory, pyone) work against lxcloud; registered by the dispatcher after
:data:`lxcloud_py.api.namespaces.NAMESPACES`."""

from __future__ import annotations

from .namespaces import Namespace
from .one_clusters import ClusterNamespace, ClusterPoolNamespace, HostUpdateNamespace
from .one_templates import TemplateNamespace, TemplatePoolNamespace
from .one_views import (
    DatastoreNamespace,
    DatastorePoolNamespace,
    ImageNamespace,
    ImagePoolNamespace,
    VnNamespace,
    VnPoolNamespace,
)
from .one_vms import VmPoolExtendedNamespace, VmUpdateNamespace

ONE_NAMESPACES: tuple[type[Namespace], ...] = (
    TemplateNamespace,
    TemplatePoolNamespace,
    ClusterNamespace,
    ClusterPoolNamespace,
    HostUpdateNamespace,
    VmUpdateNamespace,
    VmPoolExtendedNamespace,
    ImageNamespace,
    ImagePoolNamespace,
    VnNamespace,
    VnPoolNamespace,
    DatastoreNamespace,
    DatastorePoolNamespace,
)
