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
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import attrgetter

from srsync.core.compare import Diff
from srsync.core.entry import Entry, Kind, Snapshot
from srsync.core.paths import ROOT, RelPath, depth
from srsync.core.reconcile import ALPHA, BETA, Change, Conflict, Reconciliation

_CONTENT = Diff.CONTENT

__all__ = ["ALPHA", "BETA", "NewTreePlan", "OpKind", "Operation", "Plan", "PlanStats", "make_plan"]


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

    removes.sort(key=_deepest_first)
    mkdirs.sort(key=_depth_first)
    writes.sort(key=_by_path)
    file_meta.sort(key=_by_path)
    dmeta = sorted(dir_meta.values(), key=_deepest_first)
    return removes + mkdirs + writes + file_meta + dmeta, stats


# sort keys of make_plan and NewTreePlan (one order for both)
_by_path = attrgetter("path")  # (of an Operation or a Change)


def _depth_first(op: Operation) -> tuple[int, RelPath]:
    return (depth(op.path), op.path)


def _deepest_first(op: Operation) -> tuple[int, RelPath]:
    return (-depth(op.path), op.path)


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


class NewTreePlan:
    """A one-way run's reconciliation and plan for a target that holds nothing, built
    while the mirror is still being listed.

    Fed every entry of a snapshot (``add``, in any order and any number of pieces),
    ``finish`` returns ``reconcile({}, snap, {}, Mode.ONE_WAY_REPLICA, cmp)`` and
    ``make_plan`` of it: the same changes and operations, in the same order, with the
    same counts (against an empty target every entry is new, whatever the comparator).
    A run whose mirror is listed elsewhere (a remote helper) builds them while this
    process waits for the listing, instead of after it.  The caller checks that what
    it fed is exactly the snapshot the run ends up with (``count``).
    """

    def __init__(self) -> None:
        self.count = 0
        self._changes: list[Change] = []
        self._mkdirs: list[Operation] = []
        self._writes: list[Operation] = []
        self._dir_meta: list[Operation] = []
        self._bytes = 0

    def add(self, items: Iterable[tuple[RelPath, Entry]]) -> None:
        # (make_plan's _side_ops for changes that all create, with reconcile's loop fused in)
        changes, mkdirs, writes, dir_meta = self._changes, self._mkdirs, self._writes, self._dir_meta
        dir_kind, file_kind = Kind.DIR, Kind.FILE
        copy_op, link_op, meta_op, mkdir_op = OpKind.COPY, OpKind.LINK, OpKind.META, OpKind.MKDIR
        n = 0
        size = 0
        for path, new in items:
            changes.append(Change(path, None, new, _CONTENT))
            n += 1
            kind = new.kind
            if kind is dir_kind:
                mkdirs.append(Operation(mkdir_op, path, BETA, None, new, False))
                dir_meta.append(Operation(meta_op, path, BETA, None, new))
            elif kind is file_kind:
                writes.append(Operation(copy_op, path, BETA, None, new, False))
                size += new.size
            else:
                writes.append(Operation(link_op, path, BETA, None, new, False))
        self.count += n
        self._bytes += size

    def finish(self, snap: Snapshot) -> tuple[Reconciliation, Plan]:
        """The reconciliation and the plan, for ``snap``: the snapshot fed (the caller has
        checked); the builder is spent."""
        changes = self._changes
        changes.sort(key=_by_path)
        self._mkdirs.sort(key=_depth_first)
        self._writes.sort(key=_by_path)
        self._dir_meta.sort(key=_deepest_first)
        stats = PlanStats(created=self.count, bytes=self._bytes)
        plan = Plan(tuple(self._mkdirs + self._writes + self._dir_meta), (), stats)
        self._changes, self._mkdirs, self._writes, self._dir_meta = [], [], [], []
        return Reconciliation(beta_changes=tuple(changes), final=dict(snap)), plan
