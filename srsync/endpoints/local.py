"""Endpoint for a directory tree on this machine."""

from __future__ import annotations

import errno
import os
import secrets
import stat as st
from collections.abc import Iterator
from contextlib import AbstractContextManager, suppress
from typing import BinaryIO, cast

from srsync.core.entry import Entry, Kind, Problem, ScanResult
from srsync.core.ignore import IGNORE_FILE, IgnoreRules
from srsync.core.paths import (
    ROOT,
    BadName,
    RelPath,
    check_name,
    is_temp_name,
    join,
    nfc,
    validate_relpath,
)
from srsync.core.paths import temp_name as paths_temp_name
from srsync.endpoints.base import CHUNK, Capabilities, Endpoint
from srsync.endpoints.hashing import digest_chunks


def temp_name(final_name: str) -> str:
    """A fresh temporary sibling name for ``final_name`` (see ``core.paths.temp_name``)."""
    return paths_temp_name(final_name, secrets.token_hex(8))


def entry_from_stat(s: os.stat_result, target: str | None = None) -> Entry | None:
    mode = s.st_mode
    if st.S_ISREG(mode):
        return Entry(Kind.FILE, size=s.st_size, mtime_ns=s.st_mtime_ns, mode=mode & 0o7777, ino=s.st_ino)
    if st.S_ISDIR(mode):
        return Entry(Kind.DIR, mtime_ns=s.st_mtime_ns, mode=mode & 0o7777, ino=s.st_ino)
    if st.S_ISLNK(mode):
        return Entry(Kind.LINK, target=target, ino=s.st_ino)
    return None


class LocalEndpoint(Endpoint):
    capabilities = Capabilities(mtime_precision_ns=1)

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        # On-disk spelling of paths whose names are not NFC (as found by the
        # last scan): the core only ever sees NFC, the disk keeps its bytes.
        self._disk_names: dict[RelPath, str] = {}

    @property
    def description(self) -> str:
        return self.root

    def _abs(self, path: RelPath) -> str:
        if path == ROOT:
            return self.root
        validate_relpath(path)
        if self._disk_names:
            parts: list[str] = []
            current = ROOT
            for part in path.split("/"):
                current = join(current, part)
                parts.append(self._disk_names.get(current, part))
            path = "/".join(parts)
        return os.path.join(self.root, path)

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
            self.capabilities = Capabilities(mtime_precision_ns=1, case_insensitive=folded)
            return

    # ---- reading -------------------------------------------------------
    def root_exists(self) -> bool:
        return os.path.isdir(self.root)

    def scan(self, rules: IgnoreRules) -> ScanResult:
        result = ScanResult(entries={})
        self._disk_names = {}
        if not self.root_exists():
            result.root_exists = False
            return result
        stack: list[RelPath] = [ROOT]
        while stack:
            rel_dir = stack.pop()
            seen: set[str] = set()
            try:
                with os.scandir(self._abs(rel_dir)) as it:
                    items = list(it)
            except OSError as exc:
                result.problems.append(Problem(rel_dir, f"cannot list directory: {exc.strerror}"))
                continue
            for item in items:
                name = item.name
                try:
                    name.encode("utf-8")
                    check_name(name)
                except (UnicodeEncodeError, BadName):
                    shown = os.fsencode(name).decode("utf-8", "backslashreplace")
                    result.problems.append(
                        Problem(join(rel_dir, shown), "name is not valid UTF-8 or not allowed; skipped")
                    )
                    continue
                if is_temp_name(name):
                    result.temp_files.append(join(rel_dir, name))
                    continue
                rel = join(rel_dir, nfc(name))
                if rel in seen:
                    # both spellings would be one path on the other side: never merge them
                    result.problems.append(
                        Problem(rel, "two names differ only in Unicode normalisation; both skipped")
                    )
                    result.entries.pop(rel, None)
                    continue
                seen.add(rel)
                if nfc(name) != name:
                    self._disk_names[rel] = name
                try:
                    s = item.stat(follow_symlinks=False)
                    target = os.readlink(item.path) if st.S_ISLNK(s.st_mode) else None
                except OSError as exc:
                    result.problems.append(Problem(rel, f"cannot stat: {exc.strerror}"))
                    continue
                entry = entry_from_stat(s, target)
                if entry is None:
                    result.problems.append(Problem(rel, "special file (device, fifo or socket); skipped"))
                    continue
                if rules.is_excluded(rel, entry.is_dir):
                    continue
                result.entries[rel] = entry
                if entry.is_dir:
                    stack.append(rel)
                elif name == IGNORE_FILE and entry.is_file:
                    try:
                        with open(item.path, encoding="utf-8", errors="replace") as fh:
                            result.ignore_files[rel_dir] = fh.read()
                    except OSError as exc:
                        result.problems.append(Problem(rel, f"cannot read: {exc.strerror}"))
        self._probe_case([p for p in result.entries if "/" not in p])
        return result

    def stat(self, path: RelPath) -> Entry | None:
        full = self._abs(path)
        try:
            s = os.lstat(full)
            target = os.readlink(full) if st.S_ISLNK(s.st_mode) else None
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        return entry_from_stat(s, target)

    def open_read(self, path: RelPath) -> AbstractContextManager[BinaryIO]:
        fd = os.open(self._abs(path), os.O_RDONLY | os.O_NOFOLLOW)
        return cast(BinaryIO, os.fdopen(fd, "rb", buffering=0))

    def hash_file(self, path: RelPath) -> str:
        return digest_chunks(self.read_chunks(path, CHUNK))

    # ---- writing -------------------------------------------------------
    def ensure_root(self) -> None:
        os.makedirs(self.root, exist_ok=True)

    def write_file(
        self, path: RelPath, chunks: Iterator[bytes], mode: int, mtime_ns: int
    ) -> Entry:
        final = self._abs(path)
        directory, name = os.path.split(final)
        tmp = os.path.join(directory, temp_name(name))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb", buffering=0) as fh:
                for block in chunks:
                    view = memoryview(block)
                    while view:
                        n = fh.write(view)
                        view = view[n or 0 :]
                os.fchmod(fh.fileno(), mode & 0o7777)
                os.utime(fh.fileno(), ns=(mtime_ns, mtime_ns))
            if os.path.isdir(final) and not os.path.islink(final):
                raise IsADirectoryError(errno.EISDIR, "a directory is in the way", final)
            os.replace(tmp, final)
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise
        s = os.lstat(final)
        entry = entry_from_stat(s)
        assert entry is not None
        return entry

    def mkdir(self, path: RelPath, mode: int) -> None:
        os.mkdir(self._abs(path), mode & 0o7777 | 0o700)

    def symlink(self, path: RelPath, target: str) -> None:
        final = self._abs(path)
        directory, name = os.path.split(final)
        tmp = os.path.join(directory, temp_name(name))
        os.symlink(target, tmp)
        try:
            if os.path.isdir(final) and not os.path.islink(final):
                raise IsADirectoryError(errno.EISDIR, "a directory is in the way", final)
            os.replace(tmp, final)
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise

    def remove(self, path: RelPath, kind: Kind) -> None:
        if path == ROOT:
            raise PermissionError(errno.EPERM, "refusing to remove the root", self.root)
        if kind is Kind.DIR:
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
