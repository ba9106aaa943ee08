"""The daemon's loop: stages in threads, a monotonic clock, signals that only set flags.

Every stage runs in its own thread, so the API never waits on a placement cycle or a playbook.
A :class:`PeriodicStage` runs :meth:`~PeriodicStage.cycle` every ``interval`` seconds, measured on
the monotonic clock from the start of one cycle to the start of the next; it waits on an event,
so a stop or a reload wakes it at once and no loop ever sleeps past a SIGTERM.

Signals (handled in the main thread, the handlers only set flags and wake it):

* SIGTERM or SIGINT: no new cycles start; the cycles in flight (a playbook run, a placement
  cycle) finish within ``daemon.shutdown_timeout`` seconds, then the API stops and the process
  exits 0. A stage still busy after the timeout is asked to cancel its job (the executor stops its
  ansible-runner job; the VMs it was deploying stay in PROLOG for the next start).
* a second SIGTERM or SIGINT: exit at once (status 143, as if killed; crash-safe by design).
* SIGHUP: re-read the config file and re-resolve the settings; each stage takes the new settings
  between two cycles. A config that does not load is logged and the old settings stay.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from lxcloud_py.config import Settings
from lxcloud_py.store import Store

from . import decisions
from .decisions import Decision

log = logging.getLogger("lxcloud.daemon")

#: Exit status of the immediate exit on a second SIGTERM (128 + SIGTERM, as if killed).
EXIT_NOW = 128 + signal.SIGTERM



def apply_limits(settings: Settings) -> None:
    """The ``limits`` section: the bounds every allocation in this process checks."""
    from lxcloud_py import vms

    vms.configure_limits(vms.Limits(**settings.section("limits")))


@dataclass
class StageContext:
    """What a stage gets: the store it shares with the others, and the settings."""

    store: Store
    settings: Settings

    def decide(self, decision_list: list[Decision]) -> None:
        decisions.record(self.store, decision_list)


class Stage:
    """A stage: started once, stopped once; :meth:`reload` takes new settings."""

    name: ClassVar[str] = ""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx

    def start(self) -> None:
        raise NotImplementedError

    def request_stop(self) -> None:
        """No new work from now on (returns at once)."""

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the work in flight; True when done."""
        return True

    def cancel(self) -> None:
        """The shutdown timeout passed: abandon the work in flight (it must be re-runnable)."""

    def close(self) -> None:
        """Release resources once stopped."""

    def alive(self) -> bool:
        return True

    def reload(self, settings: Settings) -> None:
        """New settings (SIGHUP); the default applies them between two cycles."""
        self.ctx.settings = settings


class PeriodicStage(Stage):
    """A stage that runs :meth:`cycle` every :meth:`interval` seconds in its own thread."""

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._pending: Settings | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.cycles = 0

    # -- what a stage defines -------------------------------------------------------------------
    def interval(self) -> float:
        raise NotImplementedError

    def cycle(self) -> None:
        raise NotImplementedError

    def apply(self, settings: Settings) -> None:
        """Take new settings (in the stage's thread, between cycles)."""
        self.ctx.settings = settings

    # -- the loop -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stopping.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                self._wake.wait(delay)
                self._wake.clear()
            if self._stopping.is_set():
                break
            with self._lock:
                pending, self._pending = self._pending, None
            if pending is not None:
                try:
                    self.apply(pending)
                    log.info("stage %s: settings reloaded", self.name)
                except Exception as exc:
                    log.error("stage %s: cannot apply the new settings: %s", self.name, exc)
                next_at = time.monotonic()  # a reload runs a cycle with the new settings now
            if time.monotonic() < next_at:
                continue
            next_at = time.monotonic() + self.interval()
            try:
                self.cycle()
            except Exception as exc:
                log.exception("stage %s: cycle failed", self.name)
                self.ctx.decide([Decision(self.name, "cycle failed", message=str(exc), ok=False)])
            self.cycles += 1

    def request_stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def reload(self, settings: Settings) -> None:
        with self._lock:
            self._pending = settings
        self._wake.set()


