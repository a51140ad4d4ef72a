"""Endpoint for a directory tree on an SSH server, served by the remote helper (srsync.agent).

Invariants:

* Every RelPath is validated before it is sent; the helper checks it again
  and never leaves its root.
* Names are reported NFC-normalised; the on-disk spelling of names that are
  not NFC is remembered from the scan and used for later operations (as the
  SFTP endpoint does).
* One helper process serves the endpoint's main channel, one thread at a
  time per operation; big uploads may add helper processes on extra channels
  of the same connection, each writing its own ranges of one temporary file.
* Every write is temp + rename inside the helper, guarded (when asked) by
  the expected state of the final name checked right before the rename.
"""

from __future__ import annotations

import array
import contextlib
import errno
import gc
import io
import itertools
import math
import struct
import sys
import threading
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, BinaryIO, cast

from srsync.agent.client import (
    AgentClient,
    Call,
    HelperHost,
    HelperUnavailable,
    call_error,
    start_client,
)
from srsync.agent.delta import SHA1, XXH128, DeltaOp, OpDecoder, Signature, delta_blocks
from srsync.agent.remote import (
    PUT_COLUMNS,
    READ_ASKED,
    READ_COLUMNS,
    pack_columns,
    pack_names,
    unpack_columns,
)
from srsync.core.entry import Entry, Kind, Problem, ScanResult, link_entry
from srsync.core.ignore import IgnoreRules
from srsync.core.paths import ROOT, RelPath, check_name, join, joined_paths_valid, validate_relpath
from srsync.endpoints.base import (
    CHUNK,
    Capabilities,
    Endpoint,
    FileRead,
    Listed,
    Step,
    StepKind,
)
from srsync.endpoints.hashing import digest_chunks
from srsync.endpoints.striped import StripedFile, StripedUploads
from srsync.errors import ConnectError
from srsync.jobspec import ConnSpec

__all__ = ["AgentEndpoint", "HelperUnavailable", "open_agent_endpoint"]

READ_SIZE = 2 * 1024 * 1024  # bytes per ranged read of a big file
READ_DEPTH = 16  # ranged reads in flight (READ_SIZE x READ_DEPTH fills a 32 MiB window)
BATCH_BYTES = 4 * 1024 * 1024  # content per read_files call
BATCH_FILES = 1024
BATCH_DEPTH = 4  # read_files calls in flight
BATCH_STEPS = 256  # small steps per batch call
BATCH_DEPTH_STEPS = 8  # batch calls in flight (bounded memory: depth x BATCH_BYTES)
INLINE = 1024 * 1024  # files up to this size travel in one frame
PARALLEL_MIN = 64 * 1024 * 1024  # files at least this big are pushed over several channels
STRIPE = 8 * 1024 * 1024
STREAMS = 6  # channels for one big upload (OpenSSH's 2 MiB window caps each at 2 MiB/RTT)
# Below this round trip one channel is not window-bound, and extra helper
# processes only compete for CPU (measured: slower on loopback).
PARALLEL_RTT = 0.005
# Batches of small steps over several channels on such a link (see apply_steps):
# as many channels as it takes to carry SPREAD_RATE bytes a second at the measured
# round trip, each window-bound to SSH_WINDOW (OpenSSH's session window) per round
# trip, and at most SPREAD_STREAMS: none below ~14 ms, two at 20 ms, four from 42 ms.
# (About twice what one push of small files moves here; each extra channel is one
# more shell and interpreter on the server. Measured, (b) and (c) cold pushes through
# the bench's proxy: at 20 ms two channels beat four by 3-5 %, at 50 ms four beat two
# by 11 %.)  The extra helpers start once SPREAD_AFTER bytes were pushed, and each
# extra channel adds SPREAD_DEPTH batches in flight.
SPREAD_RATE = 150 * 1000 * 1000
SSH_WINDOW = 2 * 1024 * 1024
SPREAD_STREAMS = 4
SPREAD_AFTER = 1024 * 1024
# ... or once this many new files are announced (expect_writes): the extra helpers
# then start while the run reconciles and plans, not after its first megabyte
SPREAD_ANNOUNCED = 4096
EXTRA_CLOSE_WAIT = 2.0  # seconds close() waits for an extra helper still starting
SPREAD_DEPTH = 4
# enum members read per entry or step, bound once (see srsync.core.entry)
_FILE, _DIR, _LINK = Kind.FILE, Kind.DIR, Kind.LINK
_WRITE, _MKDIR, _LINK_STEP, _REMOVE, _META = (
    StepKind.WRITE, StepKind.MKDIR, StepKind.LINK, StepKind.REMOVE, StepKind.META)
_KIND_CHARS = {_FILE: "f", _DIR: "d", _LINK: "l"}


def entry_from_json(raw: list[Any] | None) -> Entry | None:
    if raw is None:
        return None
    kind, size, mtime_ns, mode, ino, target = raw
    if kind == "f":
        return Entry(_FILE, size=size, mtime_ns=mtime_ns, mode=mode, ino=ino)
    if kind == "d":
        return Entry(_DIR, mtime_ns=mtime_ns, mode=mode, ino=ino)
    if kind == "l":
        return link_entry(target)
    raise ConnectError(f"the remote helper sent an unknown entry kind {kind!r}")


