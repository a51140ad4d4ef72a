"""Live status per job and target in the state database, and the Reporter that writes it."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from srsync.engine.reporter import Reporter

if TYPE_CHECKING:
    from srsync.core.entry import Problem
    from srsync.engine.session import PairResult
    from srsync.jobspec import JobSpec
    from srsync.plan import Operation, Plan

# States a row can show.  Active states belong to a live process (``pid``); a row left
# active by a process that died is shown as "interrupted" by readers.
IDLE = "idle"
SCANNING = "scanning"
TRANSFERRING = "transferring"
ERROR = "error"
DISABLED = "disabled"
HALTED = "halted"
CONFLICTS = "conflicts"
WAITING = "waiting"  # queued behind a retry backoff
INTERRUPTED = "interrupted"
ACTIVE_STATES = (SCANNING, TRANSFERRING)

# Progress writes are throttled: one SQLite write per this many seconds per job.
PROGRESS_INTERVAL = 0.5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS status (
    job TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'idle',
    detail TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL DEFAULT 0,
    run_started REAL NOT NULL DEFAULT 0,
    files_done INTEGER NOT NULL DEFAULT 0,
    files_total INTEGER NOT NULL DEFAULT 0,
    bytes_done INTEGER NOT NULL DEFAULT 0,
    bytes_total INTEGER NOT NULL DEFAULT 0,
    rate REAL NOT NULL DEFAULT 0,
    last_started REAL NOT NULL DEFAULT 0,
    last_finished REAL NOT NULL DEFAULT 0,
    last_result TEXT NOT NULL DEFAULT '',
    created INTEGER NOT NULL DEFAULT 0,
    updated INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    problems INTEGER NOT NULL DEFAULT 0,
    conflicts INTEGER NOT NULL DEFAULT 0,
    duration REAL NOT NULL DEFAULT 0,
    next_run REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    dry_run INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (job, target)
);
"""


@dataclass(slots=True)
class StatusRow:
    """One job/target line of the live status.  Times are epoch seconds; 0 means never."""

    job: str
    target: str
    state: str = IDLE
    detail: str = ""
    pid: int = 0
    run_started: float = 0.0
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    rate: float = 0.0
    last_started: float = 0.0
    last_finished: float = 0.0
    last_result: str = ""
    created: int = 0
    updated: int = 0
    deleted: int = 0
    bytes: int = 0
    problems: int = 0
    conflicts: int = 0
    duration: float = 0.0
    next_run: float = 0.0
    last_error: str = ""
    dry_run: bool = False
    updated_at: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


_COLUMNS = [f.name for f in fields(StatusRow)]


def target_keys(job: JobSpec) -> list[str]:
    """The status key of each target, in order: its name, or ``name#N`` (N counted from 0)
    when several targets of the job share a name (e.g. two local targets)."""
    names = [t.name for t in job.targets]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StatusStore:
    """The ``status`` table of ``state.db`` in a state folder (the file StateDB uses)."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "state.db"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._db:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> StatusStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, job: str, target: str, **values: object) -> None:
        """Create the row if needed, then set ``values`` (column names of StatusRow)."""
        values["updated_at"] = time.time()
        bad = [k for k in values if k not in _COLUMNS or k in ("job", "target")]
        if bad:
            raise ValueError(f"unknown status columns {bad}")
        cols = ", ".join(f"{k} = ?" for k in values)
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO status (job, target) VALUES (?, ?)", (job, target)
            )
            self._db.execute(
                f"UPDATE status SET {cols} WHERE job = ? AND target = ?",
                (*values.values(), job, target),
            )

    def update_job(self, job: str, targets: list[str], **values: object) -> None:
        for target in targets:
            self.update(job, target, **values)

    def rows(self, job: str | None = None) -> list[StatusRow]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM status"
        args: tuple[object, ...] = ()
        if job is not None:
            sql += " WHERE job = ?"
            args = (job,)
        with self._lock:
            raw = self._db.execute(sql + " ORDER BY job, rowid", args).fetchall()
        out = []
        for r in raw:
            row = StatusRow(**dict(zip(_COLUMNS, r, strict=True)))
            row.dry_run = bool(row.dry_run)
            if row.state in ACTIVE_STATES and not pid_alive(row.pid):
                row.state = INTERRUPTED
            out.append(row)
        return out

    def get(self, job: str, target: str) -> StatusRow | None:
        for row in self.rows(job):
            if row.target == target:
                return row
        return None


def outcome_state(outcomes: list[str], error: str = "") -> str:
    """The state a target shows after a run with these pair outcomes."""
    if "failed" in outcomes or (error and not outcomes):
        return ERROR
    if "halted" in outcomes:
        return HALTED
    if "conflicts" in outcomes:
        return CONFLICTS
    return IDLE


def combine_outcomes(outcomes: list[str]) -> str:
    """The most serious pair outcome: the target's last result."""
    for o in ("failed", "halted", "partial", "conflicts", "ok", "unchanged"):
        if o in outcomes:
            return o
    return outcomes[0] if outcomes else ""


