"""The next ancestor: what a run verifiably applied, folded into the last one (pure)."""

from __future__ import annotations

from srsync.core.entry import Kind, Snapshot
from srsync.core.paths import ROOT, RelPath, depth, parent


def _under_any(path: RelPath, roots: set[RelPath]) -> bool:
    while path != ROOT:
        if path in roots:
            return True
        path = parent(path)
    return False


def next_ancestor(
    old: Snapshot, final: Snapshot, failed: set[RelPath], keep: set[RelPath]
) -> Snapshot:
    """The ancestor after a run.

    Paths whose operations all succeeded take their final state; paths with a
    failed or unapplied operation, and everything under ``keep`` (conflicts
    left for review, unreadable subtrees), keep their old state, so the next
    run sees exactly what is still to do.  The result is repaired into a tree:
    an entry whose parent is not a directory is dropped (it will compare as
    new on both sides, which loses nothing).
    """
    new: Snapshot = {}
    for path in old.keys() | final.keys():
        if path in failed or (keep and _under_any(path, keep)):
            if path in old:
                new[path] = old[path]
        elif path in final:
            new[path] = final[path]
    def orphan(path: RelPath) -> bool:
        par = parent(path)
        return par != ROOT and ((e := new.get(par)) is None or e.kind is not Kind.DIR)

    if any(orphan(p) for p in new):  # rare: sort only when something must go
        for path in sorted(new, key=depth):
            if orphan(path):
                del new[path]
    return new
