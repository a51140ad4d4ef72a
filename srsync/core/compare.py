"""How two entries compare: identical, differing only in metadata, or differing in content."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from srsync.core.entry import Entry, Kind


class Diff(enum.Enum):
    SAME = "same"
    META = "meta"  # same content, different permission bits or mtime
    CONTENT = "content"  # different content or different kind


# members read per compared pair, bound once (see srsync.core.entry)
_SAME, _META, _CONTENT = Diff.SAME, Diff.META, Diff.CONTENT
_FILE, _DIR, _LINK = Kind.FILE, Kind.DIR, Kind.LINK


@dataclass(frozen=True, slots=True)
class Comparator:
    """Compares entries of two sides.

    ``precision_ns`` is the coarser mtime granularity of the two endpoints:
    mtimes are compared after truncation to it, so a side that keeps whole
    seconds never looks changed against a side that keeps nanoseconds.
    When both entries carry a digest (the engine fills them in for
    ``checksum`` runs) a file's content is judged by digest instead of by
    size and mtime.
    ``dir_mtime`` makes directory mtimes part of the metadata compared.
    """

    precision_ns: int = 1
    dir_mtime: bool = True
    compare_mode: bool = True

    def mtime_eq(self, a: int, b: int) -> bool:
        p = self.precision_ns
        return a // p == b // p

    def content_equal(self, a: Entry, b: Entry) -> bool:
        if a.kind is not b.kind:
            return False
        if a.kind is _DIR:
            return True
        if a.kind is _LINK:
            return a.target == b.target
        if a.size != b.size:
            return False
        if a.digest is not None and b.digest is not None:
            return a.digest == b.digest
        return self.mtime_eq(a.mtime_ns, b.mtime_ns)

    def diff(self, a: Entry | None, b: Entry | None) -> Diff:
        # Hot path (called several times per path per run): one pass, no helper calls.
        if a is b:
            return _SAME
        if a is None or b is None:
            return _CONTENT
        kind = a.kind
        if kind is not b.kind:
            return _CONTENT
        if kind is _LINK:
            return _SAME if a.target == b.target else _CONTENT
        p = self.precision_ns
        same_time = a.mtime_ns == b.mtime_ns if p == 1 else a.mtime_ns // p == b.mtime_ns // p
        if kind is _FILE:
            if a.size != b.size:
                return _CONTENT
            da, db = a.digest, b.digest
            if da is not None and db is not None:
                if da != db:
                    return _CONTENT
            elif not same_time:
                return _CONTENT
        elif not self.dir_mtime:
            same_time = True
        if self.compare_mode and (a.mode & 0o7777) != (b.mode & 0o7777):
            return _META
        return _SAME if same_time else _META