class Daemon:
    """Runs the given stages until SIGTERM/SIGINT; SIGHUP reloads (see the module docstring).

    ``reload_settings`` re-reads the config file and re-resolves the settings (for SIGHUP).
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        stages: list[type[Stage]],
        reload_settings: Callable[[], Settings],
    ) -> None:
        self.store = store
        self.settings = settings
        apply_limits(settings)
        self.stage_types = stages
        self.reload_settings = reload_settings
        self.stages: list[Stage] = []
        self._wake = threading.Event()
        self._terms = 0
        self._hup = False

    # -- signal handlers: flags only --------------------------------------------------------------
    def _on_stop(self, signum: int, _frame: object) -> None:
        self._terms += 1
        self._wake.set()

    def _on_hup(self, signum: int, _frame: object) -> None:
        self._hup = True
        self._wake.set()

    def _check_signals(self) -> bool:
        """Act on the flags the handlers set; True when asked to stop."""
        if self._terms >= 2:
            log.warning("second stop signal: exiting now")
            logging.shutdown()
            os._exit(EXIT_NOW)
        if self._hup:
            self._hup = False
            self._reload()
        return self._terms >= 1

    def _reload(self) -> None:
        try:
            settings = self.reload_settings()
        except Exception as exc:
            log.error("SIGHUP: the config does not load, keeping the old settings: %s", exc)
            return
        self.settings = settings
        apply_limits(settings)
        for stage in self.stages:
            stage.reload(settings)
        log.info("SIGHUP: settings reloaded")

    # -- run --------------------------------------------------------------------------------------
    def run(self) -> int:
        handlers = {
            signal.SIGTERM: self._on_stop,
            signal.SIGINT: self._on_stop,
            signal.SIGHUP: self._on_hup,
        }
        old = {s: signal.signal(s, h) for s, h in handlers.items()}
        status = 0
        try:
            try:
                for cls in self.stage_types:
                    self.stages.append(cls(StageContext(self.store, self.settings)))
            except BaseException:
                for stage in self.stages:
                    stage.close()
                raise
            for stage in self.stages:
                stage.start()
            log.info("running stages: %s", ", ".join(s.name for s in self.stages))
            while not self._check_signals():
                dead = [s.name for s in self.stages if not s.alive()]
                if dead:
                    log.error("stage(s) stopped unexpectedly: %s", ", ".join(dead))
                    status = 1
                    break
                self._wake.wait(1.0)
                self._wake.clear()
            self._stop()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return status

    def _stop(self) -> None:
        """No new cycles; wait for the ones in flight (bounded), the API last."""
        timeout = float(self.settings["daemon.shutdown_timeout"])
        workers = [s for s in self.stages if s.name != "api"]
        api = [s for s in self.stages if s.name == "api"]
        for stage in workers:
            stage.request_stop()
        busy = self._wait(workers, timeout)
        if busy:
            log.warning(
                "stage(s) %s still busy after %g s: cancelling their jobs",
                ", ".join(s.name for s in busy),
                timeout,
            )
            for stage in busy:
                stage.cancel()
            busy = self._wait(busy, 30.0)
            if busy:
                log.error("stage(s) %s did not stop", ", ".join(s.name for s in busy))
        for stage in api:
            stage.request_stop()
            stage.join(timeout)
        for stage in self.stages:
            stage.close()
        log.info("stopped")

    def _wait(self, stages: list[Stage], timeout: float) -> list[Stage]:
        """Join ``stages`` until ``timeout``, acting on signals meanwhile; the busy ones."""
        deadline = time.monotonic() + timeout
        busy = list(stages)
        while busy and time.monotonic() < deadline:
            self._check_signals()
            busy = [s for s in busy if not s.join(min(0.2, max(0.0, deadline - time.monotonic())))]
        return busy
