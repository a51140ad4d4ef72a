"""SFTP file operations with srsync-owned types (RemoteStat, RemoteFile) over one paramiko SFTP session.

Invariants:

* Nothing paramiko-typed leaves this module; every failure goes through
  ``srsync.ssh.errors.sftp_errors``: SFTP statuses become builtin OSError
  subclasses carrying the remote path, a broken or stalled session becomes
  ``ConnectError``.
* One SFTPFS serves one thread at a time: paramiko's synchronous requests
  read the shared channel without coordination, so concurrent callers would
  steal each other's replies.  Concurrency means several sessions.
* Directory names are listed as raw bytes; names that are not UTF-8 come back
  as ``bytes`` so the caller can report them instead of crashing (paramiko's
  own ``listdir_attr`` decodes strictly and would fail the whole listing).
* Pipelined work on many paths (``Requests``, ``listdirs``) shares the
  session's request ids with paramiko and encodes and parses its packets
  itself; what it keeps in flight is bounded by its caller, and by
  ``open_handles`` for open files and directories.
"""

from __future__ import annotations

import contextlib
import errno
import stat as statmod
import struct
import time
from collections import deque
from contextlib import AbstractContextManager
from typing import Any, Final, NamedTuple

import paramiko
from paramiko.message import Message
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_FSETSTAT,
    CMD_HANDLE,
    CMD_INIT,
    CMD_LSTAT,
    CMD_MKDIR,
    CMD_NAME,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_READDIR,
    CMD_READLINK,
    CMD_REMOVE,
    CMD_RENAME,
    CMD_RMDIR,
    CMD_SETSTAT,
    CMD_STAT,
    CMD_STATUS,
    CMD_SYMLINK,
    CMD_VERSION,
    CMD_WRITE,
    SFTP_EOF,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_READ,
    SFTP_FLAG_TRUNC,
    SFTP_FLAG_WRITE,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTP_PERMISSION_DENIED,
    int64,
)

from srsync.ssh.errors import _path_error, sftp_errors

SFTP_VERSION = 3
POSIX_RENAME = "posix-rename@openssh.com"
LSETSTAT = "lsetstat@openssh.com"
LIMITS = "limits@openssh.com"
HARDLINK = "hardlink@openssh.com"
# Every SFTP server must accept 32 KiB reads and writes.  OpenSSH announces
# larger limits (255 KiB); bigger requests are ~8x faster through paramiko,
# whose per-packet overhead dominates, so we use up to this much.
BASE_REQUEST = 32 * 1024
MAX_REQUEST = 256 * 1024
# Requests in flight per open file (bounded memory: depth x request size).
READ_DEPTH = 32
READLINK_BATCH = 256
READDIR_AHEAD_MAX = 16
LISTDIR_WINDOW = 256  # directories listed at once by listdirs
WRITE_DEPTH = 32
# Files a batch holds open at once: from the server's limits@openssh.com
# (its descriptor limit, halved), else a number every server manages.
MAX_OPEN_HANDLES = 1024
DEFAULT_OPEN_HANDLES = 64


class RemoteStat(NamedTuple):
    """lstat/stat result of a remote path; SFTP v3 has whole-second mtimes and no inode.

    (A NamedTuple: scans and batches make one per path, and it is built
    several times faster than a frozen dataclass.)
    """

    mode: int  # full st_mode, type bits included
    size: int
    mtime: int  # seconds
    ino: int = 0

    @property
    def is_dir(self) -> bool:
        return statmod.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return statmod.S_ISREG(self.mode)

    @property
    def is_link(self) -> bool:
        return statmod.S_ISLNK(self.mode)


def _remote_stat(attr: paramiko.SFTPAttributes) -> RemoteStat:
    return RemoteStat(
        mode=int(attr.st_mode or 0),
        size=int(attr.st_size or 0),
        mtime=int(attr.st_mtime or 0),
        ino=0,
    )


class _Client(paramiko.SFTPClient):
    """An SFTPClient that keeps the server's advertised extensions (paramiko drops them)."""

    extensions: dict[str, bytes]

    def _send_version(self) -> int:
        self.extensions = {}
        init = Message()
        init.add_int(SFTP_VERSION)
        self._send_packet(CMD_INIT, init)
        kind, data = self._read_packet()
        if kind != CMD_VERSION:
            raise paramiko.SFTPError("Incompatible sftp protocol")
        version = int(struct.unpack(">I", data[:4])[0])
        reply = Message(data[4:])
        # extension pairs: name, data (both SSH strings) until the packet ends
        while len(reply.get_remainder()) >= 8:
            name = reply.get_string()
            value = reply.get_string()
            self.extensions[name.decode("ascii", "replace")] = value
        return version


def open_sftp_client(
    transport: paramiko.Transport, label: str, timeout: float, io_timeout: float, window: int
) -> _Client:
    """Start the sftp subsystem on a new channel of ``transport``."""
    channel = transport.open_session(window_size=window, timeout=timeout)
    try:
        channel.settimeout(timeout)
        channel.invoke_subsystem("sftp")
        client = _Client(channel)
        # from now on a reply may legitimately take longer (a big directory)
        channel.settimeout(io_timeout)
        return client
    except BaseException:
        channel.close()
        raise


class _Pipeline:
    """Requests sent ahead on one SFTP handle; replies are collected as paramiko dispatches them.

    paramiko hands a reply to the object registered with its request
    (``_async_response``); registering ourselves lets many reads or writes
    be in flight while this thread pumps replies with ``_read_response()``.
    """

    def __init__(self, client: _Client) -> None:
        self._client = client
        self._replies: dict[int, tuple[int, Message]] = {}

    def _async_response(self, kind: int, msg: Message, num: int) -> None:
        self._replies[num] = (kind, msg)

    def _send(self, cmd: int, *args: object) -> int:
        return int(self._client._async_request(self, cmd, *args))

    def _wait(self, num: int) -> tuple[int, Message]:
        while num not in self._replies:
            self._client._read_response()
        return self._replies.pop(num)


