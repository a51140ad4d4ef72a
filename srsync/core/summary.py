"""Directory summaries: one digest of a directory's files and links, for quiet rescans.

A two-way run stores, with its ancestor, the summary of every directory's
files and symlinks (not its subdirectories) as that ancestor records them
(a one-way run stores the mirror's).  The next run hands those summaries to
each side's scan; a side whose directory still summarises the same holds, in
every field reconciliation compares, exactly what was recorded there, so the
scan leaves those entries out ("quiet") and the run neither loads, compares
nor records them.

The summary is computed from the same fields by the local scan, the remote
helper (this module ships to it: stdlib only, Python 3.8) and the state
database, so they must agree byte for byte; they all call ``summarize``.
A directory's files are given as columns (names, sizes, mtimes in ns,
permission bits), its links as (name, target) pairs, each in any order.
The digest is BLAKE2b-128 of: the two counts; the files' numbers in name
order, as little-endian 64-bit integers (or, when one does not fit, as
decimal text, NUL-separated); then the names in that order and each link's
name and target in link-name order, NUL-separated, as UTF-8.  Names and
targets cannot hold NUL, so with the counts the bytes say exactly which
files and links there are.  (Formatting three numbers per file as text cost
more than listing the file; packing them is a third of that.)
"""

from __future__ import annotations

import struct
from operator import attrgetter

# Shipped to the remote helper, whose start-up should not import ``typing``:
# type-only names go under this flag, which mypy takes as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class FileStat(Protocol):
        """The fields of an ``lstat`` result that a summary uses."""

        @property
        def st_size(self) -> int: ...
        @property
        def st_mtime_ns(self) -> int: ...
        @property
        def st_mode(self) -> int: ...

try:  # the same function as hashlib's, without hashlib's OpenSSL import (~3 ms of the helper's start)
    from _blake2 import blake2b as _blake2b
except ImportError:  # pragma: no cover - a python built without it
    from hashlib import blake2b as _blake2b

_COUNTS = struct.Struct("<II")
# Every summary starts with its format's tag: the state database keeps summaries
# across upgrades, and ones of an older format are dropped there, not compared.
# (1: sorted text records, untagged; 2: this one)
TAG = "2:"


def summarize(
    names: list[str], sizes: list[int], mtimes: list[int], modes: list[int], links: list[tuple[str, str]]
) -> str:
    """The digest of one directory's files (parallel columns) and links, each in any order."""
    order = sorted(range(len(names)), key=names.__getitem__)
    numbers = [sizes[i] for i in order] + [mtimes[i] for i in order] + [modes[i] for i in order]
    digest = _blake2b(_COUNTS.pack(len(names), len(links)), digest_size=16)
    try:
        digest.update(b"B" + struct.pack(f"<{len(numbers)}q", *numbers))
    except struct.error:  # a number beyond 64 bits (an mtime past 2262, say): as text
        digest.update(b"T" + "".join([f"{n}\0" for n in numbers]).encode("ascii"))
    text = [names[i] for i in order]
    if links:
        for name, target in sorted(links):
            text.append(name)
            text.append(target)
    digest.update("\0".join(text).encode("utf-8", "surrogatepass"))
    return TAG + digest.hexdigest()


_size_of = attrgetter("st_size")
_mtime_of = attrgetter("st_mtime_ns")
_mode_of = attrgetter("st_mode")
# a regular file's st_mode lies in [_REG_LOW, _REG_HIGH): type bits 0o100000 and any permission bits
_REG_LOW = 0o100000
_REG_HIGH = 0o110000


def summarize_files(names: list[str], stats: list[FileStat]) -> str | None:
    """``summarize`` of a directory that holds regular files only, from their names and
    ``lstat`` results (in the same order); None when any entry is not a regular file.

    The quiet rescans' common case (a leaf directory of files), with the columns
    taken by C loops instead of a Python loop per file: ~0.4 us a file less.
    """
    modes = list(map(_mode_of, stats))
    if modes and (min(modes) < _REG_LOW or max(modes) >= _REG_HIGH):
        return None
    return summarize(
        names, list(map(_size_of, stats)), list(map(_mtime_of, stats)), [mode & 0o7777 for mode in modes], []
    )
