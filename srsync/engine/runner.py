"""Run jobs: jobs in parallel (one worker each), each job's targets and pairs in order."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from srsync import errors
from srsync.endpoints.registry import EndpointPool
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
from srsync.engine.state import StateDB, default_state_dir
from srsync.jobspec import JobSpec, PairSpec


@dataclass(slots=True)
class JobResult:
    job: str
    pairs: list[PairResult] = field(default_factory=list)
    error: str = ""
    exit_code: int = errors.EXIT_OK


def state_dir_for(job: JobSpec) -> Path:
    return Path(job.state_dir) if job.state_dir else default_state_dir()


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
    result = JobResult(job.name)
    sdir = state_dir_for(job)
    try:
        lock = JobLock(sdir, job.name)
        lock.acquire()
    except errors.SrsyncError as exc:
        result.error = str(exc)
        result.exit_code = exc.exit_code
        reporter.message(job.name, str(exc))
        return result
    state: StateDB | None = None
    try:
        state = StateDB(sdir)
        for target in job.targets:
            if not target.enabled:
                continue
            with EndpointPool() as pool:
                for pair in target.pairs:
                    res = _run_pair(job, target.name, pair, pool, reporter, state, options, stop)
                    result.pairs.append(res)
                    _record(state, res)
                    if stop is not None and stop.is_set():
                        break
    finally:
        if state is not None:
            state.close()
        lock.release()
    result.exit_code = combine_exit([_pair_exit(p.outcome) for p in result.pairs])
    return result


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
    try:
        alpha = pool.open(pair.mirror)
        beta = pool.open(pair.target)
        session = PairSession(job.name, target, pair, alpha, beta, reporter, state, options, stop)
        return session.run()
    except errors.SrsyncError as exc:
        res = PairResult(job.name, target, pair.label, outcome=FAILED, error=str(exc),
                         started=started, duration=time.time() - started, dry_run=options.dry_run)
        reporter.pair_done(job.name, res)
        return res


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
