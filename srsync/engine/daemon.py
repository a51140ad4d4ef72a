"""The autorun daemon: one worker per job, schedules, live watch, retry backoff, live reload."""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from srsync import errors
from srsync.engine.reporter import Reporter
from srsync.engine.runner import JobResult, run_job, state_dir_for
from srsync.engine.scheduler import Backoff, Schedule
from srsync.engine.session import FAILED, SyncOptions
from srsync.engine.status import DISABLED, ERROR, IDLE, WAITING, StatusStore, target_keys
from srsync.engine.watch import MAX_DELAY, QUIET, Trigger, Watcher, watch_roots
from srsync.jobspec import JobSpec

if TYPE_CHECKING:
    from srsync.core.entry import Problem
    from srsync.engine.session import PairResult
    from srsync.plan import Operation, Plan

log = logging.getLogger("srsync.daemon")

# A job source maps job name -> the job, or the ConfigError its file has right now.
JobSource = Callable[[], dict[str, JobSpec | errors.ConfigError]]


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    dry_run: bool = False
    force: bool = False
    retry_base: float = 2.0  # first retry delay after a failed run, doubling each time
    retry_max: float = 300.0  # cap of the retry delay
    rescan: float = 3600.0  # watched jobs without schedule: full run at least this often
    reload: float = 2.0  # seconds between re-reads of the config files
    quiet: float = QUIET
    max_delay: float = MAX_DELAY