_gc_lock = threading.Lock()
_gc_pauses = 0  # scans decoding right now
_gc_resume = False  # whether the collector was on when the first of them started


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic GC off while scans decode (threads may overlap; the last one restores it).

    A big scan makes one Entry per path: the collector, triggered by those
    allocations, would walk the whole growing heap again and again (half the
    decoding time), while nothing made here can form a cycle.
    """
    global _gc_pauses, _gc_resume
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_resume = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_resume:
                gc.enable()


_SWAP = sys.byteorder != "little"
_F, _D, _L = ord("f"), ord("d"), ord("l")


def _column(code: str, view: memoryview, at: int, count: int, width: int) -> list[int]:
    values = array.array(code)
    values.frombytes(view[at : at + count * width])
    if _SWAP:
        values.byteswap()
    return values.tolist()


def _decode_dirs(records: list[Any], raw: bytes, entries: dict[RelPath, Entry]) -> int:
    """Add the entries of a scan ITEM's directory records (srsync.agent.remote.scan_columns) to
    ``entries``; returns the raw bytes used.  The hot loop of a big scan: positional
    construction, no helper calls."""
    file_kind, dir_kind = Kind.FILE, Kind.DIR
    view = memoryview(raw)
    at = 0
    for record in records:
        rel_dir = record[0]
        prefix = rel_dir + "/" if rel_dir else ""
        if len(record) == 2:  # numbers too big for the columns: a flat JSON list
            flat = record[1]
            names: Any = flat[0::6]
            kinds: Any = [ord(k) for k in flat[1::6]]
            sizes, mtimes, modes, inos = flat[2::6], flat[3::6], flat[4::6], flat[5::6]
            links = iter([ino for kind, ino in zip(kinds, inos, strict=True) if kind == _L])
        else:
            _, count, name_bytes, targets = record
            names = bytes(view[at : at + name_bytes]).decode("utf-8").split("\0")
            at += name_bytes
            kinds = bytes(view[at : at + count])
            at += count
            sizes = _column("Q", view, at, count, 8)
            at += count * 8
            mtimes = _column("q", view, at, count, 8)
            at += count * 8
            modes = _column("H", view, at, count, 2)
            at += count * 2
            inos = _column("Q", view, at, count, 8)
            at += count * 8
            if len(names) != count or at > len(raw):
                raise ValueError("scan columns do not match their record")
            links = iter(targets)
        for name, kind, size, mtime_ns, mode, ino in zip(names, kinds, sizes, mtimes, modes, inos, strict=True):
            if kind == _F:
                entries[prefix + name] = Entry(file_kind, size, mtime_ns, mode, None, None, ino)
            elif kind == _D:
                entries[prefix + name] = Entry(dir_kind, 0, mtime_ns, mode, None, None, ino)
            elif kind == _L:
                entries[prefix + name] = link_entry(next(links))
            else:
                raise ValueError(f"unknown entry kind {kind!r}")
    return at


def _wire_rules(rules: IgnoreRules) -> list[list[Any]]:
    return [[r.base, r.pattern, r.regex.pattern, r.regex.flags, r.negate, r.dir_only] for r in rules.rules]


def entry_to_json(entry: Entry | None) -> list[Any] | None:
    if entry is None:
        return None
    kind = _KIND_CHARS[entry.kind]
    return [kind, entry.size, entry.mtime_ns, entry.mode, entry.ino, entry.target]


class _Reader(io.RawIOBase):
    """A remote file read with up to READ_DEPTH ranged reads in flight."""

    def __init__(self, endpoint: AgentEndpoint, path: RelPath) -> None:
        super().__init__()
        self._ep = endpoint
        self._client = endpoint._client
        self._open = self._client.call("open_r", [endpoint._rel(path)])
        self._handle = self._open.rid
        self._size: int | None = None
        self._next = 0
        self._inflight: deque[Call] = deque()
        self._buffer = b""
        self._eof = False
        # the open's answer comes first: it tells missing files from empty ones
        self._size = self._client.result(self._open).meta["size"]

    def _fill(self) -> None:
        assert self._size is not None
        while len(self._inflight) < READ_DEPTH and self._next < self._size:
            self._inflight.append(self._client.call("pread", [self._handle, self._next, READ_SIZE]))
            self._next += READ_SIZE

    def read_block(self) -> bytes:
        """The next piece of the file (b"" at the end)."""
        if self._eof:
            return b""
        self._fill()
        if not self._inflight:
            # past the size seen at open: ask once more in case the file grew
            extra = self._client.result_raw(self._client.call("pread", [self._handle, self._next, READ_SIZE])).raw
            self._next += len(extra)
            if not extra:
                self._eof = True
            return extra
        data = self._client.result_raw(self._inflight.popleft()).raw
        if len(data) < READ_SIZE:
            # short: the file shrank or ended; later ranges are stale
            for call in self._inflight:
                with contextlib.suppress(OSError):
                    self._client.result_raw(call)
            self._inflight.clear()
            self._eof = True
        return data

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            block = self.read_block()
            if not block:
                break
            self._buffer += block
        if size < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            _drain(self._client, self._inflight)
            with contextlib.suppress(OSError, ConnectError):
                self._client.result(self._client.call("close_r", [self._handle]))
        super().close()


class AgentEndpoint(Endpoint):
    """A root directory on an SSH server, served by a python3 helper on that server.

    (Or on this machine, by the same helper run as a child process: how a local
    endpoint applies a long batch of small steps; see ``LocalEndpoint.apply_steps``.)
    """

    capabilities = Capabilities(mtime_precision_ns=1, remote=True, remote_helper=True, summaries=True)
    lists_ahead = True  # the helper lists; this process only decodes what it sends

    def __init__(
        self,
        conn: HelperHost,
        root: str,
        *,
        python: str = "python3",
        owns_connection: bool = False,
        streams: int = STREAMS,
        client: AgentClient | None = None,
        spread: int = 0,
    ) -> None:
        """``client``: a helper already started on ``conn`` with ``python`` (see
        EndpointPool.prestart); the endpoint owns it from here on.  ``spread``: spread
        batches of small steps over that many helpers whatever the round trip (0: as
        the round trip asks, see apply_steps); the extra ones start at once."""
        self._conn = conn
        self._owns_conn = owns_connection
        self._python = python
        self._streams = max(1, streams)
        self._client = client if client is not None else self._start(root)
        try:
            self.root = self._client.result(self._client.root_call(root)).meta["root"]
        except BaseException:
            self._client.close()
            raise
        self.has_xxhash = bool(self._client.info.get("xxhash"))
        self.helper_info: dict[str, Any] = dict(self._client.info)  # what the helper said at hello
        self._disk_names: dict[RelPath, str] = {}
        self._checked_dirs: set[RelPath] = set()  # directory paths validate_relpath accepted
        self._extra: list[AgentClient] = []
        self._extra_lock = threading.Lock()
        self._extra_started = threading.Condition(self._extra_lock)  # _starting went down
        self._extra_refused = False
        self._growing = False  # extra helpers for spreading batches were asked for
        self._starting = 0  # extra helpers on their way
        self._closed = False
        self._staged = False  # the helper holds a copy staged by block_signature
        self._spread = spread
        if spread > 1:
            self._grow_extra()

    def _start(self, root: str) -> AgentClient:
        """A helper for this endpoint, asked at once to serve ``root`` (see ``AgentClient.root_call``)."""
        conn = self._conn
        return start_client(conn.open_command, conn.label, conn.io_timeout, self._python, conn.near, root)

    # ---- identity -------------------------------------------------------
    @property
    def description(self) -> str:
        return f"{self._conn.label}:{self.root}"

    @property
    def connection(self) -> HelperHost:
        return self._conn

    def _wire_names(self, paths: list[RelPath]) -> bytes:
        """The on-disk relative paths of ``paths``, each validated as ``_rel`` does, packed
        for the columns (pack_names): where no name needs another spelling and none can be
        invalid, a few searches of the joined text instead of a check per path."""
        if not self._disk_names:
            joined = "\x00".join(paths)
            if joined_paths_valid(joined, len(paths)):
                return joined.encode("utf-8", "surrogatepass")
        rel_of = self._rel
        return pack_names([rel_of(path) for path in paths])

    def _batch_frame(
        self,
        calls: list[Any],
        paths: list[RelPath],
        lengths: list[int],
        modes: list[int],
        mtimes: list[int],
        odd: list[list[Any]],
        raws: list[bytes],
    ) -> tuple[list[Any], bytes]:
        """The arguments and raw part of a ``batch`` call (see remote.Agent.op_batch)."""
        try:
            columns = pack_columns(PUT_COLUMNS, [lengths, modes, mtimes])
        except (struct.error, OverflowError):
            # a number past the columns (an mtime after 2262): every put spelled out
            guards: dict[int, Any] = {index: guard for index, guard in odd}
            spelled: list[Any] = []
            first = 0
            for call in calls:
                if call.__class__ is not int:
                    spelled.append(call)
                    continue
                for p in range(first, first + call):
                    guard = guards.get(p, [None])
                    spelled.append(["put", [self._rel(paths[p]), modes[p], mtimes[p], guard], lengths[p]])
                first += call
            return [spelled, [0, 0, []]], b"".join(raws)
        packed = self._wire_names(paths)
        return [calls, [len(paths), len(packed), odd]], b"".join([columns, packed, *raws])

    def _rel(self, path: RelPath) -> str:
        """The on-disk relative path the helper should use for ``path``."""
        at = path.rfind("/")
        if at > 0:
            # many paths share a directory: check each directory once, then just the name
            parent = path[:at]
            if parent not in self._checked_dirs:
                validate_relpath(parent)
                self._checked_dirs.add(parent)
            check_name(path[at + 1 :])
        else:
            validate_relpath(path)
        if path == ROOT or not self._disk_names:
            return path
        parts: list[str] = []
        current = ROOT
        for part in path.split("/"):
            current = join(current, part)
            parts.append(self._disk_names.get(current, part))
        return "/".join(parts)

    # ---- reading -------------------------------------------------------
    def root_exists(self) -> bool:
        entry = self.stat(ROOT)
        return entry is not None and entry.is_dir

    def scan(
        self, rules: IgnoreRules, expect: Mapping[RelPath, str] | None = None, listed: Listed | None = None
    ) -> ScanResult:
        wanted = expect or {}
        self._disk_names = {}
        return self._scan_call([_wire_rules(rules), dict(wanted) if wanted else None], wanted, listed=listed)

    def relist(self, rules: IgnoreRules, dirs: Iterable[RelPath]) -> ScanResult:
        """``Endpoint.relist``: the helper lists just those directories."""
        gone: list[RelPath] = []
        result = self._scan_call([_wire_rules(rules), None, list(dirs)], {}, gone)
        result.entries = {p: e for p, e in result.entries.items() if not e.is_dir}
        # (a directory gone since the scan is a problem there, not an empty one)
        result.problems.extend(Problem(d, "cannot list directory: it is gone since the scan") for d in gone)
        return result

    def _scan_call(
        self, args: list[Any], wanted: Mapping[RelPath, str], gone: list[RelPath] | None = None,
        listed: Listed | None = None,
    ) -> ScanResult:
        call = self._client.call("scan", args)
        result = ScanResult(entries={})
        disk_names = self._disk_names
        entries = result.entries
        with _gc_paused():
            for item in self._client.items(call):
                part = item.meta
                before = len(entries)
                try:
                    used = _decode_dirs(part["d"], item.raw, entries)
                except (ValueError, TypeError, StopIteration) as exc:
                    raise ConnectError(f"the helper on {self._conn.label} sent a corrupt scan ({exc})") from exc
                if used != len(item.raw):
                    raise ConnectError(f"the helper on {self._conn.label} sent a corrupt scan")
                if listed is not None and len(entries) > before:
                    # this item's entries: the last ones in (a dict iterates backwards from its end)
                    listed(list(itertools.islice(reversed(entries.items()), len(entries) - before)))
                for rel in part["g"]:
                    entries.pop(rel, None)
                    if gone is not None:
                        gone.append(rel)
                result.problems.extend(Problem(path, message) for path, message in part["p"])
                result.temp_files.extend(part["t"])
                result.ignore_files.update(part["i"])
                disk_names.update(part["n"])
                for rel_dir, hidden in part.get("q", ()):
                    if not isinstance(rel_dir, str) or not isinstance(hidden, int) or rel_dir not in wanted:
                        raise ConnectError(f"the helper on {self._conn.label} sent a corrupt scan")
                    result.quiet[rel_dir] = hidden
        final = call.final or {}
        result.root_exists = bool(final.get("root_exists"))
        if final.get("problem"):
            result.problems.append(Problem(ROOT, final["problem"]))
        return result

    def stat(self, path: RelPath) -> Entry | None:
        return entry_from_json(self._client.result(self._client.call("stat", [self._rel(path)])).meta["e"])

    def open_read(self, path: RelPath) -> AbstractContextManager[BinaryIO]:
        return cast(AbstractContextManager[BinaryIO], _Reader(self, path))

    def read_chunks(self, path: RelPath, chunk: int = CHUNK) -> Generator[bytes, None, None]:
        reader = _Reader(self, path)
        try:
            while True:
                block = reader.read_block()
                if not block:
                    return
                yield block
        finally:
            reader.close()

    def hash_file(self, path: RelPath) -> str:
        if self.has_xxhash:
            return str(self._client.result(self._client.call("hash", [self._rel(path)])).meta["h"])
        # no xxhash on the remote python: hash here, from the streamed content
        return digest_chunks(self.read_chunks(path))

    def hash_files(self, paths: list[RelPath]) -> Iterator[str | OSError]:
        if not self.has_xxhash:
            yield from super().hash_files(paths)
            return
        results: list[str | OSError] = [OSError(errno.EIO, "no answer")] * len(paths)
        call = self._client.call("hash_files", [[self._rel(p) for p in paths]])
        for item in self._client.items(call):
            meta = item.meta
            results[meta["i"]] = meta["h"] if "h" in meta else _item_error(meta["err"])
        yield from results

    def read_files(self, files: Iterable[FileRead]) -> Iterator[tuple[bytes, Entry | None] | OSError]:
        """Whole small files, BATCH_DEPTH batched calls in flight; see Endpoint.read_files."""
        pending: deque[tuple[Call, int]] = deque()
        rels: list[RelPath] = []
        sizes: list[int] = []
        size = 0
        for f in files:
            rels.append(f.path)
            sizes.append(f.size)
            size += f.size
            if size >= BATCH_BYTES or len(rels) >= BATCH_FILES:
                pending.append((self._ask_files(rels, sizes), len(rels)))
                rels, sizes, size = [], [], 0
                while len(pending) >= BATCH_DEPTH:
                    yield from self._read_files_results(*pending.popleft())
        if rels:
            pending.append((self._ask_files(rels, sizes), len(rels)))
        while pending:
            yield from self._read_files_results(*pending.popleft())

    def _ask_files(self, paths: list[RelPath], sizes: list[int]) -> Call:
        """One read_files call (see remote.Agent.op_read_files for the columns)."""
        names = self._wire_names(paths)
        return self._client.call("read_files", [len(paths), len(names)], pack_columns(READ_ASKED, [sizes]) + names)

    def _read_files_results(self, call: Call, count: int) -> Iterator[tuple[bytes, Entry | None] | OSError]:
        """Many files per ITEM, in order: meta [count, odd], raw the lengths, the lstat
        columns, then the contents back to back (see remote.Agent.op_read_files)."""
        got = 0
        file_kind = Kind.FILE
        for item in self._client.items(call):
            raw = item.raw
            try:
                n, odd = item.meta
                (lengths, sizes, mtimes, modes, inos), at = unpack_columns("I" + READ_COLUMNS, n, raw)
                special = {entry[0]: entry for entry in odd}
            except (TypeError, ValueError, IndexError):
                raise ConnectError(f"the helper on {self._conn.label} sent malformed file contents") from None
            if at + sum(lengths) != len(raw):
                raise ConnectError(f"the helper on {self._conn.label} sent mismatched file contents")
            out: list[tuple[bytes, Entry | None] | OSError] = []
            if not special:  # the usual item: regular files only
                for length, size, mtime_ns, mode, ino in zip(lengths, sizes, mtimes, modes, inos, strict=True):
                    out.append((raw[at : at + length], Entry(file_kind, size, mtime_ns, mode, None, None, ino)))
                    at += length
            else:
                for index, length in enumerate(lengths):
                    data = raw[at : at + length]
                    at += length
                    known = special.get(index)
                    if known is None:
                        out.append((data, Entry(file_kind, sizes[index], mtimes[index], modes[index], None, None, inos[index])))
                    elif len(known) == 3:
                        out.append(call_error(known[2]))
                    else:
                        out.append((data, entry_from_json(known[1])))
            got += len(out)
            yield from out
        if got != count:
            raise ConnectError(f"the helper on {self._conn.label} skipped files")

    # ---- writing -------------------------------------------------------
    def ensure_root(self) -> None:
        self.root = self._client.result(self._client.call("ensure_root", [])).meta["root"]

    def write_file(
        self, path: RelPath, chunks: Iterator[bytes], mode: int, mtime_ns: int
    ) -> Entry:
        return self._stream_write(self._client, path, chunks, mode, mtime_ns, None)

    def _stream_write(
        self,
        client: AgentClient,
        path: RelPath,
        chunks: Iterable[bytes],
        mode: int,
        mtime_ns: int,
        guard: list[Any] | None,
    ) -> Entry:
        call = client.call("write", [self._rel(path), mode & 0o7777, mtime_ns, guard])
        return _upload(client, call, chunks)

    def mkdir(self, path: RelPath, mode: int) -> None:
        self._client.result(self._client.call("mkdir", [self._rel(path), mode & 0o7777, None]))

    def symlink(self, path: RelPath, target: str) -> None:
        self._client.result(self._client.call("symlink", [self._rel(path), target, None]))

    def remove(self, path: RelPath, kind: Kind) -> None:
        if path == ROOT:
            raise PermissionError(errno.EPERM, "refusing to remove the root", self.root)
        wire = "d" if kind is Kind.DIR else "f"
        self._client.result(self._client.call("remove", [self._rel(path), wire, None]))

    def set_meta(self, path: RelPath, mode: int | None, mtime_ns: int | None) -> None:
        self._client.result(
            self._client.call(
                "set_meta", [self._rel(path), None if mode is None else mode & 0o7777, mtime_ns, None]
            )
        )

    def rename(self, src: RelPath, dst: RelPath) -> None:
        self._client.result(self._client.call("rename", [self._rel(src), self._rel(dst)]))

    def link(self, src: RelPath, dst: RelPath) -> None:
        try:
            self._client.result(self._client.call("link", [self._rel(src), self._rel(dst)]))
        except OSError as exc:
            if exc.errno == errno.ENOTSUP:
                raise NotImplementedError(str(exc)) from exc  # the caller copies instead
            raise

    # ---- batches -------------------------------------------------------
    def expect_writes(self, count: int) -> None:
        """Many new files coming on a window-bound link: start the extra helpers for
        spreading them now (see apply_steps), not once the first megabyte is out."""
        if count >= SPREAD_ANNOUNCED and self._spreads():
            self._grow_extra()

    def apply_steps(self, steps: Iterable[Step]) -> Iterator[Entry | None | OSError]:
        """Guarded steps, many per frame and many frames in flight; results in order (see Endpoint).

        Small steps are packed into ``batch`` calls (one JSON header and one
        answer per batch instead of per file); a streamed big file waits for
        everything before it, then goes on its own, or, on a slow link, striped
        over several channels together with the big files right after it.

        On a slow link, batches of small files and symlinks are also spread
        over several channels (OpenSSH's 2 MiB window caps each at 2 MiB per
        round trip): each goes to the helper with the most send window left
        (of equals, the one with the fewest bytes unanswered).
        Only such a batch may overtake another, and only one whose paths
        (and their parents) no step since the last wait has touched: any
        other step goes on the main channel once every batch on another one
        has answered, and the batches after it leave the main channel only
        once it has answered.
        """
        client = self._client
        # (helper, call, steps, bytes, in order): in order = sent on the main channel, to
        # be answered before any batch leaves on another one (at most a few dozen)
        inflight: deque[tuple[AgentClient, Call, int, int, bool]] = deque()
        # the batch being filled: its calls, in order ([op, args, raw length], or the
        # number of puts that come next from the put columns), the puts' columns and
        # the guards that are not [None], and every call's content in order
        calls: list[Any] = []
        count = 0  # calls in the batch
        run = 0  # puts since the last entry of calls
        names: list[str] = []
        lengths: list[int] = []
        modes: list[int] = []
        mtimes: list[int] = []
        odd: list[list[Any]] = []
        raws: list[bytes] = []
        batch_bytes = 0
        spread = self._spreads()
        # paths written since the last wait, while spreading; a batch holding a step
        # that must keep its place (``ordered``) goes on the main channel
        touched: set[str] | None = set() if spread else None
        ordered = False
        spread_bytes = 0  # pushed since spreading could start: extra helpers once worth it
        depth = BATCH_DEPTH_STEPS

        def on_extra() -> bool:
            """Whether a batch is in flight on another channel than the main one."""
            return any(sent[0] is not client for sent in inflight)

        def unanswered(helper: AgentClient) -> int:
            return sum(sent[3] for sent in inflight if sent[0] is helper)

        def send_batch() -> Iterator[Entry | None | OSError]:
            nonlocal calls, count, run, names, lengths, modes, mtimes, odd, raws, batch_bytes
            nonlocal ordered, spread_bytes, depth
            if not count:
                return
            helper = client
            if ordered:
                while on_extra():  # every batch on another channel answers first
                    yield from collect()
                # the batches after this one wait for it before they may leave the main
                # channel, and the main channel keeps its own order: nothing to overtake
                assert touched is not None
                touched.clear()
            elif spread:
                spread_bytes += batch_bytes
                if spread_bytes >= SPREAD_AFTER:
                    self._grow_extra()
                with self._extra_lock:
                    extra = self._extra[: self._streams - 1]
                if extra:
                    depth = BATCH_DEPTH_STEPS + SPREAD_DEPTH * len(extra)
                    while any(sent[4] for sent in inflight):
                        yield from collect()
                    # the channel with the most window left; of equals, the one with the
                    # fewest bytes unanswered
                    best = (client.send_room(), -unanswered(client))
                    for other in extra:
                        if other.alive:
                            score = (other.send_room(), -unanswered(other))
                            if score > best:
                                helper, best = other, score
            if run:
                calls.append(run)
            call = helper.call("batch", *self._batch_frame(calls, names, lengths, modes, mtimes, odd, raws))
            inflight.append((helper, call, count, batch_bytes, ordered))
            calls, count, run, raws, batch_bytes, ordered = [], 0, 0, [], 0, False
            names, lengths, modes, mtimes, odd = [], [], [], [], []
            if on_extra():
                # out now: with several channels, waiting on one must not hold back another
                helper.flush()

        def collect() -> Iterator[Entry | None | OSError]:
            helper, call, count = inflight.popleft()[:3]
            out: list[Entry | None | OSError] = [None] * count
            for answer in helper.result_raw(call).meta:
                if len(answer) == 3:
                    out[answer[0]] = call_error(answer[2])
            yield from out

        write_kind = StepKind.WRITE
        pending: Iterator[Step] = iter(steps)
        while True:
            resume: Step | None = None  # the step after a run of striped uploads
            for step in pending:
                data = step.data
                if step.kind is write_kind and data is not None and len(data) <= INLINE:
                    # the common case of a push, inlined: a small file in the batch frame
                    entry = step.entry
                    assert entry is not None
                    if touched is not None and not _may_overtake(touched, step.path):
                        ordered = True
                    if not step.guarded:
                        odd.append([len(names), None])
                    elif step.expected is not None:
                        odd.append([len(names), [entry_to_json(step.expected)]])
                    size = len(data)
                    names.append(step.path)  # made relative to the disk when sent (_wire_names)
                    lengths.append(size)
                    modes.append(entry.mode & 0o7777)
                    mtimes.append(entry.mtime_ns)
                    run += 1
                    count += 1
                    if size:
                        raws.append(data)
                        batch_bytes += size
                    if count >= BATCH_STEPS or batch_bytes >= BATCH_BYTES:
                        yield from send_batch()
                        while len(inflight) > depth:
                            yield from collect()
                    continue
                try:
                    request = self._step_request(step)
                except OSError as exc:
                    yield from send_batch()
                    while inflight:
                        yield from collect()
                    yield exc
                    continue
                if request is None:  # a streamed big file: everything before it first
                    yield from send_batch()
                    while inflight:
                        yield from collect()
                    if touched is not None:
                        touched.clear()
                    if self._goes_striped(step):
                        resume = yield from self._striped_run(step, pending)
                        if resume is not None:
                            break
                        continue
                    yield self._big_write(step)
                    continue
                if touched is not None and (step.kind is not _LINK_STEP or not _may_overtake(touched, step.path)):
                    ordered = True
                op, args, raw = request
                if run:
                    calls.append(run)
                    run = 0
                calls.append([op, args, len(raw)])
                count += 1
                if raw:
                    raws.append(raw)
                    batch_bytes += len(raw)
                if count >= BATCH_STEPS or batch_bytes >= BATCH_BYTES:
                    yield from send_batch()
                    while len(inflight) > depth:
                        yield from collect()
            if resume is None:
                break
            pending = itertools.chain((resume,), pending)
        yield from send_batch()
        while inflight:
            yield from collect()

    def _spread_streams(self) -> int:
        """Channels for batches of small steps: enough windows for SPREAD_RATE at this round trip."""
        if self._spread:
            return max(1, min(self._streams, self._spread))
        if self._client.rtt < PARALLEL_RTT:
            return 1
        wanted = math.ceil(SPREAD_RATE * self._client.rtt / SSH_WINDOW)
        return max(1, min(self._streams, SPREAD_STREAMS, wanted))

    def _spreads(self) -> bool:
        """Whether batches of small steps go over several channels (a window-bound link)."""
        return self._spread_streams() > 1

    def _grow_extra(self) -> None:
        """Start the helpers still missing for spreading (``_spread_streams``), in the
        background, once."""
        with self._extra_lock:
            if self._growing or self._extra_refused or self._closed:
                return
            self._growing = True
            missing = self._spread_streams() - 1 - len(self._extra)
        if missing > 0:
            threading.Thread(
                target=self._start_extra_quietly, args=(missing,), name=f"agent-up-{self._conn.label}", daemon=True
            ).start()

    def _step_request(self, step: Step) -> tuple[str, list[Any], bytes] | None:
        """The helper call for a small step; None for a file to stream."""
        rel = self._rel(step.path)
        guard: list[Any] | None = [entry_to_json(step.expected)] if step.guarded else None
        entry = step.entry
        if step.kind is _WRITE:
            assert entry is not None
            if step.data is None or len(step.data) > INLINE:
                return None
            return "put", [rel, entry.mode & 0o7777, entry.mtime_ns, guard], step.data
        if step.kind is _MKDIR:
            assert entry is not None
            return "mkdir", [rel, entry.mode & 0o7777, guard], b""
        if step.kind is _LINK_STEP:
            assert entry is not None and entry.target is not None
            if step.path == ROOT:
                raise IsADirectoryError(errno.EISDIR, "the root is a directory", self.root)
            return "symlink", [rel, entry.target, guard], b""
        if step.kind is _REMOVE:
            if step.path == ROOT:
                raise PermissionError(errno.EPERM, "refusing to remove the root", self.root)
            assert step.expected is not None
            wire = "d" if step.expected.kind is _DIR else "f"
            return "remove", [rel, wire, guard], b""
        if step.kind is _META:
            assert entry is not None
            meta_guard = [entry_to_json(step.expected), _kind_char(entry.kind)] if step.guarded else None
            return "set_meta", [rel, entry.mode & 0o7777, entry.mtime_ns, meta_guard], b""
        raise ValueError(f"unknown step {step.kind}")

    def _big_write(self, step: Step) -> Entry | None | OSError:
        entry = step.entry
        assert entry is not None
        guard = [entry_to_json(step.expected)] if step.guarded else None
        chunks = _chunks_of(step)
        try:
            return self._stream_write(self._client, step.path, chunks, entry.mode, entry.mtime_ns, guard)
        except OSError as exc:
            return exc

    # ---- several channels for one big file --------------------------------
    def _start_extra(self) -> AgentClient | None:
        """One more helper on its own channel, or None once the server refuses (MaxSessions)
        or ``streams`` channels are up or on their way."""
        with self._extra_lock:
            if self._extra_refused or self._closed or len(self._extra) + self._starting >= self._streams - 1:
                return None
            self._starting += 1
        try:
            try:
                helper = self._start(self.root)
                helper.result(helper.root_call(self.root))
            except (HelperUnavailable, ConnectError, OSError):
                self._extra_refused = True  # fewer streams then
                return None
            with self._extra_lock:
                if not self._closed:
                    self._extra.append(helper)
                    return helper
            helper.close()  # the endpoint closed meanwhile
            return None
        finally:
            with self._extra_lock:
                self._starting -= 1
                self._extra_started.notify_all()

    def _start_extra_quietly(self, count: int) -> None:
        """``count`` times ``_start_extra``, one after another, in a background thread: a
        failure only means fewer channels."""
        try:
            for _ in range(count):
                if self._start_extra() is None:
                    return
        except Exception:  # noqa: BLE001 (a thread of its own: nothing to report it to)
            self._extra_refused = True

    def _goes_striped(self, step: Step) -> bool:
        """Whether ``step`` is a big upload worth several channels (see srsync.endpoints.striped)."""
        entry = step.entry
        return (
            step.kind is _WRITE
            and entry is not None
            and (step.chunks is not None or (step.data is not None and len(step.data) > INLINE))
            and entry.size >= PARALLEL_MIN
            and self._streams > 1
            and self._client.rtt >= PARALLEL_RTT
        )

    def _striped_run(
        self, first: Step, rest: Iterator[Step]
    ) -> Generator[Entry | None | OSError, None, Step | None]:
        """Big uploads, ``first`` and those right after it in ``rest``, back to back over
        several channels; yields their results in order and returns the first step
        that is not one of them (None at the end of ``rest``)."""
        with self._extra_lock:
            helpers = [self._client, *self._extra[: self._streams - 1]]
        missing = 0 if self._extra_refused else self._streams - len(helpers)
        uploads = StripedUploads(self._client, helpers, missing, self._start_extra, self._streams, STRIPE)

        def queue_up(step: Step) -> StripedFile:
            entry = step.entry
            assert entry is not None
            rel = self._rel(step.path)
            guard = [entry_to_json(step.expected)] if step.guarded else None
            return uploads.open(rel, step.path, entry.size, [entry.mode & 0o7777, entry.mtime_ns, guard])

        def finished() -> Entry | OSError:
            got = uploads.finish_oldest()
            if isinstance(got, OSError):
                return got
            entry = entry_from_json(got["e"])
            assert entry is not None
            return entry

        leftover: Step | None = None
        try:
            step, part = first, queue_up(first)
            while True:
                following = next(rest, None)
                if following is not None and not self._goes_striped(following):
                    leftover, following = following, None
                # the next file's temporary copy is asked for before this one's stripes go out
                next_part = queue_up(following) if following is not None else None
                uploads.feed(part, _chunks_of(step))
                uploads.send_commits()
                while len(uploads.parts) > 2:
                    yield finished()
                if following is None or next_part is None:
                    break
                step, part = following, next_part
            while uploads.parts:
                yield finished()
        finally:
            uploads.close()
        return leftover

    # ---- delta ---------------------------------------------------------
    def delta_algorithms(self) -> tuple[str, ...]:
        return (XXH128, SHA1) if self.has_xxhash else (SHA1,)

    def block_signature(
        self, path: RelPath, block: int, algo: str = SHA1, stage: bool = False
    ) -> tuple[Signature, Entry | None]:
        reply = self._client.result_raw(self._client.call("sig", [self._rel(path), block, algo, stage]))
        # a staged copy is the helper's until its "patch" (write_delta) or "unstage" (drop_staged)
        self._staged = bool(reply.meta.get("s"))
        sig = Signature.decode(reply.raw)
        token = reply.meta.get("b")
        if isinstance(token, list) and len(token) == 5 and all(isinstance(v, int) for v in token):
            sig.basis = tuple(token)
        return sig, entry_from_json(reply.meta["e"])

    def drop_staged(self) -> None:
        if self._staged:
            self._staged = False
            self._client.result(self._client.call("unstage", []))

    def read_ranges(self, path: RelPath, ranges: Sequence[tuple[int, int]]) -> Iterator[bytes]:
        """See ``Endpoint.read_ranges``: one open, all ranges' reads in flight at once, one close."""
        client = self._client
        handle = client.call("open_r", [self._rel(path)])
        client.result(handle)
        calls: deque[Call] = deque()
        todo = iter(ranges)
        try:
            while True:
                while len(calls) < READ_DEPTH * 4:
                    want = next(todo, None)
                    if want is None:
                        break
                    calls.append(client.call("pread", [handle.rid, want[0], want[1]]))
                if not calls:
                    break
                yield client.result_raw(calls.popleft()).raw
        finally:
            _drain(client, calls)
            with contextlib.suppress(OSError, ConnectError):
                client.result(client.call("close_r", [handle.rid]))

    def delta_ops(
        self, path: RelPath, size: int, sig: Signature, guarded: bool = False
    ) -> Generator[DeltaOp, None, Entry | None]:
        call = self._client.call("delta", [self._rel(path), size, guarded], sig.encode())
        decoder = OpDecoder()
        for item in self._client.items(call):
            yield from decoder.feed(item.raw)
        if not decoder.done:
            raise ConnectError(f"the helper on {self._conn.label} sent an incomplete delta")
        return entry_from_json(call.final["st"])

    def write_delta(
        self,
        path: RelPath,
        ops: Iterable[DeltaOp],
        mode: int,
        mtime_ns: int,
        expected: Entry,
    ) -> Entry:
        client = self._client
        self._staged = False  # the helper uses or drops it now
        call = client.call("patch", [self._rel(path), mode & 0o7777, mtime_ns, [entry_to_json(expected)]])
        return _upload(client, call, delta_blocks(ops, CHUNK), flush=True)

    # ---- lifetime ------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        with self._extra_lock:
            self._closed = True
            helpers = [self._client, *self._extra]
            self._extra.clear()
        for helper in helpers:
            helper.close()
        with self._extra_lock:
            # one still starting closes itself once up: give it a moment, so that no
            # helper outlives the endpoint (a local writer's child, say)
            self._extra_started.wait_for(lambda: self._starting == 0, EXTRA_CLOSE_WAIT)
        if self._owns_conn:
            self._conn.close()


