"""Three-way reconciliation of ancestor, alpha and beta into changes, renames and conflicts.

One function serves every mode.  It first decides the *final* tree F, what
both sides should hold after the run, path by path; each side's changes are
then simply the differences between that side and F.  One-way mirroring
(``Zero2One``) is the replica mode, where F is alpha and the ancestor does
not matter; two-way sync (``One2One``) decides F from what changed on each
side since the ancestor.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from srsync.core.compare import Comparator, Diff
from srsync.core.entry import Entry, Kind, Snapshot
from srsync.core.paths import ROOT, RelPath, basename, depth, join, parent

ALPHA = "alpha"
BETA = "beta"
SIDE_LABEL = {ALPHA: "mirror", BETA: "target"}


class Mode(enum.Enum):
    ONE_WAY_REPLICA = "Zero2One"
    TWO_WAY = "One2One"


class Policy(enum.Enum):
    KEEP_BOTH = "keep-both"
    NEWER = "newer"
    MIRROR = "mirror"
    TARGET = "target"
    ASK = "ask"


@dataclass(slots=True, unsafe_hash=True)  # not frozen: a frozen __init__ costs ~4x, and plans hold one per path
class Change:
    """Replace ``old`` (what the side has now) by ``new`` at ``path``; None = absent."""

    path: RelPath
    old: Entry | None
    new: Entry | None
    diff: Diff = Diff.CONTENT


@dataclass(slots=True, unsafe_hash=True)  # not frozen: a frozen __init__ costs ~4x, and plans hold one per path
class Rename:
    """Move a conflict's losing version aside on its own side, before anything else."""

    side: str
    path: RelPath
    new_path: RelPath
    entry: Entry


@dataclass(frozen=True, slots=True)
class Conflict:
    path: RelPath
    reason: str
    alpha: Entry | None
    beta: Entry | None
    resolution: str = ""  # what was done; "" while left for review
    copy_path: RelPath | None = None  # where the losing version was kept, if anywhere

    @property
    def unresolved(self) -> bool:
        return not self.resolution


@dataclass(frozen=True, slots=True)
class Reconciliation:
    alpha_changes: tuple[Change, ...] = ()
    beta_changes: tuple[Change, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    renames: tuple[Rename, ...] = ()
    # what both sides hold once every change is applied: the next ancestor
    final: Snapshot = field(default_factory=dict)
    # paths left untouched on both sides (conflicts for review)
    unresolved: frozenset[RelPath] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.alpha_changes or self.beta_changes or self.conflicts or self.renames)


def conflict_name(path: RelPath, side: str, stamp: str, taken: set[RelPath]) -> RelPath:
    """``dir/name.conflict-<side>-<stamp>.ext``, suffixed ``-N`` until unused."""
    name = basename(path)
    dot = name.rfind(".")
    stem, ext = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    base = f"{stem}.conflict-{SIDE_LABEL[side]}-{stamp}"
    candidate = join(parent(path), base + ext)
    n = 1
    while candidate in taken:
        candidate = join(parent(path), f"{base}-{n}{ext}")
        n += 1
    return candidate


def needs_digest(ancestor: Snapshot, alpha: Snapshot, beta: Snapshot, cmp: Comparator) -> list[RelPath]:
    """Files whose content must be hashed to tell a real conflict from an identical edit."""
    out = []
    diff, same, file_kind = cmp.diff, Diff.SAME, Kind.FILE
    get_b, get_o = beta.get, ancestor.get
    for path, a in alpha.items():
        b = get_b(path)
        if b is None or a.kind is not file_kind or b.kind is not file_kind or a.size != b.size:
            continue
        if a.digest is not None and b.digest is not None:
            continue
        o = get_o(path)
        if o is not None and (  # unchanged on alpha: no conflict to tell apart (_identical, inlined)
            a.mtime_ns == o.mtime_ns and a.size == o.size and a.mode == o.mode and a.kind is o.kind
            and (a.digest == o.digest or a.digest is None or o.digest is None)
        ):
            continue
        if diff(o, a) is not same and diff(o, b) is not same:
            out.append(path)
    return out


def _identical(o: Entry, a: Entry) -> bool:
    """Every compared field equal: ``Comparator.diff`` says SAME at any precision.

    The cheap first test of the hot loops (most paths of a quiet tree pass it);
    where it fails, ``diff`` decides.  Digests count only where both sides have one.
    """
    return (
        a.mtime_ns == o.mtime_ns
        and a.size == o.size
        and a.mode == o.mode
        and a.kind is o.kind
        and a.target == o.target
        and (a.digest == o.digest or a.digest is None or o.digest is None)
    )


def reconcile(
    ancestor: Snapshot,
    alpha: Snapshot,
    beta: Snapshot,
    mode: Mode,
    cmp: Comparator,
    policy: Policy = Policy.KEEP_BOTH,
    decisions: dict[RelPath, Policy] | None = None,
    stamp: str = "00000000-000000",
) -> Reconciliation:
    """Decide the final tree and each side's changes.

    ``decisions`` are per-path policies chosen by the user for earlier
    conflicts (``srsync resolve``); ``stamp`` names conflict copies (the core
    has no clock).
    """
    if mode is Mode.ONE_WAY_REPLICA:
        final = dict(alpha)
        return Reconciliation(beta_changes=_changes(beta, final, cmp, frozenset()), final=final)
    return _TwoWay(ancestor, alpha, beta, cmp, policy, decisions or {}, stamp).run()


