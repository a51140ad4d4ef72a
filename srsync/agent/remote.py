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
  checked (no "", ".", "..", NUL); symlinks are never followed below the root;
* files are written to a temporary sibling (O_EXCL|O_NOFOLLOW, mode 0600),
  given mode and mtime, checked against the expected state of the final name
  and renamed over it; a failed or aborted write removes its temporary file;
* whatever the helper cannot do becomes a FAIL with an errno; only a broken
  stream ends it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat as statmod
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from srsync.agent.delta import OpDecoder, Rebuilder, Signature, encode_ops, match, signature
from srsync.core.ignore import IGNORE_FILE, IgnoreRules, Rule
from srsync.core.paths import BadName, check_name, is_temp_name, join, nfc

PROTOCOL = 1
MAGIC = b"SRSYNC-AGENT"  # the helper's first bytes on stdout, before any frame

HEADER = struct.Struct(">BII")
JSON_LEN = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024  # refuse absurd lengths from a corrupt stream

# client -> helper
CALL, DATA, END, ABORT = 1, 2, 3, 4
# helper -> client
ITEM, DONE, FAIL, BEAT = 10, 11, 12, 13

TEMP_PREFIX = ".srsync-tmp-"
NAME_MAX = 255
SCAN_BATCH = 2000  # entries per ITEM frame while scanning
READ_CHUNK = 1024 * 1024
SUB_CALL = 0xFFFFFFFF  # request id of the calls inside a batch: their answers are collected
BATCH_OPS = ("put", "mkdir", "symlink", "remove", "set_meta", "stat")
BEAT_SECONDS = 5.0  # long operations show life this often, so the client can tell slow from stalled

