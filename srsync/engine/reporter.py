"""Progress hooks the engine calls; the engine never prints.  The UI implements them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from srsync.core.entry import Problem
    from srsync.core.reconcile import Conflict
    from srsync.engine.session import PairResult
    from srsync.plan import Operation, Plan


class Reporter:
    """No-op base: override what you need.  Hooks may be called from several threads."""

    def pair_started(self, job: str, target: str, pair: str) -> None: ...

    def scan_started(self, job: str, side: str, where: str) -> None: ...

    def scan_done(self, job: str, side: str, entries: int) -> None: ...

    def plan_ready(self, job: str, pair: str, plan: Plan, dry_run: bool) -> None: ...

    def op_started(self, job: str, op: Operation) -> None: ...

    def bytes_transferred(self, job: str, n: int) -> None: ...

    def op_done(self, job: str, op: Operation) -> None: ...

    def ops_done(self, job: str, ops: Sequence[Operation]) -> None:
        """Several operations done, in order (the executor reports applied operations in
        batches); the default calls ``op_done`` for each."""
        for op in ops:
            self.op_done(job, op)

    def problem(self, job: str, problem: Problem) -> None: ...

    def conflict(self, job: str, conflict: Conflict) -> None: ...

    def halted(self, job: str, reason: str) -> None: ...

    def pair_done(self, job: str, result: PairResult) -> None: ...

    def message(self, job: str, text: str) -> None: ...