class RemoteReader(_Pipeline):
    """A remote file open for sequential reads, with up to ``depth`` READ requests in flight.

    Memory stays bounded (depth x request size): new requests are only
    issued as the consumer takes data.
    """

    def __init__(
        self, fs: SFTPFS, handle: bytes, path: str, size: int | None, req_size: int, depth: int
    ) -> None:
        super().__init__(fs._client)
        self._fs = fs
        self._handle = handle
        self.name = path
        self._limit = size  # None: read until the server says EOF
        self._req_size = req_size
        self._depth = depth
        self._next = 0  # offset of the next request to issue
        self._inflight: deque[tuple[int, int, int]] = deque()  # (num, offset, length)
        self._buffer = bytearray()
        self._eof = False
        self._closed = False

    def _fill(self) -> None:
        while len(self._inflight) < self._depth and not self._eof:
            if self._limit is not None and self._next >= self._limit:
                return
            length = self._req_size
            if self._limit is not None:
                length = min(length, self._limit - self._next)
            num = self._send(CMD_READ, self._handle, int64(self._next), length)
            self._inflight.append((num, self._next, length))
            self._next += length

    def _take_one(self) -> None:
        num, offset, length = self._inflight.popleft()
        kind, msg = self._wait(num)
        if kind == CMD_STATUS:
            try:
                self._client._convert_status(msg)
            except EOFError:
                # the file ended (maybe shrank): later replies are EOF as well
                self._eof = True
                self._inflight.clear()
                return
            raise paramiko.SFTPError("Expected data")
        if kind != CMD_DATA:
            raise paramiko.SFTPError("Expected data")
        data = msg.get_string()
        self._buffer += data
        if 0 < len(data) < length:
            # a short read: ask for the rest of this range before anything later
            rest = self._send(CMD_READ, self._handle, int64(offset + len(data)), length - len(data))
            self._inflight.appendleft((rest, offset + len(data), length - len(data)))
        elif not data:
            self._eof = True
            self._inflight.clear()

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all remaining for -1); b"" at the end."""
        with self._fs._op(self.name):
            while size < 0 or len(self._buffer) < size:
                self._fill()
                if not self._inflight:
                    break
                self._take_one()
            if size < 0 or size >= len(self._buffer):
                out = bytes(self._buffer)
                self._buffer.clear()
            else:
                out = bytes(self._buffer[:size])
                del self._buffer[:size]
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # replies still in flight are consumed (and dropped) by the CLOSE round trip
        self._inflight.clear()
        if self._fs._alive():
            with self._fs._op(self.name):
                self._client._request(CMD_CLOSE, self._handle)

    def readable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> RemoteReader:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            # the original error is what matters; a failing close must not mask it
            with contextlib.suppress(Exception):
                self.close()


class RemoteWriter(_Pipeline):
    """A remote file open for pipelined writes; every reply is checked.

    ``finish`` applies mode and mtime through the handle and closes it, so a
    caller renaming the file afterwards knows all of its content landed.
    (paramiko's own pipelined writes drop error replies that arrive while a
    later request waits: a full disk would go unnoticed.)
    """

    def __init__(self, fs: SFTPFS, handle: bytes, path: str, req_size: int, depth: int) -> None:
        super().__init__(fs._client)
        self._fs = fs
        self._handle = handle
        self.name = path
        self._req_size = req_size
        self._depth = depth
        self._offset = 0
        self._inflight: deque[int] = deque()
        self._closed = False

    def _check(self, num: int) -> None:
        kind, msg = self._wait(num)
        if kind != CMD_STATUS:
            raise paramiko.SFTPError("Expected status")
        self._client._convert_status(msg)

    def write(self, data: bytes) -> int:
        with self._fs._op(self.name):
            view = memoryview(data)
            for start in range(0, len(view), self._req_size):
                piece = view[start : start + self._req_size]
                num = self._send(CMD_WRITE, self._handle, int64(self._offset), bytes(piece))
                self._inflight.append(num)
                self._offset += len(piece)
                while len(self._inflight) > self._depth:
                    self._check(self._inflight.popleft())
        return len(data)

    @property
    def size(self) -> int:
        return self._offset

    def _drain(self) -> None:
        while self._inflight:
            self._check(self._inflight.popleft())

    def finish(self, mode: int | None = None, mtime: int | None = None) -> None:
        """Wait for every write, set mode/mtime (one FSETSTAT) and close; raise on any failure."""
        if self._closed:
            return
        with self._fs._op(self.name):
            self._drain()
            pending: list[int] = []
            if mode is not None or mtime is not None:
                attr = paramiko.SFTPAttributes()
                if mode is not None:
                    attr.st_mode = mode & 0o7777
                if mtime is not None:
                    attr.st_atime = mtime
                    attr.st_mtime = mtime
                pending.append(self._send(CMD_FSETSTAT, self._handle, attr))
            # FSETSTAT and CLOSE travel together; the server answers in order
            self._closed = True
            pending.append(self._send(CMD_CLOSE, self._handle))
            for num in pending:
                self._check(num)

    def close(self) -> None:
        self.finish()

    def abort(self) -> None:
        """Close without raising (cleanup after another error)."""
        if self._closed:
            return
        self._closed = True
        self._inflight.clear()
        with contextlib.suppress(Exception):
            if self._fs._alive():
                self._client._request(CMD_CLOSE, self._handle)

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> RemoteWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _Eof:
    """The reply to a READ at or past the end of the file (SSH_FX_EOF)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "EOF"