class StatusReporter(Reporter):
    """Writes live progress of the runs of one process into a StatusStore.

    The runner calls ``target_started``/``target_done`` around each target; the engine's
    hooks in between carry only the job name, and a job's targets run one at a time, so
    the job's current target is the one they concern.
    """

    def __init__(self, store: StatusStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._current: dict[str, str] = {}
        self._progress: dict[str, list[float]] = {}  # job -> [files, bytes, started, last write]
        self._totals: dict[str, list[int]] = {}  # job -> [files_total, bytes_total]

    def _target(self, job: str) -> str | None:
        with self._lock:
            return self._current.get(job)

    # ---- called by the runner ------------------------------------------
    def target_started(self, job: str, target: str, dry_run: bool) -> None:
        now = time.time()
        with self._lock:
            self._current[job] = target
            self._progress[job] = [0, 0, now, 0.0]
            self._totals[job] = [0, 0]
        self.store.update(job, target, state=SCANNING, detail="", pid=os.getpid(), run_started=now,
                          files_done=0, files_total=0, bytes_done=0, bytes_total=0, rate=0.0,
                          dry_run=dry_run)

    def target_done(self, job: str, target: str, results: list[PairResult], error: str = "") -> None:
        outcomes = [r.outcome for r in results]
        errors = [r.error for r in results if r.error]
        err = error or "; ".join(errors)
        started = min((r.started for r in results), default=time.time())
        finished = time.time()
        dry = any(r.dry_run for r in results)
        total_bytes = sum(r.applied.bytes for r in results)
        duration = sum(r.duration for r in results)
        values: dict[str, object] = dict(
            state=outcome_state(outcomes, err), detail="", pid=os.getpid(),
            last_started=started, last_finished=finished,
            last_result=combine_outcomes(outcomes) or ("failed" if err else ""),
            created=sum(r.applied.created for r in results),
            updated=sum(r.applied.updated for r in results),
            deleted=sum(r.applied.deleted for r in results),
            bytes=total_bytes,
            problems=sum(len(r.problems) for r in results),
            conflicts=sum(_conflict_count(r) for r in results),
            duration=duration,
            rate=(total_bytes / duration) if duration > 0 else 0.0,
            dry_run=dry,
        )
        if err or outcomes:
            values["last_error"] = err
        self.store.update(job, target, **values)
        with self._lock:
            self._current.pop(job, None)

    def set_next_run(self, job: str, targets: list[str], when: float) -> None:
        self.store.update_job(job, targets, next_run=when)

    # ---- engine hooks ----------------------------------------------------
    def pair_started(self, job: str, target: str, pair: str) -> None:
        key = self._target(job)  # the runner's key (names may repeat within a job)
        if key is not None:
            self.store.update(job, key, state=SCANNING, detail=pair)

    def plan_ready(self, job: str, pair: str, plan: Plan, dry_run: bool) -> None:
        target = self._target(job)
        if target is None or dry_run:
            return
        with self._lock:
            totals = self._totals.setdefault(job, [0, 0])
            totals[0] += len(plan.operations)
            totals[1] += plan.stats.bytes
            files_total, bytes_total = totals
        if plan.operations:
            self.store.update(job, target, state=TRANSFERRING, files_total=files_total,
                              bytes_total=bytes_total)

    def _write_progress(self, job: str, force: bool) -> None:
        now = time.time()
        # unlocked peek first: most calls come well within the interval and write nothing
        p = self._progress.get(job)
        if p is None or (not force and now - p[3] < PROGRESS_INTERVAL):
            return
        target = self._target(job)
        if target is None:
            return
        with self._lock:
            p[3] = now
            files, nbytes, started = int(p[0]), int(p[1]), p[2]
        elapsed = now - started
        self.store.update(job, target, files_done=files, bytes_done=nbytes,
                          rate=nbytes / elapsed if elapsed > 0 else 0.0)

    # The counters below are bumped without the lock: a job's operations are
    # executed (and reported) by one thread at a time, and readers only need
    # numbers that are current to within a progress interval.
    def bytes_transferred(self, job: str, n: int) -> None:
        p = self._progress.get(job)
        if p is not None:
            p[1] += n
            if time.time() - p[3] >= PROGRESS_INTERVAL:
                self._write_progress(job, False)

    def op_done(self, job: str, op: Operation) -> None:
        p = self._progress.get(job)
        if p is not None:
            p[0] += 1
            if time.time() - p[3] >= PROGRESS_INTERVAL:
                self._write_progress(job, False)

    def ops_done(self, job: str, ops: Sequence[Operation]) -> None:
        p = self._progress.get(job)
        if p is not None:
            p[0] += len(ops)
            if time.time() - p[3] >= PROGRESS_INTERVAL:
                self._write_progress(job, False)

    def halted(self, job: str, reason: str) -> None:
        target = self._target(job)
        if target is not None:
            self.store.update(job, target, last_error=reason)

    def problem(self, job: str, problem: Problem) -> None: ...


def _conflict_count(result: PairResult) -> int:
    plan = result.plan
    if plan is None:
        return 0
    return len(getattr(plan, "conflicts", ()) or ())


class FanoutReporter(Reporter):
    """Calls every hook on each of several reporters, in order; one failing never stops
    the others nor the run (a status write must not break a sync).

    Hooks a reporter leaves as the base class's no-op are not called at all:
    per-operation hooks run up to a few hundred thousand times per run.
    """

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = list(reporters)
        # hooks added to Reporter later (e.g. for conflicts) reach every reporter too
        for name in dir(Reporter):
            if name.startswith("_"):
                continue
            targets = [getattr(r, name) for r in self.reporters if _overrides(r, name)]
            setattr(self, name, _fanout(targets))


def _overrides(reporter: Reporter, name: str) -> bool:
    """Whether ``reporter`` does something for hook ``name`` (not the base's no-op)."""
    if name in getattr(reporter, "__dict__", {}):
        return True
    impl = getattr(type(reporter), name, None)
    if impl is None:
        return False
    if impl is not getattr(Reporter, name):
        return True
    # the base's ops_done calls op_done: it matters when op_done does something
    return name == "ops_done" and _overrides(reporter, "op_done")


def _fanout(targets: list[Callable[..., None]]) -> Callable[..., None]:
    if not targets:
        def nothing(*args: object) -> None:
            return None

        return nothing

    def call(*args: object) -> None:
        for hook in targets:
            try:
                hook(*args)
            except sqlite3.Error:  # noqa: PERF203 - one reporter's failure must not stop the others
                continue

    return call
