"""Packets read many at a time (srsync.ssh.inbound), against a real OpenSSH sshd.

sshd encrypts every packet with the connection's keys, nonce counter and
sequence number: a reader that loses a byte, skips a nonce or decrypts a
packet with the wrong keys gets an authentication failure, so exact bytes
(and a command that still runs afterwards) prove the reading is right.
``ChunkPipe`` has its own pure tests at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from paramiko.buffered_pipe import PipeTimeout
from sshd import SSHD

from srsync.errors import ConnectError
from srsync.ssh import inbound
from srsync.ssh.connection import CommandChannel, SSHConnection, connect

pytestmark = pytest.mark.ssh


def remote_file(tmp_path: Path, size: int, name: str = "data.bin") -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def read_all(channel: CommandChannel, delay: float = 0.0) -> bytes:
    """Everything the command writes to stdout; ``delay`` lets packets pile up first."""
    time.sleep(delay)
    out = bytearray()
    while True:
        data = channel.recv(1 << 20)
        if not data:
            return bytes(out)
        out += data


def gathered_feeds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record how many packets each ChunkPipe.feed call got (a list means FastReader gathered)."""
    counts: list[int] = []
    original = inbound.ChunkPipe.feed

    def feed(self: inbound.ChunkPipe, data: Any) -> None:
        counts.append(len(data) if isinstance(data, list) else 0)
        original(self, data)

    monkeypatch.setattr(inbound.ChunkPipe, "feed", feed)
    return counts


def reader_of(conn: SSHConnection) -> inbound.FastReader:
    reader = conn._transport.packetizer.read_message
    assert isinstance(reader, inbound.FastReader)
    return reader