EOF: Final = _Eof()
# Buffered requests go out (in whole SSH packets) once they add up to this
# much, or when we wait for replies: many small SFTP requests per SSH packet.
SEND_BUFFER = 128 * 1024
# ... and once they are this much and have waited SEND_DELAY seconds (while
# the caller is busy with results, the server works on these).
SEND_SOON = 4 * 1024
SEND_DELAY = 0.002
RECV_CHUNK = 1 << 20  # at most this much taken from the channel per read
MAX_REPLY = (1 << 24) - 1  # as paramiko: a length with its high byte set is garbage
# The reply each command gives besides a status (None: a status only).
_REPLY_KIND: dict[int, int | None] = {
    CMD_OPEN: CMD_HANDLE,
    CMD_READ: CMD_DATA,
    CMD_LSTAT: CMD_ATTRS,
    CMD_STAT: CMD_ATTRS,
    CMD_READLINK: CMD_NAME,
    CMD_OPENDIR: CMD_HANDLE,
    CMD_READDIR: CMD_NAME,
}

Listing = list[tuple[bytes, "RemoteStat"]]
Reply = None | OSError | _Eof | bytes | RemoteStat | str | Listing
"""What ``Requests.take`` hands back for one request.

``None``: done (status OK); an ``OSError`` (the status, as the synchronous
calls raise it, naming the request's path); ``EOF`` (a READ past the end, a
READDIR after the last entries); ``bytes`` (OPEN's and OPENDIR's handle,
READ's data, a READLINK target that is not UTF-8); ``RemoteStat`` (LSTAT,
STAT); ``str`` (READLINK); a ``Listing`` of raw names with their lstat
(READDIR, "." and ".." left out).
"""


