"""Endpoint for a directory tree on an SSH server, over plain SFTP (no remote helper).

Invariants:

* Every RelPath is validated before it is joined to the root, so no request
  ever names a path outside the root.
* Names are reported NFC-normalised; the on-disk spelling of names that are
  not NFC is remembered from the scan and used for later operations, so a
  tree written by macOS (NFD) stays addressable.
* The main SFTP session serves one thread at a time; a scan runs its
  directory listings on a few extra sessions in parallel, each listing a
  batch of directories with their requests pipelined, because SFTP costs
  several round trips per directory.
* Batches (apply_steps, read_files, hash_files) keep many paths in flight on
  the main session; every step keeps the checks and the temp-file-then-rename
  order of its one-at-a-time form (see ``_StepOp``).
"""

from __future__ import annotations

import contextlib
import errno
import posixpath
import queue
import secrets
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

import xxhash

from srsync.core.entry import Entry, Kind, Problem, ScanResult, link_entry
from srsync.core.ignore import IGNORE_FILE, IgnoreRules
from srsync.core.paths import (
    NAME_MAX,
    ROOT,
    TEMP_PREFIX,
    BadName,
    RelPath,
    check_name,
    is_temp_name,
    join,
    nfc,
    validate_relpath,
)
from srsync.core.paths import temp_name as paths_temp_name
from srsync.endpoints.base import (
    CHANGED,
    CHUNK,
    Capabilities,
    Endpoint,
    FileRead,
    Listed,
    Step,
    StepKind,
    same_state,
)
from srsync.errors import ConnectError
from srsync.jobspec import ConnSpec
from srsync.ssh.connection import SSHConnection, connect
from srsync.ssh.sftpfs import LSETSTAT, POSIX_RENAME, SFTPFS, RemoteStat, Reply

# Parallel SFTP sessions while scanning: the main one plus up to 5 more.
# OpenSSH allows 10 sessions per connection (MaxSessions) and endpoints may
# share a connection, so extra sessions that are refused are simply done without.
SCAN_WORKERS = 6
# Directories listed together (pipelined) on one session.
SCAN_BATCH = 128
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


