"""What a scan sees: one Entry per path, a Snapshot per side."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from srsync.core.paths import RelPath


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    LINK = "link"


@dataclass(frozen=True, slots=True)
class Entry:
    """One filesystem object as scanned.

    ``mode`` holds permission bits only (``0o7777``).  ``digest`` is the
    XXH3-128 hex digest of a file's content when known.  ``ino`` identifies
    the object for the hash cache and is not part of equality.
    """

    kind: Kind
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0
    target: str | None = None
    digest: str | None = None
    ino: int = field(default=0, compare=False)

    @property
    def is_file(self) -> bool:
        return self.kind is Kind.FILE

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.DIR

    @property
    def is_link(self) -> bool:
        return self.kind is Kind.LINK


def file_entry(size: int, mtime_ns: int, mode: int = 0o644, digest: str | None = None) -> Entry:
    return Entry(Kind.FILE, size=size, mtime_ns=mtime_ns, mode=mode, digest=digest)


def dir_entry(mode: int = 0o755, mtime_ns: int = 0) -> Entry:
    return Entry(Kind.DIR, mode=mode, mtime_ns=mtime_ns)


def link_entry(target: str) -> Entry:
    return Entry(Kind.LINK, target=target)


# A snapshot maps every path below a root (the root itself excluded) to its
# entry.  Parents of every path are present as directories.
Snapshot = dict[RelPath, Entry]


@dataclass(frozen=True, slots=True)
class Problem:
    """Per-path trouble: the run goes on and reports it."""

    path: RelPath
    message: str
    side: str = ""


@dataclass(slots=True)
class ScanResult:
    """What scanning one side yields."""

    entries: Snapshot
    problems: list[Problem] = field(default_factory=list)
    # contents of .srsyncignore files found, keyed by the directory holding them
    ignore_files: dict[RelPath, str] = field(default_factory=dict)
    root_exists: bool = True
    # leftovers of interrupted writes (srsync temp names), to be cleaned up
    temp_files: list[RelPath] = field(default_factory=list)
