"""A delay-injecting, byte-counting TCP proxy on 127.0.0.1 (asyncio, in its own thread).

Each chunk read from one side is stamped with ``now + one_way_delay`` and handed to a
timer that writes it to the other side when due, so the delay is added to every byte
without serialising the stream: while one chunk waits, later chunks keep arriving and
are scheduled too.  Throughput is bounded only by the sockets and by a cap on the
bytes held in flight (reading pauses above it, like a full link buffer).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from dataclasses import dataclass

# Bytes one direction may hold while waiting out the delay before reading pauses.
# 64 MiB comfortably exceeds bandwidth x delay at loopback speeds for 50 ms.
MAX_IN_FLIGHT = 64 << 20


@dataclass(slots=True)
class Counters:
    """Bytes carried since the proxy started: client->server (up) and server->client (down)."""

    up: int = 0
    down: int = 0
    connections: int = 0
    active: int = 0


class _Half(asyncio.Protocol):
    """One socket of a proxied connection; forwards what it reads to its peer after a delay."""

    def __init__(self, proxy: DelayProxy, upstream: bool) -> None:
        self.proxy = proxy
        self.upstream = upstream  # True: this socket is the client's, data flows up
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.in_flight = 0
        self.paused_by_flight = False
        self.paused_by_peer = False
        self.buffer: list[bytes] = []  # data read before the peer socket connected
        self.eof_pending = False
        self.closed = False

    # -- this socket's events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.upstream:
            self.proxy.counters.up += len(data)
        else:
            self.proxy.counters.down += len(data)
        self._forward(data)

    def eof_received(self) -> bool:
        self._forward(b"")
        return True  # keep our write side open: half-close, as TCP allows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer is not None and not self.peer.closed and self.peer.transport is not None:
            # the other direction may still carry delayed data: close after it is out
            self.proxy.loop.call_later(self.proxy.delay + 0.001, self.peer._close_when_drained)
        self.proxy.connection_half_closed(self)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.paused_by_peer = True
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.paused_by_peer = False
            if not self.peer.paused_by_flight:
                self.peer.transport.resume_reading()

    # -- forwarding
    def _forward(self, data: bytes) -> None:
        if self.peer is None or self.peer.transport is None:
            if data:
                self.buffer.append(data)
            else:
                self.eof_pending = True
            return
        delay = self.proxy.delay
        if delay <= 0:
            self._deliver(data)
            return
        self.in_flight += len(data)
        if self.in_flight > MAX_IN_FLIGHT and not self.paused_by_flight and self.transport is not None:
            self.paused_by_flight = True
            self.transport.pause_reading()
        self.proxy.loop.call_at(self.proxy.loop.time() + delay, self._release, data)

    def _release(self, data: bytes) -> None:
        self.in_flight -= len(data)
        self._deliver(data)
        if self.paused_by_flight and self.in_flight <= MAX_IN_FLIGHT // 2:
            self.paused_by_flight = False
            if not self.paused_by_peer and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def _deliver(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None or peer.closed:
            return
        if data:
            peer.transport.write(data)
        elif peer.transport.can_write_eof():
            # the peer may have gone meanwhile (a client that exits at once): nothing to pass on
            with contextlib.suppress(OSError):
                peer.transport.write_eof()

    def flush_buffer(self) -> None:
        for data in self.buffer:
            self._forward(data)
        self.buffer.clear()
        if self.eof_pending:
            self._forward(b"")

    def _close_when_drained(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()  # flushes what is buffered, then closes


class DelayProxy:
    """Listens on 127.0.0.1:``port`` and forwards to 127.0.0.1:``upstream_port``."""

    def __init__(self, upstream_port: int, rtt_ms: float) -> None:
        self.upstream_port = upstream_port
        self.delay = rtt_ms / 2000.0  # one way, seconds
        self.counters = Counters()
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle (called from the harness thread)
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"proxy failed to start: {self._error}")

    def stop(self) -> None:
        if self._thread is None:
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self._thread = None

    def snapshot(self) -> tuple[int, int]:
        """(up, down) byte totals; read after ``wait_idle`` for a settled value."""
        return self.counters.up, self.counters.down

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no proxied connection is open (the last bytes are counted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.counters.active == 0:
                return True
            time.sleep(0.01)
        return False

    # -- the event loop thread
    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self._server = self.loop.run_until_complete(
                self.loop.create_server(self._accept, "127.0.0.1", 0, backlog=128)
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self._server.close()
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.loop.close()

    def _accept(self) -> _Half:
        client = _Half(self, upstream=True)
        self.counters.connections += 1
        self.counters.active += 1
        self.loop.create_task(self._connect_upstream(client))
        return client

    async def _connect_upstream(self, client: _Half) -> None:
        try:
            _transport, server = await self.loop.create_connection(
                lambda: _Half(self, upstream=False), "127.0.0.1", self.upstream_port
            )
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        client.peer, server.peer = server, client
        client.flush_buffer()
        if client.closed:
            server._close_when_drained()

    def connection_half_closed(self, half: _Half) -> None:
        # a connection counts as gone when its client-side socket is gone
        if half.upstream:
            self.counters.active -= 1