def _listing_key(item: tuple[str | bytes, RemoteStat]) -> str:
    """Listings are handled in the order of their names as shown (a str name shows as itself)."""
    name = item[0]
    return name if isinstance(name, str) else _shown(name)


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
        self._pool_opening = 0  # sessions being opened right now
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
    def scan(
        self, rules: IgnoreRules, expect: Mapping[RelPath, str] | None = None, listed: Listed | None = None
    ) -> ScanResult:
        # (``expect`` is not used: listing a directory over SFTP is the cost a
        # summary would save, and its entries cross the wire either way)
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
        """List the tree breadth first: batches of directories, each listed pipelined on a session."""
        todo: deque[tuple[RelPath, str]] = deque([(ROOT, self.root)])
        with ThreadPoolExecutor(max_workers=SCAN_WORKERS, thread_name_prefix="sftp-scan") as pool:
            pending: set[Future[list[_DirResult]]] = set()
            try:
                while todo or pending:
                    while todo and len(pending) < SCAN_WORKERS:
                        # what is known now, shared among the idle sessions
                        share = -(-len(todo) // (SCAN_WORKERS - len(pending)))
                        batch = [todo.popleft() for _ in range(min(share, SCAN_BATCH))]
                        pending.add(pool.submit(self._scan_dirs, batch, rules))
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        for part in future.result():
                            self._merge(result, part, disk_names)
                            todo.extend(part.subdirs)
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

    def _scan_dirs(self, batch: list[tuple[RelPath, str]], rules: IgnoreRules) -> list[_DirResult]:
        """List and classify a batch of directories on one pooled session."""
        fs = self._checkout()
        try:
            listings = fs.listdirs([full for _, full in batch])
            parts = [
                (out, self._sort_listing(out, full, listing, rules))
                for (rel, full), listing in zip(batch, listings, strict=True)
                for out in [_DirResult(rel)]
            ]
            # symlink targets of the whole batch: one pipelined run of readlinks
            links = [(rel, full) for _, candidates in parts for rel, full, st in candidates if st.is_link]
            targets: dict[RelPath, str | bytes | OSError] = dict(
                zip((rel for rel, _ in links), fs.readlinks([full for _, full in links]), strict=True)
            )
            for out, candidates in parts:
                self._classify(fs, out, candidates, targets)
            return [out for out, _ in parts]
        finally:
            self._pool.put(fs)

    @staticmethod
    def _sort_listing(
        out: _DirResult,
        full_dir: str,
        listing: list[tuple[str | bytes, RemoteStat]] | OSError,
        rules: IgnoreRules,
    ) -> list[tuple[RelPath, str, RemoteStat]]:
        """Check and sort one directory's names; the candidates for entries (not excluded)."""
        rel_dir = out.rel_dir
        if isinstance(listing, FileNotFoundError):
            # removed since its parent was listed: it is simply not there
            out.vanished = rel_dir != ROOT
            return []
        if isinstance(listing, OSError):
            out.problems.append(Problem(rel_dir, f"cannot list directory: {listing}"))
            return []
        seen: dict[RelPath, str] = {}
        candidates: list[tuple[RelPath, str, RemoteStat]] = []
        prefix = full_dir if full_dir.endswith("/") else full_dir + "/"
        for raw_name, st in sorted(listing, key=_listing_key):
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
            candidates.append((rel, prefix + raw_name, st))
        return candidates

    @staticmethod
    def _classify(
        fs: SFTPFS,
        out: _DirResult,
        candidates: list[tuple[RelPath, str, RemoteStat]],
        targets: dict[RelPath, str | bytes | OSError],
    ) -> None:
        """Entries (and subdirectories, the ignore file) of one listed directory."""
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
            elif rel.endswith(IGNORE_FILE) and posixpath.basename(rel) == IGNORE_FILE and entry.is_file:
                try:
                    with fs.open_read(full, entry.size) as fh:
                        out.ignore_text = fh.read().decode("utf-8", "replace")
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    out.problems.append(Problem(rel, f"cannot read: {exc}"))

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
            opening = (
                not self._pool_refused
                and len(self._pool_all) + self._pool_opening < SCAN_WORKERS - 1
            )
            if opening:
                self._pool_opening += 1
        if opening:
            # outside the lock: sessions open in parallel (each costs a few round trips)
            try:
                fs = self._conn.open_sftp()
            except ConnectError:
                with self._pool_lock:
                    self._pool_refused = True
                    self._pool_opening -= 1
            else:
                with self._pool_lock:
                    self._pool_all.append(fs)
                    self._pool_opening -= 1
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

    # ---- batches (pipelined: many paths in flight on the main session) ---------
    def apply_steps(self, steps: Iterable[Step]) -> Iterator[Entry | None | OSError]:
        """See ``Endpoint.apply_steps``; many steps in flight, each checked as ``_apply_step`` does.

        Servers without posix-rename (replacing would not be atomic) get the
        one-at-a-time path.
        """
        if not self._fs.has_extension(POSIX_RENAME):
            yield from super().apply_steps(steps)
            return
        yield from _StepFlight(self).run(steps)

    def read_files(self, files: Iterable[FileRead]) -> Iterator[tuple[bytes, Entry | None] | OSError]:
        """See ``Endpoint.read_files``; many files in flight, each read whole in one round trip."""
        yield from _ReadFlight(self).run(((f.path, f.size) for f in files), hashing=False)

    def hash_files(self, paths: list[RelPath]) -> Iterator[str | OSError]:
        """See ``Endpoint.hash_files``; small files are read many at a time, big ones streamed."""
        yield from _ReadFlight(self).run(((p, None) for p in paths), hashing=True)

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


# ---- pipelined batches ------------------------------------------------------------
#
# apply_steps, read_files and hash_files keep many paths in flight on the main
# SFTP session: each path is a small state machine over asynchronous requests
# (srsync.ssh.sftpfs.Requests), advanced as its replies arrive; results still
# come out in input order.  Without that, every file costs several blocking
# round trips.

# Steps in flight in apply_steps (their data is held until the step is done).
STEP_WINDOW = 1024
STEP_BYTES = 16 * 1024 * 1024
# Files in flight in read_files/hash_files.  What they read must fit in the
# channel's flow-control window (connection.WINDOW_SIZE) while on its way.
READ_WINDOW = 1024
READ_BYTES = 4 * 1024 * 1024
# hash_files learns sizes only from its own stat: files up to HASH_INLINE are
# read in flight, HASH_WINDOW at a time (bounded as above); bigger ones stream alone.
HASH_WINDOW = 128
HASH_INLINE = READ_BYTES // HASH_WINDOW
# What a reply answers, for the op that sent the request (reads: _CHUNK + index)
_MAIN, _DATA, _LSTAT, _LINK, _CLEAN, _STAT, _CLOSE, _IGNORE = range(8)
_CHUNK = 0x100
_TEMP_ROOM = NAME_MAX - len(TEMP_PREFIX) - 17  # name bytes beside a 16-hex-digit token and "-"
# Phases of a read
_R_OPEN, _R_READ, _R_ALONE = range(3)


class _Op:
    """One path in flight: a state machine fed with the replies to its requests."""

    __slots__ = ("flight", "done", "result", "nbytes", "pending", "phase")

    def __init__(self, flight: _Flight) -> None:
        self.flight = flight
        self.done = False
        self.result: object = None
        self.nbytes = 0
        self.pending = 0  # requests sent and not answered yet
        self.phase = 0

    def finish(self, result: object) -> None:
        self.flight.finished(self, result)

    def start(self) -> None:
        raise NotImplementedError

    def on_reply(self, tag: int, reply: Reply) -> None:
        raise NotImplementedError


class _Flight:
    """The ops of one batch in input order, and the loop feeding them their replies."""

    def __init__(self, ep: SFTPEndpoint) -> None:
        self.ep = ep
        self.fs = ep._fs
        self.req = ep._fs.requests()
        self.window: deque[_Op] = deque()
        self.ready: deque[_Op] = deque()  # ops free to start
        self.nbytes = 0
        self.aborting = False
        self.broken = False
        self.lsetstat = ep._fs.has_extension(LSETSTAT)
        self._token_base = secrets.token_hex(4)
        self._token_count = 0

    def token(self) -> str:
        """A fresh token for a temporary name: random per batch, then counted (16 hex digits)."""
        self._token_count += 1
        return f"{self._token_base}{self._token_count & 0xFFFFFFFF:08x}"

    def finished(self, op: _Op, result: object) -> None:
        op.done = True
        op.result = result

    def pump(self) -> None:
        """Feed the replies that arrived (at least one) to the ops waiting for them."""
        for op, tag, reply in self.req.take():
            op.pending -= 1
            op.on_reply(tag, reply)

    def sync(self) -> SFTPFS:
        """The session for a synchronous call in between (see ``Requests.settle``)."""
        self.req.settle()
        return self.fs

    def drain(self) -> None:
        """After an early exit: let what is in flight finish, acting no further (best effort)."""
        self.aborting = True
        with contextlib.suppress(ConnectError, OSError):
            while self.req.in_flight and self.fs.alive():
                self.pump()


def _ancestors(path: RelPath) -> list[RelPath]:
    """The directories above ``path`` (the root first); none for the root itself."""
    if path == ROOT:
        return []
    out = [ROOT]
    i = path.find("/")
    while i != -1:
        out.append(path[:i])
        i = path.find("/", i + 1)
    return out


def _changed(step: Step) -> OSError:
    return OSError(errno.EAGAIN, CHANGED, step.path)


def _bad_mtime(entry: Entry, path: RelPath) -> OSError | None:
    """The failure of a step whose mtime SFTP v3 cannot store (unsigned 32-bit seconds)."""
    if 0 <= entry.mtime_ns // NS <= 0xFFFFFFFF:
        return None
    return OSError(errno.EINVAL, f"SFTP cannot store the modification time {entry.mtime_ns // NS}", path)


class _StepOp(_Op):
    """One Step: the checks and requests of ``Endpoint._apply_step`` for its kind."""

    __slots__ = (
        "req", "step", "full", "tmp", "ancestors", "blockers", "dependants",
        "reply", "err", "cur", "link", "attrs",
    )

    def __init__(self, flight: _StepFlight, step: Step, full: str) -> None:
        super().__init__(flight)
        self.req = flight.req
        self.step = step
        self.full = full
        self.tmp = ""
        self.ancestors = _ancestors(step.path)
        self.blockers = 0  # earlier ops on this path, above or below it, not done yet
        self.dependants: list[_StepOp] = []
        self.reply: Reply = None
        self.err: OSError | None = None
        self.cur: Reply = None
        self.link: Reply = None
        self.attrs: tuple[int | None, int | None] = (None, None)

    def _dated_entry(self) -> Entry | None:
        """The step's entry, or None after finishing the step when SFTP cannot store its mtime."""
        entry = self.step.entry
        assert entry is not None
        bad = _bad_mtime(entry, self.step.path)
        if bad is not None:
            self.finish(bad)
            return None
        return entry

    @property
    def aborting(self) -> bool:
        return self.flight.aborting

    def on_reply(self, tag: int, reply: Reply) -> None:
        if tag == _MAIN:
            self.reply = reply
        elif tag == _DATA:
            if isinstance(reply, OSError) and self.err is None:
                self.err = reply
        elif tag == _LSTAT:
            self.cur = reply
        elif tag == _LINK:
            self.link = reply
        # (_CLEAN: removing a temporary file; its outcome changes nothing)
        if self.pending == 0:
            if self.phase == _SET:
                self.finish(self.reply)
            elif self.phase == _SET_CHECK:
                self.set_checked()
            else:
                self.advance()

    def advance(self) -> None:
        raise NotImplementedError

    # ---- mode / mtime of the final name, never through a symlink (as SFTPFS.lsetstat) ----
    def set_attrs(self, mode: int | None, mtime: int | None) -> None:
        """One lsetstat; where the server lacks it: lstat, refuse a link, then setstat."""
        self.attrs = (mode, mtime)
        self.pending += 1
        if self.flight.lsetstat:
            self.phase = _SET
            self.req.send_lsetstat(self.full, mode, mtime, self, _MAIN)
        else:
            self.phase = _SET_CHECK
            self.cur = None
            self.req.send_lstat(self.full, self, _LSTAT)

    def set_checked(self) -> None:
        st = self.cur
        if isinstance(st, OSError):
            self.finish(st)
        elif isinstance(st, RemoteStat) and st.is_link:
            self.finish(OSError(errno.ELOOP, "refusing to change metadata through a symlink", self.full))
        else:
            self.phase = _SET
            self.pending += 1
            self.req.send_setstat(self.full, *self.attrs, self, _MAIN)

    # ---- the guard: lstat of the final name, as Endpoint.stat reports it ----
    def send_guard(self, want_target: bool = False) -> None:
        self.cur = self.link = None
        self.pending += 1
        self.req.send_lstat(self.full, self, _LSTAT)
        expected = self.step.expected
        if want_target or (expected is not None and expected.kind is Kind.LINK):
            # a link's target takes part in the comparison
            self.pending += 1
            self.req.send_readlink(self.full, self, _LINK)

    def current(self) -> Entry | None:
        """The guard's lstat as an Entry (None: nothing there); raises what ``stat`` raises."""
        st = self.cur
        if isinstance(st, (FileNotFoundError, NotADirectoryError)):
            return None
        if isinstance(st, OSError):
            raise st
        assert isinstance(st, RemoteStat)
        target: str | None = None
        if st.is_link:
            link = self.link
            if isinstance(link, (FileNotFoundError, NotADirectoryError)):
                return None
            if isinstance(link, OSError):
                raise link
            if isinstance(link, bytes):
                raise OSError(errno.EILSEQ, "symlink target is not valid UTF-8", self.full)
            # not asked for: the target cannot matter (no link was expected)
            target = link if isinstance(link, str) else ""
        entry = entry_from_stat(st, target)
        if entry is None:
            raise OSError(errno.EINVAL, "special file (device, fifo or socket)", self.full)
        return entry

    def check_guard(self) -> OSError | None:
        """The step's failure if the final name is not what the scan saw, else None."""
        try:
            if not same_state(self.current(), self.step.expected):
                return _changed(self.step)
        except OSError as exc:
            return exc
        return None

    # ---- temp file + rename (WRITE, LINK) ----
    def make_tmp(self) -> None:
        full = self.full
        i = full.rfind("/") + 1
        name = full[i:]
        if len(name) <= _TEMP_ROOM and name.isascii():  # (what paths_temp_name makes of it)
            self.tmp = f"{full[:i]}{TEMP_PREFIX}{self.flight.token()}-{name}"
        else:
            self.tmp = full[:i] + paths_temp_name(name, self.flight.token())

    def install(self) -> None:
        """Everything checked: rename the complete temporary file over the final name."""
        if self.aborting:
            self.cleanup(OSError(errno.EINTR, "interrupted; not installed", self.step.path))
            return
        self.phase = _RENAMED
        self.pending += 1
        if self.no_clobber:
            self.req.send_rename_new(self.tmp, self.full, self, _MAIN)
        else:
            self.req.send_posix_rename(self.tmp, self.full, self, _MAIN)

    @property
    def no_clobber(self) -> bool:
        """A guarded step that expects nothing at its name: the rename itself refuses to
        replace anything, so no guard lstat is needed (one request less per new file)."""
        return self.step.guarded and self.step.expected is None and self.step.kind is StepKind.WRITE

    def renamed(self, result: object) -> None:
        reply = self.reply
        if reply is None:
            self.finish(result)
            return
        assert isinstance(reply, OSError)
        self.err = reply
        if reply.errno is None:
            # SFTP says just "failure": a directory in the way?  (as SFTPEndpoint._replace)
            self.phase = _RENAME_FAILED
            self.cur = None
            self.pending += 2
            self.req.send_lstat(self.full, self, _LSTAT)
            self.req.send_remove(self.tmp, self, _CLEAN)
            return
        self.cleanup(reply)

    def rename_failed(self) -> None:
        if self.no_clobber and isinstance(self.cur, RemoteStat):
            self.finish(_changed(self.step))  # something took the name since the scan
        elif isinstance(self.cur, RemoteStat) and self.cur.is_dir:
            self.finish(IsADirectoryError(errno.EISDIR, "a directory is in the way", self.full))
        else:
            self.finish(self.err)

    def cleanup(self, err: OSError) -> None:
        """Remove the temporary file, then fail with ``err``."""
        self.err = err
        self.phase = _CLEANUP
        self.pending += 1
        self.req.send_remove(self.tmp, self, _CLEAN)

    def run_sync(self) -> None:
        """``Endpoint._apply_step`` with synchronous calls (nothing else in flight)."""
        self.flight.sync()
        try:
            self.finish(self.flight.ep._apply_step(self.step))
        except OSError as exc:
            self.finish(exc)


(
    _OPENED, _OPEN_FAILED, _WRITTEN, _RENAMED, _RENAME_FAILED, _CLEANUP, _GUARD, _ACT, _ACT_FAILED,
    _SET_CHECK, _SET,
) = range(11)


class _WriteOp(_StepOp):
    """WRITE: exclusive temp file, content + mode + mtime + close, guard, then rename."""

    __slots__ = ()

    def start(self) -> None:
        entry = self._dated_entry()
        if entry is None:
            return
        self.make_tmp()
        self.phase = _OPENED
        self.pending += 1
        self.req.send_open_write(self.tmp, self, _MAIN)

    def advance(self) -> None:
        phase, step = self.phase, self.step
        if phase == _OPENED:
            handle = self.reply
            if isinstance(handle, OSError):
                self.err = handle
                if step.guarded:  # a changed target is reported as such (the guard comes first)
                    self.phase = _OPEN_FAILED
                    self.send_guard()
                else:
                    self.finish(handle)
                return
            assert isinstance(handle, bytes)
            entry = step.entry
            assert entry is not None
            req, tmp = self.req, self.tmp
            data = step.data or b""
            size = req.write_size
            for offset in range(0, len(data), size):
                self.pending += 1
                req.send_write(handle, tmp, offset, data[offset : offset + size], self, _DATA)
            self.pending += 2
            req.send_fsetstat(handle, tmp, entry.mode & 0o7777, entry.mtime_ns // NS, self, _DATA)
            req.send_close(handle, tmp, self, _DATA)
            if step.guarded and not self.no_clobber:
                # the guard's lstat travels with the close: it is answered after the content landed
                self.send_guard()
            self.phase = _WRITTEN
        elif phase == _OPEN_FAILED:
            self.finish(self.check_guard() or self.err)
        elif phase == _WRITTEN:
            # every write, the setstat and the close answered: only now may the rename go
            failed = (self.check_guard() if step.guarded and not self.no_clobber else None) or self.err
            if failed is not None:
                self.cleanup(failed)
            else:
                self.install()
        elif phase == _RENAMED:
            entry = step.entry
            assert entry is not None
            self.renamed(Entry(
                Kind.FILE, size=len(step.data or b""), mtime_ns=entry.mtime_ns // NS * NS,
                mode=entry.mode & 0o7777,
            ))
        elif phase == _RENAME_FAILED:
            self.rename_failed()
        elif phase == _CLEANUP:
            self.finish(self.err)


class _LinkOp(_StepOp):
    """LINK: a symlink at a temporary name, guard, then rename."""

    __slots__ = ()

    def start(self) -> None:
        entry = self.step.entry
        assert entry is not None and entry.target is not None
        self.make_tmp()
        self.phase = _WRITTEN
        self.pending += 1
        self.req.send_symlink(entry.target, self.tmp, self, _MAIN)
        if self.step.guarded:
            self.send_guard()

    def advance(self) -> None:
        phase = self.phase
        if phase == _WRITTEN:
            made = self.reply
            failed = self.check_guard() if self.step.guarded else None
            if failed is not None:
                if made is None:
                    self.cleanup(failed)
                else:
                    self.finish(failed)
            elif isinstance(made, OSError):
                self.finish(made)
            else:
                self.install()
        elif phase == _RENAMED:
            self.renamed(None)
        elif phase == _RENAME_FAILED:
            self.rename_failed()
        elif phase == _CLEANUP:
            self.finish(self.err)


class _MkdirOp(_StepOp):
    """MKDIR: an existing directory is success; owner rwx, the exact mode by lsetstat."""

    __slots__ = ()

    def start(self) -> None:
        step = self.step
        if step.guarded and step.expected is not None:
            self.phase = _GUARD
            self.send_guard()
        else:
            # nothing expected: mkdir itself refuses anything in the way (checked after)
            self.act()

    def act(self) -> None:
        if self.aborting:
            self.finish(OSError(errno.EINTR, "interrupted", self.step.path))
            return
        entry = self.step.entry
        assert entry is not None
        self.phase = _ACT
        self.pending += 1
        self.req.send_mkdir(self.full, entry.mode & 0o7777 | 0o700, self, _MAIN)

    def advance(self) -> None:
        phase, step = self.phase, self.step
        if phase == _GUARD:
            try:
                current = self.current()
            except OSError as exc:
                self.finish(exc)
                return
            if current is not None and current.is_dir:
                self.finish(None)
            elif not same_state(current, step.expected):
                self.finish(_changed(step))
            else:
                self.act()
        elif phase == _ACT:
            reply = self.reply
            if reply is None:
                entry = step.entry
                assert entry is not None
                # the server's umask applied to mkdir; chmod is exact (as SFTPEndpoint.mkdir)
                self.set_attrs(entry.mode & 0o7777 | 0o700, None)
                return
            assert isinstance(reply, OSError)
            if step.guarded and step.expected is None:
                self.err = reply
                self.phase = _ACT_FAILED
                self.send_guard()
            else:
                self.finish(self.req.refine(reply, self.full, "mkdir"))
        elif phase == _ACT_FAILED:
            try:
                current = self.current()
            except OSError as exc:
                self.finish(exc)
                return
            if current is not None and current.is_dir:
                self.finish(None)
            elif current is not None:
                self.finish(_changed(step))
            else:
                self.finish(self.err)


class _MetaOp(_StepOp):
    """META: (guarded) an object of the entry's kind must be there; then lsetstat."""

    __slots__ = ()

    def start(self) -> None:
        entry = self._dated_entry()
        if entry is None:
            return
        if self.step.guarded:
            self.phase = _GUARD
            self.send_guard(want_target=entry.kind is Kind.LINK)
        else:
            self.act()

    def act(self) -> None:
        if self.aborting:
            self.finish(OSError(errno.EINTR, "interrupted", self.step.path))
            return
        entry = self.step.entry
        assert entry is not None
        self.set_attrs(entry.mode & 0o7777, entry.mtime_ns // NS)

    def advance(self) -> None:
        step = self.step
        if self.phase == _GUARD:
            entry = step.entry
            assert entry is not None
            try:
                current = self.current()
            except OSError as exc:
                self.finish(exc)
                return
            if current is None or current.kind is not entry.kind:
                self.finish(OSError(errno.EAGAIN, "changed since scan; skipped", step.path))
            elif step.expected is not None and not same_state(current, step.expected):
                self.finish(_changed(step))
            else:
                self.act()


class _RemoveOp(_StepOp):
    """REMOVE: unlink or rmdir (by the expected kind) after the guard."""

    __slots__ = ()

    def start(self) -> None:
        if self.step.guarded:
            self.phase = _GUARD
            self.send_guard()
        else:
            self.act()

    def act(self) -> None:
        step = self.step
        if step.path == ROOT:
            self.finish(PermissionError(errno.EPERM, "refusing to remove the root", self.full))
            return
        if self.aborting:
            self.finish(OSError(errno.EINTR, "interrupted", step.path))
            return
        assert step.expected is not None
        self.phase = _ACT
        if step.expected.kind is Kind.DIR:
            self.pending += 1
            self.req.send_rmdir(self.full, self, _MAIN)
        else:
            self.pending += 1
            self.req.send_remove(self.full, self, _MAIN)

    def advance(self) -> None:
        if self.phase == _GUARD:
            failed = self.check_guard()
            if failed is not None:
                self.finish(failed)
            else:
                self.act()
            return
        reply = self.reply
        if reply is None:
            self.finish(None)
            return
        assert isinstance(reply, OSError) and self.step.expected is not None
        op = "rmdir" if self.step.expected.kind is Kind.DIR else "remove"
        self.finish(self.req.refine(reply, self.full, op))


class _SyncOp(_StepOp):
    """A step run with synchronous calls once everything before it is done (streamed content)."""

    __slots__ = ()

    def start(self) -> None:
        pass  # runs when it reaches the head of the window (_StepFlight.run)

    def advance(self) -> None:
        raise AssertionError("a synchronous step has no replies")


_STEP_OPS: dict[StepKind, type[_StepOp]] = {
    StepKind.WRITE: _WriteOp,
    StepKind.LINK: _LinkOp,
    StepKind.MKDIR: _MkdirOp,
    StepKind.META: _MetaOp,
    StepKind.REMOVE: _RemoveOp,
}


class _StepFlight(_Flight):
    """apply_steps: ops start in input order unless an earlier, unfinished op touches
    the same path, a directory above it or anything below it (a file waits for its
    directory's mkdir, a directory's mtime for the writes into it)."""

    def __init__(self, ep: SFTPEndpoint) -> None:
        super().__init__(ep)
        self.last_at: dict[RelPath, _StepOp] = {}  # latest unfinished op per path
        self.below: dict[RelPath, set[_StepOp]] = {}  # unfinished ops strictly below a path
        self.hold = False  # a synchronous op is waiting: admit nothing after it
        self.fatal: BaseException | None = None

    def admit(self, step: Step) -> None:
        path = step.path
        try:
            full = self.ep._abs(path)
        except Exception as exc:  # noqa: BLE001 -- raised in its place, as the base does
            self.fatal = exc
            return
        cls = _STEP_OPS[step.kind]
        if path == ROOT and step.kind in (StepKind.WRITE, StepKind.LINK) or step.chunks is not None:
            cls = _SyncOp  # streamed content, or a step that can only fail
        op = cls(self, step, full)
        if cls is _SyncOp:
            self.hold = True
        op.nbytes = len(step.data) if step.data else 0
        blockers = 0
        last_at = self.last_at
        for parent in op.ancestors:
            prior = last_at.get(parent)
            if prior is not None:
                prior.dependants.append(op)
                blockers += 1
        prior = last_at.get(path)
        if prior is not None:
            prior.dependants.append(op)
            blockers += 1
        for prior in self.below.get(path, ()):
            prior.dependants.append(op)
            blockers += 1
        op.blockers = blockers
        last_at[path] = op
        below = self.below
        for parent in op.ancestors:
            found = below.get(parent)
            if found is None:
                below[parent] = {op}
            else:
                found.add(op)
        self.window.append(op)
        self.nbytes += op.nbytes
        if blockers == 0 and cls is not _SyncOp:
            self.ready.append(op)

    def finished(self, op: _Op, result: object) -> None:
        super().finished(op, result)
        assert isinstance(op, _StepOp)
        path = op.step.path
        if self.last_at.get(path) is op:
            del self.last_at[path]
        below = self.below
        for parent in op.ancestors:
            found = below[parent]
            found.discard(op)
            if not found:
                del below[parent]
        for later in op.dependants:
            later.blockers -= 1
            if later.blockers == 0 and not isinstance(later, _SyncOp):
                self.ready.append(later)
        op.dependants = []

    def run(self, steps: Iterable[Step]) -> Iterator[Entry | None | OSError]:
        it = iter(steps)
        more = True
        window, ready = self.window, self.ready
        # (each WRITE holds a file open on the server for a while)
        limit = min(STEP_WINDOW, self.fs.open_handles)
        try:
            while True:
                while more and not self.hold and len(window) < limit and self.nbytes < STEP_BYTES:
                    step = next(it, None)
                    if step is None:
                        more = False
                        break
                    self.admit(step)
                    if self.fatal is not None:
                        more = False
                while ready:
                    op = ready.popleft()
                    if not self.aborting:
                        op.start()
                if window and window[0].done:
                    done = window.popleft()
                    self.nbytes -= done.nbytes
                    yield cast("Entry | None | OSError", done.result)
                    continue
                if not window:
                    if self.fatal is not None:
                        raise self.fatal
                    if not more:
                        return
                    continue
                head = window[0]
                if isinstance(head, _SyncOp):
                    assert not self.req.in_flight
                    head.run_sync()
                    self.hold = False
                    continue
                self.pump()
        except ConnectError:
            self.broken = True  # nothing more to wait for (a stalled session would stall again)
            raise
        finally:
            if self.req.in_flight and not self.broken:
                self.drain()


class _ReadOp(_Op):
    """read_files: open, then all reads + close + lstat at once; or hash_files: open + stat first."""

    __slots__ = ("path", "full", "size", "want", "handle", "chunks", "err", "cur", "hashing")

    def __init__(self, flight: _Flight, path: RelPath, full: str, size: int | None, hashing: bool) -> None:
        super().__init__(flight)
        self.path = path
        self.full = full
        self.size = size
        self.hashing = hashing
        self.want = 0
        self.handle = b""
        self.chunks: list[Reply] = []
        self.err: OSError | None = None
        self.cur: Reply = None

    def start(self) -> None:
        req = self.flight.req
        self.phase = _R_OPEN
        self.pending += 1
        req.send_open_read(self.full, self, _MAIN)
        if self.hashing:
            # as open_read: the size at open time bounds what is hashed
            self.pending += 1
            req.send_stat(self.full, self, _STAT)

    def on_reply(self, tag: int, reply: Reply) -> None:
        if tag >= _CHUNK:
            self.chunks[tag - _CHUNK] = reply
        elif tag == _MAIN:
            if isinstance(reply, OSError):
                self.err = reply
            elif self.phase == _R_OPEN:
                assert isinstance(reply, bytes)
                self.handle = reply
        elif tag == _STAT:
            if isinstance(reply, RemoteStat):
                self.size = reply.size
        elif tag == _LSTAT:
            self.cur = reply
        elif tag == _CLOSE and isinstance(reply, OSError) and self.err is None:
            self.err = reply  # the close failed
        if self.pending == 0:
            self.advance()

    def advance(self) -> None:
        if self.phase == _R_OPEN:
            if self.err is not None:
                self.finish(self.err)
                return
            if self.hashing and (self.size is None or self.size > HASH_INLINE):
                # big (or size unknown): hashed streaming, by itself
                self.pending += 1
                self.flight.req.send_close(self.handle, self.full, self, _IGNORE)
                self.phase = _R_ALONE
                return
            self.read_all()
        elif self.phase == _R_ALONE:  # the close of a file hashed by itself
            self.finish(self.sync_hash())
        else:
            self.complete()

    def read_all(self) -> None:
        req = self.flight.req
        assert self.size is not None
        # the content up to its scanned size, and one byte more to notice growth
        self.want = want = self.size if self.hashing else self.size + 1
        step = req.read_size
        if want <= step:  # (most files: one READ)
            self.chunks = [None]
            self.pending += 1
            req.send_read(self.handle, self.full, 0, want, self, _CHUNK)
        else:
            self.chunks = [None] * ((want + step - 1) // step)
            for i, offset in enumerate(range(0, want, step)):
                self.pending += 1
                req.send_read(self.handle, self.full, offset, min(step, want - offset), self, _CHUNK + i)
        self.pending += 1
        req.send_close(self.handle, self.full, self, _CLOSE)
        if not self.hashing:
            # the lstat after reading: the server answers in order, after the reads
            self.pending += 1
            req.send_lstat(self.full, self, _LSTAT)
        self.phase = _R_READ

    def complete(self) -> None:
        if self.err is None and len(self.chunks) == 1 and not self.hashing:
            # (most files: one READ, whatever it gave is all there is up to size + 1)
            chunk = self.chunks[0]
            if isinstance(chunk, OSError):
                self.finish(chunk)
                return
            data = chunk if isinstance(chunk, bytes) else b""
            try:
                self.finish((data, _entry_from_reply(self.flight, self.cur, self.full)))
            except OSError as exc:
                self.finish(exc)
            return
        parts: list[bytes] = []
        step = self.flight.req.read_size
        ended = False
        for i, chunk in enumerate(self.chunks):
            if isinstance(chunk, OSError):
                self.finish(chunk)
                return
            if ended:
                if isinstance(chunk, bytes) and chunk:
                    # a short read before the end left a gap: read this file by itself
                    self.finish(self.sync_read())
                    return
                continue
            if not isinstance(chunk, bytes):  # EOF
                ended = True
                continue
            parts.append(chunk)
            if len(chunk) < min(step, self.want - i * step):
                ended = True
        if self.err is not None:
            self.finish(self.err)
            return
        data = b"".join(parts)
        if self.hashing:
            self.finish(xxhash.xxh3_128(data).hexdigest())
            return
        try:
            entry = _entry_from_reply(self.flight, self.cur, self.full)
        except OSError as exc:
            self.finish(exc)
            return
        self.finish((data, entry))

    def sync_read(self) -> object:
        self.flight.sync()
        assert self.size is not None
        return next(iter(Endpoint.read_files(self.flight.ep, [FileRead(self.path, self.size)])))

    def sync_hash(self) -> object:
        self.flight.sync()
        try:
            return self.flight.ep.hash_file(self.path)
        except OSError as exc:
            return exc


class _ReadFlight(_Flight):
    """read_files / hash_files: whole files, many in flight, results in input order."""

    def run(self, jobs: Iterable[tuple[RelPath, int | None]], hashing: bool) -> Iterator[Any]:
        """Each file's result (read_files' or hash_files'), in order."""
        limit = min(HASH_WINDOW if hashing else READ_WINDOW, self.fs.open_handles)
        it = iter(jobs)
        more = True
        window = self.window
        ep = self.ep
        fatal: Exception | None = None
        try:
            while True:
                while more and len(window) < limit and self.nbytes < READ_BYTES:
                    job = next(it, None)
                    if job is None:
                        more = False
                        break
                    path, size = job
                    try:
                        full = ep._abs(path)
                    except Exception as exc:  # noqa: BLE001 -- raised in its place, as the base does
                        fatal, more = exc, False
                        break
                    op = _ReadOp(self, path, full, size, hashing)
                    op.nbytes = (size or 0) + 1
                    window.append(op)
                    self.nbytes += op.nbytes
                    if size is not None and size >= READ_BYTES:
                        # too big to have in flight: read by itself, in place
                        op.finish(op.sync_read())
                    else:
                        op.start()
                if window and window[0].done:
                    done = window.popleft()
                    self.nbytes -= done.nbytes
                    yield done.result
                    continue
                if not window:
                    if fatal is not None:
                        raise fatal
                    return
                self.pump()
        except ConnectError:
            self.broken = True  # nothing more to wait for (a stalled session would stall again)
            raise
        finally:
            if self.req.in_flight and not self.broken:
                self.drain()


def _entry_from_reply(flight: _Flight, st: Reply, full: str) -> Entry | None:
    """``SFTPEndpoint.stat`` from an lstat reply (a link's target read synchronously: rare here)."""
    if isinstance(st, (FileNotFoundError, NotADirectoryError)):
        return None
    if isinstance(st, OSError):
        raise st
    assert isinstance(st, RemoteStat)
    target: str | None = None
    if st.is_link:
        try:
            target = SFTPEndpoint._readlink_text(flight.sync(), full)
        except (FileNotFoundError, NotADirectoryError):
            return None
    entry = entry_from_stat(st, target)
    if entry is None:
        raise OSError(errno.EINVAL, "special file (device, fifo or socket)", full)
    return entry


def open_sftp_endpoint(spec: ConnSpec, root: str) -> SFTPEndpoint:
    """Connect with ``spec`` and open ``root`` there; the endpoint owns (and closes) the connection."""
    conn = connect(spec)
    try:
        return SFTPEndpoint(conn, root, owns_connection=True)
    except BaseException:
        conn.close()
        raise
