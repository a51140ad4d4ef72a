"""Client side of the remote helper protocol: start-up handshake, pipelined calls, one reader thread.

Invariants:

* Calls are answered strictly in the order they were sent; many may be in
  flight, so a batch of small requests costs one round trip, not one each.
* A reader thread drains the channel all the time and hands frames to the
  call they belong to, so the helper can never block writing while we block
  writing to it.  Memory stays bounded because callers keep only a bounded
  number of data-returning calls in flight.
* Outgoing frames are buffered and sent before any wait, so a burst of small
  frames becomes few large SSH packets.
* A dead or stalled channel turns every pending and later call into
  ``ConnectError``; per-call failures are the builtin ``OSError`` subclasses.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from srsync.agent import TOO_OLD, bootstrap_command, payload
from srsync.agent.remote import (
    ABORT,
    BEAT,
    CALL,
    DATA,
    DONE,
    END,
    FAIL,
    HEADER,
    ITEM,
    JSON_LEN,
    MAGIC,
    MAX_FRAME,
    PROTOCOL,
)
from srsync.errors import ConnectError

SEND_BUFFER = 256 * 1024  # buffered outgoing bytes that trigger a send
_SEND_AS_IS = 64 * 1024  # a buffered piece this big is sent without joining (copying) it
RECV_SIZE = 1024 * 1024
GARBAGE_LIMIT = 64 * 1024  # shell start-up noise tolerated before the helper's magic
NOT_FOUND = 127  # what POSIX shells exit with for an unknown command
# One encoder for every frame (json.dumps with options builds a new one per
# call); call arguments are plain trees of lists, never cyclic.
_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


class Channel(Protocol):
    """What the client needs from an exec channel (srsync.ssh.connection.CommandChannel)."""

    open_rtt: float  # seconds: a round trip, measured while the channel opened (0 for a local pipe)

    def send(self, data: bytes | bytearray | memoryview) -> None: ...

    def recv(self, size: int) -> bytes: ...

    def stderr_text(self, limit: int = 4096) -> str: ...

    def exit_status(self, timeout: float) -> int | None: ...

    def close(self) -> None: ...


class HelperHost(Protocol):
    """Where a helper runs: an SSH connection (srsync.ssh.connection.SSHConnection), or this
    machine (srsync.agent.pipe.LocalHelperHost)."""

    label: str
    io_timeout: float
    near: bool  # a fast link: the compiled helper goes too (see srsync.agent.payload)

    def open_command(self, command: str) -> Channel: ...

    def close(self) -> None: ...


class HelperUnavailable(Exception):
    """The helper could not be started (no python3, too old, refused): use plain SFTP instead.

    ``not_found``: the interpreter command itself does not exist there (exit 127),
    so another interpreter may still work; anything else (a silent or broken
    connection included) is not worth a second try.
    """

    def __init__(self, message: str, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


@dataclass(slots=True)
class Reply:
    meta: Any
    raw: bytes


class Call:
    """One request in flight; frames for it arrive on ``frames``."""

    __slots__ = ("rid", "op", "frames", "final")

    def __init__(self, rid: int, op: str) -> None:
        self.rid = rid
        self.op = op
        self.frames: queue.SimpleQueue[tuple[int, Any, bytes] | None] = queue.SimpleQueue()
        self.final: Any = None


def call_error(meta: Any) -> OSError:
    """The OSError for a FAIL frame's [errno, text, path]."""
    code, text, path = meta
    if code is None:
        return OSError(f"{text}{f' ({path})' if path else ''}")
    if path:
        return OSError(code, text, path)
    return OSError(code, text)