class LogReporter(Reporter):
    """Engine events as log records (logger ``srsync.run``): for daemons and --log-file."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("srsync.run")

    def pair_started(self, job: str, target: str, pair: str) -> None:
        self.log.debug("%s: %s: started", job, pair, extra={"srsync": {"job": job, "target": target}})

    def plan_ready(self, job: str, pair: str, plan: Plan, dry_run: bool) -> None:
        if dry_run:
            for op in plan.operations:
                self.log.info("%s: would %s %s", job, op.kind.value, op.path, extra={"srsync": {"job": job}})

    def op_done(self, job: str, op: Operation) -> None:
        self.log.debug("%s: %s %s", job, op.kind.value, op.path, extra={"srsync": {"job": job}})

    def ops_done(self, job: str, ops: Sequence[Operation]) -> None:
        if self.log.isEnabledFor(logging.DEBUG):
            for op in ops:
                self.op_done(job, op)

    def problem(self, job: str, problem: Problem) -> None:
        side = f"{problem.side} " if problem.side else ""
        self.log.warning("%s: %s%s: %s", job, side, problem.path or "/", problem.message,
                         extra={"srsync": {"job": job}})

    def halted(self, job: str, reason: str) -> None:
        self.log.error("%s: halted: %s", job, reason, extra={"srsync": {"job": job}})

    def message(self, job: str, text: str) -> None:
        self.log.warning("%s: %s", job, text, extra={"srsync": {"job": job}})

    def pair_done(self, job: str, result: PairResult) -> None:
        a = result.applied
        # under one key: LogRecord reserves names like "created"
        extra = {"srsync": {"job": job, "target": result.target, "pair": result.pair,
                            "outcome": result.outcome, "created": a.created,
                            "updated": a.updated, "deleted": a.deleted, "bytes": a.bytes,
                            "duration": round(result.duration, 3)}}
        if result.outcome == FAILED:
            self.log.error("%s: %s: failed: %s", job, result.pair, result.error, extra=extra)
            return
        level = logging.INFO if (a.created or a.updated or a.deleted or a.meta) else logging.DEBUG
        self.log.log(level, "%s: %s: %s: %d created, %d updated, %d deleted, %d bytes in %.1fs",
                     job, result.pair, result.outcome, a.created, a.updated, a.deleted, a.bytes,
                     result.duration, extra=extra)


def conf_dir_source(conf_dir: Path, names: list[str] | None) -> JobSource:
    """Every job file of a config folder, re-read on each call (new files are picked up)."""
    from srsync.config import loader

    def load() -> dict[str, JobSpec | errors.ConfigError]:
        out: dict[str, JobSpec | errors.ConfigError] = {}
        try:
            globals_ = loader.load_globals(conf_dir)
        except errors.ConfigError as exc:
            return {p.stem: exc for p in loader.job_files(conf_dir)}
        for path in loader.job_files(conf_dir):
            try:
                job = loader.load_job_file(path, globals_, check_roots=False)
            except errors.ConfigError as exc:
                out[path.stem] = exc
                continue
            if names and job.name not in names and path.stem not in names:
                continue
            out[job.name] = job
        return out

    return load


def file_source(path: Path) -> JobSource:
    """One job file anywhere on disk (``loadconfig -p PATH --daemon``)."""
    from srsync.config import loader

    first: list[str] = []

    def load() -> dict[str, JobSpec | errors.ConfigError]:
        try:
            job = loader.load_job_file(path, check_roots=False)
        except errors.ConfigError as exc:
            return {first[0] if first else path.stem: exc}
        if not first:
            first.append(job.name)
        return {job.name: job}

    return load


def _is_failure(result: JobResult) -> bool:
    return bool(result.error) or any(p.outcome == FAILED for p in result.pairs)


@dataclass(slots=True)
class _Worker:
    """Runs one job whenever it is due; owns the job's trigger, schedule and backoff."""

    daemon: Daemon
    name: str
    spec: JobSpec | None
    problem: str = ""
    cond: threading.Condition = field(default_factory=threading.Condition)
    trigger: Trigger | None = None
    backoff: Backoff = field(default_factory=Backoff)
    retry_at: float | None = None
    last_start: float | None = None
    ran_once: bool = False
    removed: bool = False
    thread: threading.Thread | None = None
    shown_next: float = -1.0
    shown_state: str = ""

    # ---- configuration (called by the supervisor thread) --------------------
    def update(self, spec: JobSpec | errors.ConfigError | None) -> None:
        with self.cond:
            if spec is None:
                self.removed = True
            elif isinstance(spec, errors.ConfigError):
                self.problem = str(spec)
            else:
                self.spec, self.problem = spec, ""
            self.cond.notify_all()

    # ---- the loop ------------------------------------------------------------
    def run(self) -> None:
        d = self.daemon
        self.trigger = Trigger(self.cond, d.options.quiet, d.options.max_delay)
        self.backoff = Backoff(d.options.retry_base, d.options.retry_max)
        while not d.stop.is_set() and not self.removed:
            try:
                self._step()
            except Exception:  # a bug in one job's loop must not kill the daemon
                log.exception("%s: unexpected error in the daemon worker", self.name)
                d.stop.wait(d.options.retry_max if d.options.retry_max < 30 else 30)
        d.watcher.drop_job(self.name)

    def _wait(self, seconds: float) -> None:
        with self.cond:
            self.cond.wait(timeout=max(0.0, min(seconds, 0.5)))

    def _step(self) -> None:
        d = self.daemon
        job = self.spec
        if self.problem or job is None:
            self._show(job, ERROR, 0.0, self.problem or "config not loaded")
            self._wait(d.options.reload)
            return
        if not job.enabled:
            d.watcher.drop_job(self.name)
            self._show(job, DISABLED, 0.0, "")
            self._wait(d.options.reload)
            return
        if job.watch:
            assert self.trigger is not None
            d.watcher.set_job(self.name, watch_roots(job), self.trigger)
        else:
            d.watcher.drop_job(self.name)
        now = time.time()
        due = self._due(job, now)
        self._show(job, WAITING if self.retry_at else "", due, "")
        if due > now:
            self._wait(due - now)
            return
        self._run(job)

    def _due(self, job: JobSpec, now: float) -> float:
        """Wall-clock time of the next run (inf: only a change or a config edit wakes it)."""
        if self.retry_at is not None:
            return self.retry_at  # file events wait for the retry too: never a busy loop
        candidates: list[float] = []
        if job.schedule:
            try:
                candidates.append(Schedule.parse(job.schedule).next_after(self.last_start, now))
            except errors.ConfigError as exc:
                self.problem = str(exc)
                return math.inf
        elif not self.ran_once:
            candidates.append(now)  # every job syncs once when the daemon starts
        if job.watch:
            assert self.trigger is not None
            pending = self.trigger.due()
            if pending is not None:
                candidates.append(now + (pending - time.monotonic()))
            if not job.schedule and self.last_start is not None:
                candidates.append(self.last_start + self.daemon.options.rescan)
        return min(candidates, default=math.inf)

    def _run(self, job: JobSpec) -> None:
        d = self.daemon
        fresh = d.reload_one(self.name)  # enable/disable and edits take effect before each run
        if fresh is not None:
            self.update(fresh)
            if isinstance(fresh, errors.ConfigError) or not fresh.enabled:
                return
            job = fresh
        if self.trigger is not None:
            self.trigger.take()
        self.retry_at = None
        self.last_start = time.time()
        self.ran_once = True
        log.info("%s: run started", self.name, extra={"srsync": {"job": self.name}})
        result = run_job(job, d.reporter, SyncOptions(dry_run=d.options.dry_run,
                                                      force=d.options.force), d.stop)
        d.results.append(result)
        if _is_failure(result):
            delay = self.backoff.next_delay()
            self.retry_at = time.time() + delay
            reason = result.error or next((p.error for p in result.pairs if p.error), "")
            log.warning("%s: run failed (%s); retry %d in %.0fs", self.name, reason,
                        self.backoff.failures, delay, extra={"srsync": {"job": self.name}})
            self._show(job, WAITING, self.retry_at, reason, force=True)
        else:
            if self.backoff.failures:
                log.info("%s: recovered after %d failed runs", self.name, self.backoff.failures,
                         extra={"srsync": {"job": self.name}})
            self.backoff.reset()
            self.shown_next = -1.0

    def _show(self, job: JobSpec | None, state: str, next_run: float, error: str,
              *, force: bool = False) -> None:
        """Write next run / daemon-level state to the status rows when they changed."""
        if job is None:
            return
        nxt = 0.0 if math.isinf(next_run) else next_run
        if not force and nxt == self.shown_next and state == self.shown_state:
            return
        self.shown_next, self.shown_state = nxt, state
        targets = target_keys(job)
        values: dict[str, object] = {"next_run": nxt}
        if state == DISABLED:
            values.update(state=DISABLED, detail="job disabled")
        elif state == ERROR:
            values.update(state=ERROR, last_error=error, detail="config error")
        elif state == WAITING and self.retry_at:
            values.update(detail=f"retry {self.backoff.failures} after: {error}"[:300]
                          if error else f"retry {self.backoff.failures}")
        else:
            values["detail"] = ""
        self.daemon.write_status(job, targets, values, enabled={k: t.enabled for k, t in zip(targets, job.targets, strict=True)})


