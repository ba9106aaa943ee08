"""The one ansible-runner adapter: every playbook the control plane runs goes through here.

One :class:`PlaybookRunner` job is one ``ansible-playbook`` run of a playbook of the collection
(by FQCN, ``lxcloud.cloud.vm_deploy``: the collection is found where Ansible finds collections,
the installed wheel or ``ansible-galaxy collection install``, never through this checkout), in a
private job directory:

- the job directory is created 0700 under an owner-only runtime dir; the variables travel in a
  0600 vars file (``unsafe_variables`` are written ``!unsafe``: Ansible passes them on without
  templating, so a VM name or context value can never run a lookup);
- ansible-runner's ``run_async`` with an ``event_handler`` that only enqueues and returns False
  (no event, which can carry VM data, is written to disk), a ``status_handler`` and a
  ``finished_callback``; events are handed to ``on_event`` in the caller's thread, in order;
- per-host results come from the event stream (``playbook_on_stats``), never from stdout text;
- a timeout per job; :meth:`PlaybookRunner.cancel` stops a running job;
- afterwards the vars file is always deleted; the rest of the job directory (stdout, rc, status)
  is kept for failed jobs only (the newest ``keep_failed`` of them), or for every job with
  ``keep_artifacts``.

Ansible settings: when ``ANSIBLE_CONFIG`` is set in the environment, that file rules; otherwise
the runner sets lxcloud's defaults (:data:`ANSIBLE_DEFAULTS`) through the environment, so no
``ansible.cfg`` is needed anywhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lxcloud_py.model import InvalidInput

log = logging.getLogger("lxcloud.runner")

COLLECTION = "lxcloud.cloud"
_FQCN = re.compile(r"\A[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*\Z")

#: lxcloud's Ansible defaults, as environment variables (used when ANSIBLE_CONFIG is not set).
ANSIBLE_DEFAULTS: dict[str, str] = {
    "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
    "ANSIBLE_HOST_KEY_CHECKING": "False",
    "ANSIBLE_PIPELINING": "True",
    "ANSIBLE_SSH_ARGS": (
        "-o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=/dev/null "
        "-o StrictHostKeyChecking=no"
    ),
    "ANSIBLE_CALLBACK_RESULT_FORMAT": "yaml",
    # never the `script` plugin (it runs executables it finds with --list)
    "ANSIBLE_INVENTORY_ENABLED": "ini,yaml,host_list,auto,constructed",
}
#: Always set: no colour codes in the output, no retry files next to the playbooks.
ANSIBLE_ALWAYS: dict[str, str] = {
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_FORCE_COLOR": "0",
    "ANSIBLE_RETRY_FILES_ENABLED": "0",
}


def playbook(name: str) -> str:
    """The FQCN of the collection's playbook ``name`` (``vm_deploy`` -> lxcloud.cloud.vm_deploy)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise InvalidInput(f"not a playbook name of the collection: {name!r}")
    return f"{COLLECTION}.{name}"


def default_runtime_dir() -> Path:
    base = os.environ.get("LXCLOUD_RUNTIME_DIR")
    if base:
        return Path(base)
    return Path(tempfile.gettempdir()) / f"lxcloud-runner-{os.getuid()}"


@dataclass
class HostStats:
    """One host's line of the play recap, from the ``playbook_on_stats`` event."""

    ok: int = 0
    changed: int = 0
    failures: int = 0
    unreachable: int = 0
    skipped: int = 0

    @property
    def failed(self) -> bool:
        return bool(self.failures or self.unreachable)


@dataclass
class RunResult:
    status: str  # successful | failed | timeout | canceled | error
    rc: int | None
    seconds: float
    stdout_tail: str = ""
    artifacts: str | None = None  # the kept job directory (no vars file in it)
    hosts: dict[str, HostStats] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "successful"


class _Unsafe(str):
    """A string Ansible must never template (written as ``!unsafe``)."""


class _VarsDumper(yaml.SafeDumper):
    pass


_VarsDumper.add_representer(
    _Unsafe, lambda d, s: d.represent_scalar("!unsafe", str(s), style="'")
)


def _unsafe(value: Any) -> Any:
    if isinstance(value, str):
        return _Unsafe(value)
    if isinstance(value, dict):
        return {k: _unsafe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_unsafe(v) for v in value]
    return value


def _host_stats(event_data: dict[str, Any]) -> dict[str, HostStats]:
    out: dict[str, HostStats] = {}
    for key, attr in (("ok", "ok"), ("changed", "changed"), ("failures", "failures"),
                      ("dark", "unreachable"), ("skipped", "skipped")):
        for host, count in (event_data.get(key) or {}).items():
            setattr(out.setdefault(str(host), HostStats()), attr, int(count))
    for host in event_data.get("processed") or {}:
        out.setdefault(str(host), HostStats())
    return out