class AgentClient:
    """Talks to one helper process over one exec channel."""

    def __init__(self, channel: Channel, label: str, io_timeout: float, bytecode: bool = True) -> None:
        self._channel = channel
        self._bytecode = bytecode  # the compiled helper goes too (see srsync.agent.payload)
        self.label = label
        self.io_timeout = io_timeout
        self._calls: dict[int, Call] = {}
        self._calls_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._out: list[bytes] = []
        self._out_size = 0
        self._next_id = 1
        self._last_rx = time.monotonic()
        self._dead: ConnectError | None = None
        self._closed = False
        self._reader: threading.Thread | None = None
        self.info: dict[str, Any] = {}
        self.rtt = 0.0  # seconds: the channel's open_rtt (picks one stream or several)
        self._root_call: tuple[str, Call] | None = None  # sent by start(root=...)

    # ---- start-up ---------------------------------------------------------
    def start(self, root: str | None = None) -> dict[str, Any]:
        """Send the program, wait for its greeting, agree on the protocol version.

        The greeting (and with ``root``, the request to serve that directory, taken
        by ``root_call``) goes with the program, for the helper to read once running:
        the answers come right after its start, not a round trip each later.
        """
        try:
            self._channel.send(payload(self._bytecode))
            hello = self.call("hello", [PROTOCOL])
            if root is not None:
                self._root_call = (root, self.call("root", [root]))
            self.flush()
            leftover = self._await_magic()
        except ConnectError as exc:
            raise HelperUnavailable(f"the remote helper could not be started ({exc})") from exc
        self.rtt = self._channel.open_rtt
        self._reader = threading.Thread(
            target=self._read_loop, args=(leftover,), name=f"agent-{self.label}", daemon=True
        )
        self._reader.start()
        try:
            info = self.result(hello).meta
        except (OSError, ConnectError) as exc:
            raise HelperUnavailable(f"the remote helper refused the handshake ({exc})") from exc
        if not isinstance(info, dict) or info.get("version") != PROTOCOL:
            raise HelperUnavailable(f"the remote helper speaks another protocol ({info!r})")
        self.info = info
        return info

    def root_call(self, root: str) -> Call:
        """The request to serve ``root``: the one ``start`` already sent if it was for
        ``root`` (taken once), else a new one."""
        early, self._root_call = self._root_call, None
        if early is not None and early[0] == root:
            return early[1]
        return self.call("root", [root])

    def _await_magic(self) -> bytes:
        buf = b""
        while True:
            try:
                data = self._channel.recv(RECV_SIZE)
            except TimeoutError as exc:
                raise HelperUnavailable("the remote helper did not start in time") from exc
            if not data:
                status = self._channel.exit_status(2.0)
                raise HelperUnavailable(self._why_ended(status), not_found=status in (NOT_FOUND, 126))
            buf += data
            at = buf.find(MAGIC)
            if at >= 0:
                return buf[at + len(MAGIC) :]
            if len(buf) > GARBAGE_LIMIT:
                raise HelperUnavailable("the remote command printed something else than the helper")

    def _why_ended(self, status: int | None) -> str:
        detail = self._channel.stderr_text().strip().splitlines()
        tail = f": {detail[-1]}" if detail else ""
        if status == NOT_FOUND:
            return f"python3 was not found on the remote PATH{tail}"
        if status == TOO_OLD:
            return f"the remote python is too old{tail}"
        return f"the remote helper exited (status {status}){tail}"

    # ---- reading --------------------------------------------------------------
    def _read_loop(self, leftover: bytes) -> None:
        buf = bytearray(leftover)
        error: ConnectError | None = None
        try:
            while True:
                at = 0
                have = len(buf)
                with memoryview(buf) as view:  # one copy per part of a frame, released before buf changes
                    while have - at >= HEADER.size:
                        kind, rid, length = HEADER.unpack_from(buf, at)
                        if length > MAX_FRAME or length < JSON_LEN.size:
                            raise ConnectError(f"the helper on {self.label} sent a corrupt frame")
                        end = at + HEADER.size + length
                        if have < end:
                            break
                        (jlen,) = JSON_LEN.unpack_from(buf, at + HEADER.size)
                        start = at + HEADER.size + JSON_LEN.size
                        if start + jlen > end:
                            raise ConnectError(f"the helper on {self.label} sent a corrupt frame")
                        meta = json.loads(bytes(view[start : start + jlen])) if jlen else None
                        raw = bytes(view[start + jlen : end]) if end > start + jlen else b""
                        at = end
                        self._deliver(kind, rid, meta, raw)
                if at:
                    del buf[:at]
                try:
                    data = self._channel.recv(RECV_SIZE)
                except TimeoutError:
                    if self._closed:
                        return
                    continue  # idle is fine; waiters judge stalls
                if not data:
                    break
                self._last_rx = time.monotonic()
                buf += data
        except ConnectError as exc:
            error = exc
        except Exception as exc:  # a corrupt frame: the stream cannot be trusted any more
            error = ConnectError(f"the helper on {self.label} broke the protocol ({exc})")
        finally:
            if error is None:
                reason = "" if self._closed else self._channel.stderr_text().strip()
                error = ConnectError(
                    f"the helper on {self.label} ended unexpectedly"
                    f"{f' ({reason.splitlines()[-1]})' if reason else ''}; retry later"
                )
            self._dead = error
            with self._calls_lock:
                pending = list(self._calls.values())
                self._calls.clear()
            for call in pending:
                call.frames.put(None)

    def _deliver(self, kind: int, rid: int, meta: Any, raw: bytes) -> None:
        if kind == BEAT:
            return
        with self._calls_lock:  # (the frame is queued before the call leaves _calls: see _next)
            call = self._calls.get(rid)
            if call is not None:
                call.frames.put((kind, meta, raw))
                if kind in (DONE, FAIL):
                    del self._calls[rid]

    # ---- sending ----------------------------------------------------------
    def _emit(self, kind: int, rid: int, meta: Any, raw: bytes | bytearray | memoryview) -> None:
        js = b"" if meta is None else _encode(meta).encode("utf-8")
        head = HEADER.pack(kind, rid, JSON_LEN.size + len(js) + len(raw)) + JSON_LEN.pack(len(js)) + js
        with self._send_lock:
            if self._dead is not None:
                raise self._dead
            self._out.append(head)
            if raw:
                self._out.append(bytes(raw))
            self._out_size += len(head) + len(raw)
            if self._out_size >= SEND_BUFFER:
                self._flush_locked()

    def _flush_locked(self) -> None:
        """Send what is buffered: small pieces joined, big ones as they are (no copy)."""
        if not self._out:
            return
        out = self._out
        self._out = []
        self._out_size = 0
        small: list[bytes] = []
        for piece in out:
            if len(piece) < _SEND_AS_IS:
                small.append(piece)
                continue
            if small:
                self._channel.send(b"".join(small))
                small = []
            self._channel.send(piece)
        if small:
            self._channel.send(b"".join(small))

    def flush(self) -> None:
        with self._send_lock:
            self._flush_locked()

    def send_room(self) -> int:
        """Bytes that could be sent now without waiting for the far side's window."""
        room = getattr(self._channel, "send_room", None)
        return (room() if room is not None else SEND_BUFFER * 64) - self._out_size

    def call(self, op: str, args: list[Any], raw: bytes | bytearray | memoryview = b"") -> Call:
        """Send a request without waiting for its answer."""
        with self._calls_lock:
            rid = self._next_id
            self._next_id += 1
            call = Call(rid, op)
            self._calls[rid] = call
        try:
            self._emit(CALL, rid, [op, args], raw)
        except BaseException:
            with self._calls_lock:
                self._calls.pop(rid, None)
            raise
        return call

    def data(self, call: Call, raw: bytes | bytearray | memoryview) -> None:
        # one frame per piece: MAX_FRAME bounds what the helper accepts
        if len(raw) <= RECV_SIZE * 4:
            self._emit(DATA, call.rid, None, raw)  # (bytes go on as they are: no copy)
            return
        view = memoryview(raw)
        for start in range(0, len(view), RECV_SIZE * 4):
            self._emit(DATA, call.rid, None, view[start : start + RECV_SIZE * 4])

    def end(self, call: Call) -> None:
        self._emit(END, call.rid, None, b"")

    def abort(self, call: Call) -> None:
        self._emit(ABORT, call.rid, None, b"")

    # ---- waiting ----------------------------------------------------------
    def _next(self, call: Call) -> tuple[int, Any, bytes]:
        self.flush()
        if call.frames.empty():
            with self._calls_lock:
                taken = call.rid not in self._calls and call.frames.empty()
            if taken:
                # its last frame was taken already: nothing more will come, and waiting
                # would end only when the I/O timeout judged the connection stalled
                raise self._dead or ConnectError(
                    f"srsync waited twice for the answer to its {call.op!r} request to the helper "
                    f"on {self.label} (a bug; please report it)"
                )
        started = time.monotonic()
        while True:
            # wake when the helper would have been quiet for the timeout (the
            # stall is reported on time), and at least every second for _dead
            left = max(self._last_rx, started) + self.io_timeout - time.monotonic()
            try:
                item = call.frames.get(timeout=min(1.0, max(left, 0.001)))
            except queue.Empty:
                if self._dead is not None and call.frames.empty():
                    raise self._dead from None
                quiet = time.monotonic() - max(self._last_rx, started)
                if quiet >= self.io_timeout:
                    self.close()
                    raise ConnectError(
                        f"connection to {self.label} stalled (the remote helper did not answer "
                        f"in {self.io_timeout:g}s); retry later"
                    ) from None
                continue
            if item is None:
                assert self._dead is not None
                raise self._dead
            return item

    def failed_early(self, call: Call) -> OSError | None:
        """The error of a call that already failed, without waiting (for long uploads)."""
        try:
            item = call.frames.get_nowait()
        except queue.Empty:
            return None
        if item is None:
            assert self._dead is not None
            raise self._dead
        kind, meta, _ = item
        if kind == FAIL:
            return call_error(meta)
        call.frames.put(item)  # not a failure: leave it for the normal reader (order kept: one frame)
        return None

    def result(self, call: Call) -> Reply:
        """Wait for a call's DONE (ITEMs are not expected); FAIL raises its OSError."""
        for _ in self.items(call):
            raise ConnectError(f"the helper on {self.label} sent an unexpected item")
        return Reply(call.final, b"")

    def result_raw(self, call: Call) -> Reply:
        kind, meta, raw = self._next(call)
        if kind == FAIL:
            raise call_error(meta)
        if kind != DONE:
            raise ConnectError(f"the helper on {self.label} sent an unexpected item")
        return Reply(meta, raw)

    def items(self, call: Call) -> Iterator[Reply]:
        """The ITEMs of a call as they arrive; afterwards ``call.final`` holds the DONE meta."""
        while True:
            kind, meta, raw = self._next(call)
            if kind == ITEM:
                yield Reply(meta, raw)
            elif kind == DONE:
                call.final = meta
                return
            elif kind == FAIL:
                raise call_error(meta)

    @property
    def alive(self) -> bool:
        return self._dead is None and not self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._channel.close()


def start_client(
    open_channel: Any, label: str, io_timeout: float, python: str, bytecode: bool = True,
    root: str | None = None,
) -> AgentClient:
    """Run the helper with ``open_channel(command)`` and shake hands; HelperUnavailable on failure.

    ``bytecode``: send the compiled helper too (see ``srsync.agent.payload``);
    ``root``: ask it to serve that directory at once (see ``AgentClient.start``).
    """
    try:
        channel = open_channel(bootstrap_command(python))
    except ConnectError as exc:
        # exec refused (an SFTP-only server, a ForceCommand, MaxSessions): no helper here.
        # A connection that is really gone fails again on the SFTP path, loudly.
        raise HelperUnavailable(f"the server refused to run the helper ({exc})") from exc
    client = AgentClient(channel, label, io_timeout, bytecode)
    try:
        client.start(root)
    except BaseException:
        client.close()
        raise
    return client
