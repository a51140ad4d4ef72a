"""Moving one file's content from a source endpoint into a destination, verified."""

from __future__ import annotations

import errno
from collections.abc import Generator

from srsync.core.entry import Entry, Kind
from srsync.endpoints.base import Endpoint
from srsync.engine.reporter import Reporter


class SourceChanged(OSError):
    """The source file changed while it was being read; nothing was written."""


def matches(current: Entry | None, expected: Entry | None) -> bool:
    """Whether what is on disk now is what the scan saw (so acting on it is safe)."""
    if current is None or expected is None:
        return current is None and expected is None
    if current.kind is not expected.kind:
        return False
    if current.kind is Kind.FILE:
        return current.size == expected.size and current.mtime_ns == expected.mtime_ns
    if current.kind is Kind.LINK:
        return current.target == expected.target
    return True


def verified_chunks(
    src: Endpoint, path: str, entry: Entry, job: str, reporter: Reporter
) -> Generator[bytes, None, None]:
    """Stream a source file, failing (before any rename) if it changed meanwhile.

    Reads at most the scanned size: a file that keeps growing (a live log)
    must not keep the transfer going forever.
    """
    total = 0
    blocks = src.read_chunks(path)
    try:
        for block in blocks:
            if total + len(block) > entry.size:
                raise SourceChanged(errno.EAGAIN, "changed while being read; will retry next run", path)
            total += len(block)
            reporter.bytes_transferred(job, len(block))
            yield block
            if total == entry.size:
                break
    finally:
        blocks.close()  # release the (possibly remote) file handle now, not at GC
    now = src.stat(path)
    if total != entry.size or not matches(now, entry):
        raise SourceChanged(errno.EAGAIN, "changed while being read; will retry next run", path)


def transfer_file(
    src: Endpoint, dest: Endpoint, path: str, entry: Entry, job: str, reporter: Reporter
) -> Entry:
    """Install the source's ``path`` at the destination atomically (temp + rename)."""
    return dest.write_file(
        path, verified_chunks(src, path, entry, job, reporter), entry.mode, entry.mtime_ns
    )
