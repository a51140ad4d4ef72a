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
import enum
import errno
import io
import os
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO

from srsync.agent.delta import (
    ALGORITHMS,
    SHA1,
    DeltaOp,
    Signature,
    apply_ops,
    basis_token,
    match,
    signature,
    signature_fd,
)
from srsync.core.entry import Entry, Kind, ScanResult
from srsync.core.ignore import IgnoreRules
from srsync.core.paths import ROOT, RelPath, parent

# what a scan hands ``listed`` (see Endpoint.scan): entries as they arrive
Listed = Callable[[list[tuple[RelPath, Entry]]], None]

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
    # scan() honours ``expect`` (leaves out quiet directories) and relist() lists just those
    summaries: bool = False


CHANGED = "changed since scan; skipped, will retry next run"
# members read per check, bound once (see srsync.core.entry)
_FILE, _LINK = Kind.FILE, Kind.LINK


def same_state(current: Entry | None, expected: Entry | None) -> bool:
    """Whether what is on disk now is what the scan saw (so acting on it is safe)."""
    if current is None or expected is None:
        return current is None and expected is None
    if current.kind is not expected.kind:
        return False
    kind = current.kind
    if kind is _FILE:
        return current.size == expected.size and current.mtime_ns == expected.mtime_ns
    if kind is _LINK:
        return current.target == expected.target
    return True


class StepKind(enum.Enum):
    MKDIR = "mkdir"
    WRITE = "write"
    LINK = "link"
    REMOVE = "remove"
    META = "meta"


# members read per step, bound once (see srsync.core.entry)
_MKDIR, _LINK_STEP, _REMOVE, _META = StepKind.MKDIR, StepKind.LINK, StepKind.REMOVE, StepKind.META


@dataclass(slots=True, unsafe_hash=True)  # not frozen: a frozen __init__ costs ~4x, and plans hold one per path
class Step:
    """One change for ``apply_steps``, guarded by the state the scan saw.

    With ``guarded`` the endpoint checks the path right before acting, as
    the executor would: MKDIR succeeds at once on an existing directory and
    otherwise needs ``expected``; META needs an object of ``entry``'s kind
    (and ``expected`` when given); the others need ``expected`` exactly
    (``same_state``).  A failed check is ``OSError(EAGAIN)``.
    ``entry`` carries mode and mtime (MKDIR, WRITE, META) or the link target
    (LINK); WRITE content is ``data`` (small files) or ``chunks``.
    """

    kind: StepKind
    path: RelPath
    expected: Entry | None
    entry: Entry | None = None
    guarded: bool = True
    data: bytes | None = None
    chunks: Iterator[bytes] | None = None


@dataclass(slots=True, unsafe_hash=True)  # not frozen: a frozen __init__ costs ~4x, and plans hold one per path
class FileRead:
    """A whole file wanted by ``read_files``: at most ``size`` + 1 bytes are read."""

    path: RelPath
    size: int


