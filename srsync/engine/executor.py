"""Apply a plan through two endpoints, re-checking every step against the scan."""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from srsync.core.entry import Entry, Kind, Problem
from srsync.endpoints.base import Endpoint
from srsync.engine.reporter import Reporter
from srsync.plan import ALPHA, Operation, OpKind, Plan, PlanStats


class SourceChanged(OSError):
    """The source file changed while it was being read; nothing was written."""


@dataclass(slots=True)
class ExecResult:
    applied: PlanStats = field(default_factory=PlanStats)
    problems: list[Problem] = field(default_factory=list)
    applied_ops: list[Operation] = field(default_factory=list)
    stopped: bool = False


def matches(current: Entry | None, expected: Entry | None) -> bool:
    """Whether what is on disk now is what the scan saw (so acting on it is safe)."""
    if current is None or expected is None:
        return current is None and expected is None
    if current.kind is not expected.kind:
        return False
    if current.kind is Kind.FILE:
        return current.size == expected.size and current.mtime_ns == expected.mtime_ns
    if current.kind is Kind.LINK:
        return current.target == expected.target
    return True


def _verified_chunks(
    src: Endpoint, path: str, entry: Entry, job: str, reporter: Reporter
) -> Iterator[bytes]:
    """Stream a source file, failing (before any rename) if it changed meanwhile.

    Reads at most the scanned size: a file that keeps growing (a live log)
    must not keep the transfer going forever.
    """
    total = 0
    blocks = src.read_chunks(path)
    try:
        for block in blocks:
            if total + len(block) > entry.size:
                raise SourceChanged(errno.EAGAIN, "changed while being read; will retry next run", path)
            total += len(block)
            reporter.bytes_transferred(job, len(block))
            yield block
            if total == entry.size:
                break
    finally:
        blocks.close()  # release the (possibly remote) file handle now, not at GC
    now = src.stat(path)
    if total != entry.size or not matches(now, entry):
        raise SourceChanged(errno.EAGAIN, "changed while being read; will retry next run", path)


def _describe(exc: OSError) -> str:
    if isinstance(exc, SourceChanged):
        return str(exc.strerror)
    return exc.strerror or str(exc)


class Executor:
    def __init__(
        self,
        alpha: Endpoint,
        beta: Endpoint,
        reporter: Reporter,
        job: str,
        stop: threading.Event | None = None,
    ) -> None:
        self.alpha = alpha
        self.beta = beta
        self.reporter = reporter
        self.job = job
        self.stop = stop or threading.Event()

    def run(self, plan: Plan) -> ExecResult:
        result = ExecResult()
        for op in plan.operations:
            if self.stop.is_set():
                result.stopped = True
                break
            dest, src = (self.alpha, self.beta) if op.side == ALPHA else (self.beta, self.alpha)
            self.reporter.op_started(self.job, op)
            try:
                done = self._apply(op, dest, src)
            except OSError as exc:
                prob = Problem(op.path, f"{op.kind.value} failed: {_describe(exc)}", op.side)
                result.problems.append(prob)
                self.reporter.problem(self.job, prob)
                continue
            if done:
                result.applied_ops.append(op)
                _count(result.applied, op)
                self.reporter.op_done(self.job, op)
        return result

    def _apply(self, op: Operation, dest: Endpoint, src: Endpoint) -> bool:
        current = dest.stat(op.path)
        if op.kind is OpKind.MKDIR:
            if current is not None and current.is_dir:
                return True
            self._check(op, current)
            assert op.entry is not None
            dest.mkdir(op.path, op.entry.mode)
            return True
        if op.kind is OpKind.META:
            assert op.entry is not None
            if current is None or current.kind is not op.entry.kind:
                raise OSError(errno.EAGAIN, "changed since scan; skipped", op.path)
            if op.expected is not None:
                self._check(op, current)
            mtime = op.entry.mtime_ns
            dest.set_meta(op.path, op.entry.mode, mtime)
            return True
        self._check(op, current)
        if op.kind is OpKind.REMOVE:
            assert op.expected is not None
            dest.remove(op.path, op.expected.kind)
        elif op.kind is OpKind.COPY:
            assert op.entry is not None
            dest.write_file(
                op.path,
                _verified_chunks(src, op.path, op.entry, self.job, self.reporter),
                op.entry.mode,
                op.entry.mtime_ns,
            )
        elif op.kind is OpKind.LINK:
            assert op.entry is not None and op.entry.target is not None
            dest.symlink(op.path, op.entry.target)
        return True

    @staticmethod
    def _check(op: Operation, current: Entry | None) -> None:
        if not matches(current, op.expected):
            raise OSError(errno.EAGAIN, "changed since scan; skipped, will retry next run", op.path)


def _count(stats: PlanStats, op: Operation) -> None:
    if op.kind is OpKind.REMOVE:
        if not op.is_update:  # a type change's removal counts with the create
            stats.deleted += 1
    elif op.kind in (OpKind.COPY, OpKind.LINK, OpKind.MKDIR):
        if op.is_update:
            stats.updated += 1
        else:
            stats.created += 1
        if op.kind is OpKind.COPY and op.entry is not None:
            stats.bytes += op.entry.size
    elif op.kind is OpKind.META and op.expected is not None:
        stats.meta += 1
