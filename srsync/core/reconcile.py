"""Three-way reconciliation of ancestor, alpha and beta into changes and conflicts.

One function serves every mode: one-way mirroring (``Zero2One``) is the
replica mode of the same reconcile, where beta is made equal to alpha and the
ancestor does not matter.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from srsync.core.compare import Comparator, Diff
from srsync.core.entry import Entry, Snapshot
from srsync.core.paths import RelPath


class Mode(enum.Enum):
    ONE_WAY_REPLICA = "Zero2One"
    TWO_WAY = "One2One"


@dataclass(frozen=True, slots=True)
class Change:
    """Replace ``old`` (what the side has now) by ``new`` at ``path``; None = absent."""

    path: RelPath
    old: Entry | None
    new: Entry | None
    diff: Diff = Diff.CONTENT


@dataclass(frozen=True, slots=True)
class Conflict:
    path: RelPath
    reason: str
    alpha: Entry | None
    beta: Entry | None


@dataclass(frozen=True, slots=True)
class Reconciliation:
    alpha_changes: tuple[Change, ...] = ()
    beta_changes: tuple[Change, ...] = ()
    conflicts: tuple[Conflict, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.alpha_changes or self.beta_changes or self.conflicts)


def reconcile(
    ancestor: Snapshot,
    alpha: Snapshot,
    beta: Snapshot,
    mode: Mode,
    cmp: Comparator,
) -> Reconciliation:
    if mode is Mode.ONE_WAY_REPLICA:
        return _replica(alpha, beta, cmp)
    raise NotImplementedError(f"mode {mode.value} is not available yet")


def _replica(alpha: Snapshot, beta: Snapshot, cmp: Comparator) -> Reconciliation:
    changes: list[Change] = []
    for path in sorted(alpha.keys() | beta.keys()):
        a = alpha.get(path)
        b = beta.get(path)
        diff = cmp.diff(a, b)
        if diff is not Diff.SAME:
            changes.append(Change(path, old=b, new=a, diff=diff))
    return Reconciliation(beta_changes=tuple(changes))
