"""The transport thread's own messages during a key exchange (srsync.ssh.rekey), against a real sshd.

Without the fix, a channel the server closes while new keys are being
negotiated makes paramiko's transport thread wait for the exchange that only
it can finish: the connection hangs for 30 s and dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

import paramiko
import pytest
from helpers import make_tree, remote_job, run, tree_state
from sshd import SSHD

from srsync.jobspec import Location
from srsync.ssh import connection, rekey
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


@pytest.mark.parametrize("helper", ["on", "off"])
@pytest.mark.parametrize("direction", ["push", "pull"])
def test_syncs_across_frequent_key_exchanges(
    direction: str, helper: str, sshd: SSHD, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the whole engine over the remote helper (batched sends, gathered reads) and
    # over SFTP, with new keys every 256 KiB in both directions
    monkeypatch.setenv("SRSYNC_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SRSYNC_HELPER", helper)
    monkeypatch.setattr(paramiko.Packetizer, "REKEY_BYTES", 256 * 1024)
    # the helper's channel window at 1 MiB: sshd cannot send everything
    # while one exchange is under way, so exchanges keep coming on a slow run
    monkeypatch.setattr(connection, "COMMAND_WINDOW", 1024 * 1024)
    caplog.set_level(logging.DEBUG, logger="paramiko.transport")
    m, t = tmp_path / "m", tmp_path / "t"
    tree: dict[str, bytes | str | None] = {f"big/{i}.bin": os.urandom(1024 * 1024 + i) for i in range(4)}
    tree.update({f"small/{i % 7}/{i}.txt": os.urandom(i * 37) for i in range(300)})
    make_tree(m, tree)
    conn = sshd.conn_spec()
    mirror, target = (Location(str(m)), Location(str(t), conn)) if direction == "push" else (
        Location(str(m), conn), Location(str(t)))
    r = run(remote_job(mirror, target))
    assert r.exit_code == 0, (r.error, r.pairs)
    assert tree_state(m) == tree_state(t)
    exchanges = [rec for rec in caplog.records if "End of kex handshake" in rec.getMessage()]
    assert len(exchanges) >= 4  # a send batch (up to 2 MiB) asks for new keys once, at its end
