"""How two entries compare: identical, differing only in metadata, or differing in content."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from srsync.core.entry import Entry, Kind


class Diff(enum.Enum):
    SAME = "same"
    META = "meta"  # same content, different permission bits or mtime
    CONTENT = "content"  # different content or different kind


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
        if a.kind is Kind.DIR:
            return True
        if a.kind is Kind.LINK:
            return a.target == b.target
        if a.size != b.size:
            return False
        if a.digest is not None and b.digest is not None:
            return a.digest == b.digest
        return self.mtime_eq(a.mtime_ns, b.mtime_ns)

    def diff(self, a: Entry | None, b: Entry | None) -> Diff:
        if a is None or b is None:
            return Diff.SAME if a is b else Diff.CONTENT
        if not self.content_equal(a, b):
            return Diff.CONTENT
        if a.kind is Kind.LINK:
            return Diff.SAME
        if self.compare_mode and (a.mode & 0o7777) != (b.mode & 0o7777):
            return Diff.META
        if a.kind is Kind.FILE and not self.mtime_eq(a.mtime_ns, b.mtime_ns):
            return Diff.META
        if a.kind is Kind.DIR and self.dir_mtime and not self.mtime_eq(a.mtime_ns, b.mtime_ns):
            return Diff.META
        return Diff.SAME
