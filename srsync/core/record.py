"""The next ancestor: what a run verifiably applied, folded into the last one (pure)."""

from __future__ import annotations

from srsync.core.entry import Kind, Snapshot
from srsync.core.paths import ROOT, RelPath, depth, parent, under_any


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
    if not failed and not keep:
        new = dict(final)  # the common case: everything applied, nothing held back
    else:
        new = {}
        for path in old.keys() | final.keys():
            if path in failed or (keep and under_any(path, keep)):
                if path in old:
                    new[path] = old[path]
            elif path in final:
                new[path] = final[path]

    def orphan(path: RelPath) -> bool:
        par = parent(path)
        return par != ROOT and ((e := new.get(par)) is None or e.kind is not Kind.DIR)

    if _has_orphan(new):  # rare: sort only when something must go
        for path in sorted(new, key=depth):
            if orphan(path):
                del new[path]
    return new


def _has_orphan(snap: Snapshot) -> bool:
    """Whether some entry's parent is missing or not a directory (inlined: runs per path)."""
    get, dir_kind = snap.get, Kind.DIR
    for path in snap:
        i = path.rfind("/")
        if i > 0 and ((e := get(path[:i])) is None or e.kind is not dir_kind):
            return True
    return False