def _may_overtake(touched: set[str], path: RelPath) -> bool:
    """Whether a write of ``path`` may land before or after the writes in ``touched``
    (no step since the last wait was at the path or its parent); records it."""
    at = path.rfind("/")
    if path in touched or (at > 0 and path[:at] in touched):
        return False
    touched.add(path)
    return True


def _drain(client: AgentClient, calls: deque[Call]) -> None:
    """Take the answers of ``calls`` (reads given up on), emptying it; a refused one does
    not keep the others from being taken, a dead channel ends it quietly."""
    with contextlib.suppress(ConnectError):
        while calls:
            with contextlib.suppress(OSError):
                client.result_raw(calls.popleft())


def _upload(client: AgentClient, call: Call, blocks: Iterable[bytes], flush: bool = False) -> Entry:
    """Stream ``blocks`` as DATA of an upload call, then END; returns the installed entry.

    A failure of the source aborts the call, which drops the helper's temporary
    file, and is raised; so is the helper's refusal (it dropped the file itself).  ``flush``: send
    each block at once (not when the send buffer fills).
    """
    early: OSError | None = None
    try:
        for block in blocks:
            client.data(call, block)
            if flush:
                client.flush()
            early = client.failed_early(call)
            if early is not None:
                break
    except BaseException:
        with contextlib.suppress(OSError, ConnectError):
            client.abort(call)
            client.result(call)
        raise
    if early is not None:
        # the helper has answered and forgotten the call: an abort would get no answer,
        # and waiting for one would end, after the I/O timeout, as a stalled connection
        raise early
    client.end(call)
    entry = entry_from_json(client.result(call).meta["e"])
    assert entry is not None
    return entry


def _chunks_of(step: Step) -> Iterable[bytes]:
    """The content of a WRITE step as chunks (streamed, or its data in one piece)."""
    return step.chunks if step.chunks is not None else [step.data or b""]


def _kind_char(kind: Kind) -> str:
    return _KIND_CHARS[kind]


def _item_error(meta: list[Any]) -> OSError:
    return call_error(meta)


def open_agent_endpoint(
    spec: ConnSpec, root: str, *, python: str = "python3", streams: int = STREAMS
) -> AgentEndpoint:
    """Connect with ``spec`` and serve ``root`` through the helper; the endpoint owns the connection.

    Raises HelperUnavailable when the server cannot run the helper.
    """
    # (imported here: a local endpoint's helper, srsync.agent.pipe, needs no SSH)
    from srsync.ssh.connection import connect

    conn = connect(spec)
    try:
        return AgentEndpoint(conn, root, python=python, owns_connection=True, streams=streams)
    except BaseException:
        conn.close()
        raise

