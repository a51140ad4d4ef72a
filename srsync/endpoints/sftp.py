"""Endpoint for a directory tree on an SSH server, over plain SFTP (no remote helper).

Invariants:

* Every RelPath is validated before it is joined to the root, so no request
  ever names a path outside the root.
* Names are reported NFC-normalised; the on-disk spelling of names that are
  not NFC is remembered from the scan and used for later operations, so a
  tree written by macOS (NFD) stays addressable.
* The main SFTP session serves one thread at a time; a scan runs its
  directory listings on a few extra sessions in parallel, because SFTP costs
  several round trips per directory.
"""

from __future__ import annotations

import contextlib
import errno
import posixpath
import queue
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import BinaryIO, cast

import xxhash

from srsync.core.entry import Entry, Kind, Problem, ScanResult, link_entry
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
from srsync.errors import ConnectError
from srsync.jobspec import ConnSpec
from srsync.ssh.connection import SSHConnection, connect
from srsync.ssh.sftpfs import POSIX_RENAME, SFTPFS, RemoteStat

# Parallel SFTP sessions while scanning: the main one plus up to 5 more.
# OpenSSH allows 10 sessions per connection (MaxSessions) and endpoints may
# share a connection, so extra sessions that are refused are simply done without.
SCAN_WORKERS = 6
NS = 1_000_000_000


def temp_name(final_name: str) -> str:
    """A fresh temporary sibling name for ``final_name`` (see ``core.paths.temp_name``)."""
    return paths_temp_name(final_name, secrets.token_hex(8))


def entry_from_stat(st: RemoteStat, target: str | None = None) -> Entry | None:
    """The Entry for a remote lstat; None for devices, fifos and sockets."""
    if st.is_file:
        return Entry(Kind.FILE, size=st.size, mtime_ns=st.mtime * NS, mode=st.mode & 0o7777, ino=st.ino)
    if st.is_dir:
        return Entry(Kind.DIR, mtime_ns=st.mtime * NS, mode=st.mode & 0o7777, ino=st.ino)
    if st.is_link:
        return link_entry(target if target is not None else "")
    return None


def _shown(name: str | bytes) -> str:
    """A printable form of a name for a Problem (never used to address a file)."""
    if isinstance(name, bytes):
        return name.decode("utf-8", "backslashreplace")
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(slots=True)
class _DirResult:
    """What listing one directory contributed to a scan."""

    rel_dir: RelPath
    entries: dict[RelPath, Entry] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    temp_files: list[RelPath] = field(default_factory=list)
    subdirs: list[tuple[RelPath, str]] = field(default_factory=list)  # (relpath, server path)
    ignore_text: str | None = None
    disk_names: dict[RelPath, str] = field(default_factory=dict)
    vanished: bool = False


