"""The transport thread's own messages during a key exchange (srsync.ssh.rekey), against a real sshd.

Without the fix, a channel the server closes while new keys are being
negotiated makes paramiko's transport thread wait for the exchange that only
it can finish: the connection hangs for 30 s and dies.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import pytest
from sshd import SSHD

from srsync.ssh import rekey
from srsync.ssh.connection import connect

pytestmark = pytest.mark.ssh


def test_a_close_during_an_exchange_does_not_stop_the_transport(sshd: SSHD) -> None:
    with connect(sshd.conn_spec()) as conn:
        transport = conn._transport
        assert not rekey.install(transport)  # connect() already did
        later = conn.open_command("sleep 0.6; echo later")
        closing = conn.open_command("sleep 0.2")
        # what paramiko does while new keys are negotiated: channel messages wait
        transport.clear_to_send.clear()
        try:
            # the server closes `closing`; the transport thread's EOF and CLOSE must
            # wait in the queue while it goes on reading: `later` still gets its output
            got = b""
            deadline = time.monotonic() + 5
            while b"later" not in got and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    got += later.recv(100)
            assert got == b"later\n"
            assert closing._channel.closed
            assert transport.is_active()
        finally:
            transport.clear_to_send.set()  # the exchange is over: the queue drains
        streams = conn.exec_command("echo ok")
        assert streams.stdout.read() == b"ok\n"
        assert later.exit_status(5) == 0


def test_commands_ending_under_frequent_key_exchanges(sshd: SSHD, tmp_path: Path) -> None:
    # new keys every 256 KiB received: some of the servers' channel closes meet an exchange
    data = os.urandom(2 * 1024 * 1024)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    with connect(sshd.conn_spec()) as conn:
        conn._transport.packetizer.REKEY_BYTES = 256 * 1024
        for _ in range(10):
            channel = conn.open_command(f"cat {path}")
            out = bytearray()
            done = threading.Event()

            def read(channel=channel, out=out, done=done) -> None:  # type: ignore[no-untyped-def]
                while data := channel.recv(1 << 20):
                    out.extend(data)
                done.set()

            threading.Thread(target=read, daemon=True).start()
            assert done.wait(10), "the connection hung at the end of a command"
            assert bytes(out) == data
            assert channel.exit_status(10) == 0
            channel.close()
        assert conn.transport_alive()
