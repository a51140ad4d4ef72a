"""Live local change detection with watchdog: events are debounced and coalesced into
one wake-up of the job's worker.  Events are a hint about *when* to sync; every run still
scans and reconciles in full, so a missed event costs latency, never correctness."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from srsync.core.paths import TEMP_PREFIX
from srsync.jobspec import ONE2ONE, JobSpec

log = logging.getLogger("srsync.watch")

QUIET = 0.2  # run once no event came for this long ...
MAX_DELAY = 2.0  # ... but no later than this after the first event of a burst
_IGNORED_TYPES = ("opened", "closed_no_write")


class Trigger:
    """Collects change events for one job; the worker waits on ``cond``.

    Invariant: ``first`` is None exactly when no event is pending.
    """

    def __init__(self, cond: threading.Condition, quiet: float = QUIET,
                 max_delay: float = MAX_DELAY) -> None:
        self.cond = cond
        self.quiet = quiet
        self.max_delay = max_delay
        self.first: float | None = None
        self.last = 0.0
        self.events = 0

    def fire(self) -> None:
        now = time.monotonic()
        with self.cond:
            if self.first is None:
                self.first = now
            self.last = now
            self.events += 1
            self.cond.notify_all()

    def due(self) -> float | None:
        """Monotonic time at which the pending burst should run, or None."""
        with self.cond:
            if self.first is None:
                return None
            return min(self.last + self.quiet, self.first + self.max_delay)

    def take(self) -> int:
        """Consume the pending events (before a run starts); returns how many there were."""
        with self.cond:
            n, self.first, self.events = self.events, None, 0
            return n


class _Handler(FileSystemEventHandler):
    def __init__(self, trigger: Trigger) -> None:
        self.trigger = trigger

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _IGNORED_TYPES:
            return
        path = os.fsdecode(event.src_path)
        if TEMP_PREFIX in os.path.basename(path):
            return  # our own temporary files in a local target
        self.trigger.fire()


def watch_roots(job: JobSpec) -> list[str]:
    """Local roots whose changes a run would propagate: enabled mirrors, and both sides of
    two-way pairs."""
    roots: list[str] = []
    for target in job.targets:
        if not target.enabled:
            continue
        for pair in target.pairs:
            sides = [pair.mirror] + ([pair.target] if pair.sync_type == ONE2ONE else [])
            for loc in sides:
                if loc.conn is None and loc.path not in roots:
                    roots.append(loc.path)
    return roots


class Watcher:
    """One watchdog observer for the whole daemon; one set of watches per job."""

    def __init__(self) -> None:
        self._observer: BaseObserver = Observer()
        self._observer.daemon = True
        self._watches: dict[str, list[ObservedWatch]] = {}
        self._roots: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._started = False

    def set_job(self, job: str, roots: list[str], trigger: Trigger) -> None:
        """Watch ``roots`` for ``job`` (replacing what it watched before)."""
        with self._lock:
            if roots and self._roots.get(job) == roots:
                return
            self._unschedule(job)
            watches: list[ObservedWatch] = []
            for root in roots:
                if not os.path.isdir(root):
                    log.warning("%s: cannot watch %s (not a directory); periodic rescans only", job, root)
                    continue
                try:
                    watches.append(self._observer.schedule(_Handler(trigger), root, recursive=True))
                except OSError as exc:
                    log.warning("%s: cannot watch %s (%s); periodic rescans only", job, root, exc)
            self._watches[job] = watches
            # a root that could not be watched yet is retried on the next call
            self._roots[job] = roots if len(watches) == len(roots) else []
            if not self._started:
                self._observer.start()
                self._started = True

    def drop_job(self, job: str) -> None:
        with self._lock:
            self._unschedule(job)
            self._roots.pop(job, None)

    def _unschedule(self, job: str) -> None:
        for w in self._watches.pop(job, []):
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(w)

    def stop(self) -> None:
        with self._lock:
            if self._started:
                self._observer.stop()
                self._observer.join(timeout=5)
                self._started = False