def _changes(
    side: Snapshot,
    final: Snapshot,
    cmp: Comparator,
    skip: frozenset[RelPath],
    known_same: dict[RelPath, Entry] | None = None,
) -> tuple[Change, ...]:
    # Hot path: every path of both snapshots passes here, and on a quiet tree
    # almost none changes; only the changes are sorted.  ``known_same`` maps
    # paths to a final entry the caller has proved this side's entry equal to.
    out = []
    diff = cmp.diff
    same = Diff.SAME
    proved = (known_same or {}).get
    for path, fin in final.items():
        if proved(path) is fin:
            continue
        cur = side.get(path)
        if cur is fin or cur is not None and (  # _identical, inlined
            cur.mtime_ns == fin.mtime_ns and cur.size == fin.size and cur.mode == fin.mode
            and cur.kind is fin.kind and cur.target == fin.target
            and (cur.digest == fin.digest or cur.digest is None or fin.digest is None)
        ):
            continue
        d = diff(cur, fin)
        if d is not same and path not in skip:
            out.append(Change(path, cur, fin, d))
    for path, cur in side.items():
        if path not in final and path not in skip:
            out.append(Change(path, cur, None, Diff.CONTENT))
    out.sort(key=_change_path)
    return tuple(out)


def _change_path(ch: Change) -> RelPath:
    return ch.path


