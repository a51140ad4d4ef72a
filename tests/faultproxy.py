"""A TCP proxy for fault injection: forwards to a real server and cuts the first connection
after N bytes in one direction, by RST, FIN or by going silent (blackhole)."""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading

RST, FIN, BLACKHOLE = "rst", "fin", "blackhole"


class FaultProxy:
    def __init__(self, upstream_port: int, cut_after: int | None = None, direction: str = "down",
                 mode: str = RST) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.cut_after = cut_after
        self.direction = direction  # "up": client -> server bytes; "down": server -> client
        self.mode = mode
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.bytes = {"up": 0, "down": 0}
        self.faulted = threading.Event()
        self.silenced = threading.Event()  # silence(): every connection goes quiet both ways
        self._stop = threading.Event()
        self._first = True
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def arm(self, cut_after: int, direction: str, mode: str) -> None:
        """Fault the next connection (the one after this call) as given."""
        self.cut_after, self.direction, self.mode = cut_after, direction, mode
        self.faulted.clear()
        self._first = True

    def disarm(self) -> None:
        self.cut_after = None

    def silence(self) -> None:
        """From now on forward nothing, either way, on any connection (a blackhole on demand)."""
        self.silenced.set()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                continue
            server = socket.create_connection(self.upstream)
            faulty = self._first and self.cut_after is not None
            self._first = False
            self._socks += [client, server]
            t = threading.Thread(target=self._pump, args=(client, server, faulty), daemon=True)
            t.start()
            self._threads.append(t)

    def _pump(self, client: socket.socket, server: socket.socket, faulty: bool) -> None:
        counted = 0
        silent = False
        peers = {client: (server, "up"), server: (client, "down")}
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([client, server], [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        if not silent:
                            raise ConnectionError
                        continue
                    if silent or self.silenced.is_set():
                        continue  # blackhole: swallow everything, answer nothing
                    dest, direction = peers[s]
                    self.bytes[direction] += len(data)
                    if faulty and direction == self.direction and self.cut_after is not None:
                        room = self.cut_after - counted
                        counted += len(data)
                        if counted >= self.cut_after:
                            if room > 0:
                                dest.sendall(data[:room])
                            self.faulted.set()
                            if self.mode == BLACKHOLE:
                                silent = True
                                continue
                            self._cut(client, server)
                            return
                    dest.sendall(data)
        except (ConnectionError, OSError):
            pass
        finally:
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.close()

    def _cut(self, client: socket.socket, server: socket.socket) -> None:
        for s in (client, server):
            with contextlib.suppress(OSError):
                if self.mode == RST:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._stop.set()
        for s in [self.sock, *self._socks]:
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(2)
