"""The remote helper's program: runs under python3 on the far side and serves one root over stdin/stdout.

Stdlib only, Python >= 3.8, no files written except the ones it is asked to
write: srsync streams this module (with ``srsync.core.paths``,
``srsync.core.ignore`` and ``srsync.agent.delta``, which the loader in
``srsync.agent`` registers under their real names) into ``python3 -c``.  The
same module is imported locally for its protocol constants, so both ends
always agree on them.

Protocol (version PROTOCOL): frames ``>BII`` (type, request id, body length)
followed by a body of ``>I`` JSON length, JSON, raw bytes.  The client sends
CALL frames (JSON ``[op, args]``), and for uploads DATA/END/ABORT frames on
the call's id; the helper answers every call with ITEM frames (partial
results) and exactly one DONE or FAIL, strictly in the order the calls were
made.  Data frames for an id the helper does not know (a failed upload) are
dropped.  Invariants the helper keeps:

* every path is the root joined with a relative path whose components are
  checked (no "", ".", "..", NUL); symlinks are never followed below the root:
  scans and the small-file operations (put, symlink, mkdir, remove, set_meta,
  stat, read_files) reach a name through directory descriptors opened
  component by component with O_NOFOLLOW|O_DIRECTORY (kept for the rest of
  one call, a batch for instance, and dropped when that call removes a
  directory or changes a directory's mode); the others (streamed and delta
  writes of big files, hard links, renames, hashes) still go by path: they
  open the last component with O_NOFOLLOW or act on a link itself, and take
  the parent directories as the kernel resolves them;
* files are written to a temporary sibling (O_EXCL|O_NOFOLLOW), created with
  mode 0600, or directly with the final permission bits when those have no
  special bits, include owner write and were checked (fstat of the first such
  file per directory and mode within a call) to come out exactly, whatever
  umask or default ACL applies; then given mode and mtime, checked against
  the expected state of the final name and renamed over it; a failed or
  aborted write removes its temporary file;
* whatever the helper cannot do becomes a FAIL with an errno (per item in
  batches, read_files and scans); only a broken stream ends it.

Bulk calls and answers are compact: a scan sends, per directory, its relative
path once and then its entries as binary columns (see scan_columns);
``read_files`` is asked for many files at once and packs many into one ITEM,
and a ``batch`` carries many small calls, the puts among them as columns too
(see PUT_COLUMNS, op_read_files and op_batch).
"""

from __future__ import annotations

import errno
import os
import stat as statmod
import struct
import sys
import time
from operator import attrgetter, itemgetter

from srsync.agent.delta import (
    OpDecoder,
    Rebuilder,
    Signature,
    StagedCopy,
    basis_token,
    copy_range,
    delta_blocks,
    match,
    place_staged,
    signature_fd,
)
from srsync.core.ignore import IGNORE_FILE, IgnoreRules, Rule, literal_match
from srsync.core.paths import check_name, is_temp_name, nfc
from srsync.core.summary import summarize, summarize_files

# The helper's start-up should not import ``typing`` (~5 ms) or ``collections``:
# type-only imports go under this flag, which mypy takes as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, BinaryIO

PROTOCOL = 7  # 3: guarded deltas (sig's basis token, delta without CRC, ops G/V/F); 4: quiet scans; 5: scan "only";
# 6: sig may stage a copy of the old file for the patch that follows; 7: batch puts and read_files in columns
MAGIC = b"SRSYNC-AGENT"  # the helper's first bytes on stdout, before any frame

HEADER = struct.Struct(">BII")
JSON_LEN = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024  # refuse absurd lengths from a corrupt stream


