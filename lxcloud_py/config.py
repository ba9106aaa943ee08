"""Control-plane configuration: one YAML file, every key optional, defaults below.

The file comes from ``--config FILE`` or ``$LXCLOUD_CONFIG``; without either, the defaults
apply. Sections lxcloud knows are validated (a typo is an error naming the key, not a silently
ignored setting); other top-level sections are kept as plain mappings for the parts of the
control plane that read them (:meth:`Config.section`). The ``scheduler`` section is parsed and
checked by the scheduler itself (:func:`lxcloud_py.scheduler.settings_from`): this module
depends on the scheduler, never the other way round.

Example::

    scheduler:
      filters: [HostStateFilter, ImageFilter, LeaseFilter, CpuFilter, MemoryFilter,
                DispatchLimitFilter]
      weighers: [CapacityWeigher, FreeLeasesWeigher]
      weigher_multipliers: {CapacityWeigher: 1.0, FreeLeasesWeigher: 0.1}
      strategy: packing          # packing: fill the fullest host first; striping: spread
      dispatch_limit: 4          # VMs in PROLOG/BOOT per host at once; null = unlimited
      cpu_allocation_ratio: 1.0
      memory_allocation_ratio: 1.0
      max_placements_per_cycle: null
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from lxcloud_py.model import InvalidInput
from lxcloud_py.scheduler import SchedulerConfig, settings_from


@dataclass
class Config:
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    path: str | None = None
    other: dict[str, Any] = field(default_factory=dict)
    #: The file as read (section -> mapping): where a setting came from (:func:`effective`).
    data: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        """A top-level section this module does not model, as a mapping ({} when absent)."""
        value = self.other.get(name) or {}
        if not isinstance(value, dict):
            raise InvalidInput(f"{self.path or 'config'}: section {name!r} must be a mapping")
        return value


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the YAML config at ``path`` (else ``$LXCLOUD_CONFIG``; else defaults only)."""
    path = path or os.environ.get("LXCLOUD_CONFIG") or None
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read config {str(p)!r}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{p}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidInput(f"{p}: the config must be a mapping of sections")
    other = {k: v for k, v in data.items() if k != "scheduler"}
    return Config(
        scheduler=settings_from(data.get("scheduler"), f"{p}: scheduler"),
        path=str(p),
        other=other,
        data=data,
    )


# -- settings with one precedence: flag > environment > config file > default ----------------------
#
# The daemon's settings (and the executor's and scheduler's that an operator tunes most) are
# declared once below. Each has a key in the config file (``section.name``), a command-line flag
# and an environment variable named after the flag (``--sched-interval`` ->
# ``LXCLOUD_SCHED_INTERVAL``); OpenNebula's sched.conf names are noted where one maps here.
# :func:`effective` resolves them and remembers where each value came from, for
# ``lxcloud config show``.


def _positive_number(value: Any) -> float:
    if isinstance(value, str):
        value = float(value)
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError("must be a positive number")
    return float(value)


