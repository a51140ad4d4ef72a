"""Endpoint for a directory tree on this machine.

Big trees (100k small files) make the per-entry Python cost matter, so the
hot paths (``scan``, ``read_files``, ``hash_files``, ``apply_steps``) are
tight loops over ``os`` calls rather than compositions of the single-path
methods.  They keep the same invariants:

* every path is validated (``check_name`` per component) before it touches
  the disk; validated parent directories are cached, so a batch pays for
  each directory once;
* symlinks are never followed (``O_NOFOLLOW`` opens, ``lstat``); a scan
  opens each directory with ``O_NOFOLLOW`` before listing it, so it does not
  descend into a symlink swapped in for a directory it listed;
* writes go to a temporary sibling nobody else holds (random token,
  ``O_CREAT|O_EXCL|O_NOFOLLOW``, 0600), get mode and mtime, are checked
  against the step's expected state (guarded steps) and only then renamed
  over the final name; any failure removes the temporary file.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import stat as st
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import AbstractContextManager, suppress
from typing import BinaryIO, cast

from srsync.agent.delta import (
    SHA1,
    DeltaOp,
    Signature,
    StagedCopy,
    basis_token,
    rebuild_into,
    signature_fd,
)
from srsync.background import in_background
from srsync.core.entry import Entry, Kind, Problem, ScanResult
from srsync.core.ignore import IGNORE_FILE, IgnoreRules
from srsync.core.paths import (
    NAME_MAX,
    ROOT,
    TEMP_PREFIX,
    BadName,
    RelPath,
    check_name,
    join,
    joined_paths_valid,
    nfc,
    validate_relpath,
)
from srsync.core.paths import temp_name as paths_temp_name
from srsync.core.summary import summarize, summarize_files
from srsync.endpoints.base import (
    CHANGED,
    Capabilities,
    Endpoint,
    FileRead,
    Listed,
    Step,
    StepKind,
    same_state,
)
from srsync.endpoints.hashing import FD_CHUNK, digest_fd
from srsync.errors import ConnectError

_FILE, _DIR, _LINK = Kind.FILE, Kind.DIR, Kind.LINK
_LINK_STEP, _META_STEP = StepKind.LINK, StepKind.META
_IFMT, _IFREG, _IFDIR, _IFLNK = 0o170000, st.S_IFREG, st.S_IFDIR, st.S_IFLNK

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: a fifo swapped in for a file must not hang the run (no effect on files)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC  # the root may be a symlink to a directory
_SUBDIR_FLAGS = _ROOT_FLAGS | os.O_NOFOLLOW  # nothing below it is followed
_READ_CAP = 1 << 24  # bytes per os.read in read_files (os.read allocates what it is asked for)
_BAD_NAMES = frozenset(("", ".", ".."))
_TEMP_ROOM = NAME_MAX - len(TEMP_PREFIX) - 17  # name bytes beside a 16-hex-digit token and "-"
_DIR_CACHE_MAX = 65536
_ACCESS_AT = os.access in os.supports_dir_fd and os.access in os.supports_follow_symlinks
# New files can be written unnamed (O_TMPFILE) and then linked in, which fails
# where the name is taken: an install that can never replace anything (Linux)
_TMPFILE_FLAGS = getattr(os, "O_TMPFILE", 0) | os.O_WRONLY | _CLOEXEC
_TMPFILE = hasattr(os, "O_TMPFILE") and os.link in os.supports_dir_fd and os.path.isdir("/proc/self/fd")
# A long batch of small files is written by the helper run as a child process
# (srsync.agent.pipe): its system calls (~22 us a new small file) then run beside
# this process's reading and decoding.  Long: at least HELPER_WRITES files, as
# announced by expect_writes (a one-way session once the scans show that many new
# paths, the executor again before reading a batch's files), so the child starts
# (~30 ms; the calls of ~1500 files) before the first contents arrive.
HELPER_WRITES = 4096
_LOCATE_BATCH = 1024  # paths checked together by read_files (see _located)
# The helper spreads its batches over this many child processes: one writer is
# the busiest process of a cold pull of small files (its system calls), while the
# other core has room.
WRITERS = min(2, os.cpu_count() or 1)
LOCAL_HELPER_ENV = "SRSYNC_LOCAL_HELPER"  # "off": every step in this process
_UNFIT_NAME = "name is not valid UTF-8 or not allowed; skipped"
_TWINS = "two names differ only in Unicode normalisation; both skipped"


def _local_helper_allowed() -> bool:
    return os.environ.get(LOCAL_HELPER_ENV, "").strip().lower() not in ("off", "no", "0", "false")


def temp_name(final_name: str) -> str:
    """A fresh temporary sibling name for ``final_name`` (see ``core.paths.temp_name``)."""
    return paths_temp_name(final_name, secrets.token_hex(8))


def entry_from_stat(s: os.stat_result, target: str | None = None) -> Entry | None:
    mode = s.st_mode
    fmt = mode & _IFMT
    if fmt == _IFREG:
        return Entry(_FILE, s.st_size, s.st_mtime_ns, mode & 0o7777, None, None, s.st_ino)
    if fmt == _IFDIR:
        return Entry(_DIR, 0, s.st_mtime_ns, mode & 0o7777, None, None, s.st_ino)
    if fmt == _IFLNK:
        return Entry(_LINK, 0, 0, 0, target, None, s.st_ino)
    return None


def _plain_names(names: list[str]) -> bool:
    """True when every name is ASCII and a valid component (no check needed one by one).

    ASCII names are their own NFC and valid UTF-8; readdir never returns "",
    ".", "..", "/" or NUL, but that is checked here too, for the whole list
    at once.
    """
    joined = "\0".join(names)
    if not joined.isascii() or "/" in joined or joined.count("\0") != len(names) - 1:
        return False
    joined = f"\0{joined}\0"
    return "\0\0" not in joined and "\0.\0" not in joined and "\0..\0" not in joined


def _write_all(fd: int, data: bytes) -> None:
    n = os.write(fd, data)
    if n < len(data):
        view = memoryview(data)[n:]
        while view:
            view = view[os.write(fd, view) :]


class _Staged:
    """A copy of ``path``'s old file under way in the temporary file ``tmp`` of directory ``dfd``."""

    __slots__ = ("path", "copy", "dfd", "tmp")

    def __init__(self, path: RelPath, copy: StagedCopy, dfd: int, tmp: str) -> None:
        self.path = path
        self.copy = copy
        self.dfd = dfd
        self.tmp = tmp

    def discard(self) -> None:
        self.copy.close()
        with suppress(OSError):
            os.unlink(self.tmp, dir_fd=self.dfd)
        os.close(self.dfd)