class Requests:
    """Many requests in flight on one SFTP session, their replies collected in arrival order.

    Each ``send_*`` queues one request, tagged with an ``owner`` and a
    ``tag`` of the caller's choosing; requests are buffered and written to
    the channel together (``flush``; ``take`` flushes when it would otherwise
    wait).  ``take`` returns ``(owner, tag, Reply)`` for every reply that has
    arrived (waiting for at least one).  Per-request failures are values,
    never raised; a broken, stalled or misbehaving session raises
    ``ConnectError``.

    Requests and replies are encoded and parsed here, many per channel read
    or write: paramiko's own per-packet path costs several times more, and
    with thousands of small files in flight that is the whole budget.  The
    caller bounds what is in flight: replies adding up to more than the
    channel's window (bytes read) would stall the session.  Synchronous SFTPFS
    calls may be made in between, after ``settle``: replies to these requests
    that arrive meanwhile reach us through paramiko and are kept.
    """

    def __init__(self, fs: SFTPFS) -> None:
        self._fs = fs
        self._client = fs._client
        self._channel = fs._client.get_channel()
        self.read_size, self.write_size = fs._limits()
        self._out: list[bytes] = []
        self._out_size = 0
        self._out_since = 0.0  # when the oldest buffered request was queued
        self._sent: dict[int, tuple[int, str, Any, int]] = {}  # id -> (command, path, owner, tag)
        self._replies: list[tuple[Any, int, Reply]] = []
        self._buf = bytearray()  # received, not yet parsed
        self._lent_upto = -1  # our requests up to this id are registered with paramiko (see settle)

    @property
    def in_flight(self) -> int:
        """Requests whose replies were not taken yet."""
        return len(self._sent) + len(self._replies)

    def _queue(self, cmd: int, path: str, payload: bytes, owner: Any, tag: int) -> None:
        client = self._client
        with client._lock:
            num = int(client.request_number)
            client.request_number = num + 1
        if not self._out:
            self._out_since = time.monotonic()
        self._out.append(_HEAD.pack(len(payload) + 5, cmd, num))
        self._out.append(payload)
        self._out_size += len(payload) + 9
        self._sent[num] = (cmd, path, owner, tag)
        if self._out_size >= SEND_BUFFER:
            self.flush(whole_packets=True)
        elif self._out_size >= SEND_SOON and time.monotonic() - self._out_since >= SEND_DELAY:
            # our caller is busy with results: let the server work meanwhile
            self.flush()

    def flush(self, whole_packets: bool = False) -> None:
        """Write the buffered requests to the channel.

        With ``whole_packets`` only full SSH packets go (the rest waits for
        more requests): fewer, fuller packets cost less on both sides.
        """
        if not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        if whole_packets:
            packet = max(self._channel.out_max_packet_size - 64, 1024)  # as paramiko's Channel._send
            cut = len(data) // packet * packet
            if cut < len(data):
                self._out.append(data[cut:])
                self._out_size = len(data) - cut
                data = data[:cut]
        with self._fs._op("(requests)"):
            self._client._write_all(data)

    def take(self) -> list[tuple[Any, int, Reply]]:
        """The replies that have arrived, at least one (buffered requests are sent before waiting)."""
        while not self._replies:
            if not self._sent:
                raise RuntimeError("no request in flight")
            # replies already here are taken first: what they cause goes out together
            if not self._channel.recv_ready():
                self.flush()
            with self._fs._op("(replies)"):
                self._fill()
                self._parse()
        out, self._replies = self._replies, []
        return out

    def settle(self) -> None:
        """Before a synchronous call: everything sent, no partial reply left in our buffer.

        Our requests still unanswered are registered with paramiko, which
        hands us their replies if it reads them while serving that call.
        """
        self.flush()
        expecting = self._client._expecting
        with self._client._lock:
            for num in self._sent:
                if num > self._lent_upto:
                    expecting[num] = self
            self._lent_upto = int(self._client.request_number) - 1
        with self._fs._op("(replies)"):
            self._parse()
            while self._buf:
                # the rest of a reply that started arriving: exactly that much
                need = 4 - len(self._buf)
                if need <= 0:
                    need = 4 + _U32.unpack_from(self._buf)[0] - len(self._buf)
                self._fill(need)
                self._parse()

    # paramiko calls this for replies to our requests it reads itself (during a synchronous call)
    def _async_response(self, kind: int, msg: Message, num: int) -> None:
        self._answer(num, kind, msg.get_remainder())

    def _answer(self, num: int, kind: int, body: bytes) -> None:
        cmd, path, owner, tag = self._sent.pop(num)
        try:
            reply = _convert(cmd, kind, body, path)
        except (struct.error, IndexError) as exc:
            raise paramiko.SFTPError(f"malformed reply for {path!r}") from exc
        self._replies.append((owner, tag, reply))

    def _fill(self, most: int = RECV_CHUNK) -> None:
        data = self._channel.recv(most)
        if not data:
            raise EOFError("the server closed the SFTP channel")
        self._buf += data

    def _parse(self) -> None:
        """Convert the complete replies in the buffer."""
        buf = self._buf
        end = len(buf)
        pos = 0
        client = self._client
        sent = self._sent
        replies = self._replies
        lent = self._lent_upto
        head = _HEAD.unpack_from
        with memoryview(buf) as view:
            while end - pos >= 9:
                size, kind, num = head(buf, pos)
                if size < 5 or size > MAX_REPLY:
                    raise paramiko.SFTPError("garbage packet received")
                if end - pos - 4 < size:
                    break
                body = bytes(view[pos + 9 : pos + 4 + size])
                pos += 4 + size
                found = sent.pop(num, None)
                if found is not None:
                    cmd, path, owner, tag = found
                    try:
                        replies.append((owner, tag, _convert(cmd, kind, body, path)))
                    except (struct.error, IndexError) as exc:
                        raise paramiko.SFTPError(f"malformed reply for {path!r}") from exc
                    if num <= lent:
                        with client._lock:
                            client._expecting.pop(num, None)
                    continue
                with client._lock:
                    owner = client._expecting.pop(num, None)
                if owner is not None and owner is not type(None):
                    # a reply for another paramiko object (e.g. a reader closed early)
                    owner._async_response(kind, Message(body), num)
        if pos:
            del buf[:pos]

    # ---- requests --------------------------------------------------------------
    def send_open_read(self, path: str, owner: Any, tag: int) -> None:
        self._queue(CMD_OPEN, path, _str(path) + _READ_NO_ATTRS, owner, tag)

    def send_open_write(self, path: str, owner: Any, tag: int) -> None:
        """Create ``path`` exclusively (never through a symlink), mode 0600 until FSETSTAT."""
        self._queue(CMD_OPEN, path, _str(path) + _CREATE_EXCL_0600, owner, tag)

    def send_read(self, handle: bytes, path: str, offset: int, length: int, owner: Any, tag: int) -> None:
        self._queue(CMD_READ, path, _str(handle) + _U64_U32.pack(offset, length), owner, tag)

    def send_write(self, handle: bytes, path: str, offset: int, data: bytes, owner: Any, tag: int) -> None:
        self._queue(CMD_WRITE, path, _str(handle) + _U64_U32.pack(offset, len(data)) + data, owner, tag)

    def send_fsetstat(
        self, handle: bytes, path: str, mode: int | None, mtime: int | None, owner: Any, tag: int
    ) -> None:
        self._queue(CMD_FSETSTAT, path, _str(handle) + _attr_bytes(mode, mtime), owner, tag)

    def send_close(self, handle: bytes, path: str, owner: Any, tag: int) -> None:
        self._queue(CMD_CLOSE, path, _str(handle), owner, tag)

    def send_lstat(self, path: str, owner: Any, tag: int) -> None:
        self._queue(CMD_LSTAT, path, _str(path), owner, tag)

    def send_stat(self, path: str, owner: Any, tag: int) -> None:
        self._queue(CMD_STAT, path, _str(path), owner, tag)

    def send_readlink(self, path: str, owner: Any, tag: int) -> None:
        self._queue(CMD_READLINK, path, _str(path), owner, tag)

    def send_opendir(self, path: str, owner: Any, tag: int) -> None:
        self._queue(CMD_OPENDIR, path, _str(path), owner, tag)

    def send_readdir(self, handle: bytes, path: str, owner: Any, tag: int) -> None:
        self._queue(CMD_READDIR, path, _str(handle), owner, tag)

    def send_posix_rename(self, src: str, dst: str, owner: Any, tag: int) -> None:
        """posix-rename@openssh.com (the caller checks ``has_extension(POSIX_RENAME)``); errors name ``dst``."""
        self._queue(CMD_EXTENDED, dst, _POSIX_RENAME + _str(src) + _str(dst), owner, tag)

    def send_rename_new(self, src: str, dst: str, owner: Any, tag: int) -> None:
        """Plain SSH_FXP_RENAME, which by the protocol fails where ``dst`` exists (OpenSSH:
        link, then unlink): an install that never replaces anything.  Errors name ``dst``."""
        self._queue(CMD_RENAME, dst, _str(src) + _str(dst), owner, tag)

    def send_lsetstat(self, path: str, mode: int | None, mtime: int | None, owner: Any, tag: int) -> None:
        """lsetstat@openssh.com (the caller checks ``has_extension(LSETSTAT)``)."""
        self._queue(CMD_EXTENDED, path, _LSETSTAT + _str(path) + _attr_bytes(mode, mtime), owner, tag)

    def send_setstat(self, path: str, mode: int | None, mtime: int | None, owner: Any, tag: int) -> None:
        """SETSTAT follows a symlink: see ``send_lsetstat``."""
        self._queue(CMD_SETSTAT, path, _str(path) + _attr_bytes(mode, mtime), owner, tag)

    def send_mkdir(self, path: str, mode: int, owner: Any, tag: int) -> None:
        self._queue(CMD_MKDIR, path, _str(path) + _attr_bytes(mode & 0o7777, None), owner, tag)

    def send_rmdir(self, path: str, owner: Any, tag: int) -> None:
        self._queue(CMD_RMDIR, path, _str(path), owner, tag)

    def send_remove(self, path: str, owner: Any, tag: int) -> None:
        self._queue(CMD_REMOVE, path, _str(path), owner, tag)

    def send_symlink(self, target: str, path: str, owner: Any, tag: int) -> None:
        # (target, link): the order OpenSSH expects, as in SFTPFS.symlink
        self._queue(CMD_SYMLINK, path, _str(target) + _str(path), owner, tag)

    def refine(self, exc: OSError, path: str, op: str) -> OSError:
        """``SFTPFS._refine`` for a failed mkdir/remove/rmdir reply (synchronous round trips)."""
        self.settle()
        with self._fs._op(path):
            return self._fs._refine(exc, path, op)