# Entries travel as [kind, size, mtime_ns, mode, ino, target], kind "f", "d" or "l".


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
        self.temp_count = 0
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
        js = b"" if meta is None else json.dumps(meta, separators=(",", ":")).encode("utf-8")
        if not js and not raw:
            self.pending.append(HEADER.pack(kind, rid, JSON_LEN.size) + b"\0\0\0\0")
            self.pending_size += HEADER.size + JSON_LEN.size
            return
        head = HEADER.pack(kind, rid, JSON_LEN.size + len(js) + len(raw)) + JSON_LEN.pack(len(js)) + js
        self.pending.append(head)
        if raw:
            self.pending.append(raw)
        self.pending_size += len(head) + len(raw)
        if self.pending_size >= READ_CHUNK:
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
                body = bytes(self.inbuf[HEADER.size : HEADER.size + length])
                del self.inbuf[: HEADER.size + length]
                (jlen,) = JSON_LEN.unpack_from(body)
                meta = json.loads(body[4 : 4 + jlen]) if jlen else None
                raw = body[4 + jlen :]
                self.dispatch(kind, rid, meta, raw)
        finally:
            for up in list(self.uploads.values()):
                self._discard(up)
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
                self.fail(rid, exc)
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

    # ---- session ------------------------------------------------------
    def op_hello(self, rid: int, args: list[Any], raw: bytes) -> None:
        version = args[0]
        info = {
            "version": PROTOCOL,
            "python": list(sys.version_info[:3]),
            "xxhash": self.xxhash is not None,
            "pid": os.getpid(),
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
        rules = IgnoreRules(
            tuple(
                Rule(base=base, pattern=pattern, regex=re.compile(rx, flags), negate=neg, dir_only=dir_only)
                for base, pattern, rx, flags, neg, dir_only in args[0]
            )
        )
        try:
            root_st = os.stat(self.root)
        except (FileNotFoundError, NotADirectoryError):
            self.send(DONE, rid, {"root_exists": False})
            return
        if not statmod.S_ISDIR(root_st.st_mode):
            self.send(DONE, rid, {"root_exists": False, "problem": f"{_text(self.root)} is not a directory"})
            return
        batch: dict[str, Any] = {"e": [], "p": [], "t": [], "i": {}, "n": {}, "g": []}
        count = 0
        stack: list[tuple[str, bytes]] = [("", self.root)]
        while stack:
            rel_dir, full_dir = stack.pop()
            count += self._scan_dir(rel_dir, full_dir, rules, batch, stack)
            if count >= SCAN_BATCH:
                self.send(ITEM, rid, batch)
                batch = {"e": [], "p": [], "t": [], "i": {}, "n": {}, "g": []}
                count = 0
                self.beat()
        self.send(ITEM, rid, batch)
        self.send(DONE, rid, {"root_exists": True})

    def _scan_dir(
        self,
        rel_dir: str,
        full_dir: bytes,
        rules: IgnoreRules,
        batch: dict[str, Any],
        stack: list[tuple[str, bytes]],
    ) -> int:
        """List one directory into ``batch`` (same rules as the SFTP endpoint's scan)."""
        problems = batch["p"]
        try:
            with os.scandir(full_dir) as it:
                items = list(it)
        except FileNotFoundError:
            if rel_dir:
                batch["g"].append(rel_dir)  # removed since its parent was listed
            return 1
        except OSError as exc:
            problems.append([rel_dir, "cannot list directory: %s" % (exc.strerror or exc)])
            return 1
        seen = set()
        entries = batch["e"]
        items.sort(key=lambda item: _text(item.name))
        for item in items:
            raw_name = item.name
            try:
                name = raw_name.decode("utf-8")
            except UnicodeDecodeError:
                problems.append([join(rel_dir, _text(raw_name)), "name is not valid UTF-8; skipped"])
                continue
            try:
                check_name(name)
            except BadName:
                problems.append([join(rel_dir, _text(raw_name)), "name is not allowed; skipped"])
                continue
            if is_temp_name(name):
                batch["t"].append(join(rel_dir, name))
                continue
            norm = nfc(name)
            rel = join(rel_dir, norm)
            if rel in seen:
                problems.append([rel, "two names differ only in Unicode normalisation; skipped one"])
                continue
            seen.add(rel)
            if norm != name:
                batch["n"][rel] = name
            try:
                st = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                problems.append([rel, "cannot stat: %s" % (exc.strerror or exc)])
                continue
            is_dir = statmod.S_ISDIR(st.st_mode)
            if rules.is_excluded(rel, is_dir):
                continue  # pruned: nothing below it is looked at
            target = None
            if statmod.S_ISLNK(st.st_mode):
                try:
                    raw_target = os.readlink(item.path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    problems.append([rel, "cannot read symlink: %s" % (exc.strerror or exc)])
                    continue
                try:
                    target = raw_target.decode("utf-8")
                except UnicodeDecodeError:
                    problems.append([rel, "symlink target is not valid UTF-8; skipped"])
                    continue
            entry = entry_json(st, target)
            if entry is None:
                problems.append([rel, "special file (device, fifo or socket); skipped"])
                continue
            entries.append([rel] + entry)
            if is_dir:
                stack.append((rel, item.path))
            elif norm == IGNORE_FILE and entry[0] == "f":
                try:
                    with open(item.path, "rb") as fh:
                        batch["i"][rel_dir] = fh.read().decode("utf-8", "replace")
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    problems.append([rel, "cannot read: %s" % (exc.strerror or exc)])
        return len(items) + 1

    def op_stat(self, rid: int, args: list[Any], raw: bytes) -> None:
        self.send(DONE, rid, {"e": self.lstat_entry(self.path(args[0]))})

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
        """Whole small files: at most scanned size + 1 bytes each, with the lstat taken after reading."""
        for index, (rel, size) in enumerate(args[0]):
            try:
                full = self.path(rel)
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    data = self._read_at_most(fd, size + 1)
                finally:
                    os.close(fd)
                after = self.lstat_entry(full)
            except Exception as exc:
                self.send(ITEM, rid, {"i": index, "err": error_meta(exc)})
                continue
            self.send(ITEM, rid, {"i": index, "st": after}, data)
        self.send(DONE, rid)

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
                with contextlib.suppress(OSError):
                    os.close(fd)
        up.fd = up.basis_fd = -1
        if up.kind == "range":
            return  # the shared temporary file is removed by pw_abort
        with contextlib.suppress(OSError):
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
        rel, mode, mtime_ns, guard = args
        if rel == "":
            raise CallFailed(errno.EISDIR, "the root is a directory")
        final = self.path(rel)
        fd, tmp = self._create_temp(final)
        try:
            self._write_all(fd, raw)
            self._finish_fd(fd, mode, mtime_ns)
            fd = -1
            self._install(tmp, final, guard)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.send(DONE, rid)  # no entry: batches only need to know it landed

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
        basis_fd = os.open(final, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            basis_st = os.fstat(basis_fd)
            if not matches(entry_json(basis_st, None), guard[0] if guard else None):
                raise CallFailed(errno.EAGAIN, CHANGED, rel)
            fd, tmp = self._create_temp(final)
        except BaseException:
            os.close(basis_fd)
            raise
        up = Upload(fd, tmp, final, args, "patch")
        up.basis_fd = basis_fd
        up.basis_st = basis_st
        up.decoder = OpDecoder()
        up.rebuilder = Rebuilder(lambda off, length: os.pread(basis_fd, length, off), basis_st.st_size)
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
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.send(DONE, rid, {"e": self._installed(final)})

    def op_pw_abort(self, rid: int, args: list[Any], raw: bytes) -> None:
        _, tmp = self._pw_temp(args[0], args[1])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        self.send(DONE, rid)

    def op_mkdir(self, rid: int, args: list[Any], raw: bytes) -> None:
        rel, mode, guard = args
        full = self.path(rel)
        if guard is not None:
            current = self.lstat_entry(full)
            if current is not None and current[0] == "d":
                self.send(DONE, rid, {"exists": True})
                return
            if not matches(current, guard[0]):
                raise CallFailed(errno.EAGAIN, CHANGED, rel)
        wanted = mode & 0o7777 | 0o700  # owner rwx while it is filled; set_meta brings the final mode
        os.mkdir(full, wanted)
        os.chmod(full, wanted)  # the umask applied to mkdir
        self.send(DONE, rid)

    def op_symlink(self, rid: int, args: list[Any], raw: bytes) -> None:
        rel, target, guard = args
        if rel == "":
            raise CallFailed(errno.EISDIR, "the root is a directory")
        final = self.path(rel)
        tmp = self.temp_for(final)
        os.symlink(target.encode("utf-8", "surrogateescape"), tmp)
        try:
            self._install(tmp, final, guard)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.send(DONE, rid)

    def op_remove(self, rid: int, args: list[Any], raw: bytes) -> None:
        rel, kind, guard = args
        if rel == "":
            raise CallFailed(errno.EPERM, "refusing to remove the root", _text(self.root))
        full = self.path(rel)
        self.check_guard(full, guard)
        if kind == "d":
            os.rmdir(full)
        else:
            os.unlink(full)
        self.send(DONE, rid)

    def op_set_meta(self, rid: int, args: list[Any], raw: bytes) -> None:
        """args [path, mode, mtime_ns, guard]; guard [expected or None, kind that must be there]."""
        rel, mode, mtime_ns, guard = args
        full = self.path(rel)
        if guard is not None:
            current = self.lstat_entry(full)
            if current is None or current[0] != guard[1]:
                raise CallFailed(errno.EAGAIN, "changed since scan; skipped", rel)
            if guard[0] is not None and not matches(current, guard[0]):
                raise CallFailed(errno.EAGAIN, CHANGED, rel)
        if os.path.islink(full):
            raise CallFailed(errno.ELOOP, "refusing to change metadata through a symlink", _text(full))
        if mode is not None:
            os.chmod(full, mode & 0o7777)
        if mtime_ns is not None:
            os.utime(full, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
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
        """Many small calls in one frame: args [[op, args, raw length], ...], raws concatenated.

        Each runs as if called alone, in order; a failure affects only its
        own call.  The answer lists [index, answer] for calls that answered
        something and [index, None, error] for failures.
        """
        results: list[Any] = []
        at = 0
        for index, (op, sub_args, size) in enumerate(args[0]):
            sub_raw = raw[at : at + size]
            at += size
            self.sub_result = None
            try:
                if op not in BATCH_OPS:
                    raise CallFailed(errno.ENOSYS, f"{op!r} cannot be batched")
                self.ops[op](SUB_CALL, sub_args, sub_raw)
            except Exception as exc:
                results.append([index, None, error_meta(exc)])
                continue
            if self.sub_result is not None:
                results.append([index, self.sub_result])
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
        """Signature of the (old) file at args[0] in blocks of args[1] bytes, with its lstat."""
        full = self.path(args[0])
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            before = entry_json(os.fstat(fd), None)
            sig = signature(self._chunks(fd, 1 << 62), args[1], args[2] if len(args) > 2 else "sha1")
        finally:
            os.close(fd)
        self.send(DONE, rid, {"e": before}, sig.encode())

    def op_delta(self, rid: int, args: list[Any], raw: bytes) -> None:
        """Delta ops (encoded) turning the caller's old file, signed in ``raw``, into this one.

        Reads at most args[1] (the scanned size) + 1 bytes and reports the
        lstat taken afterwards, so the caller can tell a file that changed.
        """
        full = self.path(args[0])
        sig = Signature.decode(raw)
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            out: list[bytes] = []
            size = 0
            for piece in encode_ops(match(self._chunks(fd, args[1] + 1), sig)):
                out.append(piece)
                size += len(piece)
                if size >= READ_CHUNK:
                    self.send(ITEM, rid, None, b"".join(out))
                    out, size = [], 0
            if out:
                self.send(ITEM, rid, None, b"".join(out))
        finally:
            os.close(fd)
        self.send(DONE, rid, {"st": self.lstat_entry(full)})


def main() -> None:
    # binary, unbuffered-by-line stdio: the protocol owns both streams
    Agent(sys.stdin.buffer, sys.stdout.buffer).run()

