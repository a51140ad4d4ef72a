"""Turn a reconciliation into an ordered list of operations (pure).

Order, for each side written:
0. (both sides) conflict renames, moving losing versions aside;
1. removals, deepest first: deleted paths, and old objects that a type change
   between directory and non-directory must clear away;
2. directories created, parents before children (created owner-writable so
   children can be written; their final mode comes in step 5);
3. files and symlinks written, in path order;
4. metadata-only updates of files;
5. directory mode and mtime, deepest first, so that writing children no
   longer disturbs them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from srsync.core.compare import Diff
from srsync.core.entry import Entry, Kind, Snapshot
from srsync.core.paths import ROOT, RelPath, depth, parent
from srsync.core.reconcile import ALPHA, BETA, Change, Conflict, Reconciliation

__all__ = ["ALPHA", "BETA", "OpKind", "Operation", "Plan", "PlanStats", "make_plan"]


class OpKind(enum.Enum):
    RENAME = "rename"  # move a conflict's losing version aside, before everything else
    REMOVE = "remove"
    MKDIR = "mkdir"
    COPY = "copy"
    LINK = "link"
    META = "meta"


@dataclass(frozen=True, slots=True)
class Operation:
    """One step on side ``side``: what it expects to find there and what it puts."""

    kind: OpKind
    path: RelPath
    side: str
    expected: Entry | None  # what the side held at scan time; re-checked before acting
    entry: Entry | None = None  # the new object (for REMOVE: None)
    is_update: bool = False  # replaces an existing object (type changes included)
    new_path: RelPath | None = None  # RENAME only


@dataclass(slots=True)
class PlanStats:
    created: int = 0
    updated: int = 0
    deleted: int = 0
    meta: int = 0
    bytes: int = 0
    conflicts: int = 0

    def add(self, other: PlanStats) -> None:
        self.created += other.created
        self.updated += other.updated
        self.deleted += other.deleted
        self.meta += other.meta
        self.bytes += other.bytes
        self.conflicts += other.conflicts


@dataclass(frozen=True, slots=True)
class Plan:
    operations: tuple[Operation, ...]
    conflicts: tuple[Conflict, ...] = ()
    stats: PlanStats = field(default_factory=PlanStats)

    @property
    def empty(self) -> bool:
        return not self.operations and not self.conflicts


def _is_dir(e: Entry | None) -> bool:
    return e is not None and e.kind is Kind.DIR


def _side_ops(changes: tuple[Change, ...], side: str, source: Snapshot) -> tuple[list[Operation], PlanStats]:
    stats = PlanStats()
    removes: list[Operation] = []
    mkdirs: list[Operation] = []
    writes: list[Operation] = []
    file_meta: list[Operation] = []
    dir_meta: dict[RelPath, Operation] = {}
    touched_dirs: set[RelPath] = set()

    for ch in changes:
        old, new = ch.old, ch.new
        if new is None:
            assert old is not None
            removes.append(Operation(OpKind.REMOVE, ch.path, side, expected=old))
            stats.deleted += 1
            touched_dirs.add(parent(ch.path))
            continue
        if ch.diff is Diff.META:
            assert old is not None
            if new.kind is Kind.DIR:
                dir_meta[ch.path] = Operation(OpKind.META, ch.path, side, expected=old, entry=new)
            else:
                file_meta.append(Operation(OpKind.META, ch.path, side, expected=old, entry=new))
            stats.meta += 1
            continue
        expected = old
        if old is not None and _is_dir(old) != _is_dir(new):
            # clearing the way for a type change: counted as the update it is part of
            removes.append(Operation(OpKind.REMOVE, ch.path, side, expected=old, is_update=True))
            expected = None
        touched_dirs.add(parent(ch.path))
        if new.kind is Kind.DIR:
            mkdirs.append(
                Operation(OpKind.MKDIR, ch.path, side, expected=expected, entry=new, is_update=old is not None)
            )
            dir_meta[ch.path] = Operation(OpKind.META, ch.path, side, expected=None, entry=new)
            if old is None:
                stats.created += 1
            else:
                stats.updated += 1
        else:
            kind = OpKind.COPY if new.kind is Kind.FILE else OpKind.LINK
            writes.append(
                Operation(kind, ch.path, side, expected=expected, entry=new, is_update=old is not None)
            )
            if old is None:
                stats.created += 1
            else:
                stats.updated += 1
            if kind is OpKind.COPY:
                stats.bytes += new.size

    # Directories whose children change get their mtime re-applied afterwards,
    # or the next comparison would see them as changed.
    for d in touched_dirs:
        if d == ROOT or d in dir_meta:
            continue
        src = source.get(d)
        if src is not None and src.kind is Kind.DIR:
            dir_meta[d] = Operation(OpKind.META, d, side, expected=None, entry=src)

    removes.sort(key=lambda op: (-depth(op.path), op.path))
    mkdirs.sort(key=lambda op: (depth(op.path), op.path))
    writes.sort(key=lambda op: op.path)
    file_meta.sort(key=lambda op: op.path)
    dmeta = sorted(dir_meta.values(), key=lambda op: (-depth(op.path), op.path))
    return removes + mkdirs + writes + file_meta + dmeta, stats


def make_plan(rec: Reconciliation) -> Plan:
    """Order the reconciliation into operations: conflict renames, then beta's, then alpha's.

    Renames go first on both sides because the other side may copy the
    moved-aside version from its new name.
    """
    renames = [
        Operation(OpKind.RENAME, r.path, r.side, expected=r.entry, entry=r.entry, new_path=r.new_path)
        for r in rec.renames
    ]
    ops_b, stats = _side_ops(rec.beta_changes, BETA, rec.final)
    ops_a, stats_a = _side_ops(rec.alpha_changes, ALPHA, rec.final)
    stats.add(stats_a)
    stats.conflicts = len(rec.conflicts)
    return Plan(tuple(renames + ops_b + ops_a), rec.conflicts, stats)