_U32 = struct.Struct(">I")
_U64_U32 = struct.Struct(">QI")
_HEAD = struct.Struct(">IBI")  # packet length, type, request id
_KIND_ID = struct.Struct(">BI")
_NO_ATTRS = _U32.pack(0)
_ATTR_SIZE, _ATTR_UIDGID, _ATTR_PERMISSIONS, _ATTR_ACMODTIME, _ATTR_EXTENDED = 1, 2, 4, 8, 0x80000000


def _str(value: str | bytes) -> bytes:
    """An SSH string: length, then the bytes (UTF-8 for text)."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _U32.pack(len(data)) + data


_POSIX_RENAME = _str(POSIX_RENAME)
_LSETSTAT = _str(LSETSTAT)
_READ_NO_ATTRS = _U32.pack(SFTP_FLAG_READ) + _NO_ATTRS


def _attr_bytes(mode: int | None, mtime: int | None) -> bytes:
    flags = 0
    parts: list[bytes] = []
    if mode is not None:
        flags |= _ATTR_PERMISSIONS
        parts.append(_U32.pack(mode & 0o7777))
    if mtime is not None:
        if not 0 <= mtime <= 0xFFFFFFFF:
            raise OSError(errno.EINVAL, f"SFTP cannot store the modification time {mtime}")
        flags |= _ATTR_ACMODTIME
        parts.append(_U32.pack(mtime) * 2)  # atime, mtime
    return _U32.pack(flags) + b"".join(parts)


_CREATE_EXCL_0600 = _U32.pack(
    SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC | SFTP_FLAG_EXCL
) + _attr_bytes(0o600, None)


def _get_str(body: bytes, pos: int) -> tuple[bytes, int]:
    size = _U32.unpack_from(body, pos)[0]
    end = pos + 4 + size
    if end > len(body):
        raise IndexError("string beyond the packet")
    return body[pos + 4 : end], end


_ALL_ATTRS = _ATTR_SIZE | _ATTR_UIDGID | _ATTR_PERMISSIONS | _ATTR_ACMODTIME
_ALL_ATTRS_LAYOUT = struct.Struct(">IQ8xI4xI")  # flags, size, (uid, gid), mode, (atime), mtime


def _parse_attrs(body: bytes, pos: int) -> tuple[RemoteStat, int]:
    """SFTP v3 attributes at ``pos``; and the position after them."""
    flags = _U32.unpack_from(body, pos)[0]
    if flags == _ALL_ATTRS:  # what OpenSSH sends: one fixed layout
        _, size, mode, mtime = _ALL_ATTRS_LAYOUT.unpack_from(body, pos)
        return RemoteStat(mode, size, mtime), pos + 32
    pos += 4
    size = mode = mtime = 0
    if flags & _ATTR_SIZE:
        size = struct.unpack_from(">Q", body, pos)[0]
        pos += 8
    if flags & _ATTR_UIDGID:
        pos += 8
    if flags & _ATTR_PERMISSIONS:
        mode = _U32.unpack_from(body, pos)[0]
        pos += 4
    if flags & _ATTR_ACMODTIME:
        mtime = _U32.unpack_from(body, pos + 4)[0]
        pos += 8
    if flags & _ATTR_EXTENDED:
        extended = _U32.unpack_from(body, pos)[0]
        pos += 4
        for _ in range(2 * extended):
            pos = _get_str(body, pos)[1]
    if pos > len(body):
        raise IndexError("attributes beyond the packet")
    return RemoteStat(mode, size, mtime), pos


def _parse_names(body: bytes) -> Listing:
    count = _U32.unpack_from(body)[0]
    pos = 4
    out: Listing = []
    unpack = _U32.unpack_from
    for _ in range(count):
        length = unpack(body, pos)[0]
        name = body[pos + 4 : pos + 4 + length]
        pos += 4 + length
        pos += 4 + unpack(body, pos)[0]  # longname, "ls -l" style: unused
        st, pos = _parse_attrs(body, pos)
        if name != b"." and name != b"..":
            out.append((name, st))
    if pos > len(body):
        raise IndexError("names beyond the packet")
    return out


def _convert(cmd: int, kind: int, body: bytes, path: str) -> Reply:
    """One reply's payload (after its id) as a Reply; raises SFTPError for a wrong reply type."""
    if kind == CMD_STATUS:
        code = _U32.unpack_from(body)[0]
        if code == SFTP_OK:
            if _REPLY_KIND.get(cmd) is not None:
                raise paramiko.SFTPError(f"status OK where data was expected for {path!r}")
            return None
        if code == SFTP_EOF:
            return EOF
        text = _get_str(body, 4)[0].decode("utf-8", "replace") if len(body) >= 8 else ""
        if code == SFTP_NO_SUCH_FILE:
            return OSError(errno.ENOENT, text or "No such file", path)
        if code == SFTP_PERMISSION_DENIED:
            return OSError(errno.EACCES, text or "Permission denied", path)
        return _path_error(OSError(text), path)
    if kind != _REPLY_KIND.get(cmd):
        raise paramiko.SFTPError(f"unexpected reply type {kind} for {path!r}")
    if kind in (CMD_HANDLE, CMD_DATA):
        return _get_str(body, 0)[0]
    if kind == CMD_ATTRS:
        return _parse_attrs(body, 0)[0]
    if cmd == CMD_READDIR:
        return _parse_names(body)
    # CMD_NAME, for READLINK
    if _U32.unpack_from(body)[0] != 1:
        return OSError(errno.EINVAL, "not a symbolic link", path)
    raw = _get_str(body, 4)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _decoded(name: bytes, st: RemoteStat) -> tuple[str | bytes, RemoteStat]:
    try:
        return name.decode("utf-8"), st
    except UnicodeDecodeError:
        return name, st


