"""The Endpoint interface every replica implements, and its Capabilities flags.

Contract (checked by tests/test_endpoint_conformance.py against every
implementation):

* Paths are core RelPaths below the endpoint's root ("" is the root).
* Per-path trouble raises the builtin ``OSError`` subclasses
  (``FileNotFoundError``, ``PermissionError``, ``IsADirectoryError``, ...), the
  same types locally and remotely, so the executor can turn it into a Problem.
* Anything that makes the whole endpoint unusable (connection lost, stalled)
  raises ``srsync.errors.ConnectError``.
* ``write_file`` and ``symlink`` never expose a partly written object at the
  final name: content goes to a temporary name in the same directory and is
  renamed over the final name.
* Symlinks are never followed: ``stat`` and ``scan`` report links as links.
"""

from __future__ import annotations

import abc
from collections.abc import Generator, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO

from srsync.core.entry import Entry, Kind, ScanResult
from srsync.core.ignore import IgnoreRules
from srsync.core.paths import RelPath

CHUNK = 1 << 20  # bytes per read when streaming file content


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Optional abilities and limits of an endpoint (flags, not isinstance checks)."""

    # Granularity of the mtimes this endpoint can store; SFTP v3 keeps whole seconds.
    mtime_precision_ns: int = 1
    atomic_rename: bool = True
    case_insensitive: bool = False
    symlinks: bool = True
    remote: bool = False
    remote_helper: bool = False


class Endpoint(abc.ABC):
    """One side of a sync: a root directory somewhere, read and written by RelPath."""

    capabilities: Capabilities = Capabilities()

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """Where this endpoint is, for messages: ``/abs/path`` or ``user@host:/path``."""

    @property
    def identity(self) -> str:
        """A stable key for caches (hash cache): defaults to the description."""
        return self.description

    # ---- reading -------------------------------------------------------
    @abc.abstractmethod
    def root_exists(self) -> bool:
        """True when the root exists and is a directory."""

    @abc.abstractmethod
    def scan(self, rules: IgnoreRules) -> ScanResult:
        """Walk the whole tree below the root without following symlinks.

        Excluded paths (by ``rules``, as given) are pruned.  Names that are
        not valid (``check_name``) or not UTF-8 are reported as Problems and
        skipped.  Temporary files left by earlier runs are listed in
        ``ScanResult.temp_files`` rather than as entries.  ``.srsyncignore``
        contents are returned in ``ignore_files``.  Digests are not computed.
        A missing root gives ``root_exists=False`` and no entries.
        """

    @abc.abstractmethod
    def stat(self, path: RelPath) -> Entry | None:
        """lstat one path; None when it does not exist.  No digest."""

    @abc.abstractmethod
    def open_read(self, path: RelPath) -> AbstractContextManager[BinaryIO]:
        """Open a regular file for streaming reads."""

    def read_chunks(self, path: RelPath, chunk: int = CHUNK) -> Generator[bytes, None, None]:
        with self.open_read(path) as fh:
            while True:
                block = fh.read(chunk)
                if not block:
                    return
                yield block

    @abc.abstractmethod
    def hash_file(self, path: RelPath) -> str:
        """XXH3-128 hex digest of a regular file's content."""

    # ---- writing -------------------------------------------------------
    @abc.abstractmethod
    def ensure_root(self) -> None:
        """Create the root directory (and its parents) if missing."""

    @abc.abstractmethod
    def write_file(
        self, path: RelPath, chunks: Iterator[bytes], mode: int, mtime_ns: int
    ) -> Entry:
        """Write a regular file atomically: temp name beside it, then rename.

        Mode and mtime are applied to the temporary file before the rename.
        Replaces a file or symlink at ``path``; never a directory.  Returns
        the entry as stored (mtime rounded to what the endpoint keeps).
        If ``chunks`` raises, the temporary file is removed and the final
        name is untouched.
        """

    @abc.abstractmethod
    def mkdir(self, path: RelPath, mode: int) -> None:
        """Create one directory (its parent exists)."""

    @abc.abstractmethod
    def symlink(self, path: RelPath, target: str) -> None:
        """Create or atomically replace a symlink at ``path``."""

    @abc.abstractmethod
    def remove(self, path: RelPath, kind: Kind) -> None:
        """Remove a file or link (unlink) or an empty directory (rmdir)."""

    @abc.abstractmethod
    def set_meta(self, path: RelPath, mode: int | None, mtime_ns: int | None) -> None:
        """Set permission bits and/or mtime of a file or directory (never via a link)."""

    def rename(self, src: RelPath, dst: RelPath) -> None:
        """Rename within this endpoint, replacing a file at ``dst``."""
        raise NotImplementedError

    def link(self, src: RelPath, dst: RelPath) -> None:
        """Hard-link the file at ``src`` to the new name ``dst`` (same side).

        Optional: endpoints that cannot link raise NotImplementedError and the
        caller copies instead.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; idempotent."""

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
