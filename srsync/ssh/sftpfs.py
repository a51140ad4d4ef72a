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
"""

from __future__ import annotations

import contextlib
import errno
import stat as statmod
import struct
from collections import deque
from contextlib import AbstractContextManager
from dataclasses import dataclass

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
    CMD_NAME,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_READDIR,
    CMD_READLINK,
    CMD_STAT,
    CMD_STATUS,
    CMD_VERSION,
    CMD_WRITE,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_READ,
    SFTP_FLAG_TRUNC,
    SFTP_FLAG_WRITE,
    int64,
)

from srsync.ssh.errors import sftp_errors

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
WRITE_DEPTH = 32


@dataclass(frozen=True, slots=True)
class RemoteStat:
    """lstat/stat result of a remote path; SFTP v3 has whole-second mtimes and no inode."""

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


class SFTPFS:
    """Remote file operations by absolute (or login-relative) server path."""

    def __init__(self, client: _Client, label: str) -> None:
        self._client = client
        self.label = label
        self._request_sizes: tuple[int, int] | None = None

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
            self._request_sizes = sizes
        return self._request_sizes

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