def _changed(path: RelPath) -> OSError:
    return OSError(errno.EAGAIN, CHANGED, path)


class LocalEndpoint(Endpoint):
    capabilities = Capabilities(mtime_precision_ns=1, summaries=True)

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self._root_slash = self.root if self.root.endswith("/") else self.root + "/"
        # On-disk spelling of paths whose names are not NFC (as found by the
        # last scan): the core only ever sees NFC, the disk keeps its bytes.
        self._disk_names: dict[RelPath, str] = {}
        # validated parent RelPath -> its absolute on-disk path with a trailing "/"
        # (depends on _disk_names only, so a scan clears it)
        self._dirs: dict[RelPath, str] = {}
        self._new_temp_token()
        self._tmpfile = _TMPFILE
        self._top_names: list[str] = []  # the root's first names, for the case probe
        # the old file being copied for the write_delta that follows (block_signature stage=True)
        self._staged: _Staged | None = None
        self._helper: Future[Endpoint | None] | None = None  # started by expect_writes
        self.helper_batches = 0  # batches applied by a helper started here (apply_steps)

    @property
    def description(self) -> str:
        return self.root

    def _abs(self, path: RelPath) -> str:
        """The on-disk absolute path of ``path``; raises BadName for an invalid one."""
        if path == ROOT:
            return self.root
        i = path.rfind("/")
        if i < 0:
            base = self._root_slash
            name = path
        else:
            base = self._dirs.get(path[:i]) or self._parent_abs(path, path[:i])
            name = path[i + 1 :]
        if name in _BAD_NAMES or "\0" in name:
            check_name(name)  # raises
        if self._disk_names:
            name = self._disk_names.get(path, name)
        return base + name

    def _located(self, files: Iterable[FileRead]) -> Iterator[tuple[FileRead, str]]:
        """Each of ``files`` with its ``_abs`` path: for a batch of paths that need no
        other spelling on disk and are all valid (``joined_paths_valid``, a few searches
        of their joined text), the root and the path joined, else ``_abs`` one by one."""
        root, abs_path = self._root_slash, self._abs
        pending = iter(files)
        while chunk := list(itertools.islice(pending, _LOCATE_BATCH)):
            paths = [f.path for f in chunk]
            if not self._disk_names and joined_paths_valid("\x00".join(paths), len(paths)):
                yield from zip(chunk, [root + path for path in paths], strict=True)
            else:
                for f in chunk:
                    yield f, abs_path(f.path)

    def _parent_abs(self, path: RelPath, parent: RelPath) -> str:
        validate_relpath(path)  # the whole path: the usual BadName for a bad one
        disk = parent
        if self._disk_names:
            parts: list[str] = []
            current = ROOT
            for part in parent.split("/"):
                current = join(current, part)
                parts.append(self._disk_names.get(current, part))
            disk = "/".join(parts)
        base = self._root_slash + disk + "/"
        if len(self._dirs) >= _DIR_CACHE_MAX:
            self._dirs.clear()
        self._dirs[parent] = base
        return base

    def _probe_case(self, names: list[str]) -> None:
        """Find out, without writing anything, whether the filesystem folds letter case.

        Looks an existing name up with its case swapped: on a case-folding
        filesystem it is the same object.
        """
        candidates = [os.path.join(self.root, n) for n in names[:8]] + [self.root]
        for full in candidates:
            head, tail = os.path.split(full)
            swapped = tail.swapcase()
            if swapped == tail:
                continue
            try:
                a = os.lstat(full)
                b = os.lstat(os.path.join(head, swapped))
            except OSError:
                folded = False
            else:
                folded = (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
            self.capabilities = Capabilities(mtime_precision_ns=1, case_insensitive=folded, summaries=True)
            return

    # ---- reading -------------------------------------------------------
    def root_exists(self) -> bool:
        return os.path.isdir(self.root)

    def scan(
        self, rules: IgnoreRules, expect: Mapping[RelPath, str] | None = None, listed: Listed | None = None
    ) -> ScanResult:
        result = ScanResult(entries={})
        expected = expect or {}
        self._disk_names = {}
        self._dirs = {}
        if not self.root_exists():
            result.root_exists = False
            return result
        # (dir RelPath, its on-disk path): each directory is opened (never
        # through a symlink below the root) and listed by fd, so the lstat of
        # every entry resolves one name, not the whole path
        pending: list[tuple[RelPath, str]] = [(ROOT, self.root)]
        self._top_names = []  # (set by the root's listing, quiet or not)
        while pending:
            rel_dir, disk_dir = pending.pop()
            try:
                fd = os.open(disk_dir, _SUBDIR_FLAGS if rel_dir else _ROOT_FLAGS)
            except OSError as exc:
                result.problems.append(Problem(rel_dir, f"cannot list directory: {exc.strerror}"))
                continue
            try:
                self._scan_dir(fd, rel_dir, disk_dir, rules, result, pending, expected.get(rel_dir))
            finally:
                os.close(fd)
        self._probe_case(self._top_names)
        return result

    def relist(self, rules: IgnoreRules, dirs: Iterable[RelPath]) -> ScanResult:
        """``Endpoint.relist``: each directory listed alone, as ``scan`` lists one."""
        result = ScanResult(entries={})
        for rel_dir in dirs:
            try:
                disk_dir = self._abs(rel_dir)
                fd = os.open(disk_dir, _SUBDIR_FLAGS if rel_dir else _ROOT_FLAGS)
            except OSError as exc:
                result.problems.append(Problem(rel_dir, f"cannot list directory: {exc.strerror}"))
                continue
            try:
                self._scan_dir(fd, rel_dir, disk_dir, rules, result, [])
            finally:
                os.close(fd)
        result.entries = {p: e for p, e in result.entries.items() if e.kind is not _DIR}
        return result

    def _scan_dir(
        self,
        fd: int,
        rel_dir: RelPath,
        disk_dir: str,
        rules: IgnoreRules,
        result: ScanResult,
        pending: list[tuple[RelPath, str]],
        want: str | None = None,
    ) -> None:
        """List one directory (open as ``fd``) into ``result``; subdirectories go to ``pending``.

        With ``want`` (the summary expected of its files and links), a directory
        that matches it and had no problem keeps only its subdirectories in
        ``result.entries`` and is counted in ``result.quiet``.
        """
        problems = result.problems
        problems_before = len(problems)
        try:
            with os.scandir(fd) as it:
                items = list(it)
        except OSError as exc:
            problems.append(Problem(rel_dir, f"cannot list directory: {exc.strerror}"))
            return
        if not items:
            return
        prefix = rel_dir + "/" if rel_dir else ""
        names = [item.name for item in items]
        rels: list[RelPath] | None = None  # paths of plain names: built once needed
        if _plain_names(names):
            if TEMP_PREFIX in "".join(names):
                keep = [i for i, name in enumerate(names) if not name.startswith(TEMP_PREFIX)]
                result.temp_files.extend(prefix + name for name in names if name.startswith(TEMP_PREFIX))
                items = [items[i] for i in keep]
                names = [names[i] for i in keep]
        else:
            items, names, rels = self._check_names(items, rel_dir, prefix, result)
        if not rel_dir:
            self._top_names = names[:8]  # for the case probe, even when the root is quiet
        entries = result.entries
        check_files = rules.may_exclude_files()
        check_dirs = bool(rules.rules)
        is_excluded = rules.is_excluded
        has_ignore = IGNORE_FILE in names
        disk_slash = disk_dir if disk_dir.endswith("/") else disk_dir + "/"
        try_quiet = want is not None and len(problems) == problems_before
        if try_quiet and rels is None and not check_files and items:
            # the usual quiet directory, files only: no paths built, columns taken in C
            try:
                summary = summarize_files(names, [item.stat(follow_symlinks=False) for item in items])
            except OSError:
                summary, try_quiet = None, False  # the full listing reports it
            if summary == want:
                if has_ignore:
                    self._read_ignore_file(fd, rel_dir, prefix + IGNORE_FILE, result)
                result.quiet[rel_dir] = len(names)
                return
            if summary is not None:
                try_quiet = False  # files only, and changed: the full listing
        if rels is None:
            rels = [prefix + name for name in names] if prefix else names
        if try_quiet:
            assert want is not None
            quiet = self._quiet_listing(fd, items, names, rels, len(prefix), rules, want)
            if quiet is not None:
                subdirs, hidden, ignore_file = quiet
                for item, name, rel in subdirs:
                    s = item.stat(follow_symlinks=False)  # (cached by the DirEntry)
                    entries[rel] = Entry(_DIR, 0, s.st_mtime_ns, s.st_mode & 0o7777, None, None, s.st_ino)
                    pending.append((rel, disk_slash + name))
                if ignore_file:
                    self._read_ignore_file(fd, rel_dir, prefix + IGNORE_FILE, result)
                result.quiet[rel_dir] = hidden
                return
        for item, name, rel in zip(items, names, rels, strict=True):
            try:
                s = item.stat(follow_symlinks=False)
            except OSError as exc:
                problems.append(Problem(rel, f"cannot stat: {exc.strerror}"))
                continue
            mode = s.st_mode
            fmt = mode & _IFMT
            if fmt == _IFREG:
                if check_files and is_excluded(rel, False):
                    continue
                entries[rel] = Entry(_FILE, s.st_size, s.st_mtime_ns, mode & 0o7777, None, None, s.st_ino)
                if has_ignore and name == IGNORE_FILE:
                    self._read_ignore_file(fd, rel_dir, rel, result)
            elif fmt == _IFDIR:
                if check_dirs and is_excluded(rel, True):
                    continue
                entries[rel] = Entry(_DIR, 0, s.st_mtime_ns, mode & 0o7777, None, None, s.st_ino)
                pending.append((rel, disk_slash + name))
            elif fmt == _IFLNK:
                try:
                    target = os.readlink(name, dir_fd=fd)
                except OSError as exc:
                    problems.append(Problem(rel, f"cannot stat: {exc.strerror}"))
                    continue
                if check_files and is_excluded(rel, False):
                    continue
                entries[rel] = Entry(_LINK, 0, 0, 0, target, None, s.st_ino)
            else:
                problems.append(Problem(rel, "special file (device, fifo or socket); skipped"))

    @staticmethod
    def _quiet_listing(
        fd: int,
        items: list[os.DirEntry[str]],
        names: list[str],
        rels: list[RelPath],
        cut: int,
        rules: IgnoreRules,
        want: str,
    ) -> tuple[list[tuple[os.DirEntry[str], str, RelPath]], int, bool] | None:
        """Whether a listed directory's files and links summarise as ``want``.

        If so: its subdirectories (item, on-disk name, path), how many files
        and links there are, and whether an ignore file is among them.  None
        when they differ or anything is amiss (the full listing then reports it).
        """
        # the files' columns and the links, for the summary
        fnames: list[str] = []
        sizes: list[int] = []
        mtimes: list[int] = []
        modes: list[int] = []
        links: list[tuple[str, str]] = []
        subdirs: list[tuple[os.DirEntry[str], str, RelPath]] = []
        check_files = rules.may_exclude_files()
        check_dirs = bool(rules.rules)
        is_excluded = rules.is_excluded
        ignore_file = False
        for item, name, rel in zip(items, names, rels, strict=True):
            try:
                s = item.stat(follow_symlinks=False)
            except OSError:
                return None
            mode = s.st_mode
            fmt = mode & _IFMT
            if fmt == _IFREG:
                if check_files and is_excluded(rel, False):
                    continue
                fnames.append(rel[cut:])
                sizes.append(s.st_size)
                mtimes.append(s.st_mtime_ns)
                modes.append(mode & 0o7777)
                if name == IGNORE_FILE:
                    ignore_file = True
            elif fmt == _IFDIR:
                if not (check_dirs and is_excluded(rel, True)):
                    subdirs.append((item, name, rel))
            elif fmt == _IFLNK:
                if check_files and is_excluded(rel, False):
                    continue
                try:
                    target = os.readlink(name, dir_fd=fd)
                except OSError:
                    return None
                links.append((rel[cut:], target))
            else:
                return None
        if summarize(fnames, sizes, mtimes, modes, links) != want:
            return None
        return subdirs, len(fnames) + len(links), ignore_file

    def _check_names(
        self, items: list[os.DirEntry[str]], rel_dir: RelPath, prefix: str, result: ScanResult
    ) -> tuple[list[os.DirEntry[str]], list[str], list[RelPath]]:
        """The general per-name checks, for a directory with non-ASCII (or odd) names.

        Invalid names are reported, temporary files collected, names mapped
        to NFC (remembering the disk spelling), and names whose NFC forms
        coincide are all reported and skipped: either would be the same path
        on the other side.
        """
        ok: list[tuple[os.DirEntry[str], str, RelPath]] = []
        count: dict[RelPath, int] = {}
        for item in items:
            name = item.name
            try:
                name.encode("utf-8")
                check_name(name)
            except (UnicodeEncodeError, BadName):
                shown = os.fsencode(name).decode("utf-8", "backslashreplace")
                result.problems.append(Problem(join(rel_dir, shown), _UNFIT_NAME))
                continue
            if name.startswith(TEMP_PREFIX):
                result.temp_files.append(prefix + name)
                continue
            rel = prefix + (name if name.isascii() else nfc(name))
            seen = count.get(rel, 0)
            if seen:
                result.problems.append(Problem(rel, _TWINS))
            count[rel] = seen + 1
            ok.append((item, name, rel))
        kept = [t for t in ok if count[t[2]] == 1]
        for _, name, rel in kept:
            if not name.isascii() and rel[len(prefix) :] != name:
                self._disk_names[rel] = name
        return [t[0] for t in kept], [t[1] for t in kept], [t[2] for t in kept]

    def _read_ignore_file(self, fd: int, rel_dir: RelPath, rel: RelPath, result: ScanResult) -> None:
        def opener(name: str, flags: int) -> int:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)

        try:
            with open(IGNORE_FILE, encoding="utf-8", errors="replace", opener=opener) as fh:
                result.ignore_files[rel_dir] = fh.read()
        except OSError as exc:
            result.problems.append(Problem(rel, f"cannot read: {exc.strerror}"))

    def _lstat(self, full: str, dfd: int | None = None) -> Entry | None:
        """``stat`` of an absolute path (or a name in ``dfd``): None when missing (or a special file)."""
        try:
            s = os.lstat(full, dir_fd=dfd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        mode = s.st_mode
        fmt = mode & _IFMT
        if fmt == _IFREG:
            return Entry(_FILE, s.st_size, s.st_mtime_ns, mode & 0o7777, None, None, s.st_ino)
        if fmt == _IFDIR:
            return Entry(_DIR, 0, s.st_mtime_ns, mode & 0o7777, None, None, s.st_ino)
        if fmt == _IFLNK:
            try:
                target = os.readlink(full, dir_fd=dfd)
            except (FileNotFoundError, NotADirectoryError):
                return None
            return Entry(_LINK, 0, 0, 0, target, None, s.st_ino)
        return None

    def stat(self, path: RelPath) -> Entry | None:
        return self._lstat(self._abs(path))

    def open_read(self, path: RelPath) -> AbstractContextManager[BinaryIO]:
        fd = os.open(self._abs(path), os.O_RDONLY | os.O_NOFOLLOW)
        return cast(BinaryIO, os.fdopen(fd, "rb", buffering=0))

    def read_files(self, files: Iterable[FileRead]) -> Iterator[tuple[bytes, Entry | None] | OSError]:
        """See ``Endpoint.read_files``; the Entry is the fstat of the file read, taken after reading.

        (Of the object actually read, so it describes the content returned:
        a change while reading shows in it, as growth shows in the length.)
        """
        os_open, read, fstat, close = os.open, os.read, os.fstat, os.close
        for f, full in self._located(files):
            try:
                fd = os_open(full, _READ_FLAGS)
            except OSError as exc:
                yield exc
                continue
            try:
                size = f.size
                want = size + 1
                data = read(fd, want if want <= _READ_CAP else _READ_CAP)
                if data and len(data) < size:  # a short read: on to the size (or EOF)
                    parts = [data]
                    have = len(data)
                    while have < size:
                        block = read(fd, min(want - have, _READ_CAP))
                        if not block:
                            break
                        parts.append(block)
                        have += len(block)
                    data = b"".join(parts)
                s = fstat(fd)
            except OSError as exc:
                yield exc
                continue
            finally:
                close(fd)
            mode = s.st_mode
            if mode & _IFMT == _IFREG:
                yield data, Entry(_FILE, s.st_size, s.st_mtime_ns, mode & 0o7777, None, None, s.st_ino)
            else:
                yield data, entry_from_stat(s)  # a fifo or device swapped in: no file, "changed"

    def _hash_abs(self, full: str, buf: bytearray | None = None) -> str:
        fd = os.open(full, _READ_FLAGS)
        try:
            s = os.fstat(fd)
            if s.st_mode & _IFMT != _IFREG:
                if s.st_mode & _IFMT == _IFDIR:
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), full)
                raise OSError(errno.EINVAL, "not a regular file", full)
            return digest_fd(fd, s.st_size, buf)
        finally:
            os.close(fd)

    def hash_file(self, path: RelPath) -> str:
        return self._hash_abs(self._abs(path))

    def hash_files(self, paths: list[RelPath]) -> Iterator[str | OSError]:
        abs_path, hash_abs = self._abs, self._hash_abs
        buf = bytearray(FD_CHUNK)
        for path in paths:
            try:
                yield hash_abs(abs_path(path), buf)
            except OSError as exc:
                yield exc

    # ---- writing -------------------------------------------------------
    # ---- delta transfer: this side holds the old file ----
    def block_signature(
        self, path: RelPath, block: int, algo: str = SHA1, stage: bool = False
    ) -> tuple[Signature, Entry | None]:
        self.drop_staged()
        if not stage:
            return super().block_signature(path, block, algo)
        dpath, name = self._split(path)
        dfd = self._open_dir(dpath)
        staged = None
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
            try:
                s = os.fstat(fd)
                before = entry_from_stat(s)
                if before is not None and before.kind is _FILE:
                    staged = self._stage(path, dfd, name, fd, s.st_size)
                sig = signature_fd(fd, block, algo)
            finally:
                os.close(fd)
        finally:
            if staged is None:
                os.close(dfd)
        if sig.basis is None:
            self.drop_staged()  # it changed while it was read: no delta will use the copy
        return sig, before

    def _stage(self, path: RelPath, dfd: int, name: str, fd: int, size: int) -> _Staged | None:
        """Start copying the open old file ``fd`` to a temporary sibling (None where none can be made)."""
        try:
            tmp, out = self._open_temp(dfd, name)
        except OSError:
            return None  # write_delta will say why, if it comes
        try:
            self._staged = _Staged(path, StagedCopy(fd, out, size), dfd, tmp)
        except BaseException:
            os.close(out)
            with suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        return self._staged

    def drop_staged(self) -> None:
        staged, self._staged = self._staged, None
        if staged is not None:
            staged.discard()

    def write_delta(
        self, path: RelPath, ops: Iterable[DeltaOp], mode: int, mtime_ns: int, expected: Entry
    ) -> Entry:
        """See ``Endpoint.write_delta``; what a guarded delta copies is copied by the kernel,
        into the staged copy of the old file where ``block_signature`` made one."""
        staged, self._staged = self._staged, None
        try:
            dpath, name = self._split(path)
            basis = os.open(self._abs(path), _READ_FLAGS)
        except BaseException:
            if staged is not None:
                staged.discard()
            raise
        try:
            s = os.fstat(basis)
            if not same_state(entry_from_stat(s), expected):
                raise OSError(errno.EAGAIN, CHANGED, path)
            fd = -1
            if staged is not None and staged.path == path:
                fd = staged.copy.take(basis_token(s))
            if fd < 0 and staged is not None:
                staged.discard()
                staged = None
            try:
                if staged is not None:
                    dfd, tmp, staged = staged.dfd, staged.tmp, None
                    in_place = True
                else:
                    dfd = self._open_dir(dpath)
                    try:
                        tmp, fd = self._open_temp(dfd, name)
                    except BaseException:
                        os.close(dfd)
                        raise
                    in_place = False
                try:
                    written = self._fill_install(
                        dfd, dpath, name, tmp, fd, None, None,
                        lambda out: rebuild_into(ops, basis, out, s.st_size, staged=in_place),
                        mode, mtime_ns, None, True,
                    )
                finally:
                    os.close(dfd)
            except ValueError as exc:
                raise OSError(errno.EAGAIN, f"{exc}; will retry next run", path) from exc
        finally:
            os.close(basis)
            if staged is not None:
                staged.discard()
        assert written is not None
        return written

    def close(self) -> None:
        self.drop_staged()
        self._drop_helper()

    def ensure_root(self) -> None:
        os.makedirs(self.root, exist_ok=True)

    def _open_dir(self, dpath: str) -> int:
        """An fd for the directory ``dpath`` (absolute, ending in "/"); below the root never via a symlink."""
        if dpath == self._root_slash:
            return os.open(self.root, _ROOT_FLAGS)
        return os.open(dpath[:-1], _SUBDIR_FLAGS)  # (a trailing "/" would follow a symlink)

    def _split(self, path: RelPath) -> tuple[str, str]:
        """(on-disk parent directory ending in "/", on-disk name) of a path below the root."""
        if path == ROOT:
            raise IsADirectoryError(errno.EISDIR, "the root is a directory", self.root)
        final = self._abs(path)
        i = final.rfind("/") + 1
        return final[:i], final[i:]

    def _new_temp_token(self) -> None:
        """Draw the random token of this endpoint's temporary names.

        One token serves every write: a temporary name is the token plus the
        final name, and one final name is written at a time, so names stay
        apart; another writer's token differs, and a name already taken
        (``O_EXCL`` fails) makes a fresh token.
        """
        self._tmp_token = secrets.token_hex(8)
        self._tmp_prefix = f"{TEMP_PREFIX}{self._tmp_token}-"

    def _temp_name(self, name: str) -> str:
        """The temporary sibling name for the on-disk name ``name``."""
        if len(name) <= _TEMP_ROOM and name.isascii():
            return self._tmp_prefix + name
        return paths_temp_name(name, self._tmp_token)

    def _guard(self, dfd: int, name: str, step: Step | None) -> None:
        if step is not None and step.guarded and not same_state(self._lstat(name, dfd), step.expected):
            raise _changed(step.path)

    def _install(self, dfd: int, dpath: str, tmp: str, name: str, step: Step | None) -> None:
        """Rename ``tmp`` over ``name`` (in ``dfd``), after checking ``name`` for a guarded step."""
        if step is not None and step.guarded and (
            # (where nothing is expected, a cheap existence test comes first: no exception)
            step.expected is not None
            or not _ACCESS_AT
            or os.access(name, os.F_OK, dir_fd=dfd, follow_symlinks=False)
        ):
            self._guard(dfd, name, step)
        try:
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except IsADirectoryError:
            # (rename refuses to put a non-directory over a directory)
            raise IsADirectoryError(errno.EISDIR, "a directory is in the way", dpath + name) from None

    def _write_at(
        self,
        dfd: int,
        dpath: str,
        name: str,
        data: bytes | None,
        chunks: Iterator[bytes] | None,
        mode: int,
        mtime_ns: int,
        step: Step | None = None,
        report: bool = True,
    ) -> Entry | None:
        """Write ``name`` in the directory ``dfd``: temp file, mode, mtime, (guard,) rename.

        The stored state (fstat) is returned when ``report``, else None.
        """
        if self._tmpfile and step is not None and step.guarded and step.expected is None:
            try:
                fd = os.open(".", _TMPFILE_FLAGS, 0o600, dir_fd=dfd)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    self._guard(dfd, name, step)  # a changed target is reported as such
                    raise
                self._tmpfile = False  # not on this filesystem: named temporary files
            else:
                return self._write_new(fd, dfd, name, data, chunks, mode, mtime_ns, step.path, report)
        try:
            tmp, fd = self._open_temp(dfd, name)
        except OSError:
            self._guard(dfd, name, step)  # a changed target is reported as such
            raise
        return self._fill_install(dfd, dpath, name, tmp, fd, data, chunks, None, mode, mtime_ns, step, report)

    def _open_temp(self, dfd: int, name: str) -> tuple[str, int]:
        """A new temporary sibling of ``name`` in ``dfd``: its name and a write fd."""
        tmp = self._temp_name(name)
        try:
            return tmp, os.open(tmp, _WRITE_FLAGS, 0o600, dir_fd=dfd)
        except FileExistsError:
            self._new_temp_token()  # a leftover, or a name planted there: draw again
            tmp = self._temp_name(name)
            return tmp, os.open(tmp, _WRITE_FLAGS, 0o600, dir_fd=dfd)

    def _fill_install(
        self,
        dfd: int,
        dpath: str,
        name: str,
        tmp: str,
        fd: int,
        data: bytes | None,
        chunks: Iterator[bytes] | None,
        fill: Callable[[int], object] | None,
        mode: int,
        mtime_ns: int,
        step: Step | None,
        report: bool,
    ) -> Entry | None:
        """Write the temporary file ``tmp`` (open as ``fd``, closed here) and rename it over ``name``;
        removed on any failure.  Its content: ``fill(fd)``, else ``chunks``, else ``data``."""
        try:
            try:
                if fill is not None:
                    fill(fd)
                elif chunks is not None:
                    for block in chunks:
                        if block:
                            _write_all(fd, block)
                elif data:
                    _write_all(fd, data)
                os.fchmod(fd, mode & 0o7777)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
                s = os.fstat(fd) if report else None  # as stored (mtime granularity, mode bits kept)
            finally:
                os.close(fd)
            self._install(dfd, dpath, tmp, name, step)
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        if s is None:
            return None
        return Entry(_FILE, s.st_size, s.st_mtime_ns, s.st_mode & 0o7777, None, None, s.st_ino)

    @staticmethod
    def _write_new(
        fd: int,
        dfd: int,
        name: str,
        data: bytes | None,
        chunks: Iterator[bytes] | None,
        mode: int,
        mtime_ns: int,
        path: RelPath,
        report: bool,
    ) -> Entry | None:
        """Fill the unnamed file ``fd`` and link it in as ``name``, where nothing may be.

        The link fails if anything took the name since the scan (reported as
        changed); until it succeeds there is nothing to clean up anywhere.
        """
        try:
            if chunks is not None:
                for block in chunks:
                    if block:
                        _write_all(fd, block)
            elif data:
                _write_all(fd, data)
            os.fchmod(fd, mode & 0o7777)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
            s = os.fstat(fd) if report else None
            try:
                os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dfd, follow_symlinks=True)
            except FileExistsError:
                raise _changed(path) from None
        finally:
            os.close(fd)
        if s is None:
            return None
        return Entry(_FILE, s.st_size, s.st_mtime_ns, s.st_mode & 0o7777, None, None, s.st_ino)

    def write_file(
        self, path: RelPath, chunks: Iterator[bytes], mode: int, mtime_ns: int
    ) -> Entry:
        dpath, name = self._split(path)
        dfd = self._open_dir(dpath)
        try:
            written = self._write_at(dfd, dpath, name, None, chunks, mode, mtime_ns)
            assert written is not None
            return written
        finally:
            os.close(dfd)

    def mkdir(self, path: RelPath, mode: int) -> None:
        os.mkdir(self._abs(path), mode & 0o7777 | 0o700)

    def _symlink_at(self, dfd: int, dpath: str, name: str, target: str, step: Step | None = None) -> None:
        tmp = self._temp_name(name)
        try:
            try:
                os.symlink(target, tmp, dir_fd=dfd)
            except FileExistsError:
                self._new_temp_token()
                tmp = self._temp_name(name)
                os.symlink(target, tmp, dir_fd=dfd)
        except OSError:
            self._guard(dfd, name, step)
            raise
        try:
            self._install(dfd, dpath, tmp, name, step)
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise

    def _symlink(self, path: RelPath, target: str, step: Step | None = None) -> None:
        dpath, name = self._split(path)
        dfd = self._open_dir(dpath)
        try:
            self._symlink_at(dfd, dpath, name, target, step)
        finally:
            os.close(dfd)

    def symlink(self, path: RelPath, target: str) -> None:
        self._symlink(path, target)

    def remove(self, path: RelPath, kind: Kind) -> None:
        if path == ROOT:
            raise PermissionError(errno.EPERM, "refusing to remove the root", self.root)
        if kind is _DIR:
            os.rmdir(self._abs(path))
        else:
            os.unlink(self._abs(path))

    def set_meta(self, path: RelPath, mode: int | None, mtime_ns: int | None) -> None:
        full = self._abs(path)
        if os.path.islink(full):
            raise OSError(errno.ELOOP, "refusing to change metadata through a symlink", full)
        if mode is not None:
            os.chmod(full, mode & 0o7777)
        if mtime_ns is not None:
            os.utime(full, ns=(mtime_ns, mtime_ns), follow_symlinks=False)

    def rename(self, src: RelPath, dst: RelPath) -> None:
        os.replace(self._abs(src), self._abs(dst))

    def link(self, src: RelPath, dst: RelPath) -> None:
        try:
            os.link(self._abs(src), self._abs(dst), follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                raise NotImplementedError(str(exc)) from exc  # the caller copies instead
            raise

    # ---- batches -----------------------------------------------------------
    def expect_writes(self, count: int) -> None:
        """Start a helper in the background for a batch of at least HELPER_WRITES files;
        the next ``apply_steps`` hands it every step.  One already starting (announced
        earlier, see ``PairSession._run``) is kept."""
        if count < HELPER_WRITES or self._helper is not None or self._disk_names or not _local_helper_allowed():
            return
        self._helper = in_background(self._start_helper, name="local-helper")

    def _take_helper(self) -> Endpoint | None:
        """The helper ``expect_writes`` started (once it is up), now the caller's; None if none."""
        pending, self._helper = self._helper, None
        if pending is None:
            return None
        try:
            return pending.result()
        except Exception:  # noqa: BLE001 (_start_helper catches what it expects; then steps are applied here)
            return None

    def _drop_helper(self) -> None:
        helper = self._take_helper()
        if helper is not None:
            helper.close()

    def apply_steps(self, steps: Iterable[Step]) -> Iterator[Entry | None | OSError]:
        """``Endpoint.apply_steps``: through the helper that ``expect_writes`` started,
        else in this process (``_apply_here``).

        The helper applies the steps with the same guards, temporary names and
        results as a remote one; where it did not start, this process does.
        """
        helper = self._take_helper()
        if helper is None:
            yield from self._apply_here(steps)
            return
        self.helper_batches += 1
        try:
            yield from helper.apply_steps(steps)
        finally:
            helper.close()

    def _start_helper(self) -> Endpoint | None:
        """The helper serving this root as a child process, or None where it cannot start."""
        if not sys.executable:
            return None
        from srsync.agent.client import HelperUnavailable
        from srsync.agent.pipe import LocalHelperHost
        from srsync.endpoints.agent import AgentEndpoint

        try:
            return AgentEndpoint(LocalHelperHost(), self.root, python=sys.executable, streams=WRITERS, spread=WRITERS)
        except (HelperUnavailable, ConnectError, OSError):
            return None

    def _apply_here(self, steps: Iterable[Step]) -> Iterator[Entry | None | OSError]:
        """``Endpoint.apply_steps`` in this process, with the guards of ``Endpoint._apply_step``.

        Writes into one directory share an fd for it (opened never through a
        symlink below the root); any step other than a WRITE or MKDIR drops
        it, so a directory removed or replaced by the batch is looked up
        afresh.  A guarded WRITE or LINK checks the final name right before
        its rename, when the temporary object is complete.
        """
        write, mkdir = StepKind.WRITE, StepKind.MKDIR
        abs_path = self._abs
        dpath = ""
        dfd = -1
        try:
            for step in steps:
                try:
                    kind = step.kind
                    if kind is write:
                        entry = step.entry
                        assert entry is not None
                        if step.path == ROOT:
                            raise IsADirectoryError(errno.EISDIR, "the root is a directory", self.root)
                        final = abs_path(step.path)
                        i = final.rfind("/") + 1
                        if final[:i] != dpath:
                            if dfd >= 0:
                                os.close(dfd)
                                dfd, dpath = -1, ""
                            dfd = self._open_dir(final[:i])
                            dpath = final[:i]
                        # a small file's written state is what was asked (no fstat per file:
                        # see Endpoint.apply_steps); a streamed one reports what it stored
                        yield self._write_at(
                            dfd, dpath, final[i:], step.data, step.chunks, entry.mode, entry.mtime_ns, step,
                            report=step.chunks is not None,
                        )
                    elif kind is mkdir:
                        self._mkdir_step(step)
                        yield None
                    else:
                        if dfd >= 0:
                            os.close(dfd)
                            dfd, dpath = -1, ""
                        self._other_step(step)
                        yield None
                except OSError as exc:
                    yield exc
        finally:
            if dfd >= 0:
                os.close(dfd)

    def _mkdir_step(self, step: Step) -> None:
        entry = step.entry
        assert entry is not None
        full = self._abs(step.path)
        mode = entry.mode & 0o7777 | 0o700
        if step.guarded:
            if step.expected is None:
                try:
                    os.mkdir(full, mode)
                    return
                except OSError:
                    pass  # (a directory there is fine: the slow way below decides)
            current = self._lstat(full)
            if current is not None and current.kind is _DIR:
                return
            if not same_state(current, step.expected):
                raise _changed(step.path)
        os.mkdir(full, mode)

    def _other_step(self, step: Step) -> None:
        entry = step.entry
        if step.kind is _LINK_STEP:
            assert entry is not None and entry.target is not None
            self._symlink(step.path, entry.target, step)
            return
        full = self._abs(step.path)
        if step.kind is _META_STEP:
            assert entry is not None
            current = self._lstat(full)
            if step.guarded:
                if current is None or current.kind is not entry.kind:
                    raise OSError(errno.EAGAIN, "changed since scan; skipped", step.path)
                if step.expected is not None and not same_state(current, step.expected):
                    raise _changed(step.path)
            if current is not None and current.kind is _LINK:
                raise OSError(errno.ELOOP, "refusing to change metadata through a symlink", full)
            mode = entry.mode & 0o7777
            if current is None or current.mode != mode:
                os.chmod(full, mode)
            os.utime(full, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
            return
        assert step.kind is StepKind.REMOVE and step.expected is not None
        if step.guarded and not same_state(self._lstat(full), step.expected):
            raise _changed(step.path)
        if step.path == ROOT:
            raise PermissionError(errno.EPERM, "refusing to remove the root", self.root)
        if step.expected.kind is _DIR:
            os.rmdir(full)
        else:
            os.unlink(full)