def _positive_int(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError("must be a positive integer")
    return value


def _positive_int_or_null(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        return None
    return _positive_int(value)


def _text_or_null(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _name_list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of names (comma-separated on a flag or in the env)")
    return list(value)


def _bool(value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _poweroff_policy(value: Any) -> str:
    if value not in ("end", "restart", "keep"):
        raise ValueError("must be end, restart or keep")
    return str(value)


def _log_format(value: Any) -> str:
    if value not in ("text", "json"):
        raise ValueError("must be text or json")
    return str(value)


def _lazy(module: str, name: str) -> Any:
    """A default read from another module when needed (no import cycle at import time)."""

    def get() -> Any:
        return getattr(__import__(module, fromlist=[name]), name)

    return get


@dataclass(frozen=True)
class Setting:
    key: str  # section.name in the config file
    flag: str  # the command-line option; the environment variable is derived from it
    parse: Any  # value (file, flag text or env text) -> checked value; raises ValueError
    default: Any  # a value, or a zero-argument callable giving it
    help: str
    onename: str | None = None  # OpenNebula's sched.conf name, where one maps here

    @property
    def env(self) -> str:
        return "LXCLOUD_" + self.flag.lstrip("-").upper().replace("-", "_")

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default


SETTINGS: tuple[Setting, ...] = (
    Setting("daemon.stages", "--stages", _name_list,
            ["api", "monitor", "scheduler", "executor", "pools"],
            "stages this process runs (others may run elsewhere on the same DB)"),
    Setting("daemon.sched_interval", "--sched-interval", _positive_number, 5.0,
            "seconds between placement cycles", "SCHED_INTERVAL"),
    Setting("daemon.executor_interval", "--executor-interval", _positive_number, 5.0,
            "seconds between executor passes (deploy PROLOG, destroy SHUTDOWN)"),
    Setting("daemon.pools_interval", "--pools-interval", _positive_number, 10.0,
            "seconds between pool manager cycles (refill, drain, backoff)"),
    Setting("daemon.reconcile_interval", "--reconcile-interval", _positive_number, 60.0,
            "seconds between reconciler cycles (observe the hosts, repair)", "RECONCILE_INTERVAL"),
    Setting("daemon.pools_file", "--pools-file", _text_or_null, None,
            "pools YAML (as `lxcloud pool apply` reads) applied at start and on SIGHUP"),
    Setting("daemon.pools_prune", "--pools-prune", _bool, False,
            "with pools_file: pools the file does not declare drain and go (apply --prune)"),
    Setting("daemon.shutdown_timeout", "--shutdown-timeout", _positive_number, 300.0,
            "on SIGTERM, seconds to let jobs in flight finish before cancelling them"),
    Setting("daemon.decisions_kept", "--decisions-kept", _positive_int, 10000,
            "decisions kept in the database for `lxcloud status` (older ones are pruned)"),
    Setting("daemon.log_format", "--log-format", _log_format, "text",
            "text, or json (one object per line)"),
    Setting("api.listen", "--listen", str, "127.0.0.1:2633", "the API's HOST:PORT"),
    Setting("api.max_request_bytes", "--max-request-bytes", _positive_int,
            _lazy("lxcloud_py.api.server", "DEFAULT_MAX_REQUEST_BYTES"), "largest request body"),
    Setting("api.max_threads", "--max-threads", _positive_int,
            _lazy("lxcloud_py.api.server", "DEFAULT_MAX_THREADS"),
            "requests handled at once (each holds a DB connection)"),
    Setting("api.request_deadline", "--request-deadline", _positive_number, 10.0,
            "seconds a request's head and body may take from its first byte (else 408)"),
    Setting("api.idle_timeout", "--idle-timeout", _positive_number, 15.0,
            "seconds an idle keep-alive connection is kept"),
    Setting("api.max_connections", "--max-connections", _positive_int, 4096,
            "open connections in all (more: 503)"),
    Setting("api.max_per_address", "--max-per-address", _positive_int, 256,
            "open connections from one client address (more: 503)"),
    Setting("limits.max_cpu", "--max-vm-cpu", _positive_number, 1024.0,
            "largest CPU a template may ask for (checked at allocate)"),
    Setting("limits.max_vcpu", "--max-vm-vcpu", _positive_int, 1024,
            "largest VCPU a template may ask for"),
    Setting("limits.max_memory_mb", "--max-vm-memory", _positive_int, 4 * 1024 * 1024,
            "largest MEMORY (MB) a template may ask for"),
    Setting("limits.max_attributes", "--max-template-attributes", _positive_int, 1000,
            "attributes (vector entries included) a template may have"),
    Setting("limits.max_value_chars", "--max-template-value", _positive_int, 64 * 1024,
            "characters one template value may have"),
    Setting("api.monitor_interval", "--monitor-interval", _positive_number, 60.0,
            "seconds between host heartbeats (and between monitor cycles)"),
    Setting("api.missed_intervals", "--missed-intervals", _positive_int, 3,
            "missed heartbeats before a host goes to ERROR"),
    Setting("scheduler.max_placements_per_cycle", "--max-dispatch", _positive_int_or_null, None,
            "VMs placed per scheduling cycle (null: no limit)", "MAX_DISPATCH"),
    Setting("scheduler.dispatch_limit", "--max-host", _positive_int_or_null, 4,
            "VMs being dispatched (PROLOG/BOOT) per host at once (null: no limit)", "MAX_HOST"),
    Setting("executor.inventory", "--inventory", _text_or_null, None,
            "Ansible inventory of the hypervisors"),
    Setting("executor.api_url", "--api-url", _text_or_null, None,
            "the API URL as the guests reach it"),
    Setting("executor.runtime_dir", "--runtime-dir", _text_or_null, None,
            "where executor job directories are made (mode 0700)"),
    Setting("executor.forks", "--forks", _positive_int, 50, "Ansible forks"),
    Setting("executor.timeout", "--playbook-timeout", _positive_int_or_null, None,
            "seconds per playbook run (null: none)"),
    Setting("executor.disk_backend", "--disk-backend", _text_or_null, None,
            "clone backend for VM disks (null: the hosts' own)"),
    Setting("reconcile.grace", "--reconcile-grace", _positive_number, 300.0,
            "seconds a VM whose domain vanished stays UNKNOWN before FAILED (DONE if its "
            "lifetime was over)"),
    Setting("reconcile.orphan_grace", "--orphan-grace", _positive_number, 600.0,
            "age in seconds of a clone/context file without a live VM before it is removed"),
    Setting("reconcile.deploy_timeout", "--deploy-timeout", _positive_number, 900.0,
            "seconds a VM may stay in PROLOG/BOOT before its deploy is retried"),
    Setting("reconcile.deploy_retries", "--deploy-retries", _positive_int, 2,
            "deploy retries before a VM stuck or failed in PROLOG/BOOT is FAILED"),
    Setting("reconcile.lifetime_grace", "--lifetime-grace", _positive_number, 600.0,
            "seconds past its LIFETIME after which a VM that did not end itself is terminated"),
    Setting("reconcile.destroy_strays", "--destroy-strays", _bool, False,
            "destroy domains named like lxcloud's (one-ID) that no live VM owns (else: report)"),
    Setting("reconcile.poweroff_policy", "--poweroff-policy", _poweroff_policy, "end",
            "a pool VM whose domain shut off by itself: end (terminate), restart or keep"),
    Setting("reconcile.probe_timeout", "--probe-timeout", _positive_int, 120,
            "seconds for one observation or repair run over all hosts (per-host tasks: half)"),
)  # fmt: skip
SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}
#: Sections whose every key is declared above: any other key in the file is an error.
OWNED_SECTIONS = ("daemon", "api", "reconcile", "limits")


@dataclass
class Settings:
    """Resolved settings: ``values[key]`` and ``sources[key]`` ("flag --x", "env LXCLOUD_X",
    "file PATH", "default") for every declared key, over the loaded :class:`Config`."""

    config: Config
    values: dict[str, Any]
    sources: dict[str, str]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def section(self, name: str) -> dict[str, Any]:
        """The declared keys of one section: name -> value."""
        return {s.name: self.values[s.key] for s in SETTINGS if s.section == name}

    def scheduler(self) -> SchedulerConfig:
        """The file's scheduler section with the declared keys resolved over it."""
        # The declared keys are checked by their parsers, the rest came checked from the file.
        return replace(self.config.scheduler, **self.section("scheduler"))

    def source_of(self, section: str, name: str) -> str:
        """Where a key of any section came from (declared or not)."""
        key = f"{section}.{name}"
        if key in self.sources:
            return self.sources[key]
        data = self.config.data.get(section)
        if isinstance(data, dict) and name in data:
            return f"file {self.config.path}"
        return "default"


def effective(
    config: Config,
    flags: Any = None,
    environ: Any = None,
) -> Settings:
    """Resolve :data:`SETTINGS`: ``flags`` (a mapping or argparse namespace; None = not given)
    over ``environ`` (default ``os.environ``; empty = not given) over the config file over the
    defaults. A bad value is an error naming the setting and where it came from."""
    if flags is not None and not isinstance(flags, dict):
        flags = vars(flags)
    flags = flags or {}
    environ = os.environ if environ is None else environ
    where = config.path or "config"
    for section in OWNED_SECTIONS:
        data = config.data.get(section)
        if data is None:
            continue
        if not isinstance(data, dict):
            raise InvalidInput(f"{where}: section {section!r} must be a mapping")
        known = {s.name for s in SETTINGS if s.section == section}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(
                f"{where}: {section}: unknown key(s) {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(sorted(known))})"
            )
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for s in SETTINGS:
        file_section = config.data.get(s.section)
        if flags.get(s.dest) is not None:
            raw, source = flags[s.dest], f"flag {s.flag}"
        elif environ.get(s.env):
            raw, source = environ[s.env], f"env {s.env}"
        elif isinstance(file_section, dict) and s.name in file_section:
            raw, source = file_section[s.name], f"file {where}"
        else:
            values[s.key], sources[s.key] = s.default_value(), "default"
            continue
        try:
            values[s.key] = s.parse(raw)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"{s.key} ({source}): {raw!r}: {exc}") from None
        sources[s.key] = source
    return Settings(config, values, sources)


def add_setting_flags(parser: Any, section: str) -> None:
    """Add the flags of one section's declared settings to an argparse parser (as text; the
    values are checked by :func:`effective`, with the same rules as the file's)."""
    for s in SETTINGS:
        if s.section == section:
            extra = f"; OpenNebula {s.onename}" if s.onename else ""
            parser.add_argument(
                s.flag, metavar=s.name.upper(), help=f"{s.help} [env {s.env}{extra}]"
            )
