"""Channel data sent many packets at a time (srsync.ssh.bulk), against a real OpenSSH sshd.

The server decrypts and authenticates every packet: a wrong nonce, sequence
number, padding or length ends the connection, so an exact echo through
``cat`` (and a command run afterwards on the same connection) proves the
packets were well formed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading

import pytest
from sshd import SSHD

from srsync.ssh import bulk
from srsync.ssh.connection import CommandChannel, connect

pytestmark = pytest.mark.ssh


def echo_through_cat(channel: CommandChannel, payload: bytes, pieces: int = 1) -> bytes:
    """Send ``payload`` (in ``pieces`` calls) to a remote ``cat`` while reading its echo."""
    got: list[bytes] = []
    total = 0

    def read() -> None:
        nonlocal total
        while total < len(payload):
            data = channel.recv(1 << 20)
            if not data:
                return
            got.append(data)
            total += len(data)

    reader = threading.Thread(target=read)
    reader.start()
    step = -(-len(payload) // pieces)
    for at in range(0, len(payload), step):
        channel.send(payload[at : at + step])
    reader.join(60)
    assert not reader.is_alive()
    return b"".join(got)


def test_batches_reach_the_server_intact(sshd: SSHD) -> None:
    payload = os.urandom(6 * 1024 * 1024 + 12345)  # not a multiple of the packet size
    with connect(sshd.conn_spec()) as conn:
        assert bulk.batch_capable(conn._transport)  # OpenSSH + paramiko negotiate AES-GCM here
        channel = conn.open_command("cat")
        assert channel._batched
        assert echo_through_cat(channel, payload, pieces=3) == payload
        channel.close()
        # the connection's nonce and sequence number still agree with the server's
        streams = conn.exec_command("echo still here")
        assert streams.stdout.read() == b"still here\n"


def test_a_batch_advances_nonce_and_sequence_once_per_packet(sshd: SSHD) -> None:
    with connect(sshd.conn_spec()) as conn:
        channel = conn.open_command("cat > /dev/null")
        raw = channel._channel
        pk = conn._transport.packetizer
        seq = pk._Packetizer__sequence_number_out
        iv = pk._Packetizer__iv_out
        room = raw.out_max_packet_size - 64
        sent = bulk.send_batch(raw, memoryview(os.urandom(1024 * 1024)))  # within sshd's window
        packets = -(-sent // room)
        assert sent == min(1024 * 1024, room * bulk.MAX_BATCH)
        assert pk._Packetizer__sequence_number_out == (seq + packets) & 0xFFFFFFFF
        counter = int.from_bytes(iv[4:], "big") + packets
        assert pk._Packetizer__iv_out == iv[:4] + counter.to_bytes(8, "big")
        channel.close()


def test_batches_wait_for_the_window(sshd: SSHD) -> None:
    # the server reads nothing for a while: sends stop at its window (2 MiB) until it does
    payload = os.urandom(8 * 1024 * 1024)
    with connect(sshd.conn_spec()) as conn:
        channel = conn.open_command("sleep 1; sha256sum")
        channel.send(payload)
        channel._channel.shutdown_write()
        out = b""
        while True:
            data = channel.recv(4096)
            if not data:
                break
            out += data
    assert out.split()[0].decode() == hashlib.sha256(payload).hexdigest()


def test_batches_across_key_exchanges(sshd: SSHD, caplog: pytest.LogCaptureFixture) -> None:
    payload = os.urandom(8 * 1024 * 1024)
    caplog.set_level(logging.DEBUG, logger="paramiko.transport")
    with connect(sshd.conn_spec()) as conn:
        conn._transport.packetizer.REKEY_BYTES = 512 * 1024  # new keys every half MiB sent
        caplog.clear()
        # a send batch (up to 2 MiB) asks for new keys once, at its end; a
        # small window keeps the echo from arriving whole during one exchange
        channel = conn.open_command("cat", window=256 * 1024)
        assert channel._batched
        assert echo_through_cat(channel, payload, pieces=5) == payload
        streams = conn.exec_command("echo ok")
        assert streams.stdout.read() == b"ok\n"
    exchanges = [r for r in caplog.records if "End of kex handshake" in r.getMessage()]
    assert len(exchanges) >= 4


def test_concurrent_channels_share_the_connection(sshd: SSHD) -> None:
    payloads = [os.urandom(3 * 1024 * 1024 + i) for i in range(3)]
    results: list[bytes | None] = [None] * len(payloads)
    with connect(sshd.conn_spec()) as conn:
        channels = [conn.open_command("cat") for _ in payloads]

        def run(i: int) -> None:
            results[i] = echo_through_cat(channels[i], payloads[i], pieces=4)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(payloads))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert results == payloads


def test_other_ciphers_keep_paramikos_path(sshd: SSHD) -> None:
    # aes128-ctr has a separate MAC: not batched, and the same bytes arrive
    transport = sshd.bare_transport("aes128-ctr")
    try:
        assert not bulk.batch_capable(transport)
        raw = transport.open_session()
        raw.exec_command("cat")
        channel = CommandChannel(raw, "test", 30.0)
        assert not channel._batched
        payload = os.urandom(1024 * 1024 + 7)
        assert echo_through_cat(channel, payload) == payload
    finally:
        transport.close()


def test_only_known_paramiko_releases_are_batched() -> None:
    assert bulk.known_paramiko()  # the installed one
    assert bulk.known_paramiko("3.4.0") and bulk.known_paramiko("5.9.1")
    assert not bulk.known_paramiko("3.3.1")  # no strict key exchange yet
    assert not bulk.known_paramiko("6.0.0")  # not checked yet: paramiko's own paths
    assert not bulk.known_paramiko("dev")