class SFTPFS:
    """Remote file operations by absolute (or login-relative) server path."""

    def __init__(self, client: _Client, label: str) -> None:
        self._client = client
        self.label = label
        self._request_sizes: tuple[int, int] | None = None
        self._open_handles = DEFAULT_OPEN_HANDLES

    # ---- plumbing -----------------------------------------------------------
    def _alive(self) -> bool:
        channel = self._client.get_channel()
        if channel is None or channel.closed:
            return False
        transport = channel.get_transport()
        return transport is not None and transport.is_active()

    def _op(self, path: str) -> AbstractContextManager[None]:
        return sftp_errors(self.label, path, self._alive)

    def has_extension(self, name: str) -> bool:
        return name in getattr(self._client, "extensions", {})

    def requests(self) -> Requests:
        """A new set of pipelined requests on this session (see ``Requests``)."""
        return Requests(self)

    def alive(self) -> bool:
        """Whether the session can still carry requests."""
        return self._alive()

    # ---- reading --------------------------------------------------------------
    def lstat(self, path: str) -> RemoteStat:
        with self._op(path):
            return _remote_stat(self._client.lstat(path))

    def stat(self, path: str) -> RemoteStat:
        """Like lstat but follows a symlink (only for configured roots)."""
        with self._op(path):
            return _remote_stat(self._client.stat(path))

    def listdir(self, path: str) -> list[tuple[str | bytes, RemoteStat]]:
        """Entries of a directory with their lstat; a name is ``bytes`` when it is not UTF-8."""
        with self._op(path):
            raw = self._listdir_raw(path)
        out: list[tuple[str | bytes, RemoteStat]] = []
        for name, attr in raw:
            try:
                out.append((name.decode("utf-8"), attr))
            except UnicodeDecodeError:
                out.append((name, attr))
        return out

    def listdirs(self, paths: list[str]) -> list[list[tuple[str | bytes, RemoteStat]] | OSError]:
        """``listdir`` of many directories, many in flight at once; failures are returned in place.

        Each directory is opened, read with READDIRs sent ahead (more while
        it keeps giving entries) and closed; at most ``open_handles`` are
        open at a time.
        """
        req = self.requests()
        window = min(LISTDIR_WINDOW, self.open_handles)
        out: list[list[tuple[str | bytes, RemoteStat]] | OSError] = [[] for _ in paths]
        raw: list[Listing] = [[] for _ in paths]
        handles: list[bytes] = [b""] * len(paths)
        ahead = [0] * len(paths)  # READDIRs in flight per directory
        ended = [False] * len(paths)
        opened = busy = 0  # directories started; holding a handle (until its CLOSE is answered)
        while True:
            while opened < len(paths) and busy < window:
                req.send_opendir(paths[opened], opened, CMD_OPENDIR)
                opened += 1
                busy += 1
            if not req.in_flight:
                break
            for i, what, reply in req.take():
                if what == CMD_CLOSE:
                    busy -= 1
                    continue
                if what == CMD_OPENDIR:
                    if isinstance(reply, OSError):
                        out[i] = reply
                        busy -= 1
                        continue
                    assert isinstance(reply, bytes)
                    handles[i] = reply
                    wanted = 2
                else:
                    ahead[i] -= 1
                    if isinstance(reply, list):
                        raw[i].extend(reply)
                    elif isinstance(reply, OSError):
                        if not isinstance(out[i], OSError):
                            out[i] = reply
                        ended[i] = True
                    else:  # EOF: the listing is complete
                        ended[i] = True
                    # while the directory keeps giving entries, keep more READDIRs in flight
                    wanted = 0 if ended[i] else min(2, READDIR_AHEAD_MAX - ahead[i])
                path = paths[i]
                for _ in range(wanted):
                    req.send_readdir(handles[i], path, i, CMD_READDIR)
                    ahead[i] += 1
                if ended[i] and not ahead[i]:
                    req.send_close(handles[i], path, i, CMD_CLOSE)
                    if not isinstance(out[i], OSError):
                        out[i] = [_decoded(name, st) for name, st in raw[i]]
                    raw[i] = []
        return out

    def _listdir_raw(self, path: str) -> list[tuple[bytes, RemoteStat]]:
        """paramiko's listdir_attr, with names kept as bytes and fewer round trips.

        READDIRs are sent ahead (2, then more while the directory keeps
        giving entries; surplus ones just answer EOF) and CLOSE is not waited
        for: its reply is consumed by whichever request reads next.
        """
        client = self._client
        pipe = _Pipeline(client)
        kind, msg = pipe._wait(pipe._send(CMD_OPENDIR, path))
        if kind == CMD_STATUS:
            client._convert_status(msg)
        if kind != CMD_HANDLE:
            raise paramiko.SFTPError("Expected handle")
        handle = msg.get_binary()
        out: list[tuple[bytes, RemoteStat]] = []
        ahead, done = 2, False
        try:
            while not done:
                sent = [pipe._send(CMD_READDIR, handle) for _ in range(ahead)]
                for num in sent:
                    kind, msg = pipe._wait(num)
                    if kind == CMD_STATUS:
                        try:
                            client._convert_status(msg)
                        except EOFError:  # SSH_FX_EOF: the listing is complete
                            done = True
                            continue
                        raise paramiko.SFTPError("Expected name response")
                    if kind != CMD_NAME:
                        raise paramiko.SFTPError("Expected name response")
                    for _ in range(msg.get_int()):
                        name = msg.get_string()
                        msg.get_string()  # longname, "ls -l" style: unused
                        attr = paramiko.SFTPAttributes._from_msg(msg)
                        if name not in (b".", b".."):
                            out.append((name, _remote_stat(attr)))
                ahead = min(ahead * 2, READDIR_AHEAD_MAX)
        finally:
            if self._alive():
                pipe._send(CMD_CLOSE, handle)
        return out

    def readlink(self, path: str) -> str | bytes:
        """A symlink's target; ``bytes`` when it is not UTF-8."""
        with self._op(path):
            target = self._client.readlink(path)
        if target is None:
            raise OSError(errno.EINVAL, "not a symbolic link", path)
        return target

    def readlinks(self, paths: list[str]) -> list[str | bytes | OSError]:
        """Targets of many symlinks in few round trips; per-path failures are returned, not raised.

        Requests go out in batches so neither side's flow-control window can
        fill up while we are still sending.
        """
        out: list[str | bytes | OSError] = []
        for start in range(0, len(paths), READLINK_BATCH):
            batch = paths[start : start + READLINK_BATCH]
            pipe = _Pipeline(self._client)
            with self._op(batch[0]):
                sent = [pipe._send(CMD_READLINK, path) for path in batch]
            for path, num in zip(batch, sent, strict=True):
                with self._op(path):
                    kind, msg = pipe._wait(num)
                try:
                    with self._op(path):
                        if kind == CMD_STATUS:
                            self._client._convert_status(msg)
                        if kind != CMD_NAME or msg.get_int() != 1:
                            raise OSError(errno.EINVAL, "not a symbolic link", path)
                        raw = msg.get_string()
                except OSError as exc:
                    out.append(exc)
                    continue
                try:
                    out.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    out.append(raw)
        return out

    def normalize(self, path: str) -> str:
        """The server's canonical absolute path (realpath) for ``path``."""
        with self._op(path):
            return str(self._client.normalize(path))

    def open_read(self, path: str, size: int | None = None) -> RemoteReader:
        """Open a regular file for streaming reads of its first ``size`` bytes.

        Without ``size``, OPEN and STAT go out together (one round trip) and
        the size at open time is used.
        """
        read_size, _ = self._limits()
        with self._op(path):
            pipe = _Pipeline(self._client)
            opened = pipe._send(CMD_OPEN, path, SFTP_FLAG_READ, paramiko.SFTPAttributes())
            statted = None if size is not None else pipe._send(CMD_STAT, path)
            kind, msg = pipe._wait(opened)
            if kind == CMD_STATUS:
                if statted is not None:
                    pipe._wait(statted)
                self._client._convert_status(msg)
            if kind != CMD_HANDLE:
                raise paramiko.SFTPError("Expected handle")
            handle = msg.get_binary()
            if statted is not None:
                kind, msg = pipe._wait(statted)
                if kind == CMD_ATTRS:
                    size = _remote_stat(paramiko.SFTPAttributes._from_msg(msg)).size
            return RemoteReader(self, handle, path, size, read_size, READ_DEPTH)

    def open_write(self, path: str, exclusive: bool = False) -> RemoteWriter:
        """Create (or truncate) ``path`` for pipelined writes, mode 0600 until ``finish``.

        ``exclusive`` refuses an existing path, symlinks included, so a
        temporary name can never be redirected elsewhere.
        """
        _, write_size = self._limits()
        flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC
        if exclusive:
            flags |= SFTP_FLAG_EXCL
        attr = paramiko.SFTPAttributes()
        # owner-only while content is incomplete; the final mode comes with finish()
        attr.st_mode = 0o600
        with self._op(path):
            kind, msg = self._client._request(CMD_OPEN, path, flags, attr)
            if kind != CMD_HANDLE:
                raise paramiko.SFTPError("Expected handle")
            return RemoteWriter(self, msg.get_binary(), path, write_size, WRITE_DEPTH)

    def _limits(self) -> tuple[int, int]:
        """(read, write) request sizes, from OpenSSH's limits extension when offered."""
        if self._request_sizes is None:
            sizes = (BASE_REQUEST, BASE_REQUEST)
            handles = 0
            if self.has_extension(LIMITS):
                with self._op("(limits)"):
                    kind, msg = self._client._request(CMD_EXTENDED, LIMITS)
                if kind == CMD_EXTENDED_REPLY:
                    msg.get_int64()  # max packet length
                    max_read, max_write = msg.get_int64(), msg.get_int64()
                    sizes = (
                        min(max_read, MAX_REQUEST) if max_read >= BASE_REQUEST else BASE_REQUEST,
                        min(max_write, MAX_REQUEST) if max_write >= BASE_REQUEST else BASE_REQUEST,
                    )
                    if len(msg.get_remainder()) >= 8:
                        announced = msg.get_int64()  # 0: no limit
                        handles = max(1, announced // 2) if announced else MAX_OPEN_HANDLES
            self._request_sizes = sizes
            self._open_handles = min(handles, MAX_OPEN_HANDLES) if handles else DEFAULT_OPEN_HANDLES
        return self._request_sizes

    @property
    def open_handles(self) -> int:
        """How many files (or directories) a batch may hold open on the server at once.

        Half of what the server announces (its file descriptor limit), at
        most MAX_OPEN_HANDLES; DEFAULT_OPEN_HANDLES when it announces nothing.
        """
        self._limits()
        return self._open_handles

    def posix_rename(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst``, atomically replacing a file or link at ``dst``.

        Uses OpenSSH's posix-rename extension.  Servers without it get plain
        SFTP rename, which refuses an existing ``dst``: then ``dst`` is
        removed first, the only option that protocol leaves (not atomic).
        """
        with self._op(dst):
            if self.has_extension(POSIX_RENAME):
                self._client.posix_rename(src, dst)
                return
            try:
                self._client.rename(src, dst)
            except OSError:
                # only a refusal because dst exists may remove dst: src must
                # be there and dst must not be a directory
                self._client.lstat(src)
                if statmod.S_ISDIR(self._client.lstat(dst).st_mode or 0):
                    raise
                self._client.remove(dst)
                self._client.rename(src, dst)

    def hardlink(self, src: str, dst: str) -> None:
        """Hard-link ``src`` to the new name ``dst`` (OpenSSH's hardlink extension).

        Raises NotImplementedError when the server lacks the extension.
        """
        if not self.has_extension(HARDLINK):
            raise NotImplementedError("the SFTP server cannot make hard links")
        with self._op(dst):
            self._client._request(CMD_EXTENDED, HARDLINK, src, dst)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        with self._op(path):
            try:
                self._client.mkdir(path, mode & 0o7777)
            except OSError as exc:
                raise self._refine(exc, path, "mkdir") from exc

    def rmdir(self, path: str) -> None:
        with self._op(path):
            try:
                self._client.rmdir(path)
            except OSError as exc:
                raise self._refine(exc, path, "rmdir") from exc

    def remove(self, path: str) -> None:
        with self._op(path):
            try:
                self._client.remove(path)
            except OSError as exc:
                raise self._refine(exc, path, "remove") from exc

    def chmod(self, path: str, mode: int) -> None:
        """chmod, following a symlink (SFTP setstat); see ``lsetstat`` for the safe form."""
        with self._op(path):
            self._client.chmod(path, mode & 0o7777)

    def utime(self, path: str, mtime: int) -> None:
        """Set atime and mtime to ``mtime`` seconds, following a symlink."""
        with self._op(path):
            self._client.utime(path, (mtime, mtime))

    def lsetstat(self, path: str, mode: int | None = None, mtime: int | None = None) -> None:
        """Set mode and/or mtime of ``path`` itself, never of a symlink's target.

        OpenSSH's lsetstat extension makes this a single non-following
        request.  Without it, ``path`` is checked with lstat and refused when
        it is a symlink before plain setstat runs (a small race remains).
        """
        if mode is None and mtime is None:
            return
        attr = paramiko.SFTPAttributes()
        if mode is not None:
            attr.st_mode = mode & 0o7777
        if mtime is not None:
            attr.st_atime = mtime
            attr.st_mtime = mtime
        with self._op(path):
            if self.has_extension(LSETSTAT):
                self._client._request(CMD_EXTENDED, LSETSTAT, path, attr)
                return
        if self.lstat(path).is_link:
            raise OSError(errno.ELOOP, "refusing to change metadata through a symlink", path)
        if mode is not None:
            self.chmod(path, mode)
        if mtime is not None:
            self.utime(path, mtime)

    def symlink(self, target: str, path: str) -> None:
        """Create a symlink at ``path`` pointing to ``target``."""
        with self._op(path):
            # paramiko's argument order (target, link) is the one OpenSSH's
            # server expects, which is reversed from the SFTP draft.
            self._client.symlink(target, path)

    def _refine(self, exc: OSError, path: str, op: str) -> OSError:
        """A precise errno for SFTP's generic "failure" status, from a follow-up lstat."""
        if exc.errno is not None or not self._alive():
            return exc
        try:
            st = _remote_stat(self._client.lstat(path))
        except OSError:
            return exc
        if op == "mkdir":
            return OSError(errno.EEXIST, "File exists", path)
        if op == "remove" and st.is_dir:
            return OSError(errno.EISDIR, "Is a directory", path)
        if op == "rmdir":
            if not st.is_dir:
                return OSError(errno.ENOTDIR, "Not a directory", path)
            try:
                if self._listdir_raw(path):
                    return OSError(errno.ENOTEMPTY, "Directory not empty", path)
            except OSError:
                return exc
        return exc

    # ---- lifetime ---------------------------------------------------------------
    def close(self) -> None:
        # closing a dead session must not raise
        with contextlib.suppress(Exception):
            self._client.close()

    def __enter__(self) -> SFTPFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

