"""Apply a plan through two endpoints, re-checking every step against the scan."""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass, field

from srsync.core.entry import Entry, Kind, Problem
from srsync.endpoints.base import Endpoint
from srsync.engine.reporter import Reporter
from srsync.engine.transfer import SourceChanged, apply_operations, matches, transfer_file
from srsync.engine.trash import Trash
from srsync.errors import SrsyncError
from srsync.plan import ALPHA, Operation, OpKind, Plan, PlanStats


@dataclass(slots=True)
class ExecResult:
    applied: PlanStats = field(default_factory=PlanStats)
    problems: list[Problem] = field(default_factory=list)
    applied_ops: list[Operation] = field(default_factory=list)
    stopped: bool = False
    error: str = ""  # why the run stopped early, when an endpoint became unusable
    # paths some operation of which was not applied (failed, skipped or never reached)
    failed_paths: set[str] = field(default_factory=set)


# applied operations are reported this many at a time (a reporter call per file costs
# about as much as writing a small file; progress is shown a few times a second anyway)
_REPORT_OPS = 64
# enum members read per operation, bound once (see srsync.core.entry)
_COPY, _LINK_OP, _MKDIR, _META = OpKind.COPY, OpKind.LINK, OpKind.MKDIR, OpKind.META
_REMOVE, _RENAME, _DIR = OpKind.REMOVE, OpKind.RENAME, Kind.DIR
_CREATES = (_COPY, _LINK_OP, _MKDIR)


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
        trash: Trash | None = None,
    ) -> None:
        self.trash = trash
        self.alpha = alpha
        self.beta = beta
        self.reporter = reporter
        self.job = job
        self.stop = stop or threading.Event()

    def run(self, plan: Plan) -> ExecResult:
        result = ExecResult()
        ops = plan.operations
        seen = 0
        done: list[Operation] = []  # applied, not reported yet (reported in batches, in order)
        try:
            # Runs of small operations are pipelined by the endpoints; everything
            # else comes back to _apply_op.  Outcomes arrive in plan order.
            for op, error in apply_operations(
                ops, self.alpha, self.beta, self.job, self.reporter, self.stop, self._apply_op,
                self._batchable,
            ):
                seen += 1
                if error is not None:
                    if done:
                        self.reporter.ops_done(self.job, done)
                        done = []
                    prob = Problem(op.path, f"{op.kind.value} failed: {_describe(error)}", op.side)
                    result.problems.append(prob)
                    self.reporter.problem(self.job, prob)
                    _mark_failed(result, op)
                    continue
                result.applied_ops.append(op)
                _count(result.applied, op)
                done.append(op)
                if len(done) >= _REPORT_OPS:
                    self.reporter.ops_done(self.job, done)
                    done = []
        except SrsyncError as exc:
            # the endpoint is unusable: stop here; what was reported applied is whole
            result.stopped = True
            result.error = str(exc)
        finally:
            if done:
                self.reporter.ops_done(self.job, done)
        if seen < len(ops):
            result.stopped = True
        for op in ops[seen:]:
            _mark_failed(result, op)
        return result

    def _batchable(self, op: Operation) -> bool:
        """Operations that need nothing kept in the trash first can be pipelined."""
        return self.trash is None or op.expected is None or op.expected.kind is _DIR

    def _apply_op(self, op: Operation) -> None:
        dest, src = (self.alpha, self.beta) if op.side == ALPHA else (self.beta, self.alpha)
        self._apply(op, dest, src)

    def _apply(self, op: Operation, dest: Endpoint, src: Endpoint) -> None:
        current = dest.stat(op.path)
        if op.kind is _MKDIR:
            if current is not None and current.is_dir:
                return
            self._check(op, current)
            assert op.entry is not None
            dest.mkdir(op.path, op.entry.mode)
            return
        if op.kind is _RENAME:
            assert op.new_path is not None
            self._check(op, current)
            if dest.stat(op.new_path) is not None:
                raise OSError(errno.EEXIST, "conflict copy name is taken; skipped", op.new_path)
            dest.rename(op.path, op.new_path)
            return
        if op.kind is _META:
            assert op.entry is not None
            if current is None or current.kind is not op.entry.kind:
                raise OSError(errno.EAGAIN, "changed since scan; skipped", op.path)
            if op.expected is not None:
                self._check(op, current)
            dest.set_meta(op.path, op.entry.mode, op.entry.mtime_ns)
            return
        self._check(op, current)
        if op.kind is _REMOVE:
            assert op.expected is not None
            if self.trash is not None and op.expected.kind is not _DIR:
                self.trash.keep_removed(dest, op.side, op.path, op.expected)
            else:
                dest.remove(op.path, op.expected.kind)
        elif op.kind is _COPY:
            assert op.entry is not None
            kept = self._keep_replaced(op, dest)
            # unless the old version was just kept aside, ``current`` is what is there now
            transfer_file(src, dest, op.path, op.entry, self.job, self.reporter,
                          dest_known=not kept, dest_now=current)
        elif op.kind is _LINK_OP:
            assert op.entry is not None and op.entry.target is not None
            self._keep_replaced(op, dest)
            dest.symlink(op.path, op.entry.target)

    def _keep_replaced(self, op: Operation, dest: Endpoint) -> bool:
        """Keep the version ``op`` replaces in the trash; whether there was one to keep."""
        if self.trash is not None and op.expected is not None and op.expected.kind is not _DIR:
            self.trash.keep_replaced(dest, op.side, op.path, op.expected)
            return True
        return False

    @staticmethod
    def _check(op: Operation, current: Entry | None) -> None:
        if not matches(current, op.expected):
            raise OSError(errno.EAGAIN, "changed since scan; skipped, will retry next run", op.path)


def _mark_failed(result: ExecResult, op: Operation) -> None:
    result.failed_paths.add(op.path)
    if op.new_path is not None:
        result.failed_paths.add(op.new_path)


def _count(stats: PlanStats, op: Operation) -> None:
    if op.kind is _REMOVE:
        if not op.is_update:  # a type change's removal counts with the create
            stats.deleted += 1
    elif op.kind in _CREATES:
        if op.is_update:
            stats.updated += 1
        else:
            stats.created += 1
        if op.kind is _COPY and op.entry is not None:
            stats.bytes += op.entry.size
    elif op.kind is _META and op.expected is not None:
        stats.meta += 1
