"""The executor: turns the control plane's decisions into playbook runs on the hypervisors.

One pass (:meth:`Executor.reconcile_once`):

1. VMs in ACTIVE/SHUTDOWN (their own callback or an operator asked to terminate them):
   the collection's playbook ``lxcloud.cloud.vm_destroy`` once for all of them; each VM the
   run destroyed becomes DONE and its lease is free again; a VM the run could not destroy
   goes to ACTIVE/EPILOG_FAILURE with the error (``terminate`` again retries).
2. VMs in ACTIVE/PROLOG (the scheduler bound them to a lease and so to a host):
   ``lxcloud.cloud.vm_deploy`` once for the whole batch (the playbook groups the VMs by host,
   hosts run in parallel with many forks); per VM, the runner's events decide: ACTIVE/RUNNING,
   or ACTIVE/PROLOG_FAILURE (clone or context failed, host unreachable) or ACTIVE/BOOT_FAILURE
   (define/start failed), with the error in the history and in ``sched_message``.

Every VM gets a fresh callback token per deploy (:func:`lxcloud_py.vms.issue_token`); tokens
travel only in the job's private vars file (mode 0600, in a 0700 job directory) and are never
logged. Playbooks run through the one ansible-runner adapter, :mod:`lxcloud_py.runner`; the
per-VM outcome is read from its event stream.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from lxcloud_py import template, vms
from lxcloud_py.config import Config
from lxcloud_py.model import ImageState, InvalidInput, LCMState, VMState
from lxcloud_py.runner import PlaybookRunner, RunResult, playbook
from lxcloud_py.store import Store, schema

log = logging.getLogger("lxcloud.executor")

DISK_BACKENDS = ("qcow2", "reflink", "copy", "lvm")
RESULT_TASK = "VM result"
#: Deploy tasks whose failure means the disk was not prepared (else: the boot failed).
PROLOG_TASKS = ("Clone the golden image", "Write the context disk")
STEP_NAMES = {
    "Clone the golden image": "clone",
    "Write the context disk": "context",
    "Define and start the VM": "start",
    "Remove the domain with its clone and context": "remove domain",
    "Remove the clone": "remove clone",
    "Remove the context disk": "remove context",
    RESULT_TASK: "result",
}
#: Context keys lxcloud sets itself; a template's CONTEXT cannot override them.
MANAGED_CONTEXT = re.compile(r"\A(NAME|ETH\d+_\w+|LIFETIME|VMID|LXCLOUD_\w+)\Z")
CONTEXT_KEY = re.compile(r"\A[A-Z][A-Z0-9_]*\Z")
_BAD_VALUE = re.compile(r"['\n\r\x00]|\{\{|\{%|\{#")


@dataclass
class ExecutorConfig:
    """How the executor runs playbooks. Config file section ``executor`` (every key optional)::

        executor:
          inventory: /etc/lxcloud/hypervisors.ini
          api_url: http://10.0.0.1:2633/RPC2   # LXCLOUD_API as the guests reach it
          runtime_dir: /run/lxcloud/executor   # job dirs (0700) live here
          keep_artifacts: false                # true: keep every job's dir (failed: always)
          forks: 50
          timeout: 1800                        # seconds per playbook run (null: none)
          disk_backend: qcow2                  # null: the hosts' lxcloud_disk_backend
          vars: {lxcloud_virt_type: kvm}       # extra variables for every run
    """

    inventory: str | None = None
    api_url: str | None = None
    runtime_dir: str | None = None
    keep_artifacts: bool = False
    forks: int = 50
    timeout: int | None = None
    disk_backend: str | None = None
    vars: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config | None, **overrides: Any) -> ExecutorConfig:
        """The ``executor`` section of ``config``; ``overrides`` that are not None win."""
        data = dict(config.section("executor")) if config else {}
        where = f"{(config.path if config else None) or 'config'}: executor"
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(
                f"{where}: unknown key(s) {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(sorted(known))})"
            )
        data.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**data)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "executor") -> None:
        if self.disk_backend is not None and self.disk_backend not in DISK_BACKENDS:
            raise InvalidInput(
                f"{where}.disk_backend: {self.disk_backend!r} is not one of "
                f"{', '.join(DISK_BACKENDS)}"
            )
        if not isinstance(self.forks, int) or isinstance(self.forks, bool) or self.forks < 1:
            raise InvalidInput(f"{where}.forks: must be a positive integer: {self.forks!r}")
        if self.timeout is not None and (
            not isinstance(self.timeout, int) or isinstance(self.timeout, bool) or self.timeout < 1
        ):
            raise InvalidInput(f"{where}.timeout: must be a positive integer or null")
        if not isinstance(self.vars, dict) or not all(isinstance(k, str) for k in self.vars):
            raise InvalidInput(f"{where}.vars: must be a mapping of variable names")
        for own in ("lxcloud_vms", "lxcloud_vm_secrets"):
            if own in self.vars:
                raise InvalidInput(f"{where}.vars: {own} is the executor's own variable")
        if self.api_url is not None and not re.match(r"\Ahttps?://[^\s'\"]+\Z", self.api_url):
            raise InvalidInput(f"{where}.api_url: not an http(s) URL: {self.api_url!r}")


# -- the executor ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    vm_id: int
    name: str
    host: str
    action: str  # deploy | destroy
    result: str  # RUNNING, PROLOG_FAILURE, BOOT_FAILURE, DONE, EPILOG_FAILURE, unchanged
    seconds: float
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.result in ("RUNNING", "DONE")


@dataclass
class _Job:
    vm_id: int
    name: str  # VM name in the control plane
    domain: str  # one-<id>: the domain, clone and context file names on the host
    host: str
    item: dict[str, Any] | None  # the lxcloud_vms entry; None when it failed before the run
    error: str = ""
    failed_task: str = ""
    result: bool | None = None
    seconds: float = 0.0
    token: str = ""


class Executor:
    """Deploys and destroys VMs with the playbooks; see the module docstring."""

    def __init__(
        self,
        store: Store,
        config: ExecutorConfig,
        progress: Callable[[str], None] | None = None,
        runner: PlaybookRunner | None = None,
    ) -> None:
        config.validate()
        self.store = store
        self.config = config
        self.progress = progress or (lambda line: None)
        if runner is None:
            if not config.inventory:
                raise InvalidInput("no inventory: --inventory or executor.inventory")
            runner = PlaybookRunner(
                config.inventory,
                config.runtime_dir,
                forks=config.forks,
                timeout=config.timeout,
                keep_artifacts=config.keep_artifacts,
            )
        self.runner = runner

    # -- public ---------------------------------------------------------------------------------
    def reconcile_once(self) -> list[Outcome]:
        """Destroy what is in SHUTDOWN, then deploy what is in PROLOG."""
        out = self.destroy(self._ids(LCMState.SHUTDOWN))
        out += self.deploy(self._ids(LCMState.PROLOG))
        return out

    def deploy(self, vm_ids: Iterable[int]) -> list[Outcome]:
        """Deploy the given VMs that are in ACTIVE/PROLOG (others are left alone)."""
        jobs = self._deploy_jobs(list(vm_ids))
        if not jobs:
            return []
        runnable = [j for j in jobs if j.item is not None]
        if runnable:
            if not self.config.api_url:
                raise InvalidInput("no API URL for the guests: --api-url or executor.api_url")
            for j in runnable:
                j.token = vms.issue_token(self.store, j.vm_id)
            self.progress(
                f"deploy: {len(runnable)} VM(s) on {len({j.host for j in runnable})} host(s) "
                "with lxcloud.cloud.vm_deploy"
            )
            run = self._run("vm_deploy", runnable)
        else:
            run = None
        outcomes = []
        for j in jobs:
            if j.item is None:
                name, msg = "prolog_failure", j.error
            elif j.result:
                name, msg = "deployed", f"RUNNING: deployed on host {j.host} as {j.domain}"
            elif j.result is None and run is not None and run.status == "canceled":
                outcomes.append(self._outcome(j, "deploy", "unchanged", "run canceled"))
                continue
            else:
                msg = self._scrub(j.error or self._no_result(j, run), jobs)
                name = "boot_failure" if j.failed_task == "Define and start the VM" else (
                    "prolog_failure"
                )
            applied = vms.executor_transition(self.store, j.vm_id, name, msg)
            result = vms.EXECUTOR_TRANSITIONS[name][1][1].name if applied else "unchanged"
            if not applied:
                msg = "state changed while deploying (terminated?); left for the next pass"
            outcomes.append(self._outcome(j, "deploy", result, "" if name == "deployed" else msg))
        return outcomes

    def destroy(self, vm_ids: Iterable[int]) -> list[Outcome]:
        """Destroy the given VMs that are in ACTIVE/SHUTDOWN; they become DONE, leases free."""
        ids = list(vm_ids)
        if not ids:
            return []
        with self.store.transaction() as conn:
            rows = [
                r
                for r in vms.list_vms(conn, ids=ids, state=int(VMState.ACTIVE))
                if r["lcm_state"] == LCMState.SHUTDOWN
            ]
        jobs = []
        for r in rows:
            host = (r["host"] or {}).get("name", "")
            item: dict[str, Any] = {"name": _domain(r["id"]), "host": host}
            if self.config.disk_backend:
                item["disk"] = self.config.disk_backend
            jobs.append(_Job(r["id"], r["name"], item["name"], host, item if host else None))
        runnable = [j for j in jobs if j.item is not None]
        run = None
        if runnable:
            self.progress(
                f"destroy: {len(runnable)} VM(s) on {len({j.host for j in runnable})} host(s) "
                "with lxcloud.cloud.vm_destroy"
            )
            run = self._run("vm_destroy", runnable)
        outcomes = []
        for j in jobs:
            if j.item is None:  # never placed on a host: nothing to remove there
                name, msg = "destroyed", "DONE: no host to clean up"
            elif j.result:
                name, msg = "destroyed", f"DONE: domain, clone and context removed on {j.host}"
            elif j.result is None and run is not None and run.status == "canceled":
                outcomes.append(self._outcome(j, "destroy", "unchanged", "run canceled"))
                continue
            else:
                name, msg = "epilog_failure", j.error or self._no_result(j, run)
            applied = vms.executor_transition(self.store, j.vm_id, name, msg)
            result = vms.EXECUTOR_TRANSITIONS[name][1][1].name if applied else "unchanged"
            if name == "destroyed" and applied:
                result = "DONE"
            outcomes.append(self._outcome(j, "destroy", result, "" if name == "destroyed" else msg))
        return outcomes

    # -- building the batch ---------------------------------------------------------------------
    def _ids(self, lcm: LCMState) -> list[int]:
        v = schema.vms
        with self.store.transaction() as conn:
            return [
                int(i)
                for i in conn.execute(
                    select(v.c.id)
                    .where(v.c.state == int(VMState.ACTIVE), v.c.lcm_state == int(lcm))
                    .order_by(v.c.id)
                ).scalars()
            ]

    def _deploy_jobs(self, ids: list[int]) -> list[_Job]:
        if not ids:
            return []
        with self.store.transaction() as conn:
            rows = [
                r
                for r in vms.list_vms(conn, ids=ids, state=int(VMState.ACTIVE))
                if r["lcm_state"] == LCMState.PROLOG
            ]
            verified = self._verified_images(conn, {r["host_id"] for r in rows})
        jobs = []
        for r in sorted(rows, key=lambda r: ((r["host"] or {}).get("name", ""), r["id"])):
            host = (r["host"] or {}).get("name", "")
            job = _Job(r["id"], r["name"], _domain(r["id"]), host, None)
            try:
                job.item = self._item(r, host, verified.get(r["host_id"], {}))
            except InvalidInput as exc:
                job.error = str(exc)
            jobs.append(job)
        return jobs

    @staticmethod
    def _verified_images(conn: Any, host_ids: set[Any]) -> dict[int, dict[int, dict[str, Any]]]:
        """host id -> image id -> image row, for the images each host verified."""
        hi, im = schema.host_images, schema.images
        out: dict[int, dict[int, dict[str, Any]]] = {}
        if not host_ids:
            return out
        stmt = (
            select(hi.c.host_id, im)
            .join(im, im.c.id == hi.c.image_id)
            .where(hi.c.host_id.in_([h for h in host_ids if h is not None]))
            .where(hi.c.state == ImageState.VERIFIED)
            .order_by(im.c.created, im.c.id)
        )
        for row in conn.execute(stmt):
            m = dict(row._mapping)
            if m["sha256"] is not None:
                out.setdefault(int(m["host_id"]), {})[int(m["id"])] = m
        return out

    def _item(self, r: dict[str, Any], host: str, staged: dict[int, dict[str, Any]]) -> dict:
        if not host:
            raise InvalidInput("the VM has no host")
        lease = r["lease"]
        if not lease:
            raise InvalidInput("the VM holds no lease")
        if lease["host"] != host:
            raise InvalidInput(f"its lease {lease['ip']} is pinned to {lease['host']}, not {host}")
        if not r["image_name"]:
            raise InvalidInput("the VM names no image (DISK = [ IMAGE = ... ])")
        if r["image_id"] is not None:
            image = staged.get(int(r["image_id"]))
        else:  # placed without ImageFilter: the newest verified version of that name
            same = [i for i in staged.values() if i["name"] == r["image_name"]]
            image = same[-1] if same else None
        if image is None:
            raise InvalidInput(
                f"image {r['image_name']} is not verified on host {host} (stage it first)"
            )
        backend = self.config.disk_backend
        base = f"{image['name']}-{image['version']}"
        item: dict[str, Any] = {
            "name": _domain(r["id"]),
            "host": host,
            # the image module installs NAME-VERSION.FORMAT (or the LV NAME-VERSION)
            "image": base if backend == "lvm" else f"{base}.{image['format']}",
            "image_format": image["format"],
            "lease": {"ip": lease["ip"], "mac": lease["mac"], "name": lease["name"]},
            "vcpus": int(r["vcpu"]),
            "memory_mb": int(r["memory_mb"]),
            "lifetime": int(r["lifetime"] or 0),
            "context": {
                **self._user_context(r["template"]),
                "LXCLOUD_API": self.config.api_url or "",
                "VMID": str(r["id"]),
            },
        }
        if backend:
            item["disk"] = backend
        return item

    @staticmethod
    def _user_context(text: str) -> dict[str, str]:
        """The template's CONTEXT variables, checked as the context file needs them; keys lxcloud
        manages (NAME, ETH*_*, LIFETIME, VMID, LXCLOUD_*) are not taken from the template."""
        out: dict[str, str] = {}
        for vec in template.parse(text).vectors("CONTEXT"):
            for key, value in vec.items():
                if not CONTEXT_KEY.match(key):
                    raise InvalidInput(f"CONTEXT key {key!r} is not [A-Z][A-Z0-9_]*")
                if MANAGED_CONTEXT.match(key):
                    continue
                if _BAD_VALUE.search(value):
                    raise InvalidInput(
                        f"CONTEXT {key}: the value has a quote, newline, NUL or template "
                        "delimiter"
                    )
                out[key] = value
        return out

    # -- running --------------------------------------------------------------------------------
    def _run(self, name: str, jobs: list[_Job]) -> RunResult:
        by_domain = {j.domain: j for j in jobs}
        unreachable: dict[str, str] = {}
        t0 = time.monotonic()

        def on_event(ev: dict[str, Any]) -> None:
            kind = ev.get("event", "")
            data = ev.get("event_data") or {}
            host, task = data.get("host", ""), data.get("task", "")
            res = data.get("res") or {}
            elapsed = time.monotonic() - t0
            if kind in ("runner_item_on_ok", "runner_item_on_failed"):
                label = str(res.get("_ansible_item_label", ""))
                job = by_domain.get(label)
                if job is None or job.host != host:
                    return
                failed = kind == "runner_item_on_failed"
                if failed and task != RESULT_TASK and not job.failed_task:
                    job.failed_task = task
                step = STEP_NAMES.get(task, task)
                if task == RESULT_TASK:
                    job.result = not failed
                    job.seconds = elapsed
                    if failed:
                        msg = str(res.get("msg") or "failed")
                        prefix = f"{job.domain} failed: "
                        job.error = msg[len(prefix):] if msg.startswith(prefix) else msg
                        job.error = job.error.strip()
                    self.progress(
                        f"  {elapsed:6.1f}s {host} {job.domain} ({job.name}): "
                        + ("FAILED: " + self._scrub(job.error, jobs) if failed else "ok")
                    )
                else:
                    verdict = "failed" if failed else (
                        "changed" if res.get("changed") else "ok"
                    )
                    self.progress(f"  {elapsed:6.1f}s {host} {job.domain} {step}: {verdict}")
            elif kind == "runner_on_unreachable":
                msg = str(res.get("msg") or "unreachable").strip()
                unreachable[host] = msg
                self.progress(f"  {elapsed:6.1f}s {host} UNREACHABLE: {msg[:200]}")
                for job in jobs:
                    if job.host == host and job.result is None:
                        job.result = False
                        job.error = f"host {host} unreachable: {msg}"
                        job.seconds = elapsed
            elif kind == "runner_on_failed" and not res.get("results"):
                # a task failed for the whole host (not per VM item)
                for job in jobs:
                    if job.host == host and job.result is None and not job.error:
                        job.error = f"{task}: {res.get('msg', 'failed')}"
                        job.failed_task = job.failed_task or task

        items = [j.item for j in jobs if j.item is not None]
        # Callback tokens travel apart from the VM entries (lxcloud_vm_secrets, by VM name):
        # Ansible prints a failed loop item whole, and the items must not carry secrets.
        secrets = {j.domain: {"LXCLOUD_TOKEN": j.token} for j in jobs if j.item and j.token}
        result = self.runner.run(
            playbook(name),
            dict(self.config.vars),
            {"lxcloud_vms": items, "lxcloud_vm_secrets": secrets},
            on_event,
            limit={j.host for j in jobs},
        )
        for j in jobs:
            if j.result is None:
                j.seconds = result.seconds
        self.progress(f"{name}: {result.status} in {result.seconds:.1f} s")
        if result.artifacts:
            self.progress(f"  artifacts kept in {result.artifacts}")
        return result

    @staticmethod
    def _no_result(job: _Job, run: RunResult | None) -> str:
        if run is None:
            return "not run"
        if run.status == "timeout":
            return "the playbook run timed out"
        last = [ln.strip() for ln in run.stdout_tail.splitlines() if ln.strip()][-2:]
        return (
            f"no result from host {job.host} (not in the inventory?); "
            f"playbook {run.status}, rc {run.rc}" + (f": {' '.join(last)[:300]}" if last else "")
        )

    @staticmethod
    def _scrub(text: str, jobs: Iterable[_Job]) -> str:
        for j in jobs:
            if j.token:
                text = text.replace(j.token, "***")
        return text

    @staticmethod
    def _outcome(job: _Job, action: str, result: str, message: str) -> Outcome:
        return Outcome(job.vm_id, job.name, job.host or "-", action, result, job.seconds, message)


def _domain(vm_id: int) -> str:
    """The VM's name on its host (domain, clone and context files), as OpenNebula names it."""
    return f"one-{int(vm_id)}"