class Endpoint(abc.ABC):
    """One side of a sync: a root directory somewhere, read and written by RelPath."""

    capabilities: Capabilities = Capabilities()
    # scan() hands out entries while it lists (its ``listed`` argument): the listing
    # happens elsewhere (a remote helper), so this process has time to use them
    lists_ahead: bool = False

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
    def scan(
        self, rules: IgnoreRules, expect: Mapping[RelPath, str] | None = None, listed: Listed | None = None
    ) -> ScanResult:
        """Walk the whole tree below the root without following symlinks.

        Excluded paths (by ``rules``, as given) are pruned.  Names that are
        not valid (``check_name``) or not UTF-8 are reported as Problems and
        skipped.  Temporary files left by earlier runs are listed in
        ``ScanResult.temp_files`` rather than as entries.  ``.srsyncignore``
        contents are returned in ``ignore_files``.  Digests are not computed.
        A missing root gives ``root_exists=False`` and no entries.

        ``expect`` maps directories to the summary (srsync.core.summary) of the
        files and links the caller expects there.  An endpoint may leave out
        the files and links of a directory that summarises exactly so and had
        no problem, listing it in ``ScanResult.quiet`` instead; subdirectories
        are always listed.  Endpoints that cannot summarise ignore ``expect``.

        ``listed``, where ``lists_ahead`` is true, is called from the scanning thread
        with each piece of ``entries`` as it arrives ((path, entry) pairs, in no
        particular order; a path later found gone is not taken back), so the caller
        can start on them while the rest is listed; others ignore it.
        """

    def relist(self, rules: IgnoreRules, dirs: Iterable[RelPath]) -> ScanResult:
        """List again, in full, the files and links of directories the last ``scan``
        left out as quiet: they go to ``entries`` (subdirectories do not), with
        the problems, temporary files and ignore files found there, as ``scan``
        reports them.

        This default scans the whole tree again and keeps what is in ``dirs``;
        endpoints that leave directories out list just those.
        """
        wanted = set(dirs)
        full = self.scan(rules)

        def inside(path: RelPath) -> bool:
            return path != ROOT and parent(path) in wanted

        return ScanResult(
            entries={p: e for p, e in full.entries.items() if not e.is_dir and inside(p)},
            problems=[p for p in full.problems if inside(p.path) or p.path in wanted],
            ignore_files={d: t for d, t in full.ignore_files.items() if d in wanted},
            root_exists=full.root_exists,
            temp_files=[p for p in full.temp_files if inside(p)],
        )

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

    # ---- batches (optional: endpoints with a remote helper pipeline them) ------
    def read_files(self, files: Iterable[FileRead]) -> Iterator[tuple[bytes, Entry | None] | OSError]:
        """Whole files in order: (content, state after reading) or the OSError for each.

        The state is an lstat of the path taken after reading, or (local fast
        path) an fstat of the very file read, which describes exactly the bytes
        returned.  At most ``size`` + 1 bytes are read, so a caller comparing
        the length and the state with the scan can tell a file that changed.  The
        iterator may read ahead (bounded); per-file trouble never stops it.
        """
        for f in files:
            try:
                parts: list[bytes] = []
                have = 0
                with self.open_read(f.path) as fh:
                    # stop at the scanned size: growth shows in the lstat taken after
                    while have <= f.size:
                        block = fh.read(f.size + 1 - have)
                        if not block:
                            break
                        parts.append(block)
                        have += len(block)
                        if have == f.size:
                            break
                yield b"".join(parts), self.stat(f.path)
            except OSError as exc:
                yield exc

    def hash_files(self, paths: list[RelPath]) -> Iterator[str | OSError]:
        """``hash_file`` for many paths, in order; per-path trouble is returned, not raised."""
        for path in paths:
            try:
                yield self.hash_file(path)
            except OSError as exc:
                yield exc

    def expect_writes(self, count: int) -> None:
        """A hint: the next ``apply_steps`` brings about ``count`` small files to write.

        An endpoint may get ready for it meanwhile (a local one starts a helper
        process for a long batch); the default ignores it.
        """

    def apply_steps(self, steps: Iterable[Step]) -> Iterator[Entry | None | OSError]:
        """Apply guarded steps in order; yields per step the written Entry (WRITE), None, or the OSError.

        A WRITE may also yield None: written as asked, the stored state not
        looked at (pipelined or small writes, where a stat per file would cost
        more than the write; ``transfer_file`` then takes the requested values).
        Endpoints with a remote helper keep many steps in flight; results
        still come in order, and a failed step never stops the later ones.
        On a slow link they may also let writes and symlinks of paths no step
        since the last wait has touched (nor their parents) land out of
        order among themselves; every other step keeps its place.
        """
        for step in steps:
            try:
                yield self._apply_step(step)
            except OSError as exc:
                yield exc

    def _apply_step(self, step: Step) -> Entry | None:
        current = self.stat(step.path) if step.guarded else None
        entry = step.entry
        if step.kind is _MKDIR:
            assert entry is not None
            if step.guarded:
                if current is not None and current.is_dir:
                    return None
                _check(step, current)
            self.mkdir(step.path, entry.mode)
            return None
        if step.kind is _META:
            assert entry is not None
            if step.guarded:
                if current is None or current.kind is not entry.kind:
                    raise OSError(errno.EAGAIN, "changed since scan; skipped", step.path)
                if step.expected is not None:
                    _check(step, current)
            self.set_meta(step.path, entry.mode, entry.mtime_ns)
            return None
        if step.guarded:
            _check(step, current)
        if step.kind is _REMOVE:
            assert step.expected is not None
            self.remove(step.path, step.expected.kind)
            return None
        if step.kind is _LINK_STEP:
            assert entry is not None and entry.target is not None
            self.symlink(step.path, entry.target)
            return None
        assert entry is not None
        chunks = step.chunks if step.chunks is not None else iter([step.data or b""])
        return self.write_file(step.path, chunks, entry.mode, entry.mtime_ns)

    # ---- delta transfer (optional: cheap only where the file is local to its reader) ----
    def delta_algorithms(self) -> tuple[str, ...]:
        """Block digests this endpoint can compute for delta transfer, preferred first."""
        return ALGORITHMS

    def block_signature(
        self, path: RelPath, block: int, algo: str = SHA1, stage: bool = False
    ) -> tuple[Signature, Entry | None]:
        """Block signature of the file at ``path``, with its lstat taken before reading.

        Where ``open_read`` gives a real file descriptor the signature also
        carries the file's basis token (``Signature.basis``, see
        ``srsync.agent.delta.Guard``) when it held still while it was read.
        ``stage``: an edit in place is likely, so an endpoint that can may
        start copying the old file for the ``write_delta`` of the same path
        that follows (``srsync.agent.delta.StagedCopy``); ``drop_staged``
        discards such a copy when no delta comes.
        """
        before = self.stat(path)
        with self.open_read(path) as f:
            fd = _fileno(f)
            if fd is not None:
                return signature_fd(fd, block, algo), before
            return signature(_file_chunks(f), block, algo), before

    def drop_staged(self) -> None:
        """Discard the copy ``block_signature(stage=True)`` started, if ``write_delta`` did not use it."""

    def read_ranges(self, path: RelPath, ranges: Sequence[tuple[int, int]]) -> Iterator[bytes]:
        """The bytes of ``path`` at each (offset, length) of ``ranges``, in order (short at the end).

        For a delta's literals: a few ranges of a big file, read in one open.
        """
        with self.open_read(path) as f:
            fd = _fileno(f)
            for off, length in ranges:
                yield _read_at(f, fd, off, length)

    def delta_ops(
        self, path: RelPath, size: int, sig: Signature, guarded: bool = False
    ) -> Generator[DeltaOp, None, Entry | None]:
        """Delta ops turning the file ``sig`` describes into this endpoint's ``path``.

        Reads at most ``size`` + 1 bytes; returns (as the generator's value)
        the lstat taken afterwards, so the caller can tell a file that changed.
        ``guarded``: the caller sends it as a guarded delta, so the final
        Check carries no CRC (none is computed).
        """
        yield from match(_at_most(self.read_chunks(path), size + 1), sig, crc32=not guarded)
        return self.stat(path)

    def write_delta(
        self, path: RelPath, ops: Iterable[DeltaOp], mode: int, mtime_ns: int, expected: Entry
    ) -> Entry:
        """Rebuild ``path`` from its current content (which must be ``expected``) and ``ops``.

        Written like ``write_file`` (temp + rename); a result that fails the
        ops' final check is never installed.  A guarded delta (see
        ``srsync.agent.delta.Guard``) needs the old file behind a real file
        descriptor (for its basis token) and is refused otherwise.
        """
        with self.open_read(path) as basis:
            if not same_state(self.stat(path), expected):
                raise OSError(errno.EAGAIN, CHANGED, path)
            fd = _fileno(basis)

            def pread(offset: int, length: int) -> bytes:
                return _read_at(basis, fd, offset, length)

            token = None if fd is None else (lambda: basis_token(os.fstat(fd)))
            try:
                return self.write_file(path, apply_ops(ops, pread, expected.size, token), mode, mtime_ns)
            except ValueError as exc:
                raise OSError(errno.EAGAIN, f"{exc}; will retry next run", path) from exc

    def close(self) -> None:
        """Release connections; idempotent."""

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check(step: Step, current: Entry | None) -> None:
    if not same_state(current, step.expected):
        raise OSError(errno.EAGAIN, CHANGED, step.path)


def _fileno(f: object) -> int | None:
    """The OS file descriptor behind a file object from ``open_read``, if it has one."""
    fileno = getattr(f, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _read_at(f: BinaryIO, fd: int | None, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file): by pread
    on ``fd`` when the file object has a descriptor, else by seek and read."""
    if fd is not None:
        return _pread_all(fd, offset, length)
    f.seek(offset)
    parts: list[bytes] = []
    while length > 0:
        got = f.read(length)
        if not got:
            break
        parts.append(got)
        length -= len(got)
    return b"".join(parts)


def _pread_all(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _file_chunks(f: BinaryIO) -> Iterator[bytes]:
    while True:
        block = f.read(CHUNK)
        if not block:
            return
        yield block


def _at_most(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    for block in chunks:
        if len(block) >= limit:
            yield block[:limit]
            return
        limit -= len(block)
        yield block