class Daemon:
    """Runs until ``stop`` is set; returns once every worker finished its current file."""

    def __init__(self, source: JobSource, reporter: Reporter, options: DaemonOptions,
                 stop: threading.Event) -> None:
        self.source = source
        self.reporter = reporter
        self.options = options
        self.stop = stop
        self.watcher = Watcher()
        self.workers: dict[str, _Worker] = {}
        self.results: list[JobResult] = []
        self._last_load: dict[str, JobSpec | errors.ConfigError] = {}
        self._load_lock = threading.Lock()

    def reload_one(self, name: str) -> JobSpec | errors.ConfigError | None:
        with self._load_lock:
            try:
                jobs = self.source()
            except (errors.ConfigError, OSError) as exc:
                log.error("cannot re-read the configs: %s", exc)
                return None
            return jobs.get(name)

    def write_status(self, job: JobSpec, targets: list[str], values: dict[str, object],
                     enabled: dict[str, bool]) -> None:
        try:
            with StatusStore(state_dir_for(job)) as store:
                for t in targets:
                    row = dict(values)
                    if not enabled.get(t, True):
                        row.update(state=DISABLED, detail="target disabled")
                    elif "state" not in row:
                        current = store.get(job.name, t)
                        if current is not None and current.state == DISABLED:
                            row["state"] = IDLE  # enabled again
                    store.update(job.name, t, **row)
        except (sqlite3.Error, OSError) as exc:
            log.warning("%s: cannot write the live status: %s", job.name, exc)

    def _sync_workers(self) -> None:
        with self._load_lock:
            try:
                jobs = self.source()
            except (errors.ConfigError, OSError) as exc:
                log.error("cannot re-read the configs: %s", exc)
                return
        for name, spec in jobs.items():
            worker = self.workers.get(name)
            if worker is None:
                if isinstance(spec, errors.ConfigError):
                    if self._last_load.get(name) is None or str(self._last_load[name]) != str(spec):
                        log.error("%s", spec)
                    continue
                worker = _Worker(self, name, spec)
                worker.thread = threading.Thread(target=worker.run, name=f"job-{name}", daemon=True)
                self.workers[name] = worker
                worker.thread.start()
                log.info("%s: worker started (schedule %s, watch %s)", name,
                         spec.schedule or "none", "on" if spec.watch else "off", extra={"srsync": {"job": name}})
            else:
                if isinstance(spec, errors.ConfigError) and str(self._last_load.get(name)) != str(spec):
                    log.error("%s; the job waits until its file is fixed", spec)
                worker.update(spec)
        for name, worker in list(self.workers.items()):
            if name not in jobs:
                log.info("%s: job file removed; worker stopped", name, extra={"srsync": {"job": name}})
                worker.update(None)
                del self.workers[name]
        self._last_load = jobs

    def run(self) -> int:
        log.info("daemon started")
        try:
            while not self.stop.is_set():
                self._sync_workers()
                self.stop.wait(self.options.reload)
        finally:
            log.info("stopping: letting running jobs finish their current file")
            for worker in list(self.workers.values()):
                with worker.cond:
                    worker.cond.notify_all()
            for worker in list(self.workers.values()):
                if worker.thread is not None:
                    worker.thread.join()
            self.watcher.stop()
            for worker in self.workers.values():
                if worker.spec is not None:
                    with contextlib.suppress(sqlite3.Error, OSError), \
                            StatusStore(state_dir_for(worker.spec)) as store:
                        store.update_job(worker.name, target_keys(worker.spec),
                                         next_run=0.0)
            log.info("daemon stopped")
        return errors.EXIT_OK