def test_pulled_bytes_arrive_exact(sshd: SSHD, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, data = remote_file(tmp_path, 24 * 1024 * 1024 + 4321)
    feeds = gathered_feeds(monkeypatch)
    with connect(sshd.conn_spec()) as conn:
        reader_of(conn)
        assert conn._transport.remote_cipher.endswith("gcm@openssh.com")
        channel = conn.open_command(f"cat {path}")
        pipe = channel._channel.in_buffer
        assert isinstance(pipe, inbound.ChunkPipe)
        deadline = time.monotonic() + 10
        while not len(pipe) and time.monotonic() < deadline:
            time.sleep(0.002)
        with pipe._lock:  # the transport thread stops at its next feed while packets pile up
            time.sleep(0.3)
        assert read_all(channel) == data
        assert channel.exit_status(5) == 0
        streams = conn.exec_command("echo still here")  # nonce and sequence still agree
        assert streams.stdout.read() == b"still here\n"
    # packets that had piled up were handed to the pipe several at a time
    assert max(feeds) > 1


def test_reads_across_key_exchanges(sshd: SSHD, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, data = remote_file(tmp_path, 6 * 1024 * 1024)
    caplog.set_level(logging.DEBUG, logger="paramiko.transport")
    with connect(sshd.conn_spec()) as conn:
        reader_of(conn)
        conn._transport.packetizer.REKEY_BYTES = 512 * 1024  # new keys every half MiB received
        caplog.clear()
        # a window of 256 KiB: sshd cannot send the whole file while one
        # exchange is under way, so every exchange leaves at least 256 KiB
        # counted toward the next (a 32 MiB window let a slow run see only 3)
        channel = conn.open_command(f"cat {path}", window=256 * 1024)
        assert read_all(channel) == data
        streams = conn.exec_command("echo ok")
        assert streams.stdout.read() == b"ok\n"
    exchanges = [r for r in caplog.records if "End of kex handshake" in r.getMessage()]
    assert len(exchanges) >= 4


def test_changing_cipher_midstream(sshd: SSHD, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # new keys with aes128-ctr while data streams (paramiko's reader takes
    # over), then back to AES-GCM (FastReader again)
    path, data = remote_file(tmp_path, 48 * 1024 * 1024)
    fallbacks = 0
    with connect(sshd.conn_spec()) as conn:
        transport = conn._transport
        reader = reader_of(conn)
        original = reader._paramiko_read

        def paramiko_read() -> Any:
            nonlocal fallbacks
            fallbacks += 1
            return original()

        monkeypatch.setattr(reader, "_paramiko_read", paramiko_read)
        channel = conn.open_command(f"cat {path}")
        out = bytearray()
        ciphers = []
        for switch_to in ("aes128-ctr", "aes128-gcm@openssh.com"):
            while len(out) < (len(ciphers) + 1) * 8 * 1024 * 1024:
                out += channel.recv(1 << 20)
            transport.get_security_options().ciphers = (switch_to,)
            transport.renegotiate_keys()
            ciphers.append(transport.remote_cipher)
        out += read_all(channel)
        assert bytes(out) == data
        assert ciphers == ["aes128-ctr", "aes128-gcm@openssh.com"]
        streams = conn.exec_command("echo ok")
        assert streams.stdout.read() == b"ok\n"
    assert fallbacks > 0, "paramiko's reader never ran under aes128-ctr"


def gcm_pair() -> tuple[paramiko.Packetizer, paramiko.Packetizer, socket.socket, socket.socket]:
    """Two of paramiko's own packetizers on a socket pair, keyed for AES-GCM one way."""
    left, right = socket.socketpair()
    right.settimeout(0.1)  # as paramiko's transport sets its socket
    sender, receiver = paramiko.Packetizer(left), paramiko.Packetizer(right)
    key, iv = os.urandom(16), os.urandom(12)
    sender.set_outbound_cipher(AESGCM(key), 16, None, 16, None, aead=True, iv_out=iv)
    receiver.set_inbound_cipher(AESGCM(key), 16, None, 16, None, aead=True, iv_in=iv)
    return sender, receiver, left, right


def test_buffered_bytes_go_to_paramiko_and_come_back() -> None:
    # paramiko's packet dump (a debugging switch) sends reading back to
    # paramiko with packets already in FastReader's buffer: they go first,
    # and what paramiko leaves comes back when the switch is off again.
    # (Packets made by paramiko's own packetizer on a socket pair: on a live
    # connection whether bytes are buffered at that moment is a matter of timing.)
    sender, receiver, left, right = gcm_pair()
    try:
        bodies = [os.urandom(3000 + i) for i in range(12)]
        for body in bodies:
            m = paramiko.Message()
            m.add_byte(bytes([94]))
            m.add_int(7)
            m.add_string(body)
            sender.send_message(m)
        reader = inbound.FastReader(receiver, {})
        handed: list[int] = []
        original = reader._paramiko_read

        def paramiko_read() -> Any:
            handed.append(len(receiver._Packetizer__remainder))
            return original()

        reader._paramiko_read = paramiko_read  # type: ignore[method-assign]
        got = []
        cmd, msg = reader()  # reads everything the socket holds, returns the first packet
        got.append(msg.get_binary())
        receiver.set_log(logging.getLogger("srsync.test.dump"))
        receiver._Packetizer__dump_packets = True
        for _ in range(3):
            cmd, msg = reader()
            assert cmd == 94 and msg.get_int() == 7
            got.append(msg.get_binary())
        receiver._Packetizer__dump_packets = False
        for _ in range(len(bodies) - 4):
            cmd, msg = reader()
            got.append(msg.get_binary())
        assert got == bodies
        assert len(handed) == 3 and handed[0] > 0
        assert receiver._Packetizer__remainder == b""  # FastReader took back what was left
        with pytest.raises(socket.timeout):  # nothing more: the socket pair is drained
            right.recv(1)
    finally:
        left.close()
        right.close()


def send_packets(sender: paramiko.Packetizer, *packets: tuple[int, bytes]) -> None:
    """CHANNEL_DATA (94) with a body, or another message number with no body, for channel 7."""
    for kind, body in packets:
        m = paramiko.Message()
        m.add_byte(bytes([kind]))
        m.add_int(7)
        if kind == 94:
            m.add_string(body)
        else:
            m.add_int(len(body))
        sender.send_message(m)


def test_buffered_data_of_a_channel_comes_as_one_message_in_order() -> None:
    sender, receiver, left, right = gcm_pair()
    try:
        first = [os.urandom(2000 + i) for i in range(5)]
        then = [os.urandom(100 + i) for i in range(3)]
        send_packets(sender, *[(94, b) for b in first], (93, b"x" * 4096), *[(94, b) for b in then])
        pipe = inbound.ChunkPipe()
        reader = inbound.FastReader(receiver, {7: SimpleNamespace(in_buffer=pipe)})
        cmd, msg = reader()
        assert cmd == 94 and msg.get_int() == 7
        assert [bytes(chunk) for chunk in msg.get_binary()] == first
        cmd, msg = reader()  # the window adjust that stopped the gathering, kept in order
        assert cmd == 93 and msg.get_int() == 7 and msg.get_int() == 4096
        cmd, msg = reader()
        assert [bytes(chunk) for chunk in msg.get_binary()] == then
        assert receiver._Packetizer__sequence_number_in == 9
    finally:
        left.close()
        right.close()


def test_gathering_stops_where_new_keys_are_due() -> None:
    sender, receiver, left, right = gcm_pair()
    try:
        bodies = [os.urandom(4000) for _ in range(8)]
        send_packets(sender, *[(94, b) for b in bodies])
        receiver.REKEY_BYTES = 3 * 4000  # due in the third packet
        reader = inbound.FastReader(receiver, {7: SimpleNamespace(in_buffer=inbound.ChunkPipe())})
        cmd, msg = reader()
        assert [bytes(chunk) for chunk in msg.get_binary()] == bodies[:3]
        assert receiver.need_rekey()  # the transport sends its KEXINIT before reading on
        cmd, msg = reader()  # the peer may send a few more packets before it complies
        assert [bytes(chunk) for chunk in msg.get_binary()] == [bodies[3]]
    finally:
        left.close()
        right.close()


def test_channels_interleave(sshd: SSHD, tmp_path: Path) -> None:
    files = [remote_file(tmp_path, 5 * 1024 * 1024 + i, f"f{i}") for i in range(3)]
    results: list[bytes | None] = [None] * len(files)
    with connect(sshd.conn_spec()) as conn:
        channels = [conn.open_command(f"cat {path}") for path, _ in files]

        def run(i: int) -> None:
            results[i] = read_all(channels[i], delay=0.2)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(files))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert results == [data for _, data in files]


def test_stderr_and_exit_status_still_arrive(sshd: SSHD, tmp_path: Path) -> None:
    path, data = remote_file(tmp_path, 3 * 1024 * 1024)
    with connect(sshd.conn_spec()) as conn:
        channel = conn.open_command(f"cat {path}; echo 'something went wrong' >&2; exit 3")
        assert read_all(channel) == data
        assert channel.exit_status(5) == 3
        assert "something went wrong" in channel.stderr_text()


def test_a_packet_that_fails_authentication_ends_the_connection(sshd: SSHD, tmp_path: Path) -> None:
    # a wrong nonce makes the next packet fail to decrypt, as a tampered packet would
    path, _ = remote_file(tmp_path, 1024 * 1024)
    with connect(sshd.conn_spec()) as conn:
        transport = conn._transport
        channel = conn.open_command(f"sleep 1; cat {path}")
        time.sleep(0.3)  # nothing arrives while the command sleeps: the reader is idle
        pk = transport.packetizer
        iv = pk._Packetizer__iv_in
        pk._Packetizer__iv_in = iv[:4] + bytes(8)
        try:
            got = read_all(channel)
        except ConnectError:
            got = b""
        assert len(got) < 1024 * 1024
        deadline = time.monotonic() + 10
        while transport.is_active() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not transport.is_active()
        assert "Mismatched MAC" in str(transport.get_exception())


def test_reads_through_a_jump_host(sshd: SSHD, tmp_path: Path) -> None:
    # the inner connection's socket is a channel of the outer one: no recv_into
    path, data = remote_file(tmp_path, 8 * 1024 * 1024 + 11)
    config = sshd.write_file(
        "ssh_config_inbound_jump",
        "Host inner\n  HostName 127.0.0.1\n"
        f"  Port {sshd.port}\n  User {sshd.user}\n  IdentityFile {sshd.key_path}\n"
        f"  ProxyJump {sshd.user}@127.0.0.1:{sshd.port}\n",
    )
    spec = dataclasses.replace(sshd.conn_spec(), host="inner", port=None, user=None, ssh_config=config)
    with connect(spec) as conn:
        assert len(conn._jumps) == 1
        assert not hasattr(conn._transport.sock, "recv_into")
        reader_of(conn)
        channel = conn.open_command(f"cat {path}")
        assert read_all(channel, delay=0.3) == data
        assert conn.exec_command("echo ok").stdout.read() == b"ok\n"


def test_other_ciphers_read_through_paramiko(sshd: SSHD, tmp_path: Path) -> None:
    path, data = remote_file(tmp_path, 2 * 1024 * 1024 + 3)
    transport = sshd.bare_transport("aes128-ctr")
    try:
        assert inbound.install(transport)
        assert not inbound.install(transport)  # once is enough
        raw = transport.open_session()
        raw.in_buffer = inbound.ChunkPipe()
        raw.exec_command(f"cat {path}")
        assert read_all(CommandChannel(raw, "test", 30.0)) == data
        assert transport.remote_cipher == "aes128-ctr"
    finally:
        transport.close()


# ---- ChunkPipe: pure tests -----------------------------------------------------


def test_chunk_pipe_reads_across_and_within_chunks() -> None:
    pipe = inbound.ChunkPipe()
    pipe.feed(b"abc")
    pipe.feed([memoryview(b"defgh"), memoryview(b"ij")])
    assert len(pipe) == 10 and pipe.read_ready()
    assert pipe.read(2) == b"ab"
    assert pipe.read(4) == b"cdef"
    assert pipe.read(100) == b"ghij"
    assert len(pipe) == 0 and not pipe.read_ready()
    pipe.feed(b"")
    assert len(pipe) == 0


def test_chunk_pipe_times_out_then_ends_at_close() -> None:
    pipe = inbound.ChunkPipe()
    with pytest.raises(PipeTimeout):
        pipe.read(10, 0.0)
    started = time.monotonic()
    with pytest.raises(PipeTimeout):
        pipe.read(10, 0.2)
    assert time.monotonic() - started >= 0.19
    pipe.feed(b"last")
    pipe.close()
    assert pipe.read(10) == b"last"  # what was fed before close is still read
    assert pipe.read(10) == b""


def test_chunk_pipe_wakes_a_waiting_reader_and_sets_its_event() -> None:
    pipe = inbound.ChunkPipe()
    event = threading.Event()
    pipe.set_event(event)
    assert not event.is_set()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read(100, 5.0)))
    reader.start()
    time.sleep(0.05)
    pipe.feed(b"hello")
    reader.join(5)
    assert got == [b"hello"]
    pipe.feed(b"x")
    assert event.is_set()
    assert pipe.empty() == b"x"
    assert not event.is_set()
    pipe.close()
    assert event.is_set()
