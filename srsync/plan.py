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
from srsync.core.paths import ROOT, RelPath, depth
from srsync.core.reconcile import ALPHA, BETA, Change, Conflict, Reconciliation

__all__ = ["ALPHA", "BETA", "OpKind", "Operation", "Plan", "PlanStats", "make_plan"]


class OpKind(enum.Enum):
    RENAME = "rename"  # move a conflict's losing version aside, before everything else
    REMOVE = "remove"
    MKDIR = "mkdir"
    COPY = "copy"
    LINK = "link"
    META = "meta"


@dataclass(slots=True, unsafe_hash=True)  # not frozen: a frozen __init__ costs ~4x, and plans hold one per path
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


def _side_ops(changes: tuple[Change, ...], side: str, source: Snapshot) -> tuple[list[Operation], PlanStats]:
    stats = PlanStats()
    removes: list[Operation] = []
    mkdirs: list[Operation] = []
    writes: list[Operation] = []
    file_meta: list[Operation] = []
    dir_meta: dict[RelPath, Operation] = {}
    touched_dirs: set[RelPath] = set()

    # hot loop (one pass per changed path): positional construction, locals, inlined parent()
    file_kind, dir_kind, meta_diff = Kind.FILE, Kind.DIR, Diff.META
    copy_op, link_op, remove_op, meta_op, mkdir_op = (
        OpKind.COPY, OpKind.LINK, OpKind.REMOVE, OpKind.META, OpKind.MKDIR)
    add_touched = touched_dirs.add
    for ch in changes:
        old, new, path = ch.old, ch.new, ch.path
        i = path.rfind("/")
        par = path[:i] if i > 0 else ROOT
        if new is None:
            assert old is not None
            removes.append(Operation(remove_op, path, side, old))
            stats.deleted += 1
            add_touched(par)
            continue
        if ch.diff is meta_diff:
            assert old is not None
            if new.kind is dir_kind:
                dir_meta[path] = Operation(meta_op, path, side, old, new)
            else:
                file_meta.append(Operation(meta_op, path, side, old, new))
            stats.meta += 1
            continue
        expected = old
        if old is not None and (old.kind is dir_kind) != (new.kind is dir_kind):
            # clearing the way for a type change: counted as the update it is part of
            removes.append(Operation(remove_op, path, side, old, None, True))
            expected = None
        add_touched(par)
        if new.kind is dir_kind:
            mkdirs.append(Operation(mkdir_op, path, side, expected, new, old is not None))
            dir_meta[path] = Operation(meta_op, path, side, None, new)
            if old is None:
                stats.created += 1
            else:
                stats.updated += 1
        else:
            kind = copy_op if new.kind is file_kind else link_op
            writes.append(Operation(kind, path, side, expected, new, old is not None))
            if old is None:
                stats.created += 1
            else:
                stats.updated += 1
            if kind is copy_op:
                stats.bytes += new.size

    # Directories whose children change get their mtime re-applied afterwards,
    # or the next comparison would see them as changed.
    for d in touched_dirs:
        if d == ROOT or d in dir_meta:
            continue
        src = source.get(d)
        if src is not None and src.kind is dir_kind:
            dir_meta[d] = Operation(meta_op, d, side, expected=None, entry=src)

    removes.sort(key=lambda op: (-depth(op.path), op.path))
    mkdirs.sort(key=lambda op: (depth(op.path), op.path))
    writes.sort(key=_op_path)
    file_meta.sort(key=_op_path)
    dmeta = sorted(dir_meta.values(), key=lambda op: (-depth(op.path), op.path))
    return removes + mkdirs + writes + file_meta + dmeta, stats


def _op_path(op: Operation) -> RelPath:
    return op.path


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
