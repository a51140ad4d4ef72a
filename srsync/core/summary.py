"""Directory summaries: one digest of a directory's files and links, for quiet two-way rescans.

A two-way run stores, with its ancestor, the summary of every directory's
files and symlinks (not its subdirectories) as that ancestor records them.
The next run hands those summaries to each side's scan; a side whose
directory still summarises the same holds, in every field reconciliation
compares, exactly what the ancestor holds there, so the scan leaves those
entries out ("quiet") and the run neither loads, compares nor records them.

The summary is computed from the same fields by the local scan, the remote
helper (this module ships to it: stdlib only, Python 3.8) and the state
database, so they must agree byte for byte: each child is one record of
NUL-terminated fields (names and link targets cannot hold NUL), the records
are sorted, and the digest is BLAKE2b-128 of their UTF-8 text.
"""

from __future__ import annotations

try:  # the same function as hashlib's, without hashlib's OpenSSL import (~3 ms of the helper's start)
    from _blake2 import blake2b as _blake2b
except ImportError:  # pragma: no cover - a python built without it
    from hashlib import blake2b as _blake2b


def file_record(name: str, size: int, mtime_ns: int, mode: int) -> str:
    """A regular file's record: name, kind, size, mtime (ns) and permission bits."""
    return f"{name}\0f\0{size}\0{mtime_ns}\0{mode}\0"


def link_record(name: str, target: str) -> str:
    """A symlink's record: name, kind and target."""
    return f"{name}\0l\0{target}\0"


def summarize(records: list[str]) -> str:
    """The digest of one directory's records, in any order (sorts ``records`` in place)."""
    records.sort()
    return _blake2b("".join(records).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
