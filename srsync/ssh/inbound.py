"""Reading SSH packets many at a time (AES-GCM connections).

paramiko's transport thread reads every packet with ``read_all``: a socket
``recv`` per piece joined by ``out += piece``, then the length header and the
body joined again, the decrypt, two more slices for the payload, a
``Message`` and its ``get_binary`` copy before the channel's buffered pipe
copies the data once more into an ``array``.  With sshd's 64 KiB packets that
cost several times the AES-GCM decryption: paramiko received ~170-250 MB/s
from ``cat`` on this machine, at 3.7-4.9 s of client CPU per GiB.

``install`` replaces the packetizer's ``read_message`` with ``FastReader``.
While the inbound cipher is AEAD (and nothing is compressed or dumped) it
reads the socket into one reusable buffer, as many packets per ``recv_into``
as have arrived, and decrypts each packet straight from that buffer.  It
advances the nonce counter and the sequence number and counts packets and
bytes toward rekeying exactly as paramiko's ``read_message`` does, and keeps
its behaviour on timeouts (keepalives, a pending rekey, the handshake
deadline) and at EOF.  Channel data for a channel whose input buffer is a
``ChunkPipe`` (the remote helper's exec channels) is handed over as
memoryviews of the decrypted packets, all of that channel's packets already
buffered in one message: one pass through the transport's dispatch and one
lock and wake-up of the reading thread for all of them.  Any other cipher,
and any packet read before the cipher is AEAD, goes through paramiko's own
``read_message``, with whatever was buffered handed back first.

``ChunkPipe`` is a drop-in for a channel's ``BufferedPipe`` that keeps what
is fed as it is (paramiko's copies it into an ``array``, copies it out again
and moves the rest of the array down after every partial read); a read
copies once, into the bytes it returns.

Measured with 512 MiB from ``cat`` over the bench's sshd (client CPU per
GiB, 5 runs each, alternating): paramiko 188-314 MB/s at 3.0-4.5 s, these
two 309-432 MB/s at 2.2-2.9 s.

Like ``srsync.ssh.bulk`` this uses paramiko's private packetizer state, so
``install`` checks the paramiko release and every attribute first and leaves
paramiko alone otherwise.
"""

from __future__ import annotations

import collections
import errno
import struct
import threading
import time
from typing import Any

import paramiko
from paramiko.buffered_pipe import BufferedPipe, PipeTimeout
from paramiko.packet import NeedRekeyException

from srsync.ssh.bulk import _MSG_CHANNEL_DATA, _P, known_paramiko

_STATE = ("socket", "remainder", "closed", "block_engine_in", "block_size_in", "mac_size_in",
          "aead_in", "etm_in", "compress_engine_in", "dump_packets", "iv_in",
          "sequence_number_in", "received_bytes", "received_packets", "need_rekey",
          "received_bytes_overflow", "received_packets_overflow")
_METHODS = ("read_message", "handshake_timed_out", "_check_keepalive", "_inc_iv_counter",
            "_trigger_rekey", "REKEY_PACKETS", "REKEY_BYTES", "REKEY_PACKETS_OVERFLOW_MAX",
            "REKEY_BYTES_OVERFLOW_MAX", "_initial_kex_done")
_LEN = struct.Struct(">I")
_DATA_HEAD = struct.Struct(">BBII")  # padding length, message number, channel, data length
READ_SIZE = 256 * 1024  # asked of the socket per recv_into, whatever the packet size
MAX_PACKET = 4 * 1024 * 1024  # paramiko sets no limit; OpenSSH sends at most 256 KiB
MAX_GATHER = 64  # data packets of one channel handed over as one message


def capable(transport: Any) -> bool:
    """Whether ``install`` can take over reading on ``transport`` (paramiko state as expected)."""
    pk = getattr(transport, "packetizer", None)
    return (
        pk is not None
        and known_paramiko()
        and hasattr(transport, "_channels")
        and all(hasattr(pk, _P + name) for name in _STATE)
        and all(hasattr(pk, name) for name in _METHODS)
        and not isinstance(pk.read_message, FastReader)
    )