def _default(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class _Strict:
    """What ``_json.make_scanner`` reads from a decoder: plain JSON, no hooks."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity, as json.loads reads them
    memo = None


def json_codec() -> tuple[Callable[[Any], str], Callable[[bytes | bytearray], Any]]:
    """(encode, decode) for frame metadata: compact JSON, ASCII, no cycle check.

    ``import json`` costs a bare ``python3 -S`` about 8 ms (it brings ``re``, ``enum``,
    ``functools`` and ``collections``), a quarter of the helper's start.  The module
    is a front for the C accelerator ``_json``, used here directly; a python without
    it, or whose accelerator does not round-trip a sample as expected, gets ``json``.
    Frames are trees of lists and dicts built here, never cyclic.
    """
    sample: list[Any] = [None, True, False, -7, 2**70, 0.5, "a\"\\\n\u00e9\U0001f600", {"k": [[], {}]}]
    try:
        import _json

        encoder = _json.make_encoder(
            None, _default, _json.encode_basestring_ascii, None, ":", ",", False, False, True
        )
        scan = _json.make_scanner(_Strict())  # type: ignore[arg-type]  # duck-typed: it reads these attributes

        def encode(value: Any) -> str:
            return "".join(encoder(value, 0))

        def decode(data: bytes | bytearray) -> Any:
            text = data.decode("utf-8").strip(" \t\n\r")
            try:
                value, end = scan(text, 0)
            except StopIteration:
                raise ValueError("srsync agent: not JSON") from None
            if end != len(text):
                raise ValueError("srsync agent: data after the JSON value")
            return value

        text = encode(sample)
        if decode(text.encode("ascii")) == sample and text.isascii() and " " not in text:
            return encode, decode
    except Exception:  # noqa: BLE001, S110  (any surprise: the json module below)
        pass
    import json

    return (
        json.JSONEncoder(separators=(",", ":"), check_circular=False).encode,
        lambda data: json.loads(data.decode("utf-8")),
    )


class _Suppress:
    """``contextlib.suppress`` without importing contextlib (and functools, collections)."""

    __slots__ = ("kinds",)

    def __init__(self, *kinds: type[BaseException]) -> None:
        self.kinds = kinds

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, self.kinds)


_encode, _decode = json_codec()

# client -> helper
CALL, DATA, END, ABORT = 1, 2, 3, 4
# helper -> client
ITEM, DONE, FAIL, BEAT = 10, 11, 12, 13

TEMP_PREFIX = ".srsync-tmp-"
NAME_MAX = 255
SCAN_BATCH = 4000  # entries per ITEM frame while scanning
READ_CHUNK = 1024 * 1024
READ_ITEM_FILES = 512  # files per ITEM frame of read_files (also cut at READ_CHUNK bytes)
# Directory descriptors one call may hold before the cache starts over, and
# the most one path may take (deeper: by checked name): well below the 256
# open files some systems allow by default.
DIR_CACHE = 64
DIR_LIMIT = 2 * DIR_CACHE
FLUSH_AFTER = 64 * 1024  # a finished call with this much output waiting goes out at once
FLUSH_DELAY = 0.002  # ... and so does any output older than this (seconds)
SEND_FLUSH = 256 * 1024  # output waiting during a call goes out at this size (the client decodes meanwhile)
SUB_CALL = 0xFFFFFFFF  # request id of the calls inside a batch: their answers are collected
BATCH_OPS = ("put", "mkdir", "symlink", "remove", "set_meta", "stat")
BEAT_SECONDS = 5.0  # long operations show life this often, so the client can tell slow from stalled

# Entries travel as [kind, size, mtime_ns, mode, ino, target], kind "f", "d" or "l".

_O_PATH = getattr(os, "O_PATH", 0)  # Linux: directory handles that need no read permission
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC | _O_PATH
ROOT_OPEN = os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC | _O_PATH  # the root itself is resolved already
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
READ_OPEN = os.O_RDONLY | os.O_NOFOLLOW
SCAN_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC  # a directory to list
HAVE_DIR_FD = all(
    f in os.supports_dir_fd
    for f in (
        os.open, os.stat, os.rename, os.mkdir, os.unlink, os.rmdir, os.symlink, os.readlink, os.chmod, os.utime
    )
)
SCAN_FD = os.scandir in os.supports_fd and HAVE_DIR_FD
QUICK_ABSENT = HAVE_DIR_FD and os.access in os.supports_dir_fd and os.access in os.supports_follow_symlinks
# a new file written unnamed and linked in: the link fails where the name is taken (Linux)
TMPFILE = HAVE_DIR_FD and hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
TMPFILE_FLAGS = getattr(os, "O_TMPFILE", 0) | os.O_WRONLY
FS_UTF8 = sys.getfilesystemencoding().lower().replace("-", "") == "utf8"
S_IFMT, S_IFREG, S_IFDIR, S_IFLNK = 0o170000, statmod.S_IFREG, statmod.S_IFDIR, statmod.S_IFLNK
BAD_NAMES = frozenset(("", ".", ".."))

if TYPE_CHECKING:  # the helper runs on python 3.8: no subscripted builtins at run time
    # One directory resolved during a call: (descriptor or None, prefix of the
    # names below it, create modes checked there: mode -> O_CREAT gives exactly it).
    DirSlot = tuple[int | None, bytes, dict[int, bool]]


class CallFailed(Exception):
    """A call's failure that carries an errno for the client."""

    def __init__(self, code: int | None, text: str, path: str = "") -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.path = path


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def entry_json(st: os.stat_result, target: str | None) -> list[Any] | None:
    """The wire form of an lstat; None for devices, fifos and sockets."""
    mode = st.st_mode
    if statmod.S_ISREG(mode):
        return ["f", st.st_size, st.st_mtime_ns, mode & 0o7777, st.st_ino, None]
    if statmod.S_ISDIR(mode):
        return ["d", 0, st.st_mtime_ns, mode & 0o7777, st.st_ino, None]
    if statmod.S_ISLNK(mode):
        return ["l", 0, 0, 0, 0, target]
    return None


def matches(current: list[Any] | None, expected: list[Any] | None) -> bool:
    """Same rule as srsync.engine.transfer.matches, on wire entries."""
    if current is None or expected is None:
        return current is None and expected is None
    if current[0] != expected[0]:
        return False
    if current[0] == "f":
        return bool(current[1] == expected[1] and current[2] == expected[2])
    if current[0] == "l":
        return bool(current[5] == expected[5])
    return True


CHANGED = "changed since scan; skipped, will retry next run"


def error_meta(exc: BaseException) -> list[Any]:
    """[errno, text, path] for a failure; errno None when there is none."""
    if isinstance(exc, CallFailed):
        return [exc.code, exc.text, exc.path]
    if isinstance(exc, OSError):
        name = exc.filename
        path = _text(name) if isinstance(name, bytes) else (name or "")
        return [exc.errno, exc.strerror or str(exc), path]
    if isinstance(exc, ValueError):
        return [errno.EINVAL, str(exc), ""]
    return [None, f"helper error: {type(exc).__name__}: {exc}", ""]


# Scan columns: per directory, in the raw part of the ITEM, back to back: the
# names joined by NUL (UTF-8), one kind byte each ("f", "d", "l"), then
# little-endian arrays of sizes (u64), mtime_ns (i64), modes (u16) and inodes
# (u64).  The JSON record is [dir, count, bytes of the names, link targets in
# order].  A directory whose numbers do not fit (an mtime past 2262) goes as
# [dir, [name, kind, size, mtime_ns, mode, ino or link target, ...]] instead.
COLUMNS = (("Q", 8), ("q", 8), ("H", 2), ("Q", 8))


def scan_columns(
    rel_dir: str,
    names: Sequence[str],
    kinds: Sequence[str],
    sizes: Sequence[int],
    mtimes: Sequence[int],
    modes: Sequence[int],
    inos: Sequence[int],
    targets: list[str],
) -> tuple[list[Any], bytes]:
    """The wire record and raw columns of one listed directory."""
    try:
        # struct, not array: importing array imports collections (~2 ms of every start)
        count = len(names)
        columns = (sizes, mtimes, modes, inos)
        parts = [struct.pack(f"<{count}{COLUMNS[i][0]}", *columns[i]) for i in range(4)]
    except (OverflowError, struct.error):
        flat: list[Any] = []
        links = iter(targets)
        for index, name in enumerate(names):
            kind = kinds[index]
            flat += (name, kind, sizes[index], mtimes[index], modes[index], next(links) if kind == "l" else inos[index])
        return [rel_dir, flat], b""
    joined = "\x00".join(names).encode("utf-8")
    return [rel_dir, len(names), len(joined), targets], b"".join(
        [joined, "".join(kinds).encode("ascii"), *parts]
    )


# The per-file parts of the busiest calls travel as binary columns too (as JSON
# they cost ~1-1.5 us a file to encode and again to decode): the puts of a batch,
# the files asked of read_files and the files it answers with.  Names are joined
# by NUL (which no name holds) and encoded UTF-8 with surrogatepass, so every str
# arrives exactly as JSON would have carried it; numbers are little-endian arrays.
PUT_COLUMNS = "IHq"  # per put: content length, mode bits, mtime_ns
READ_ASKED = "q"  # per file asked for: its size at the scan
READ_COLUMNS = "qqHQ"  # per regular file read: size, mtime_ns, mode bits, inode (lengths: "I")
_WIDTH = {"I": 4, "H": 2, "q": 8, "Q": 8}


def pack_columns(kinds: str, columns: Sequence[Sequence[int]]) -> bytes:
    """Columns of equal length as little-endian arrays, back to back (struct.error or
    OverflowError where a number does not fit)."""
    count = len(columns[0]) if columns else 0
    flat: list[int] = []
    for column in columns:
        flat += column
    return struct.pack("<" + "".join(f"{count}{kind}" for kind in kinds), *flat)


def unpack_columns(kinds: str, count: int, raw: bytes, at: int = 0) -> tuple[list[tuple[int, ...]], int]:
    """pack_columns read back from raw[at:]: the columns and the offset after them
    (ValueError where raw is too short)."""
    end = at + count * sum(_WIDTH[kind] for kind in kinds)
    if count < 0 or end > len(raw):
        raise ValueError("columns cut short")
    flat = struct.unpack_from("<" + "".join(f"{count}{kind}" for kind in kinds), raw, at)
    return [flat[i * count : (i + 1) * count] for i in range(len(kinds))], end


def pack_names(names: Sequence[str]) -> bytes:
    return "\x00".join(names).encode("utf-8", "surrogatepass")


def unpack_names(raw: bytes, count: int) -> list[str]:
    """pack_names read back: exactly ``count`` names (ValueError otherwise)."""
    if not count:
        if raw:
            raise ValueError("names without files")
        return []
    names = raw.decode("utf-8", "surrogatepass").split("\x00")
    if len(names) != count:
        raise ValueError("name column does not match the files")
    return names


_st_size, _st_mtime_ns = attrgetter("st_size"), attrgetter("st_mtime_ns")
_st_mode, _st_ino = attrgetter("st_mode"), attrgetter("st_ino")
_first = itemgetter(0)


class _NoStat:
    """Zeros in the read columns of a file answered otherwise (see op_read_files)."""

    st_size = st_mtime_ns = st_mode = st_ino = 0


class Upload:
    """A file being written to a temporary name."""

    def __init__(self, fd: int, tmp: bytes, final: bytes, args: list[Any], kind: str = "write") -> None:
        self.kind = kind  # "write", "patch" or "range" (one stripe of a parallel upload)
        self.fd = fd
        self.tmp = tmp
        self.final = final
        self.args = args
        self.decoder: OpDecoder | None = None
        self.rebuilder: Rebuilder | None = None
        self.basis_fd = -1
        self.basis_st: os.stat_result | None = None
        self.staged = False  # fd holds a complete copy of the old file (a StagedCopy's)


class Agent:
    """Serves requests for one root until stdin ends."""

    def __init__(self, inp: BinaryIO, out: BinaryIO) -> None:
        self.inp = inp
        self.out = out
        self.inbuf = bytearray()
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.root = b""
        self.uploads: dict[int, Upload] = {}
        self.handles: dict[int, int] = {}
        self.temp_tag = os.urandom(6).hex().encode("ascii")
        self.temp_stem = TEMP_PREFIX.encode("ascii") + self.temp_tag
        self.temp_count = 0
        self.tmpfile = TMPFILE
        # (path, copy, temporary file) of the old file copied by "sig" for the "patch" that follows
        self.staged: tuple[str, StagedCopy, bytes] | None = None
        # directories resolved during the current call (None: no call holds any)
        self.dirs: dict[str, DirSlot] | None = None
        self.dir_fds: list[int] = []
        # directories the last scan left out as quiet -> their on-disk spelling (for "only")
        self.quiet_disk: dict[str, str] = {}
        self.last_out = time.monotonic()
        try:
            import xxhash  # noqa: F401  (optional: hashes match the client's only with it)

            self.xxhash: Any = xxhash
        except ImportError:
            self.xxhash = None
        self.ops: dict[str, Callable[[int, list[Any], bytes], None]] = {
            "hello": self.op_hello,
            "root": self.op_root,
            "ensure_root": self.op_ensure_root,
            "scan": self.op_scan,
            "stat": self.op_stat,
            "open_r": self.op_open_r,
            "pread": self.op_pread,
            "close_r": self.op_close_r,
            "read_files": self.op_read_files,
            "hash": self.op_hash,
            "hash_files": self.op_hash_files,
            "put": self.op_put,
            "write": self.op_write,
            "patch": self.op_patch,
            "unstage": self.op_unstage,
            "pw_open": self.op_pw_open,
            "pw_range": self.op_pw_range,
            "pw_commit": self.op_pw_commit,
            "pw_abort": self.op_pw_abort,
            "mkdir": self.op_mkdir,
            "symlink": self.op_symlink,
            "remove": self.op_remove,
            "set_meta": self.op_set_meta,
            "rename": self.op_rename,
            "link": self.op_link,
            "sig": self.op_sig,
            "delta": self.op_delta,
            "batch": self.op_batch,
        }
        self.sub_result: Any = None

    # ---- framing -------------------------------------------------------
    def send(self, kind: int, rid: int, meta: Any = None, raw: bytes = b"") -> None:
        if rid == SUB_CALL:
            self.sub_result = meta  # the answer of one call inside a batch
            return
        js = b"" if meta is None else _encode(meta).encode("utf-8")
        if not js and not raw:
            self.pending.append(HEADER.pack(kind, rid, JSON_LEN.size) + b"\0\0\0\0")
            self.pending_size += HEADER.size + JSON_LEN.size
            return
        head = HEADER.pack(kind, rid, JSON_LEN.size + len(js) + len(raw)) + JSON_LEN.pack(len(js)) + js
        self.pending.append(head)
        if raw:
            self.pending.append(raw)
        self.pending_size += len(head) + len(raw)
        if self.pending_size >= SEND_FLUSH:
            self.flush()

    def flush(self) -> None:
        for piece in self.pending:
            self.out.write(piece)
        self.out.flush()
        self.pending = []
        self.pending_size = 0
        self.last_out = time.monotonic()

    def beat(self) -> None:
        if time.monotonic() - self.last_out > BEAT_SECONDS:
            self.send(BEAT, 0)
            self.flush()

    def fail(self, rid: int, exc: BaseException) -> None:
        self.send(FAIL, rid, error_meta(exc))

    def _fill(self, want: int) -> bool:
        while len(self.inbuf) < want:
            if self.pending:
                self.flush()  # about to wait for the client: it must have our answers first
            chunk = self.inp.read1(READ_CHUNK)  # type: ignore[attr-defined]
            if not chunk:
                return False
            self.inbuf += chunk
        return True

    def run(self) -> None:
        self.out.write(MAGIC)
        self.out.flush()
        try:
            while True:
                if not self._fill(HEADER.size):
                    break
                kind, rid, length = HEADER.unpack_from(self.inbuf)
                if length > MAX_FRAME or length < JSON_LEN.size:
                    raise SystemExit("srsync agent: corrupt frame")
                if not self._fill(HEADER.size + length):
                    break
                end = HEADER.size + length
                (jlen,) = JSON_LEN.unpack_from(self.inbuf, HEADER.size)
                start = HEADER.size + JSON_LEN.size
                if start + jlen > end:
                    raise SystemExit("srsync agent: corrupt frame")
                meta = _decode(self.inbuf[start : start + jlen]) if jlen else None
                with memoryview(self.inbuf) as view:
                    raw = bytes(view[start + jlen : end])  # one copy, not two
                del self.inbuf[:end]
                self.dispatch(kind, rid, meta, raw)
                if self.pending and (
                    self.pending_size >= FLUSH_AFTER or time.monotonic() - self.last_out >= FLUSH_DELAY
                ):
                    # a big answer, or one that took a while (a batch), goes out now, not after
                    # the calls queued behind it: the client may be waiting for it
                    self.flush()
        finally:
            for up in list(self.uploads.values()):
                self._discard(up)
            self._unstage()
            if self.pending:
                self.flush()

    def dispatch(self, kind: int, rid: int, meta: Any, raw: bytes) -> None:
        if kind == CALL:
            op, args = meta[0], meta[1]
            handler = self.ops.get(op)
            try:
                if handler is None:
                    raise CallFailed(errno.ENOSYS, f"unknown operation {op!r}")
                handler(rid, args, raw)
            except Exception as exc:  # per-call trouble is an answer, not the end
                self.send(FAIL, rid, self.error_at(exc, args) if op in BATCH_OPS else error_meta(exc))
            return
        up = self.uploads.get(rid)
        if up is None:
            return  # the upload already failed and was answered
        try:
            if kind == DATA:
                self._upload_data(up, raw)
            elif kind == END:
                del self.uploads[rid]
                self._upload_end(rid, up)
            elif kind == ABORT:
                del self.uploads[rid]
                self._discard(up)
                self.send(DONE, rid, {"aborted": True})
        except Exception as exc:
            self.uploads.pop(rid, None)
            self._discard(up)
            self.fail(rid, exc)

    # ---- paths -----------------------------------------------------------
    def path(self, rel: str) -> bytes:
        """The root joined with ``rel``; refuses anything that could leave the root."""
        if not self.root:
            raise CallFailed(errno.EINVAL, "no root selected")
        if rel == "":
            return self.root
        if rel.startswith("/"):
            raise CallFailed(errno.EINVAL, f"absolute path {rel!r}")
        for part in rel.split("/"):
            check_name(part)
        return self.root + b"/" + rel.encode("utf-8", "surrogateescape")

    def lstat_entry(self, full: bytes) -> list[Any] | None:
        try:
            st = os.lstat(full)
        except (FileNotFoundError, NotADirectoryError):
            return None
        target = None
        if statmod.S_ISLNK(st.st_mode):
            raw = os.readlink(full)
            try:
                target = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CallFailed(errno.EILSEQ, "symlink target is not valid UTF-8", _text(full)) from None
        entry = entry_json(st, target)
        if entry is None:
            raise CallFailed(errno.EINVAL, "special file (device, fifo or socket)", _text(full))
        return entry

    def check_guard(self, full: bytes, guard: list[Any] | None) -> list[Any] | None:
        """Refuse to act when ``full`` is not what the scan saw; returns what is there."""
        if guard is None:
            return None
        current = self.lstat_entry(full)
        if not matches(current, guard[0]):
            raise CallFailed(errno.EAGAIN, CHANGED, _text(full))
        return current

    def temp_for(self, final: bytes) -> bytes:
        """A fresh temporary sibling name (random per process, counted within it)."""
        directory, name = os.path.split(final)
        self.temp_count += 1
        stem = b"%s%s%x-" % (TEMP_PREFIX.encode("ascii"), self.temp_tag, self.temp_count)
        name = name[: NAME_MAX - len(stem)]
        # cutting bytes may split a UTF-8 sequence: drop the partial tail
        name = name.decode("utf-8", "ignore").encode("utf-8")
        return directory + b"/" + stem + name

    def _shown(self, rel: str) -> str:
        """The full path of ``rel`` for messages."""
        return _text(self.root) + ("/" + rel if rel else "")

    def error_at(self, exc: BaseException, args: Any) -> list[Any]:
        """error_meta for a call on the path args[0] (the BATCH_OPS), with a name relative
        to a directory descriptor (or none) replaced by that full path."""
        meta = error_meta(exc)
        if (
            isinstance(exc, OSError)
            and not meta[2].startswith("/")
            and isinstance(args, list)
            and args
            and isinstance(args[0], str)
        ):
            meta[2] = self._shown(args[0])
        return meta

    # ---- directories by descriptor ------------------------------------------
    def _scope(self) -> bool:
        """Start caching directories for this call; False when an enclosing call (a batch) already does."""
        if self.dirs is not None:
            return False
        self.dirs = {}
        return True

    def _end_scope(self) -> None:
        self._drop_dirs()
        self.dirs = None

    def _drop_dirs(self) -> None:
        for fd in self.dir_fds:
            with _Suppress(OSError):
                os.close(fd)
        self.dir_fds = []
        if self.dirs is not None:
            self.dirs = {}

    def _dir(self, rel_dir: str) -> DirSlot:
        """The directory ``rel_dir`` (checked, "" is the root), resolved without following symlinks."""
        dirs = self.dirs
        assert dirs is not None
        slot = dirs.get(rel_dir)
        if slot is None:
            if len(self.dir_fds) >= DIR_CACHE:
                self._drop_dirs()  # bounded: a batch touching very many directories starts over
            slot = self._resolve(rel_dir)
        return slot

    def _resolve(self, rel_dir: str) -> DirSlot:
        dirs = self.dirs
        assert dirs is not None
        slot = dirs.get(rel_dir)
        if slot is not None:
            return slot
        # up to the nearest directory already resolved (or the root), then down one by one
        names: list[str] = []
        base = rel_dir
        while base:
            at = base.rfind("/")
            if at == 0:
                raise CallFailed(errno.EINVAL, f"absolute path {rel_dir!r}")
            names.append(base[at + 1 :])
            base = base[:at] if at > 0 else ""
            if base in dirs:
                break
        slot = dirs.get(base)
        if slot is None:  # base is the root
            if not self.root:
                raise CallFailed(errno.EINVAL, "no root selected")
            if HAVE_DIR_FD:
                fd = os.open(self.root, ROOT_OPEN)
                self.dir_fds.append(fd)
                slot = (fd, b"", {})
            else:
                slot = (None, self.root + b"/", {})
            dirs[""] = slot
        current = base
        for name in reversed(names):
            check_name(name)
            current = current + "/" + name if current else name
            slot = self._child(slot, name, current)
            dirs[current] = slot
        return slot

    def _child(self, parent: DirSlot, name: str, rel_dir: str) -> DirSlot:
        """The subdirectory ``name`` of ``parent``, never through a symlink."""
        parent_fd, prefix, _ = parent
        path = prefix + name.encode("utf-8", "surrogateescape")
        try:
            fd = -1
            # (very deep paths past DIR_LIMIT descriptors go on by name, checked as below)
            if parent_fd is not None and len(self.dir_fds) < DIR_LIMIT:
                try:
                    fd = os.open(path, DIR_OPEN, dir_fd=parent_fd)
                except PermissionError:
                    if _O_PATH:
                        raise
                    # no O_PATH and no read permission: reach it by name below
            if fd >= 0:
                self.dir_fds.append(fd)
                return (fd, b"", {})
            # by name from the last descriptor: the component is checked, not followed
            if not statmod.S_ISDIR(os.lstat(path, dir_fd=parent_fd).st_mode):
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            return (parent_fd, path + b"/", {})
        except OSError as exc:
            # a symlink (ENOTDIR under O_NOFOLLOW|O_DIRECTORY), a file, or nothing: never followed
            raise OSError(exc.errno, exc.strerror, self._shown(rel_dir)) from None

    def _at(self, rel: str) -> tuple[int | None, bytes, bytes, dict[int, bool]]:
        """(directory descriptor, prefix, name) for a non-root ``rel``, and the directory's mode checks."""
        if rel.startswith("/"):
            raise CallFailed(errno.EINVAL, f"absolute path {rel!r}")
        at = rel.rfind("/")
        name = rel[at + 1 :]
        if name in BAD_NAMES or "\x00" in name:
            check_name(name)  # raises
        fd, prefix, modes = self._dir(rel[:at] if at > 0 else "")
        return fd, prefix, name.encode("utf-8", "surrogateescape"), modes

    def _entry_at(self, st: os.stat_result, fd: int | None, name: bytes, rel: str) -> list[Any]:
        """Like lstat_entry, for an lstat already taken of ``name`` in directory ``fd``."""
        target = None
        if statmod.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(name, dir_fd=fd).decode("utf-8")
            except UnicodeDecodeError:
                raise CallFailed(errno.EILSEQ, "symlink target is not valid UTF-8", self._shown(rel)) from None
        entry = entry_json(st, target)
        if entry is None:
            raise CallFailed(errno.EINVAL, "special file (device, fifo or socket)", self._shown(rel))
        return entry

    @staticmethod
    def _lstat_or_none(fd: int | None, name: bytes) -> os.stat_result | None:
        try:
            return os.lstat(name, dir_fd=fd)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _lstat_at(self, fd: int | None, name: bytes, rel: str) -> list[Any] | None:
        try:
            st = os.lstat(name, dir_fd=fd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return self._entry_at(st, fd, name, rel)

    def _guard_at(self, fd: int | None, name: bytes, expected: list[Any] | None, rel: str) -> None:
        """check_guard for ``name`` in directory ``fd``: EAGAIN unless it is as the scan saw it."""
        try:
            st = os.lstat(name, dir_fd=fd)
        except (FileNotFoundError, NotADirectoryError):
            if expected is None:
                return
            raise CallFailed(errno.EAGAIN, CHANGED, self._shown(rel)) from None
        if expected is not None and expected[0] == "f" and statmod.S_ISREG(st.st_mode):
            if st.st_size == expected[1] and st.st_mtime_ns == expected[2]:
                return
        elif matches(self._entry_at(st, fd, name, rel), expected):
            return
        raise CallFailed(errno.EAGAIN, CHANGED, self._shown(rel))

    def _temp_name(self, name: bytes) -> bytes:
        """temp_for, for a bare name."""
        self.temp_count += 1
        stem = self.temp_stem + b"%x-" % self.temp_count
        if len(stem) + len(name) > NAME_MAX or not name.isascii():
            # cutting bytes may split a UTF-8 sequence: drop the partial tail (and any invalid byte)
            name = name[: NAME_MAX - len(stem)].decode("utf-8", "ignore").encode("utf-8")
        return stem + name

    # ---- session ------------------------------------------------------
    def op_hello(self, rid: int, args: list[Any], raw: bytes) -> None:
        version = args[0]
        info = {
            "version": PROTOCOL,
            "python": list(sys.version_info[:3]),
            "xxhash": self.xxhash is not None,
            "pid": os.getpid(),
            # the interpreter itself (not a wrapper such as a pyenv shim): the client may
            # start it directly next time
            "executable": sys.executable or "",
            # loaded from the client's bytecode, not compiled here (see srsync.agent)
            "bytecode": globals().get("__cached__") == "<srsync-helper-bytecode>",
        }
        if version != PROTOCOL:
            self.send(FAIL, rid, [None, f"protocol {version!r} not supported (helper speaks {PROTOCOL})", ""])
            self.flush()
            raise SystemExit(2)
        self.send(DONE, rid, info)

    def op_root(self, rid: int, args: list[Any], raw: bytes) -> None:
        text = args[0] or "."
        if text == "~":
            text = "."
        elif text.startswith("~/"):
            text = text[2:] or "."
        path = text.encode("utf-8", "surrogateescape")
        resolved = os.path.realpath(path) if os.path.exists(path) else os.path.normpath(os.path.abspath(path))
        self.root = resolved
        self.send(DONE, rid, {"root": _text(resolved), "exists": os.path.isdir(resolved)})

    def op_ensure_root(self, rid: int, args: list[Any], raw: bytes) -> None:
        os.makedirs(self.root, exist_ok=True)
        self.root = os.path.realpath(self.root)
        self.send(DONE, rid, {"root": _text(self.root)})

    # ---- reading -------------------------------------------------------
    def op_scan(self, rid: int, args: list[Any], raw: bytes) -> None:
        wire_rules = []
        for base, pattern, rx, flags, neg, dir_only in args[0]:
            matcher: Any = literal_match(rx, flags)
            if matcher is None:
                import re  # only for a rule with wildcards (see srsync.core.ignore.LiteralMatch)

                matcher = re.compile(rx, flags)
            wire_rules.append(Rule(base=base, pattern=pattern, regex=matcher, negate=neg, dir_only=dir_only))
        rules = IgnoreRules(tuple(wire_rules))
        try:
            root_st = os.stat(self.root)
        except (FileNotFoundError, NotADirectoryError):
            self.send(DONE, rid, {"root_exists": False})
            return
        if not statmod.S_ISDIR(root_st.st_mode):
            self.send(DONE, rid, {"root_exists": False, "problem": f"{_text(self.root)} is not a directory"})
            return

        # directory -> summary of the files and links the client expects there
        # (srsync.core.summary): a match leaves them out, listed under "q"
        expect = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
        # "only": list just these directories (ones the last scan left out), not below them
        only = args[2] if len(args) > 2 and isinstance(args[2], list) else None

        def fresh() -> dict[str, Any]:
            # d: one record per directory, its columns in the raw part (see scan_columns)
            return {"d": [], "p": [], "t": [], "i": {}, "n": {}, "g": [], "q": []}

        batch = fresh()
        blobs: list[bytes] = []
        count = 0
        stack: list[tuple[str, str]] = [("", "")]  # (directory, its on-disk spelling)
        if only is None:
            self.quiet_disk = {}
        else:
            dirs: list[str] = []
            for d in only:
                if not isinstance(d, str):
                    raise CallFailed(errno.EINVAL, "scan's only: not a path")
                for part in d.split("/") if d else ():
                    check_name(part)
                dirs.append(d)
            stack = [(d, self.quiet_disk.get(d, d)) for d in reversed(dirs)]
        own = self._scope()
        try:
            while stack:
                rel_dir, disk_dir = stack.pop()
                below = stack if only is None else []
                count += self._scan_dir(rel_dir, disk_dir, rules, batch, blobs, below, expect.get(rel_dir))
                if count >= SCAN_BATCH:
                    self.send(ITEM, rid, batch, b"".join(blobs))
                    batch = fresh()
                    blobs = []
                    count = 0
                    self.beat()
        finally:
            if own:
                self._end_scope()
        self.send(ITEM, rid, batch, b"".join(blobs))
        self.send(DONE, rid, {"root_exists": True})

    def _scan_dir(
        self,
        rel_dir: str,
        disk_dir: str,
        rules: IgnoreRules,
        batch: dict[str, Any],
        blobs: list[bytes],
        stack: list[tuple[str, str]],
        want: str | None = None,
    ) -> int:
        """List one directory into ``batch`` (same rules as the SFTP endpoint's scan).

        The directory is reached like the targets of writes: component by
        component from the root without following a symlink (each was a
        directory when listed, but may have been replaced since); its entries
        are lstat-ed relative to it.
        """
        problems = batch["p"]
        dfd: int | None = None
        try:
            if SCAN_FD:
                if disk_dir:
                    at = disk_dir.rfind("/")
                    parent_fd, prefix, _ = self._dir(disk_dir[:at] if at > 0 else "")
                    name = prefix + disk_dir[at + 1 :].encode("utf-8", "surrogateescape")
                    dfd = os.open(name, SCAN_OPEN, dir_fd=parent_fd)
                else:
                    dfd = os.open(self.root, ROOT_OPEN & ~_O_PATH)
                with os.scandir(dfd) as it:
                    items: list[Any] = list(it)
            else:
                full_dir = self.root + b"/" + disk_dir.encode("utf-8", "surrogateescape") if disk_dir else self.root
                with os.scandir(full_dir) as it_bytes:
                    items = list(it_bytes)
        except FileNotFoundError:
            if dfd is not None:
                os.close(dfd)
            if rel_dir:
                batch["g"].append(rel_dir)  # removed since its parent was listed
            return 1
        except OSError as exc:
            if dfd is not None:
                os.close(dfd)
            problems.append([rel_dir, "cannot list directory: %s" % (exc.strerror or exc)])
            return 1
        try:
            self._list_dir(rel_dir, disk_dir, dfd, items, rules, batch, blobs, stack, want)
        finally:
            if dfd is not None:
                os.close(dfd)
        return len(items) + 1

    def _list_dir(
        self,
        rel_dir: str,
        disk_dir: str,
        dfd: int | None,
        items: list[Any],
        rules: IgnoreRules,
        batch: dict[str, Any],
        blobs: list[bytes],
        stack: list[tuple[str, str]],
        want: str | None = None,
    ) -> None:
        problems = batch["p"]
        problems_before = len(problems)
        prefix = rel_dir + "/" if rel_dir else ""
        disk_prefix = disk_dir + "/" if disk_dir else ""
        if want is not None and FS_UTF8 and self._quiet_listing(
            rel_dir, prefix, disk_prefix, dfd, items, rules, want, batch, blobs, stack
        ):
            self.quiet_disk[rel_dir] = disk_dir
            return
        # (on-disk name as text, valid UTF-8, DirEntry), sorted by text
        named: list[tuple[str, bool, Any]] = []
        all_ascii = True  # then no two names can be one after NFC, and none changes
        for item in items:
            name = item.name
            if isinstance(name, str) and FS_UTF8 and name.isascii():
                named.append((name, True, item))
                continue
            all_ascii = False
            raw_name = name if isinstance(name, bytes) else os.fsencode(name)
            try:
                named.append((raw_name.decode("utf-8"), True, item))
            except UnicodeDecodeError:
                named.append((_text(raw_name), False, item))
        named.sort(key=itemgetter(0))
        rows: list[tuple[str, str, int, int, int, int]] = []  # transposed into columns at the end
        add = rows.append
        targets: list[str] = []
        seen: set[str] = set()
        renamed = batch["n"]
        has_rules = bool(rules.rules)
        check_files = rules.may_exclude_files()
        for name, valid, item in named:
            if not valid:
                problems.append([prefix + name, "name is not valid UTF-8; skipped"])
                continue
            if name in BAD_NAMES or "/" in name or "\x00" in name:
                problems.append([prefix + name, "name is not allowed; skipped"])
                continue
            if name.startswith(TEMP_PREFIX):
                batch["t"].append(prefix + name)
                continue
            if all_ascii:
                norm = name
            else:
                norm = name if name.isascii() else nfc(name)
                if norm in seen:
                    problems.append([prefix + norm, "two names differ only in Unicode normalisation; skipped one"])
                    continue
                seen.add(norm)
                if norm != name:
                    renamed[prefix + norm] = name
            try:
                st = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                problems.append([prefix + norm, "cannot stat: %s" % (exc.strerror or exc)])
                continue
            mode = st.st_mode
            fmt = mode & S_IFMT
            if has_rules and (check_files or fmt == S_IFDIR) and rules.is_excluded(prefix + norm, fmt == S_IFDIR):
                continue  # pruned: nothing below it is looked at
            if fmt == S_IFREG:
                add((norm, "f", st.st_size, st.st_mtime_ns, mode & 0o7777, st.st_ino))
                if norm == IGNORE_FILE:
                    self._read_ignore_file(prefix + norm, rel_dir, dfd, item.path, batch)
            elif fmt == S_IFDIR:
                add((norm, "d", 0, st.st_mtime_ns, mode & 0o7777, st.st_ino))
                stack.append((prefix + norm, disk_prefix + name))
            elif fmt == S_IFLNK:
                try:
                    raw_target = os.readlink(item.path, dir_fd=dfd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    problems.append([prefix + norm, "cannot read symlink: %s" % (exc.strerror or exc)])
                    continue
                try:
                    target = os.fsencode(raw_target).decode("utf-8")
                except UnicodeDecodeError:
                    problems.append([prefix + norm, "symlink target is not valid UTF-8; skipped"])
                    continue
                add((norm, "l", 0, 0, 0, 0))
                targets.append(target)
            else:
                problems.append([prefix + norm, "special file (device, fifo or socket); skipped"])
        if want is not None and len(problems) == problems_before:
            files = [row for row in rows if row[1] == "f"]
            links = [row[0] for row in rows if row[1] == "l"]
            if summarize(
                [row[0] for row in files], [row[2] for row in files], [row[3] for row in files],
                [row[4] for row in files], list(zip(links, targets)),  # noqa: B905  (python 3.8)
            ) == want:
                # quiet: only the subdirectories go
                rows = [row for row in rows if row[1] == "d"]
                targets = []
                batch["q"].append([rel_dir, len(files) + len(links)])
                self.quiet_disk[rel_dir] = disk_dir
        if rows:
            # rows to columns (strict= needs python 3.10; the rows all have six fields)
            names, kinds, sizes, mtimes, modes, inos = zip(*rows)  # noqa: B905
            record, blob = scan_columns(rel_dir, names, kinds, sizes, mtimes, modes, inos, targets)
            batch["d"].append(record)
            if blob:
                blobs.append(blob)

    def _quiet_listing(
        self,
        rel_dir: str,
        prefix: str,
        disk_prefix: str,
        dfd: int | None,
        items: list[Any],
        rules: IgnoreRules,
        want: str,
        batch: dict[str, Any],
        blobs: list[bytes],
        stack: list[tuple[str, str]],
    ) -> bool:
        """A directory of plain ASCII names whose files and links summarise as ``want``:
        list only its subdirectories.  False (nothing done) when anything differs or
        needs the full listing's care (other names, temp files, special files, errors)."""
        names = [item.name for item in items]
        if names and not isinstance(names[0], str):
            return False  # one listing's names are all str or all bytes (its path's type)
        joined = "\0".join(names)
        # (scandir never yields "", "." or ".."; a temp name anywhere takes the full listing)
        if not joined.isascii() or TEMP_PREFIX in joined:
            return False
        check_files = rules.may_exclude_files()
        if not check_files and items:
            # the usual quiet directory, files only: the columns taken in C
            try:
                summary = summarize_files(names, [item.stat(follow_symlinks=False) for item in items])
            except OSError:
                return False
            if summary is not None:
                if summary != want:
                    return False
                if IGNORE_FILE in names:
                    self._read_ignore_file(prefix + IGNORE_FILE, rel_dir, dfd, IGNORE_FILE, batch)
                batch["q"].append([rel_dir, len(names)])
                return True
        # the files' columns and the links, for the summary
        fnames: list[str] = []
        sizes: list[int] = []
        mtimes: list[int] = []
        modes: list[int] = []
        links: list[tuple[str, str]] = []
        subdirs: list[tuple[str, Any]] = []
        ignore_file = False
        has_rules = bool(rules.rules)
        for item, name in zip(items, names):  # noqa: B905  (python 3.8: no strict=)
            try:
                st = item.stat(follow_symlinks=False)
            except OSError:
                return False
            mode = st.st_mode
            fmt = mode & S_IFMT
            if has_rules and (check_files or fmt == S_IFDIR) and rules.is_excluded(prefix + name, fmt == S_IFDIR):
                continue
            if fmt == S_IFREG:
                fnames.append(name)
                sizes.append(st.st_size)
                mtimes.append(st.st_mtime_ns)
                modes.append(mode & 0o7777)
                if name == IGNORE_FILE:
                    ignore_file = True
            elif fmt == S_IFDIR:
                subdirs.append((name, st))
            elif fmt == S_IFLNK:
                try:
                    target = os.fsencode(os.readlink(item.path, dir_fd=dfd)).decode("utf-8")
                except (OSError, UnicodeDecodeError):
                    return False
                links.append((name, target))
            else:
                return False
        if summarize(fnames, sizes, mtimes, modes, links) != want:
            return False
        if ignore_file:
            self._read_ignore_file(prefix + IGNORE_FILE, rel_dir, dfd, IGNORE_FILE, batch)
        if subdirs:
            subdirs.sort()
            for name, _ in subdirs:
                stack.append((prefix + name, disk_prefix + name))
            record, blob = scan_columns(
                rel_dir,
                [name for name, _ in subdirs],
                ["d"] * len(subdirs),
                [0] * len(subdirs),
                [st.st_mtime_ns for _, st in subdirs],
                [st.st_mode & 0o7777 for _, st in subdirs],
                [st.st_ino for _, st in subdirs],
                [],
            )
            batch["d"].append(record)
            if blob:
                blobs.append(blob)
        batch["q"].append([rel_dir, len(fnames) + len(links)])
        return True

    @staticmethod
    def _read_ignore_file(rel: str, rel_dir: str, dfd: int | None, path: Any, batch: dict[str, Any]) -> None:
        try:
            fd = os.open(path, READ_OPEN, dir_fd=dfd)
        except FileNotFoundError:
            return
        except OSError as exc:
            batch["p"].append([rel, "cannot read: %s" % (exc.strerror or exc)])
            return
        try:
            with open(fd, "rb") as fh:
                batch["i"][rel_dir] = fh.read().decode("utf-8", "replace")
        except OSError as exc:
            batch["p"].append([rel, "cannot read: %s" % (exc.strerror or exc)])

    def op_stat(self, rid: int, args: list[Any], raw: bytes) -> None:
        rel = args[0]
        if rel == "":
            self.send(DONE, rid, {"e": self.lstat_entry(self.path(rel))})
            return
        own = self._scope()
        try:
            try:
                dfd, prefix, name, _ = self._at(rel)
            except (FileNotFoundError, NotADirectoryError):
                entry = None  # no directory there (a symlink is not followed): nothing at rel
            else:
                entry = self._lstat_at(dfd, prefix + name, rel)
        finally:
            if own:
                self._end_scope()
        self.send(DONE, rid, {"e": entry})

    def op_open_r(self, rid: int, args: list[Any], raw: bytes) -> None:
        fd = os.open(self.path(args[0]), os.O_RDONLY | os.O_NOFOLLOW)
        st = os.fstat(fd)
        if statmod.S_ISDIR(st.st_mode):
            os.close(fd)
            raise CallFailed(errno.EISDIR, "Is a directory", args[0])
        self.handles[rid] = fd
        self.send(DONE, rid, {"size": st.st_size})

    def op_pread(self, rid: int, args: list[Any], raw: bytes) -> None:
        fd = self.handles.get(args[0])
        if fd is None:
            raise CallFailed(errno.EBADF, "file is not open")
        self.send(DONE, rid, None, os.pread(fd, args[2], args[1]))

    def op_close_r(self, rid: int, args: list[Any], raw: bytes) -> None:
        fd = self.handles.pop(args[0], None)
        if fd is not None:
            os.close(fd)
        self.send(DONE, rid)

    @staticmethod
    def _read_at_most(fd: int, limit: int) -> bytes:
        parts = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, READ_CHUNK * 4))
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def op_read_files(self, rid: int, args: list[Any], raw: bytes) -> None:
        """Whole small files: at most scanned size + 1 bytes each, with the lstat taken after reading.

        Asked as args ``[count, bytes of the names]`` and in raw the sizes at the
        scan (READ_ASKED) and the names (pack_names).  Answers come in order, many
        files per ITEM: meta ``[count, odd]``, raw the lengths read (``I``), the
        lstat columns (READ_COLUMNS) and the contents back to back.  A file whose
        lstat is not a regular file's, or that failed, has zeros in the columns
        and is in odd: ``[index, lstat or None]`` or ``[index, None, error]``.
        """
        try:
            count, names_size = args
            (sizes,), at = unpack_columns(READ_ASKED, count, raw)
            if at + names_size != len(raw):
                raise ValueError("names cut short")
            names = unpack_names(raw[at:], count)
        except (TypeError, ValueError) as exc:
            raise CallFailed(errno.EPROTO, f"malformed read_files request: {exc}") from None
        blobs: list[bytes] = []
        stats: list[Any] = []
        odd: list[Any] = []
        blob_size = 0
        no_stat = _NoStat
        own = self._scope()
        assert self.dirs is not None
        dirs: dict[str, DirSlot] = self.dirs
        chunk = READ_CHUNK * 4
        lstat = os.lstat
        try:
            for rel, size in zip(names, sizes):  # noqa: B905  (python 3.8; both `count` long)
                try:
                    # _at, inlined
                    if rel.startswith("/"):
                        raise CallFailed(errno.EINVAL, f"absolute path {rel!r}")
                    at = rel.rfind("/")
                    text = rel[at + 1 :]
                    if text in BAD_NAMES or "\x00" in text:
                        check_name(text)  # raises
                    rel_dir = rel[:at] if at > 0 else ""
                    slot = dirs.get(rel_dir)
                    if slot is None:
                        slot = self._dir(rel_dir)
                        assert self.dirs is not None
                        dirs = self.dirs  # the cache may have started over
                    dfd = slot[0]
                    name = slot[1] + text.encode("utf-8", "surrogateescape")
                    fd = os.open(name, READ_OPEN, dir_fd=dfd)
                    try:
                        limit = size + 1
                        data = os.read(fd, limit if limit < chunk else chunk)
                        try:
                            st: os.stat_result | None = lstat(name, dir_fd=dfd)  # after reading
                        except (FileNotFoundError, NotADirectoryError):
                            st = None  # gone since it was read
                        if st is not None and data and len(data) < limit and st.st_size > len(data):
                            # a short read before the end (rare): read on, then look again
                            data += self._read_at_most(fd, limit - len(data))
                            st = self._lstat_or_none(dfd, name)
                    finally:
                        os.close(fd)
                    if st is not None and st.st_mode & S_IFMT == S_IFREG:
                        stats.append(st)
                    else:
                        odd.append([len(stats), None if st is None else self._entry_at(st, dfd, name, rel)])
                        stats.append(no_stat)
                except Exception as exc:
                    odd.append([len(stats), None, self.error_at(exc, [rel])])
                    stats.append(no_stat)
                    data = b""
                blobs.append(data)
                blob_size += len(data)
                if blob_size >= READ_CHUNK or len(stats) >= READ_ITEM_FILES:
                    self._send_read(rid, blobs, stats, odd)
                    blobs, stats, odd, blob_size = [], [], [], 0
        finally:
            if own:
                self._end_scope()
        if stats:
            self._send_read(rid, blobs, stats, odd)
        self.send(DONE, rid)

    def _send_read(self, rid: int, blobs: list[bytes], stats: list[Any], odd: list[Any]) -> None:
        """One ITEM of read_files (see there)."""
        try:
            columns = pack_columns(
                "I" + READ_COLUMNS,
                [
                    list(map(len, blobs)),
                    list(map(_st_size, stats)),
                    list(map(_st_mtime_ns, stats)),
                    [mode & 0o7777 for mode in map(_st_mode, stats)],
                    list(map(_st_ino, stats)),
                ],
            )
        except (struct.error, OverflowError):  # a number past the columns (an mtime after 2262)
            seen = {entry[0] for entry in odd}
            for index, st in enumerate(stats):
                if index not in seen:
                    odd.append([index, entry_json(st, None)])
            stats = [_NoStat] * len(stats)
            odd.sort(key=_first)
            return self._send_read(rid, blobs, stats, odd)
        self.send(ITEM, rid, [len(stats), odd], b"".join([columns, *blobs]))

    def _xxh(self, full: bytes) -> str:
        if self.xxhash is None:
            raise CallFailed(errno.ENOSYS, "xxhash is not installed on the remote python")
        digest = self.xxhash.xxh3_128()
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            while True:
                chunk = os.read(fd, READ_CHUNK * 4)
                if not chunk:
                    break
                digest.update(chunk)
                self.beat()
        finally:
            os.close(fd)
        return str(digest.hexdigest())

    def op_hash(self, rid: int, args: list[Any], raw: bytes) -> None:
        self.send(DONE, rid, {"h": self._xxh(self.path(args[0]))})

    def op_hash_files(self, rid: int, args: list[Any], raw: bytes) -> None:
        for index, rel in enumerate(args[0]):
            try:
                self.send(ITEM, rid, {"i": index, "h": self._xxh(self.path(rel))})
            except Exception as exc:
                self.send(ITEM, rid, {"i": index, "err": error_meta(exc)})
        self.send(DONE, rid)

    # ---- writing -------------------------------------------------------
    def _create_temp(self, final: bytes) -> tuple[int, bytes]:
        tmp = self.temp_for(final)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        return fd, tmp

    def _discard(self, up: Upload) -> None:
        for fd in (up.fd, up.basis_fd):
            if fd >= 0:
                with _Suppress(OSError):
                    os.close(fd)
        up.fd = up.basis_fd = -1
        if up.kind == "range":
            return  # the shared temporary file is removed by pw_abort
        with _Suppress(OSError):
            os.unlink(up.tmp)

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def _install(self, tmp: bytes, final: bytes, guard: list[Any] | None) -> None:
        """Mode and mtime are already on ``tmp``: check the final name and rename over it."""
        self.check_guard(final, guard)
        try:
            os.rename(tmp, final)
        except IsADirectoryError:
            # rename(2) never replaces a directory with a file
            raise CallFailed(errno.EISDIR, "a directory is in the way", _text(final)) from None

    def _installed(self, final: bytes) -> list[Any]:
        entry = entry_json(os.lstat(final), None)
        assert entry is not None
        return entry

    def _finish_fd(self, fd: int, mode: int, mtime_ns: int) -> None:
        try:
            os.fchmod(fd, mode & 0o7777)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)

    def op_put(self, rid: int, args: list[Any], raw: bytes) -> None:
        """A whole small file in one frame: args [path, mode, mtime_ns, guard]."""
        own = self._scope()
        try:
            if not isinstance(args, list) or len(args) != 4:
                raise CallFailed(errno.EPROTO, "malformed put")
            self._put(args[0], args[1], args[2], args[3], raw)
        finally:
            if own:
                self._end_scope()
        self.send(DONE, rid)  # no entry: batches only need to know it landed

    def _put(self, rel: str, mode: int, mtime_ns: int, guard: list[Any] | None, raw: bytes) -> None:
        """The hot path of a push: _at, _temp_name and _guard_at inlined for the common cases."""
        if rel == "" or rel[0] == "/":
            if rel == "":
                raise CallFailed(errno.EISDIR, "the root is a directory")
            raise CallFailed(errno.EINVAL, f"absolute path {rel!r}")
        at = rel.rfind("/")
        name = rel[at + 1 :]
        if name in BAD_NAMES or "\x00" in name:
            check_name(name)  # raises
        rel_dir = rel[:at] if at > 0 else ""
        slot = self.dirs.get(rel_dir) if self.dirs is not None else None
        dfd, prefix, modes = slot if slot is not None else self._dir(rel_dir)
        bname = name.encode("utf-8", "surrogateescape")
        mode &= 0o7777
        exact = modes.get(mode)  # does creating with ``mode`` give exactly ``mode`` here?
        if exact is None and (mode & 0o7000 or not mode & 0o200):
            # setuid/setgid/sticky, or not writable by us while we fill it: 0600, then fchmod
            exact = modes[mode] = False
        create_mode = 0o600 if exact is False else mode
        if self.tmpfile and guard is not None and guard[0] is None and dfd is not None:
            try:
                fd = os.open(b".", TMPFILE_FLAGS, create_mode, dir_fd=dfd)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                self.tmpfile = False  # not on this filesystem: named temporary files
            else:
                try:
                    # _fill_new, with its usual case here: created exact, written at once
                    written = os.write(fd, raw) if raw and exact else 0
                    if exact and written == len(raw):
                        os.utime(fd, ns=(mtime_ns, mtime_ns))
                    else:
                        self._fill_new(fd, raw, mode, mtime_ns, exact, modes, written)
                    try:
                        os.link(b"/proc/self/fd/%d" % fd, prefix + bname, dst_dir_fd=dfd, follow_symlinks=True)
                    except FileExistsError:
                        raise CallFailed(errno.EAGAIN, CHANGED, self._shown(rel)) from None
                finally:
                    os.close(fd)
                return
        self.temp_count += 1
        stem = self.temp_stem + b"%x-" % self.temp_count
        if len(stem) + len(bname) <= NAME_MAX and bname.isascii():
            tmp = prefix + stem + bname
        else:
            tmp = prefix + self._temp_name(bname)  # counts again: names stay unique
        fd = os.open(tmp, NEW_FILE, create_mode, dir_fd=dfd)
        try:
            try:
                self._fill_new(fd, raw, mode, mtime_ns, exact, modes)
            finally:
                os.close(fd)
            final = prefix + bname
            if guard is not None:
                expected = guard[0]
                if expected is None:
                    # nothing may be there: a plain existence test costs no exception when
                    # nothing is (the usual case); anything there gets the full check
                    if not QUICK_ABSENT or os.access(final, os.F_OK, dir_fd=dfd, follow_symlinks=False):
                        self._guard_at(dfd, final, None, rel)
                else:
                    self._guard_at(dfd, final, expected, rel)
            self._rename_in(dfd, tmp, final, rel)
        except BaseException:
            with _Suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise

    def _fill_new(
        self, fd: int, raw: bytes, mode: int, mtime_ns: int, exact: bool | None, modes: dict[int, bool],
        written: int = 0,
    ) -> None:
        """Write a small file's content (from byte ``written`` on), then its mode (unless
        created exact) and mtime."""
        if len(raw) > written:
            written += os.write(fd, raw[written:] if written else raw)
            if written < len(raw):
                self._write_all(fd, raw[written:])
        if exact is None:
            # umask, default ACLs: look once per directory and mode
            exact = modes[mode] = os.fstat(fd).st_mode & 0o7777 == mode
            if not exact:
                os.fchmod(fd, mode)
        elif not exact:
            os.fchmod(fd, mode)
        os.utime(fd, ns=(mtime_ns, mtime_ns))

    def _rename_in(self, dfd: int | None, tmp: bytes, final: bytes, rel: str) -> None:
        """Rename ``tmp`` over ``final`` inside directory ``dfd``; a directory in the way is EISDIR."""
        try:
            os.rename(tmp, final, src_dir_fd=dfd, dst_dir_fd=dfd)
        except IsADirectoryError:
            # rename(2) never replaces a directory with a file
            raise CallFailed(errno.EISDIR, "a directory is in the way", self._shown(rel)) from None

    def op_write(self, rid: int, args: list[Any], raw: bytes) -> None:
        """Start a streamed upload: DATA frames follow, then END (or ABORT)."""
        rel = args[0]
        if rel == "":
            raise CallFailed(errno.EISDIR, "the root is a directory")
        final = self.path(rel)
        fd, tmp = self._create_temp(final)
        self.uploads[rid] = Upload(fd, tmp, final, args)

    def op_patch(self, rid: int, args: list[Any], raw: bytes) -> None:
        """Start a delta upload onto the file at args[0]: DATA frames carry encoded delta ops."""
        rel, guard = args[0], args[3]
        final = self.path(rel)
        staged, self.staged = self.staged, None
        basis_fd = -1
        try:
            basis_fd = os.open(final, os.O_RDONLY | os.O_NOFOLLOW)
            basis_st = os.fstat(basis_fd)
            if not matches(entry_json(basis_st, None), guard[0] if guard else None):
                raise CallFailed(errno.EAGAIN, CHANGED, rel)
            fd = -1
            if staged is not None and staged[0] == rel:
                fd = staged[1].take(basis_token(basis_st), self.beat)
            if fd >= 0 and staged is not None:
                tmp, staged = staged[2], None
                copy = place_staged(basis_fd, fd)
                in_place = True
            else:
                if staged is not None:
                    self._drop(staged)
                    staged = None
                fd, tmp = self._create_temp(final)
                in_place = False
                copy = lambda off, length: copy_range(basis_fd, fd, off, length, self.beat)  # noqa: E731  (guarded: kernel copies)
        except BaseException:
            if basis_fd >= 0:
                os.close(basis_fd)
            if staged is not None:
                self._drop(staged)
            raise
        up = Upload(fd, tmp, final, args, "patch")
        up.basis_fd = basis_fd
        up.basis_st = basis_st
        up.staged = in_place
        up.decoder = OpDecoder()
        up.rebuilder = Rebuilder(
            lambda off, length: os.pread(basis_fd, length, off),
            basis_st.st_size,
            copy=copy,
            token=lambda: basis_token(os.fstat(basis_fd)),
        )
        self.uploads[rid] = up

    def _upload_data(self, up: Upload, raw: bytes) -> None:
        if up.decoder is None:
            self._write_all(up.fd, raw)
            return
        assert up.rebuilder is not None
        for op in up.decoder.feed(raw):
            for piece in up.rebuilder.add(op):
                self._write_all(up.fd, piece)
        self.beat()

    def _upload_end(self, rid: int, up: Upload) -> None:
        if up.kind == "range":
            # the temporary file belongs to the whole parallel upload: keep it
            fd, up.fd = up.fd, -1
            os.close(fd)
            self.send(DONE, rid)
            return
        rel, mode, mtime_ns, guard = up.args[:4]
        try:
            if up.rebuilder is not None:
                up.rebuilder.finish()
                if up.staged:
                    os.ftruncate(up.fd, up.rebuilder.size)  # the staged copy was the old file's size
                after = os.fstat(up.basis_fd)
                assert up.basis_st is not None
                if (after.st_size, after.st_mtime_ns) != (up.basis_st.st_size, up.basis_st.st_mtime_ns):
                    raise CallFailed(errno.EAGAIN, "the old file changed while it was used; will retry next run", rel)
                os.close(up.basis_fd)
                up.basis_fd = -1
            self._finish_fd(up.fd, mode, mtime_ns)
            up.fd = -1
            self._install(up.tmp, up.final, guard)
        except BaseException:
            self._discard(up)
            raise
        self.send(DONE, rid, {"e": self._installed(up.final)})

    # parallel uploads of one big file: a temporary file that several helper
    # processes (one per channel) fill at their own offsets, then one installs it
    def _pw_temp(self, rel: str, tmp_name: str) -> tuple[bytes, bytes]:
        final = self.path(rel)
        if not is_temp_name(tmp_name) or "/" in tmp_name:
            raise CallFailed(errno.EINVAL, f"not a temporary name: {tmp_name!r}")
        check_name(tmp_name)
        return final, os.path.join(os.path.dirname(final), tmp_name.encode("utf-8"))

    def op_pw_open(self, rid: int, args: list[Any], raw: bytes) -> None:
        final = self.path(args[0])
        fd, tmp = self._create_temp(final)
        try:
            os.ftruncate(fd, args[1])
        finally:
            os.close(fd)
        self.send(DONE, rid, {"tmp": os.path.basename(tmp).decode("utf-8")})

    def op_pw_range(self, rid: int, args: list[Any], raw: bytes) -> None:
        """Write DATA frames at args [path, tmp, offset] onwards into an existing temporary file."""
        final, tmp = self._pw_temp(args[0], args[1])
        fd = os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW)
        os.lseek(fd, args[2], os.SEEK_SET)
        self.uploads[rid] = Upload(fd, tmp, final, args, "range")

    def op_pw_commit(self, rid: int, args: list[Any], raw: bytes) -> None:
        rel, tmp_name, size, mode, mtime_ns, guard = args
        final, tmp = self._pw_temp(rel, tmp_name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW)
            if os.fstat(fd).st_size != size:
                os.close(fd)
                raise CallFailed(errno.EIO, "parallel upload incomplete", rel)
            self._finish_fd(fd, mode, mtime_ns)
            self._install(tmp, final, guard)
        except BaseException:
            with _Suppress(OSError):
                os.unlink(tmp)
            raise
        self.send(DONE, rid, {"e": self._installed(final)})

    def op_pw_abort(self, rid: int, args: list[Any], raw: bytes) -> None:
        _, tmp = self._pw_temp(args[0], args[1])
        with _Suppress(FileNotFoundError):
            os.unlink(tmp)
        self.send(DONE, rid)

    def _at_or_absent(self, rel: str, absent_ok: bool, changed: str = CHANGED) -> tuple[int | None, bytes]:
        """(directory descriptor, name) of ``rel``; when its directory is missing (or is not a
        directory: a symlink is not followed) nothing is at ``rel``: EAGAIN unless ``absent_ok``."""
        try:
            dfd, prefix, name, _ = self._at(rel)
        except (FileNotFoundError, NotADirectoryError):
            if not absent_ok:
                raise CallFailed(errno.EAGAIN, changed, rel) from None
            raise
        return dfd, prefix + name

    def op_mkdir(self, rid: int, args: list[Any], raw: bytes) -> None:
        rel, mode, guard = args
        wanted = mode & 0o7777 | 0o700  # owner rwx while it is filled; set_meta brings the final mode
        if rel == "":
            full = self.root
            if guard is not None:
                current = self.lstat_entry(full)
                if current is not None and current[0] == "d":
                    self.send(DONE, rid, {"exists": True})
                    return
                if not matches(current, guard[0]):
                    raise CallFailed(errno.EAGAIN, CHANGED, rel)
            os.mkdir(full, wanted)
            os.chmod(full, wanted)
            self.send(DONE, rid)
            return
        own = self._scope()
        try:
            dfd, name = self._at_or_absent(rel, guard is None or guard[0] is None)
            if guard is not None:
                current = self._lstat_at(dfd, name, rel)
                if current is not None and current[0] == "d":
                    self.send(DONE, rid, {"exists": True})
                    return
                if not matches(current, guard[0]):
                    raise CallFailed(errno.EAGAIN, CHANGED, rel)
            os.mkdir(name, wanted, dir_fd=dfd)
            os.chmod(name, wanted, dir_fd=dfd)  # the umask applied to mkdir
        finally:
            if own:
                self._end_scope()
        self.send(DONE, rid)

    def op_symlink(self, rid: int, args: list[Any], raw: bytes) -> None:
        rel, target, guard = args
        if rel == "":
            raise CallFailed(errno.EISDIR, "the root is a directory")
        own = self._scope()
        try:
            dfd, prefix, name, _ = self._at(rel)
            tmp = prefix + self._temp_name(name)
            os.symlink(target.encode("utf-8", "surrogateescape"), tmp, dir_fd=dfd)
            try:
                final = prefix + name
                if guard is not None:
                    self._guard_at(dfd, final, guard[0], rel)
                self._rename_in(dfd, tmp, final, rel)
            except BaseException:
                with _Suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
        finally:
            if own:
                self._end_scope()
        self.send(DONE, rid)

    def op_remove(self, rid: int, args: list[Any], raw: bytes) -> None:
        rel, kind, guard = args
        if rel == "":
            raise CallFailed(errno.EPERM, "refusing to remove the root", _text(self.root))
        own = self._scope()
        try:
            dfd, name = self._at_or_absent(rel, guard is None or guard[0] is None)
            if guard is not None:
                self._guard_at(dfd, name, guard[0], rel)
            if kind == "d":
                os.rmdir(name, dir_fd=dfd)
                if self.dirs and rel in self.dirs:
                    self._drop_dirs()  # a later call of the batch may make a new one there
            else:
                os.unlink(name, dir_fd=dfd)
        finally:
            if own:
                self._end_scope()
        self.send(DONE, rid)

    def op_set_meta(self, rid: int, args: list[Any], raw: bytes) -> None:
        """args [path, mode, mtime_ns, guard]; guard [expected or None, kind that must be there]."""
        rel, mode, mtime_ns, guard = args
        own = self._scope()
        try:
            if rel == "":
                dfd, name = None, self.root
            else:
                dfd, name = self._at_or_absent(rel, guard is None, "changed since scan; skipped")
            try:
                st: os.stat_result | None = os.lstat(name, dir_fd=dfd)
            except (FileNotFoundError, NotADirectoryError):
                st = None
            if guard is not None:
                current = None if st is None else self._entry_at(st, dfd, name, rel)
                if current is None or current[0] != guard[1]:
                    raise CallFailed(errno.EAGAIN, "changed since scan; skipped", rel)
                if guard[0] is not None and not matches(current, guard[0]):
                    raise CallFailed(errno.EAGAIN, CHANGED, rel)
            if st is not None and statmod.S_ISLNK(st.st_mode):
                raise CallFailed(errno.ELOOP, "refusing to change metadata through a symlink", self._shown(rel))
            if mode is not None:
                os.chmod(name, mode & 0o7777, dir_fd=dfd)
            if mtime_ns is not None:
                os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=dfd, follow_symlinks=False)
            if mode is not None and self.dirs and rel in self.dirs:
                self._drop_dirs()  # later calls reach it again by name: its new permissions apply
        finally:
            if own:
                self._end_scope()
        self.send(DONE, rid)

    def op_link(self, rid: int, args: list[Any], raw: bytes) -> None:
        """A hard link (the trash keeps replaced files this way, without copying)."""
        try:
            os.link(self.path(args[0]), self.path(args[1]), follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                raise CallFailed(errno.ENOTSUP, "cannot hard-link here", args[1]) from exc
            raise
        self.send(DONE, rid)

    def op_rename(self, rid: int, args: list[Any], raw: bytes) -> None:
        os.rename(self.path(args[0]), self.path(args[1]))
        self.send(DONE, rid)

    def op_batch(self, rid: int, args: list[Any], raw: bytes) -> None:
        """Many small calls in one frame: args ``[calls, puts]``.

        ``calls`` lists them in order: ``[op, args, raw length]`` for one call, or
        an int n for the next n puts, whose arguments are columns: ``puts`` is
        ``[count, bytes of the names, odd]``, and raw starts with their content
        lengths, modes and mtimes (PUT_COLUMNS) and their names (pack_names); odd
        lists ``[put index, guard]`` for the puts whose guard is not ``[None]``
        (nothing may be at the name).  The contents of all the calls follow, in
        order.  Each runs as if called alone, in order; a failure affects only its
        own call.  The answer lists [index, answer] for calls that answered
        something and [index, None, error] for failures (index: the call's place
        among all of them).  Directories found by one call serve the later ones
        (see the module docstring).
        """
        try:
            calls, (count, names_size, odd) = args
            (lengths, modes, mtimes), at = unpack_columns(PUT_COLUMNS, count, raw)
            names = unpack_names(raw[at : at + names_size], count)
            at += names_size
            guards = {index: guard for index, guard in odd}
            if sum(call for call in calls if call.__class__ is int) != count:
                raise ValueError("puts and columns do not match")
            if at + sum(lengths) + sum(call[2] for call in calls if call.__class__ is list) != len(raw):
                raise ValueError("contents cut short")
        except (TypeError, ValueError, IndexError) as exc:
            raise CallFailed(errno.EPROTO, f"malformed batch: {exc}") from None
        results: list[Any] = []
        ops = self.ops
        put = self._put
        nothing_there = [None]
        index = 0  # of the call, among all of them
        first = 0  # of the next put
        own = self._scope()
        try:
            for call in calls:
                if call.__class__ is int:
                    for p in range(first, first + call):
                        size = lengths[p]
                        if size:
                            sub_raw = raw[at : at + size]
                            at += size
                        else:
                            sub_raw = b""
                        guard = guards.get(p, nothing_there) if guards else nothing_there
                        try:
                            put(names[p], modes[p], mtimes[p], guard, sub_raw)
                        except Exception as exc:
                            results.append([index, None, self.error_at(exc, [names[p]])])
                        index += 1
                    first += call
                    continue
                op, sub_args, size = call
                if size:
                    sub_raw = raw[at : at + size]
                    at += size
                else:
                    sub_raw = b""
                try:
                    if op not in BATCH_OPS:
                        raise CallFailed(errno.ENOSYS, f"{op!r} cannot be batched")
                    self.sub_result = None
                    ops[op](SUB_CALL, sub_args, sub_raw)
                except Exception as exc:
                    results.append([index, None, self.error_at(exc, sub_args)])
                else:
                    if self.sub_result is not None:
                        results.append([index, self.sub_result])
                index += 1
        finally:
            if own:
                self._end_scope()
        self.send(DONE, rid, results)

    # ---- delta -----------------------------------------------------------
    def _chunks(self, fd: int, limit: int) -> Any:
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, READ_CHUNK * 4))
            if not chunk:
                return
            left -= len(chunk)
            self.beat()
            yield chunk

    def op_sig(self, rid: int, args: list[Any], raw: bytes) -> None:
        """Signature of the file at args[0] in blocks of args[1] bytes (digest args[2]), with its lstat.

        Meta: "e" the fstat taken before reading, "b" the basis token (see
        delta.Guard) when the file held still while it was read, else None.
        With args[3] true (an edit in place is likely) a copy of the file is
        staged beside it meanwhile, for a "patch" of the same path to finish
        (delta.StagedCopy); one at a time, dropped by the next "sig", by a
        "patch" of another path and at exit.
        """
        self._unstage()
        full = self.path(args[0])
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            if not statmod.S_ISREG(st.st_mode):
                raise CallFailed(errno.EINVAL, "not a regular file", args[0])
            before = entry_json(st, None)
            if len(args) > 3 and args[3]:
                self._stage(args[0], full, fd, st.st_size)
            sig = signature_fd(fd, args[1], args[2] if len(args) > 2 else "sha1", beat=self.beat)
        except BaseException:
            self._unstage()
            raise
        finally:
            os.close(fd)
        if sig.basis is None:
            self._unstage()  # it changed while it was read: no delta will use the copy
        meta = {"e": before, "b": None if sig.basis is None else list(sig.basis), "s": self.staged is not None}
        self.send(DONE, rid, meta, sig.encode())

    def op_unstage(self, rid: int, args: list[Any], raw: bytes) -> None:
        """Drop the copy "sig" staged, if no "patch" used it."""
        self._unstage()
        self.send(DONE, rid)

    def _stage(self, rel: str, final: bytes, fd: int, size: int) -> None:
        """Start copying the open file ``fd`` into a temporary file beside it (not where none can be made)."""
        try:
            out, tmp = self._create_temp(final)
        except OSError:
            return  # the patch will say why, if it comes
        try:
            self.staged = (rel, StagedCopy(fd, out, size), tmp)
        except BaseException:
            os.close(out)
            with _Suppress(OSError):
                os.unlink(tmp)
            raise

    def _unstage(self) -> None:
        staged, self.staged = self.staged, None
        if staged is not None:
            self._drop(staged)

    @staticmethod
    def _drop(staged: tuple[str, StagedCopy, bytes]) -> None:
        staged[1].close()
        with _Suppress(OSError):
            os.unlink(staged[2])

    def op_delta(self, rid: int, args: list[Any], raw: bytes) -> None:
        """Delta ops (encoded) turning the caller's old file, signed in ``raw``, into this one.

        Reads at most args[1] (the scanned size) + 1 bytes and reports the
        lstat taken afterwards, so the caller can tell a file that changed.
        args[2]: the delta will be guarded (no CRC needed).
        """
        full = self.path(args[0])
        sig = Signature.decode(raw)
        guarded = len(args) > 2 and bool(args[2])  # the caller guards it: no CRC to compute
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            for block in delta_blocks(match(self._chunks(fd, args[1] + 1), sig, crc32=not guarded), READ_CHUNK):
                self.send(ITEM, rid, None, block)
                self.flush()  # (a block cut after a copy goes out at once; a full one would anyway)
        finally:
            os.close(fd)
        self.send(DONE, rid, {"st": self.lstat_entry(full)})


def main() -> None:
    # binary, unbuffered-by-line stdio: the protocol owns both streams
    Agent(sys.stdin.buffer, sys.stdout.buffer).run()