class SFTPEndpoint(Endpoint):
    """A root directory on an SSH server, read and written through SFTP."""

    capabilities = Capabilities(mtime_precision_ns=NS, remote=True)

    def __init__(self, conn: SSHConnection, root: str, *, owns_connection: bool = False) -> None:
        self._conn = conn
        self._owns_conn = owns_connection
        self._fs = conn.open_sftp()
        try:
            self.root = self._resolve_root(root)
        except BaseException:
            self._fs.close()
            raise
        # without OpenSSH's posix-rename, replacing a file is remove + rename
        self.capabilities = Capabilities(
            mtime_precision_ns=NS, remote=True, atomic_rename=self._fs.has_extension(POSIX_RENAME)
        )
        # NFC RelPath -> on-disk name of its last component, where they differ
        self._disk_names: dict[RelPath, str] = {}
        self._pool: queue.SimpleQueue[SFTPFS] = queue.SimpleQueue()
        self._pool_all: list[SFTPFS] = []
        self._pool_lock = threading.Lock()
        self._pool_refused = False
        self._closed = False

    # ---- identity -------------------------------------------------------
    @property
    def description(self) -> str:
        return f"{self._conn.label}:{self.root}"

    @property
    def connection(self) -> SSHConnection:
        return self._conn

    def _resolve_root(self, root: str) -> str:
        """Absolute server path of ``root``; relative roots are below the login directory."""
        text = root or "."
        if text == "~":
            text = "."
        elif text.startswith("~/"):
            text = text[2:] or "."
        try:
            return self._fs.normalize(text)
        except FileNotFoundError:
            # not there yet (ensure_root will create it): resolve lexically
            if text.startswith("/"):
                return posixpath.normpath(text)
            return posixpath.normpath(posixpath.join(self._fs.normalize("."), text))

    def _abs(self, path: RelPath) -> str:
        """Server path of a RelPath, refusing anything that could leave the root."""
        validate_relpath(path)
        if path == ROOT:
            return self.root
        if self._disk_names:
            parts: list[str] = []
            current = ROOT
            for part in path.split("/"):
                current = join(current, part)
                parts.append(self._disk_names.get(current, part))
            path = "/".join(parts)
        return posixpath.join(self.root, path)

    # ---- reading -------------------------------------------------------
    def root_exists(self) -> bool:
        try:
            # the configured root itself may be a symlink to a directory
            return self._fs.stat(self.root).is_dir
        except (FileNotFoundError, NotADirectoryError):
            return False

    def stat(self, path: RelPath) -> Entry | None:
        full = self._abs(path)
        try:
            st = self._fs.lstat(full)
            target = self._readlink_text(self._fs, full) if st.is_link else None
        except (FileNotFoundError, NotADirectoryError):
            return None
        entry = entry_from_stat(st, target)
        if entry is None:
            raise OSError(errno.EINVAL, "special file (device, fifo or socket)", full)
        return entry

    @staticmethod
    def _readlink_text(fs: SFTPFS, full: str) -> str:
        target = fs.readlink(full)
        if isinstance(target, bytes):
            raise OSError(errno.EILSEQ, "symlink target is not valid UTF-8", full)
        return target

    def open_read(self, path: RelPath) -> AbstractContextManager[BinaryIO]:
        return cast(AbstractContextManager[BinaryIO], self._fs.open_read(self._abs(path)))

    def hash_file(self, path: RelPath) -> str:
        digest = xxhash.xxh3_128()
        with self._fs.open_read(self._abs(path)) as fh:
            while True:
                block = fh.read(CHUNK)
                if not block:
                    break
                digest.update(block)
        return digest.hexdigest()

    # ---- scanning ------------------------------------------------------
    def scan(self, rules: IgnoreRules) -> ScanResult:
        result = ScanResult(entries={})
        try:
            root_st = self._fs.stat(self.root)
        except (FileNotFoundError, NotADirectoryError):
            result.root_exists = False
            return result
        if not root_st.is_dir:
            result.root_exists = False
            result.problems.append(Problem(ROOT, f"{self.root} is not a directory"))
            return result
        disk_names: dict[RelPath, str] = {}
        # the main session is idle while we wait for the scan: let it work too
        self._pool.put(self._fs)
        try:
            self._scan_tree(result, rules, disk_names)
        finally:
            # every task has finished: all sessions are back in the queue
            idle: list[SFTPFS] = []
            while not self._pool.empty():
                idle.append(self._pool.get_nowait())
            for fs in idle:
                if fs is not self._fs:
                    self._pool.put(fs)
        self._disk_names = disk_names
        return result

    def _scan_tree(
        self, result: ScanResult, rules: IgnoreRules, disk_names: dict[RelPath, str]
    ) -> None:
        with ThreadPoolExecutor(max_workers=SCAN_WORKERS, thread_name_prefix="sftp-scan") as pool:
            pending: set[Future[_DirResult]] = {
                pool.submit(self._scan_dir, ROOT, self.root, rules)
            }
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        part = future.result()
                        self._merge(result, part, disk_names)
                        for sub, full in part.subdirs:
                            pending.add(pool.submit(self._scan_dir, sub, full, rules))
            except BaseException:
                for future in pending:
                    future.cancel()
                raise

    @staticmethod
    def _merge(result: ScanResult, part: _DirResult, disk_names: dict[RelPath, str]) -> None:
        if part.vanished:
            result.entries.pop(part.rel_dir, None)
            return
        result.problems.extend(part.problems)
        result.temp_files.extend(part.temp_files)
        disk_names.update(part.disk_names)
        result.entries.update(part.entries)
        if part.ignore_text is not None:
            result.ignore_files[part.rel_dir] = part.ignore_text

    def _scan_dir(self, rel_dir: RelPath, full_dir: str, rules: IgnoreRules) -> _DirResult:
        """List one directory on a pooled session and classify what is in it."""
        fs = self._checkout()
        try:
            return self._list_and_classify(fs, rel_dir, full_dir, rules)
        finally:
            self._pool.put(fs)

    def _list_and_classify(
        self, fs: SFTPFS, rel_dir: RelPath, full_dir: str, rules: IgnoreRules
    ) -> _DirResult:
        out = _DirResult(rel_dir)
        try:
            listing = fs.listdir(full_dir)
        except FileNotFoundError:
            # removed since its parent was listed: it is simply not there
            out.vanished = rel_dir != ROOT
            return out
        except OSError as exc:
            out.problems.append(Problem(rel_dir, f"cannot list directory: {exc}"))
            return out
        seen: dict[RelPath, str] = {}
        candidates: list[tuple[RelPath, str, RemoteStat]] = []
        for raw_name, st in sorted(listing, key=lambda item: _shown(item[0])):
            if isinstance(raw_name, bytes):
                out.problems.append(
                    Problem(join(rel_dir, _shown(raw_name)), "name is not valid UTF-8; skipped")
                )
                continue
            try:
                check_name(raw_name)
            except BadName:
                out.problems.append(
                    Problem(join(rel_dir, _shown(raw_name)), "name is not allowed; skipped")
                )
                continue
            if is_temp_name(raw_name):
                out.temp_files.append(join(rel_dir, raw_name))
                continue
            name = nfc(raw_name)
            rel = join(rel_dir, name)
            if rel in seen:
                out.problems.append(
                    Problem(rel, "two names differ only in Unicode normalisation; skipped one")
                )
                continue
            seen[rel] = raw_name
            if name != raw_name:
                out.disk_names[rel] = raw_name
            if rules.is_excluded(rel, st.is_dir):
                continue  # pruned before any further request is spent on it
            full = posixpath.join(full_dir, raw_name)
            candidates.append((rel, full, st))
        # symlink targets: one pipelined batch instead of a round trip per link
        links = [(rel, full) for rel, full, st in candidates if st.is_link]
        targets: dict[RelPath, str | bytes | OSError] = dict(
            zip((rel for rel, _ in links), fs.readlinks([full for _, full in links]), strict=True)
        )
        for rel, full, st in candidates:
            target: str | None = None
            if st.is_link:
                found = targets[rel]
                if isinstance(found, FileNotFoundError):
                    continue  # vanished between listing and readlink
                if isinstance(found, OSError):
                    out.problems.append(Problem(rel, f"cannot read symlink: {found}"))
                    continue
                if isinstance(found, bytes):
                    out.problems.append(Problem(rel, "symlink target is not valid UTF-8; skipped"))
                    continue
                target = found
            entry = entry_from_stat(st, target)
            if entry is None:
                out.problems.append(Problem(rel, "special file (device, fifo or socket); skipped"))
                continue
            out.entries[rel] = entry
            if entry.is_dir:
                out.subdirs.append((rel, full))
            elif posixpath.basename(rel) == IGNORE_FILE and entry.is_file:
                try:
                    with fs.open_read(full, entry.size) as fh:
                        out.ignore_text = fh.read().decode("utf-8", "replace")
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    out.problems.append(Problem(rel, f"cannot read: {exc}"))
        return out

    def _checkout(self) -> SFTPFS:
        """A scan session: an idle one, or a new one while fewer than SCAN_WORKERS exist.

        The main session is always among them, so a server refusing extra
        sessions (MaxSessions) only makes the scan less parallel.
        """
        with self._pool_lock:
            try:
                return self._pool.get_nowait()
            except queue.Empty:
                pass
            if not self._pool_refused and len(self._pool_all) < SCAN_WORKERS - 1:
                try:
                    fs = self._conn.open_sftp()
                except ConnectError:
                    self._pool_refused = True
                else:
                    self._pool_all.append(fs)
                    return fs
        return self._pool.get()

    # ---- writing -------------------------------------------------------
    def ensure_root(self) -> None:
        missing: list[str] = []
        current = self.root
        while current not in ("/", ""):
            try:
                if self._fs.stat(current).is_dir:
                    break
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", current)
            except FileNotFoundError:
                missing.append(current)
                current = posixpath.dirname(current)
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):  # created concurrently: fine
                self._fs.mkdir(directory, 0o755)
        if missing:
            self.root = self._resolve_root(self.root)

    def write_file(
        self, path: RelPath, chunks: Iterator[bytes], mode: int, mtime_ns: int
    ) -> Entry:
        if path == ROOT:
            raise IsADirectoryError(errno.EISDIR, "the root is a directory", self.root)
        final = self._abs(path)
        directory, name = posixpath.split(final)
        tmp = posixpath.join(directory, temp_name(name))
        mtime = mtime_ns // NS
        writer = self._fs.open_write(tmp, exclusive=True)
        try:
            for block in chunks:
                writer.write(block)
            writer.finish(mode & 0o7777, mtime)
            self._replace(tmp, final)
        except BaseException:
            writer.abort()
            with contextlib.suppress(Exception):
                self._fs.remove(tmp)
            raise
        return Entry(Kind.FILE, size=writer.size, mtime_ns=mtime * NS, mode=mode & 0o7777)

    def _replace(self, tmp: str, final: str) -> None:
        """Rename ``tmp`` over ``final``; a directory in the way is an IsADirectoryError."""
        try:
            self._fs.posix_rename(tmp, final)
        except OSError as exc:
            if exc.errno is None:
                in_the_way = False
                with contextlib.suppress(OSError):
                    in_the_way = self._fs.lstat(final).is_dir
                if in_the_way:
                    raise IsADirectoryError(errno.EISDIR, "a directory is in the way", final) from exc
            raise

    def mkdir(self, path: RelPath, mode: int) -> None:
        full = self._abs(path)
        # owner rwx while we fill it (as the local endpoint); set_meta applies the final mode
        wanted = mode & 0o7777 | 0o700
        self._fs.mkdir(full, wanted)
        # the server's umask applied to mkdir; chmod is exact
        self._fs.lsetstat(full, mode=wanted)

    def symlink(self, path: RelPath, target: str) -> None:
        if path == ROOT:
            raise IsADirectoryError(errno.EISDIR, "the root is a directory", self.root)
        final = self._abs(path)
        directory, name = posixpath.split(final)
        tmp = posixpath.join(directory, temp_name(name))
        self._fs.symlink(target, tmp)
        try:
            self._replace(tmp, final)
        except BaseException:
            with contextlib.suppress(Exception):
                self._fs.remove(tmp)
            raise

    def remove(self, path: RelPath, kind: Kind) -> None:
        if path == ROOT:
            raise PermissionError(errno.EPERM, "refusing to remove the root", self.root)
        full = self._abs(path)
        if kind is Kind.DIR:
            self._fs.rmdir(full)
        else:
            self._fs.remove(full)

    def set_meta(self, path: RelPath, mode: int | None, mtime_ns: int | None) -> None:
        self._fs.lsetstat(
            self._abs(path),
            mode=None if mode is None else mode & 0o7777,
            mtime=None if mtime_ns is None else mtime_ns // NS,
        )

    def rename(self, src: RelPath, dst: RelPath) -> None:
        self._fs.posix_rename(self._abs(src), self._abs(dst))

    def link(self, src: RelPath, dst: RelPath) -> None:
        full_dst = self._abs(dst)
        try:
            self._fs.hardlink(self._abs(src), full_dst)
        except OSError as exc:
            if exc.errno is None and self.stat(dst) is not None:
                raise FileExistsError(errno.EEXIST, "File exists", full_dst) from exc
            # a generic SFTP failure (e.g. another filesystem): the caller copies instead
            if exc.errno in (None, errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                raise NotImplementedError(str(exc)) from exc
            raise

    # ---- lifetime ------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._pool_lock:
            sessions, self._pool_all = self._pool_all, []
        for fs in sessions:
            fs.close()
        self._fs.close()
        if self._owns_conn:
            self._conn.close()


def open_sftp_endpoint(spec: ConnSpec, root: str) -> SFTPEndpoint:
    """Connect with ``spec`` and open ``root`` there; the endpoint owns (and closes) the connection."""
    conn = connect(spec)
    try:
        return SFTPEndpoint(conn, root, owns_connection=True)
    except BaseException:
        conn.close()
        raise