def install(transport: Any) -> bool:
    """Read ``transport``'s packets with ``FastReader`` from now on; False if it cannot."""
    if not capable(transport):
        return False
    pk = transport.packetizer
    pk.read_message = FastReader(pk, transport._channels)
    return True


class ChannelData:
    """A CHANNEL_DATA message already taken apart: what the transport's dispatch asks of it.

    ``data`` is bytes for a channel with paramiko's own pipe, and a list of
    memoryviews (one per packet, several consecutive packets) for a channel
    whose pipe is a ``ChunkPipe``.
    """

    __slots__ = ("channel", "data", "seqno")

    def __init__(self, channel: int, data: bytes | list[memoryview], seqno: int) -> None:
        self.channel = channel
        self.data = data
        self.seqno = seqno

    def get_int(self) -> int:
        return self.channel

    def get_binary(self) -> bytes | list[memoryview]:
        return self.data


class FastReader:
    """``Packetizer.read_message`` for AEAD ciphers; falls back to paramiko's for anything else.

    Only the transport thread calls it (as paramiko's own), so it needs no
    lock.  Data for a ``ChunkPipe`` channel comes back as one message for as
    many of its packets as are already buffered, so the transport's dispatch
    and the pipe's lock and wake-up run once for all of them; a packet of
    anything else read while gathering is kept for the next call, so messages
    still come back one by one in order, and no packet after a NEWKEYS is
    decrypted before the transport has switched keys.
    """

    def __init__(self, pk: Any, channels: Any) -> None:
        self._pk = pk
        self._channels = channels  # the transport's channel map (``get(id)``)
        self._paramiko_read = pk.read_message  # the bound original
        self._buf = bytearray(READ_SIZE + 64 * 1024)
        self._view = memoryview(self._buf)
        self._start = 0  # unread bytes are _buf[_start:_end]
        self._end = 0
        self._kept: tuple[int, Any] | None = None

    def __call__(self) -> tuple[int, Any]:
        if self._kept is not None:
            kept, self._kept = self._kept, None
            return kept
        pk = self._pk
        remainder = getattr(pk, _P + "remainder")
        if remainder:  # bytes paramiko read past the banner: they come first
            setattr(pk, _P + "remainder", b"")
            self._push_front(remainder)
        if not self._fast(pk):
            if self._end > self._start:  # paramiko's read_all takes its remainder first
                setattr(pk, _P + "remainder", bytes(self._view[self._start : self._end]))
                self._start = self._end = 0
            return self._paramiko_read()
        first = self._read_packet(pk, True)
        assert first is not None  # waiting reads return a packet or raise
        cmd, msg = first
        if type(msg) is not ChannelData or type(msg.data) is not list:
            return cmd, msg
        chunks = msg.data
        while len(chunks) < MAX_GATHER and not getattr(pk, _P + "need_rekey"):
            more = self._read_packet(pk, False)
            if more is None:
                break
            data = more[1]
            if type(data) is ChannelData and data.channel == msg.channel and type(data.data) is list:
                chunks.extend(data.data)
                continue
            self._kept = more
            break
        return cmd, msg

    @staticmethod
    def _fast(pk: Any) -> bool:
        return (
            bool(getattr(pk, _P + "aead_in"))
            and getattr(pk, _P + "block_engine_in") is not None
            and not getattr(pk, _P + "etm_in")
            and getattr(pk, _P + "compress_engine_in") is None
            and not getattr(pk, _P + "dump_packets")
        )

    def _push_front(self, data: bytes) -> None:
        whole = data + bytes(self._view[self._start : self._end])
        self._ensure_room(len(whole))
        self._buf[: len(whole)] = whole
        self._start, self._end = 0, len(whole)

    def _ensure_room(self, size: int) -> None:
        if size > len(self._buf):
            self._view.release()
            self._buf.extend(bytes(size - len(self._buf)))
            self._view = memoryview(self._buf)

    def _fill(self, need: int, packet_start: bool) -> None:
        """Read until ``need`` bytes are buffered, as paramiko's read_all would wait for them."""
        pk = self._pk
        if self._start + need > len(self._buf):  # move the unread bytes to the front
            have = self._end - self._start
            self._ensure_room(need)
            self._buf[:have] = bytes(self._view[self._start : self._end])
            self._start, self._end = 0, have
        sock = getattr(pk, _P + "socket")
        while self._end - self._start < need:
            if pk.handshake_timed_out():
                raise EOFError()
            try:
                got = self._recv(sock)
                if got == 0:
                    raise EOFError()
                self._end += got
                continue
            except TimeoutError:
                pass
            except OSError as exc:
                if exc.errno != errno.EAGAIN:
                    if getattr(pk, _P + "closed"):
                        raise EOFError() from exc
                    raise
            # a timeout: what paramiko's read_all does while it waits
            if getattr(pk, _P + "closed"):
                raise EOFError()
            if packet_start and self._end == self._start and getattr(pk, _P + "need_rekey"):
                raise NeedRekeyException()
            pk._check_keepalive()

    def _recv(self, sock: Any) -> int:
        """One read from the socket into the free end of the buffer; the byte count."""
        room = len(self._buf) - self._end
        recv_into = getattr(sock, "recv_into", None)
        if recv_into is not None:
            return int(recv_into(self._view[self._end :], room))
        data = sock.recv(room)  # a tunnel channel or proxy command: no recv_into
        self._buf[self._end : self._end + len(data)] = data
        return len(data)

    def _read_packet(self, pk: Any, wait: bool) -> tuple[int, Any] | None:
        """The next packet as (message number, message); None if ``wait`` is off and it has
        not fully arrived yet."""
        mac = getattr(pk, _P + "mac_size_in")
        if wait:
            self._fill(getattr(pk, _P + "block_size_in"), packet_start=True)
        elif self._end - self._start < 4:
            return None
        at = self._start
        (size,) = _LEN.unpack_from(self._buf, at)
        if size > MAX_PACKET or size < 16:
            raise paramiko.SSHException(f"Invalid packet length {size}")
        total = 4 + size + mac
        if wait:
            self._fill(total, packet_start=False)
            at = self._start  # _fill may have moved the bytes
        elif self._end - at < total:
            return None
        view = self._view
        iv = getattr(pk, _P + "iv_in")
        try:
            plain = getattr(pk, _P + "block_engine_in").decrypt(
                iv, view[at + 4 : at + total], view[at : at + 4]
            )
        except Exception as exc:  # cryptography's InvalidTag: a corrupt or forged packet
            raise paramiko.SSHException("Mismatched MAC") from exc
        self._start = at + total
        if self._start == self._end:
            self._start = self._end = 0
        setattr(pk, _P + "iv_in", pk._inc_iv_counter(iv))

        seq = getattr(pk, _P + "sequence_number_in")
        next_seq = (seq + 1) & 0xFFFFFFFF
        if next_seq == 0 and not pk._initial_kex_done:
            raise paramiko.SSHException("Sequence number rolled over during initial kex!")
        setattr(pk, _P + "sequence_number_in", next_seq)
        self._count(pk, total)

        padding = plain[0]
        end = size - padding
        if end < 2:
            raise paramiko.SSHException("Invalid packet padding")
        cmd = plain[1]
        if cmd == _MSG_CHANNEL_DATA and end >= 10:
            _pad, _cmd, channel, length = _DATA_HEAD.unpack_from(plain, 0)
            if 10 + length <= end:
                chan = self._channels.get(channel)
                if chan is not None and type(chan.in_buffer) is ChunkPipe:
                    return cmd, ChannelData(channel, [memoryview(plain)[10 : 10 + length]], seq)
                return cmd, ChannelData(channel, plain[10 : 10 + length], seq)
        msg = paramiko.Message(plain[2:end])
        msg.seqno = seq
        return cmd, msg

    @staticmethod
    def _count(pk: Any, raw: int) -> None:
        """paramiko's rekey accounting for one received packet of ``raw`` bytes."""
        received_bytes = getattr(pk, _P + "received_bytes") + raw
        received_packets = getattr(pk, _P + "received_packets") + 1
        setattr(pk, _P + "received_bytes", received_bytes)
        setattr(pk, _P + "received_packets", received_packets)
        if getattr(pk, _P + "need_rekey"):
            # new keys were asked for: the peer gets some packets to comply
            over_bytes = getattr(pk, _P + "received_bytes_overflow") + raw
            over_packets = getattr(pk, _P + "received_packets_overflow") + 1
            setattr(pk, _P + "received_bytes_overflow", over_bytes)
            setattr(pk, _P + "received_packets_overflow", over_packets)
            if over_packets >= pk.REKEY_PACKETS_OVERFLOW_MAX or over_bytes >= pk.REKEY_BYTES_OVERFLOW_MAX:
                raise paramiko.SSHException("Remote transport is ignoring rekey requests")
        elif received_packets >= pk.REKEY_PACKETS or received_bytes >= pk.REKEY_BYTES:
            setattr(pk, _P + "received_bytes_overflow", 0)
            setattr(pk, _P + "received_packets_overflow", 0)
            pk._trigger_rekey()


