"""Run jobs: jobs in parallel (one worker each), each job's targets and pairs in order."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from srsync import errors
from srsync.endpoints.base import Endpoint
from srsync.endpoints.registry import EndpointPool, take_pool
from srsync.engine.lock import JobLock
from srsync.engine.reporter import Reporter
from srsync.engine.session import (
    CONFLICTS,
    FAILED,
    HALTED,
    PARTIAL,
    PairResult,
    PairSession,
    SyncOptions,
)
from srsync.engine.state import StateDB, state_dir_for
from srsync.engine.status import (
    DISABLED,
    FanoutReporter,
    StatusReporter,
    StatusStore,
    target_keys,
)
from srsync.jobspec import JobSpec, PairSpec


@dataclass(slots=True)
class JobResult:
    job: str
    pairs: list[PairResult] = field(default_factory=list)
    error: str = ""
    exit_code: int = errors.EXIT_OK


def _pair_exit(outcome: str) -> int:
    return {
        FAILED: errors.EXIT_FAILURE,
        HALTED: errors.EXIT_HALTED,
        PARTIAL: errors.EXIT_PARTIAL,
        CONFLICTS: errors.EXIT_CONFLICTS,
    }.get(outcome, errors.EXIT_OK)


# When outcomes mix, the most serious decides the exit code.
_SEVERITY = [errors.EXIT_FAILURE, errors.EXIT_USAGE, errors.EXIT_HALTED, errors.EXIT_PARTIAL,
             errors.EXIT_CONFLICTS, errors.EXIT_OK]


def combine_exit(codes: list[int]) -> int:
    for code in _SEVERITY:
        if code in codes:
            return code
    return errors.EXIT_OK


def _record(state: StateDB | None, res: PairResult) -> None:
    if state is None:
        return
    a = res.applied
    state.add_history(
        job=res.job, target=res.target, pair=res.pair, started=res.started,
        outcome=res.outcome, created=a.created, updated=a.updated, deleted=a.deleted,
        meta=a.meta, bytes_=a.bytes, problems=len(res.problems), error=res.error,
        dry_run=res.dry_run,
    )


def run_job(
    job: JobSpec,
    reporter: Reporter,
    options: SyncOptions,
    stop: threading.Event | None = None,
) -> JobResult:
    """One run of ``job``: every enabled target in order, history, live status, and a
    notification mail when the job has ``[notify]`` settings."""
    result = JobResult(job.name)
    sdir = state_dir_for(job)
    try:
        lock = JobLock(sdir, job.name)
        lock.acquire()
    except errors.SrsyncError as exc:
        # another process runs this job: its status rows are left alone
        result.error = str(exc)
        result.exit_code = exc.exit_code
        reporter.message(job.name, str(exc))
        return result
    state: StateDB | None = None
    status: StatusReporter | None = None
    try:
        try:
            state = StateDB(sdir)
        except sqlite3.Error as exc:
            # e.g. a full disk or no free inodes: one line, nothing synced, nothing changed
            msg = f"cannot open the state database in {sdir}: {exc} (is the disk full?)"
            result.error = msg
            result.exit_code = errors.EXIT_FAILURE
            reporter.message(job.name, msg)
            return result
        status = _open_status(sdir)
        rep: Reporter = FanoutReporter(reporter, status) if status is not None else reporter
        for target, key in zip(job.targets, target_keys(job), strict=True):
            if not target.enabled:
                if status is not None:
                    _safe(status.store.update, job.name, key, state=DISABLED, detail="")
                continue
            if stop is not None and stop.is_set():
                break
            if status is not None:
                _safe(status.target_started, job.name, key, options.dry_run)
            done: list[PairResult] = []
            try:
                with take_pool(job.name, target.name, sdir) as pool:
                    for pair in target.pairs:
                        res = _run_pair(job, target.name, pair, pool, rep, state, options, stop)
                        done.append(res)
                        _record(state, res)
                        if stop is not None and stop.is_set():
                            break
            except BaseException as exc:
                # the status row must never stay "transferring" after a crash
                if status is not None:
                    _safe(status.target_done, job.name, key, done,
                          f"internal error: {exc!r}")
                raise
            result.pairs.extend(done)
            if status is not None:
                _safe(status.target_done, job.name, key, done)
    finally:
        if status is not None:
            _safe(status.store.close)
        if state is not None:
            state.close()
        lock.release()
    result.exit_code = combine_exit([_pair_exit(p.outcome) for p in result.pairs])
    notify = job.extra.get("notify")
    if isinstance(notify, Mapping) and not options.dry_run:
        from srsync.notify import notify_run  # smtplib, ssl, email: only for jobs that mail

        problem = notify_run(job.name, result.pairs, notify)
        if problem:
            reporter.message(job.name, problem)
    return result


def _open_status(sdir: Path) -> StatusReporter | None:
    """The live status writer; a status database that cannot be opened never stops a run."""
    try:
        return StatusReporter(StatusStore(sdir))
    except sqlite3.Error:
        return None


def _safe(call: Callable[..., object], *args: object, **kw: object) -> None:
    with contextlib.suppress(sqlite3.Error):
        call(*args, **kw)


def _run_pair(
    job: JobSpec,
    target: str,
    pair: PairSpec,
    pool: EndpointPool,
    reporter: Reporter,
    state: StateDB | None,
    options: SyncOptions,
    stop: threading.Event | None,
) -> PairResult:
    started = time.time()
    # Remote sides connect in the background (one after the other: they may share
    # a connection) while a local side is already being scanned.
    opener = ThreadPoolExecutor(max_workers=1, thread_name_prefix="open")
    try:
        alpha: Endpoint | Future[Endpoint] = (
            opener.submit(pool.open, pair.mirror) if pair.mirror.conn is not None else pool.open(pair.mirror)
        )
        beta: Endpoint | Future[Endpoint] = (
            opener.submit(pool.open, pair.target) if pair.target.conn is not None else pool.open(pair.target)
        )
        session = PairSession(job.name, target, pair, alpha, beta, reporter, state, options, stop)
        return session.run()
    except errors.SrsyncError as exc:
        res = PairResult(job.name, target, pair.label, outcome=FAILED, error=str(exc),
                         started=started, duration=time.time() - started, dry_run=options.dry_run)
        reporter.pair_done(job.name, res)
        return res
    finally:
        opener.shutdown(wait=True)  # an endpoint still opening joins the pool before it closes


def run_jobs(
    jobs: list[JobSpec],
    reporter: Reporter,
    options: SyncOptions,
    stop: threading.Event | None = None,
) -> list[JobResult]:
    if len(jobs) <= 1:
        return [run_job(j, reporter, options, stop) for j in jobs]
    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="job") as pool:
        futures = [pool.submit(run_job, j, reporter, options, stop) for j in jobs]
        return [f.result() for f in futures]