class PlaybookRunner:
    """Runs one playbook per job with ansible-runner in a private job directory."""

    def __init__(
        self,
        inventory: str,
        runtime_dir: str | os.PathLike[str] | None = None,
        *,
        forks: int = 50,
        timeout: int | None = None,
        keep_artifacts: bool = False,
        keep_failed: int = 20,
    ) -> None:
        self.inventory = str(Path(inventory).absolute())
        if not Path(self.inventory).exists():
            raise InvalidInput(f"inventory {inventory!r} does not exist")
        if Path(self.inventory).is_dir() and (Path(self.inventory) / ".git").exists():
            # a repository as a directory inventory: Ansible's script plugin would run every
            # executable in it with --list
            raise InvalidInput(f"inventory {inventory!r} is a source tree, not an inventory")
        self.runtime_dir = Path(runtime_dir) if runtime_dir else default_runtime_dir()
        self.forks = forks
        self.timeout = timeout
        self.keep_artifacts = keep_artifacts
        self.keep_failed = keep_failed
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Ask a running job to stop (safe from a signal handler)."""
        self._cancel.set()

    def _job_dir(self) -> Path:
        self.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = self.runtime_dir.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise InvalidInput(
                f"runtime dir {self.runtime_dir} must be owned by uid {os.getuid()} and "
                f"not accessible to others (mode {st.st_mode & 0o777:o})"
            )
        return Path(tempfile.mkdtemp(prefix="job-", dir=self.runtime_dir))  # mode 0700

    @staticmethod
    def env() -> dict[str, str]:
        """The environment of ansible-playbook: this Python's bin dir first on PATH (the
        ansible-playbook of the control plane's own venv), lxcloud's settings."""
        bindir = str(Path(sys.executable).parent)
        out = {"PATH": bindir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")}
        if os.environ.get("ANSIBLE_CONFIG"):
            out["ANSIBLE_CONFIG"] = os.environ["ANSIBLE_CONFIG"]
        else:
            out.update(ANSIBLE_DEFAULTS)
        out.update(ANSIBLE_ALWAYS)
        return out

    def run(
        self,
        playbook: str,
        variables: dict[str, Any],
        unsafe_variables: dict[str, Any] | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        limit: Iterable[str] | None = None,
        tags: Iterable[str] | None = None,
    ) -> RunResult:
        """Run ``playbook`` (an FQCN such as ``lxcloud.cloud.vm_deploy``, or the absolute path of
        a playbook file) with the variables; every runner event goes to ``on_event`` in this
        thread, in order."""
        import ansible_runner  # heavy: imported when a job runs

        if not (_FQCN.match(playbook) or os.path.isabs(playbook)):
            raise InvalidInput(f"playbook {playbook!r}: give an FQCN or an absolute path")
        self._cancel.clear()
        job = self._job_dir()
        t0 = time.monotonic()
        keep = self.keep_artifacts
        vars_file = job / "vars.yml"
        try:
            fd = os.open(vars_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                yaml.dump(
                    {**variables, **_unsafe(unsafe_variables or {})},
                    fh,
                    Dumper=_VarsDumper,
                    default_flow_style=False,
                    sort_keys=False,
                )
            events: queue.Queue[dict[str, Any]] = queue.Queue()
            done = threading.Event()
            statuses: list[str] = []
            hosts: dict[str, HostStats] = {}

            def event_handler(event: dict[str, Any]) -> bool:
                events.put(event)
                return False  # keep VM data (context, tokens) out of job_events/

            def status_handler(data: dict[str, Any], runner_config: Any = None) -> None:
                statuses.append(str(data.get("status")))

            def finished_callback(runner: Any) -> None:
                done.set()

            def consume(ev: dict[str, Any]) -> None:
                if ev.get("event") == "playbook_on_stats":
                    hosts.update(_host_stats(ev.get("event_data") or {}))
                if on_event is not None:
                    on_event(ev)

            kwargs: dict[str, Any] = {}
            if limit is not None:
                kwargs["limit"] = ",".join(sorted(set(limit)))
            if tags is not None:
                kwargs["tags"] = ",".join(tags)
            project = job / "project"
            project.mkdir(mode=0o700)  # the cwd of ansible-playbook: empty, ours
            thread, runner = ansible_runner.run_async(
                private_data_dir=str(job),
                project_dir=str(project),
                playbook=playbook,
                inventory=self.inventory,
                cmdline=f"-e @{vars_file}",
                forks=self.forks,
                timeout=self.timeout,
                envvars=self.env(),
                quiet=True,
                suppress_env_files=True,
                event_handler=event_handler,
                status_handler=status_handler,
                finished_callback=finished_callback,
                cancel_callback=self._cancel.is_set,
                **kwargs,
            )
            try:
                while True:
                    try:
                        consume(events.get(timeout=0.2))
                        continue
                    except queue.Empty:
                        pass
                    if done.is_set() or not thread.is_alive():
                        thread.join()
                        while not events.empty():
                            consume(events.get_nowait())
                        break
            except BaseException:
                self._cancel.set()  # the caller's handler failed: stop the job, then clean up
                thread.join()
                raise
            status = str(getattr(runner, "status", None) or (statuses[-1] if statuses else "error"))
            rc = getattr(runner, "rc", None)
            tail = ""
            with contextlib.suppress(OSError):
                tail = (job / "artifacts").joinpath(
                    str(getattr(runner.config, "ident", "")), "stdout"
                ).read_text(errors="replace")[-4000:]
            keep = keep or (status != "successful" and self.keep_failed > 0)
            seconds = time.monotonic() - t0
            log.info("%s: %s (rc %s) in %.1f s", playbook, status, rc, seconds)
            vars_file.unlink(missing_ok=True)
            kept = self._keep(job) if keep else None
            return RunResult(status, rc, seconds, tail, str(kept) if kept else None, hosts)
        finally:
            vars_file.unlink(missing_ok=True)  # secrets never outlive the job
            if not keep:
                shutil.rmtree(job, ignore_errors=True)

    def _keep(self, job: Path) -> Path:
        """Keep ``job`` as ``failed-*`` (or ``kept-*`` with keep_artifacts) and prune the
        oldest failed ones beyond ``keep_failed``; running jobs (``job-*``) are never touched."""
        prefix = "kept-" if self.keep_artifacts else "failed-"
        target = job.with_name(prefix + job.name)
        job.rename(target)
        if not self.keep_artifacts:
            failed = sorted(self.runtime_dir.glob("failed-job-*"), key=lambda p: p.stat().st_mtime)
            for old in failed[: max(0, len(failed) - self.keep_failed)]:
                shutil.rmtree(old, ignore_errors=True)
        return target