class ChunkPipe(BufferedPipe):
    """A channel's input buffer that keeps the fed bytes objects instead of copying them.

    Same contract as paramiko's ``BufferedPipe`` (blocking reads with a
    timeout, close, the readiness event), so a channel can use it unchanged.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._event: threading.Event | None = None
        self._chunks: collections.deque[memoryview] = collections.deque()
        self._size = 0
        self._closed = False

    def set_event(self, event: threading.Event) -> None:
        with self._lock:
            self._event = event
            if self._closed or self._size:
                event.set()
            else:
                event.clear()

    def feed(self, data: bytes | list[memoryview]) -> None:
        """Add ``data``: bytes, or (from ``FastReader``) a list of memoryviews, kept as they are."""
        chunks = data if isinstance(data, list) else [memoryview(data)]
        with self._lock:
            if self._event is not None:
                self._event.set()
            for chunk in chunks:
                if chunk:
                    self._chunks.append(chunk)
                    self._size += len(chunk)
            self._cv.notify_all()

    def read_ready(self) -> bool:
        with self._lock:
            return self._size > 0

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        with self._lock:
            if not self._size:
                if self._closed:
                    return b""
                if timeout == 0.0:
                    raise PipeTimeout()
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self._size and not self._closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise PipeTimeout()
                    self._cv.wait(left)
                if not self._size:
                    return b""
            return self._take(nbytes)

    def _take(self, nbytes: int) -> bytes:
        """Up to ``nbytes`` from the front as one bytes object (lock held, something buffered)."""
        chunks = self._chunks
        parts = []
        taken = 0
        while chunks and taken < nbytes:
            part = chunks[0]
            if taken + len(part) > nbytes:
                cut = nbytes - taken
                chunks[0] = part[cut:]
                part = part[:cut]
            else:
                chunks.popleft()
            parts.append(part)
            taken += len(part)
        self._size -= taken
        if not self._size and self._event is not None and not self._closed:
            self._event.clear()
        return b"".join(parts)

    def empty(self) -> bytes:
        with self._lock:
            out = b"".join(self._chunks)
            self._chunks.clear()
            self._size = 0
            if self._event is not None and not self._closed:
                self._event.clear()
            return out

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._cv.notify_all()
            if self._event is not None:
                self._event.set()

    def __len__(self) -> int:
        with self._lock:
            return self._size