class _TwoWay:
    def __init__(
        self,
        ancestor: Snapshot,
        alpha: Snapshot,
        beta: Snapshot,
        cmp: Comparator,
        policy: Policy,
        decisions: dict[RelPath, Policy],
        stamp: str,
    ) -> None:
        self.anc, self.cmp, self.policy, self.decisions, self.stamp = ancestor, cmp, policy, decisions, stamp
        # each side as the changes see it; copied on the first conflict copy moved aside
        self.side = {ALPHA: alpha, BETA: beta}
        self.orig = {ALPHA: alpha, BETA: beta}
        self.final: Snapshot = {}
        self.renames: list[Rename] = []
        self.conflicts: list[Conflict] = []
        self.unresolved: set[RelPath] = set()
        self._taken: set[RelPath] | None = None  # every name in use, built on the first conflict

    def run(self) -> Reconciliation:
        a_snap, b_snap = self.orig[ALPHA], self.orig[BETA]
        anc, final, diff, same = self.anc, self.final, self.cmp.diff, Diff.SAME
        # Paths unchanged on both sides keep the mirror's entry at once; only the
        # rest is decided one by one, in sorted order (conflict copy names depend on it).
        pending: list[RelPath] = []
        # Quiet paths without digests: a ~ ancestor ~ b by size, mtime and mode,
        # hence a ~ b, and the target's change list needn't compare them again.
        quiet: dict[RelPath, Entry] = {}
        get_a, get_b = a_snap.get, b_snap.get
        for path, o in anc.items():
            a = get_a(path)
            # (the test of _identical, inlined: it runs for every path)
            if a is not None and (
                (a.mtime_ns == o.mtime_ns and a.size == o.size and a.mode == o.mode and a.kind is o.kind
                 and a.target == o.target and (a.digest == o.digest or a.digest is None or o.digest is None))
                or diff(o, a) is same
            ):
                b = get_b(path)
                if b is not None and (
                    (b.mtime_ns == o.mtime_ns and b.size == o.size and b.mode == o.mode and b.kind is o.kind
                     and b.target == o.target and (b.digest == o.digest or b.digest is None or o.digest is None))
                    or diff(o, b) is same
                ):
                    final[path] = a
                    if a.digest is None and b.digest is None:
                        quiet[path] = a
                    continue
            pending.append(path)
        pending.extend(p for p in a_snap if p not in anc)
        pending.extend(p for p in b_snap if p not in anc and p not in a_snap)
        pending.sort()
        for path in pending:
            self._decide(path, anc.get(path), a_snap.get(path), b_snap.get(path))
        self._fix_parents()
        # Inside a subtree left for review nothing is touched either.
        frozen: frozenset[RelPath] = frozenset()
        if self.unresolved:
            frozen = frozenset(
                p for p in self.taken | set(self.final) if self._in_unresolved(p)
            )
        for p in frozen:
            self.final.pop(p, None)
        return Reconciliation(
            alpha_changes=_changes(self.side[ALPHA], self.final, self.cmp, frozen),
            beta_changes=_changes(self.side[BETA], self.final, self.cmp, frozen, quiet),
            conflicts=tuple(self.conflicts),
            renames=tuple(self.renames),
            final=self.final,
            unresolved=frozen,
        )

    @property
    def taken(self) -> set[RelPath]:
        if self._taken is None:
            self._taken = set(self.orig[ALPHA]) | set(self.orig[BETA]) | set(self.anc)
        return self._taken

    def _in_unresolved(self, path: RelPath) -> bool:
        while path != ROOT:
            if path in self.unresolved:
                return True
            path = parent(path)
        return False

    # ---- per path ------------------------------------------------------
    def _decide(self, path: RelPath, o: Entry | None, a: Entry | None, b: Entry | None) -> None:
        changed_a = self.cmp.diff(o, a) is not Diff.SAME
        changed_b = self.cmp.diff(o, b) is not Diff.SAME
        if not changed_b:
            chosen = a
        elif not changed_a:
            chosen = b
        else:
            diff = self.cmp.diff(a, b)
            if diff is not Diff.CONTENT:
                chosen = a  # identical edits; on metadata-only differences the mirror wins
            elif a is None:
                chosen = b  # deleted on alpha, changed on beta: the change is kept
            elif b is None:
                chosen = a
            elif a.is_dir != b.is_dir:
                chosen = self._dir_wins(path, a, b, "directory on one side, file or link on the other")
            else:
                self._conflict(path, o, a, b)
                return
        if chosen is not None:
            self.final[path] = chosen

    def _dir_wins(self, path: RelPath, a: Entry, b: Entry, reason: str) -> Entry:
        """A directory always beats a file or link; the latter is kept as a conflict copy."""
        loser_side = BETA if a.is_dir else ALPHA
        loser = b if a.is_dir else a
        copy = self._move_aside(loser_side, path, loser)
        self.conflicts.append(Conflict(path, reason, a, b, f"kept the directory; the {SIDE_LABEL[loser_side]}'s "
                                       f"version is at {copy}", copy))
        return a if a.is_dir else b

    def _conflict(self, path: RelPath, o: Entry | None, a: Entry, b: Entry) -> None:
        reason = "created on both sides with different content" if o is None else "changed on both sides"
        policy = self.decisions.get(path, self.policy)
        if policy is Policy.ASK:
            self.unresolved.add(path)
            self.conflicts.append(Conflict(path, reason, a, b))
            return
        newer_alpha = a.mtime_ns >= b.mtime_ns
        if policy is Policy.MIRROR:
            win = ALPHA
        elif policy is Policy.TARGET:
            win = BETA
        else:
            win = ALPHA if newer_alpha else BETA
        lose = BETA if win == ALPHA else ALPHA
        winner, loser = (a, b) if win == ALPHA else (b, a)
        self.final[path] = winner
        if policy is Policy.KEEP_BOTH:
            copy = self._move_aside(lose, path, loser)
            how = f"kept the {SIDE_LABEL[win]}'s version; the {SIDE_LABEL[lose]}'s is at {copy}"
            self.conflicts.append(Conflict(path, reason, a, b, how, copy))
        else:
            how = f"{policy.value}: kept the {SIDE_LABEL[win]}'s version"
            self.conflicts.append(Conflict(path, reason, a, b, how))

    def _move_aside(self, side: str, path: RelPath, entry: Entry) -> RelPath:
        copy = conflict_name(path, side, self.stamp, self.taken)
        self.taken.add(copy)
        self.renames.append(Rename(side, path, copy, entry))
        if self.side[side] is self.orig[side]:
            self.side[side] = dict(self.orig[side])
        snap = self.side[side]
        snap.pop(path, None)
        snap[copy] = entry
        self.final[copy] = entry
        return copy

    # ---- whole tree ----------------------------------------------------
    def _fix_parents(self) -> None:
        """Every path kept needs its parent kept as a directory.

        A deletion of a directory on one side loses against anything kept
        inside it; a file that replaced such a directory is moved aside.
        Deepest paths first, so repairs climb towards the root.
        """
        final = self.final
        get, dir_kind = final.get, Kind.DIR
        broken = [
            path for path in final
            if (i := path.rfind("/")) > 0 and ((e := get(path[:i])) is None or e.kind is not dir_kind)
        ]
        # Repairs only ever turn a parent into a directory or add a sibling
        # copy, so paths that were fine stay fine: only the broken ones need work.
        for path in sorted(broken, key=lambda p: (-depth(p), p)):
            if path in final:
                self._ensure_dir(parent(path))

    def _ensure_dir(self, q: RelPath) -> None:
        while q != ROOT:
            current = self.final.get(q)
            if current is not None and current.kind is Kind.DIR:
                return
            a, b = self.orig[ALPHA].get(q), self.orig[BETA].get(q)
            dir_entry = a if a is not None and a.is_dir else b
            if dir_entry is None or not dir_entry.is_dir:
                return  # cannot happen for a path kept from a real side
            if current is not None:
                # a file or link won at q, but something below q must be kept
                loser_side = ALPHA if a is not None and not a.is_dir else BETA
                copy = self._move_aside(loser_side, q, current)
                self.conflicts.append(Conflict(
                    q, "replaced by a file on one side while its contents changed on the other",
                    a, b, f"kept the directory; the file is at {copy}", copy))
            self.final[q] = dir_entry
            q = parent(q)
