"""Connecting over SSH against a real sshd: host keys, authentication, timeouts, ssh config, proxies."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sshd import SSHD, free_port, write_ed25519_keypair

from srsync.errors import AuthError, ConnectError, HostKeyError
from srsync.jobspec import ConnSpec
from srsync.ssh import hostkeys
from srsync.ssh.connection import _PromptAckSocket, _tcp_socket, connect

pytestmark = pytest.mark.ssh


def host_fingerprint(server: SSHD) -> str:
    blob = base64.b64decode(server.host_pubkey.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def other_key_line(name: str) -> str:
    """A known_hosts line for ``name`` with a freshly generated (wrong) ed25519 key."""
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    pub = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{name} {pub.decode()}"


def all_messages(exc: BaseException) -> str:
    """Every message in an exception chain (what a log could ever show)."""
    out: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        out.append(f"{type(seen).__name__}: {seen} {seen!r}")
        seen = seen.__cause__ or seen.__context__
    return "\n".join(out)


# ---- success paths -------------------------------------------------------------


def test_connect_exec_and_sftp(sshd: SSHD) -> None:
    conn = connect(sshd.conn_spec(keepalive=5))
    try:
        assert conn.label == f"{sshd.user}@127.0.0.1:{sshd.port}"
        assert conn.transport_alive()
        streams = conn.exec_command("echo hello; echo oops >&2; exit 3")
        assert streams.stdout.read() == b"hello\n"
        assert streams.stderr.read() == b"oops\n"
        assert streams.exit_status() == 3
        fs = conn.open_sftp()
        assert fs.normalize("/tmp/../tmp") == "/tmp"
        fs.close()
    finally:
        conn.close()
    assert not conn.transport_alive()
    conn.close()  # idempotent


def test_fast_cipher_is_negotiated(sshd: SSHD) -> None:
    with connect(sshd.conn_spec()) as conn:
        cipher = conn._transport.local_cipher
    assert cipher in ("aes128-gcm@openssh.com", "aes128-ctr")



def test_connection_socket_acknowledges_promptly_and_keeps_nagle_off(sshd: SSHD) -> None:
    # sshd leaves Nagle on for exec sessions: a reply behind an unacknowledged packet
    # waits for our ACK, which the kernel would hold up to 40 ms (see _PromptAckSocket)
    with connect(sshd.conn_spec()) as conn:
        sock = conn._transport.sock
        assert isinstance(sock, _PromptAckSocket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        for _ in range(3):  # channels opened one after another, each answered
            streams = conn.exec_command("echo ok")
            assert streams.stdout.read() == b"ok\n"
            assert streams.exit_status() == 0
        assert conn.near  # still seen as a plain socket to a server reached directly


def test_server_global_request_without_reply_is_answered_with_an_ignore(sshd: SSHD) -> None:
    # OpenSSH sends hostkeys-00@openssh.com (no reply wanted) right after authentication;
    # the SSH_MSG_IGNORE we answer it with lets a relay between us and sshd acknowledge it
    # at once, so sshd's Nagle does not hold back the confirmation of our first channel
    with connect(sshd.conn_spec()) as conn:
        streams = conn.exec_command("echo ok")
        assert streams.stdout.read() == b"ok\n"
        assert streams.exit_status() == 0
        transport = conn._transport
        deadline = time.monotonic() + 5
        while transport.srsync_nudges < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert transport.srsync_nudges == 1
        # the connection goes on as before (key exchanges with it installed: test_ssh_rekey,
        # test_ssh_inbound; every connection has it)
        streams = conn.exec_command("echo again")
        assert streams.stdout.read() == b"again\n"
        assert transport.srsync_nudges == 1


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux-only")
def test_prompt_ack_socket_asks_for_quick_acks_after_every_read() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        sock = _tcp_socket("127.0.0.1", server.getsockname()[1], 5.0)
        peer, _ = server.accept()
        with sock, peer:
            assert sock.gettimeout() == 5.0
            for n in range(3):
                peer.sendall(b"x" * (n + 1))
                assert sock.recv(16) == b"x" * (n + 1)
                # (read back before this side sends anything, which would end quick-ack mode)
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
                sock.sendall(b"y")
                assert peer.recv(1) == b"y"


def test_hashed_known_hosts_entry(sshd: SSHD, tmp_path: Path) -> None:
    name = f"[127.0.0.1]:{sshd.port}"
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    hashed = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    keytype, b64 = sshd.host_pubkey.split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"# comment\n{other_key_line('otherhost')}\n{hashed} {keytype} {b64}\n")
    with connect(sshd.conn_spec(known_hosts=str(known))) as conn:
        assert conn.transport_alive()


def test_fingerprint_matches_ssh_keygen(sshd: SSHD) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen not installed")
    out = subprocess.run(
        ["ssh-keygen", "-lf", f"{sshd.host_key_path}.pub"], capture_output=True, text=True, check=True
    ).stdout
    assert host_fingerprint(sshd) in out
    blob = base64.b64decode(sshd.host_pubkey.split()[1])
    assert hostkeys.fingerprint_sha256(blob) == host_fingerprint(sshd)


# ---- host keys -----------------------------------------------------------------


def test_unknown_host_is_refused_with_fingerprint(sshd: SSHD, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    with pytest.raises(HostKeyError) as info:
        connect(sshd.conn_spec(known_hosts=str(known)))
    message = str(info.value)
    assert host_fingerprint(sshd) in message
    assert "accept-new" in message and "ssh-keyscan" in message
    assert "\n" not in message
    assert known.read_text() == ""  # strict never writes


def test_missing_known_hosts_file_counts_as_empty(sshd: SSHD, tmp_path: Path) -> None:
    with pytest.raises(HostKeyError):
        connect(sshd.conn_spec(known_hosts=str(tmp_path / "absent")))
    assert not (tmp_path / "absent").exists()


def test_accept_new_records_key_atomically_then_strict_works(sshd: SSHD, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    existing = f"# keep me\n{other_key_line('otherhost')}\n"
    known.write_text(existing)
    known.chmod(0o640)
    with connect(sshd.conn_spec(known_hosts=str(known), host_key_policy="accept-new")) as conn:
        assert conn.transport_alive()
    text = known.read_text()
    assert text.startswith(existing)
    assert text.endswith(sshd.host_pubkey_line.split(" ", 1)[0] + " " + " ".join(sshd.host_pubkey.split()[:2]) + "\n")
    assert (known.stat().st_mode & 0o777) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["known_hosts"]  # no temp file left
    with connect(sshd.conn_spec(known_hosts=str(known))) as conn:
        assert conn.transport_alive()
    # a second accept-new connection does not add a duplicate
    with connect(sshd.conn_spec(known_hosts=str(known), host_key_policy="accept-new")):
        pass
    assert known.read_text() == text


def test_accept_new_creates_missing_file(sshd: SSHD, tmp_path: Path) -> None:
    known = tmp_path / "sub" / "known_hosts"
    with connect(sshd.conn_spec(known_hosts=str(known), host_key_policy="accept-new")):
        pass
    assert known.read_text().startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")
    assert known.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("policy", ["strict", "accept-new"])
def test_changed_host_key_is_always_refused(sshd: SSHD, tmp_path: Path, policy: str) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(other_key_line(f"[127.0.0.1]:{sshd.port}") + "\n")
    before = known.read_text()
    with pytest.raises(HostKeyError) as info:
        connect(sshd.conn_spec(known_hosts=str(known), host_key_policy=policy))
    message = str(info.value)
    assert "ssh-keygen -R" in message and "CHANGED" in message
    assert host_fingerprint(sshd) in message
    assert known.read_text() == before


def test_revoked_host_key_is_refused(sshd: SSHD, tmp_path: Path) -> None:
    keytype, b64 = sshd.host_pubkey.split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"{sshd.host_pubkey_line}\n@revoked * {keytype} {b64}\n")
    with pytest.raises(HostKeyError, match="revoked"):
        connect(sshd.conn_spec(known_hosts=str(known), host_key_policy="accept-new"))


def test_known_hosts_patterns() -> None:
    match = hostkeys.host_field_matches
    assert match("[127.0.0.1]:2222", "[127.0.0.1]:2222")
    assert not match("[127.0.0.1]:2222", "127.0.0.1")
    assert match("web*,!web9", "web1")
    assert not match("web*,!web9", "web9")
    assert match("Host?.example.com", "host1.EXAMPLE.com")
    assert hostkeys.host_key_name("h", 22) == "h"
    assert hostkeys.host_key_name("h", 2222) == "[h]:2222"


# ---- authentication ------------------------------------------------------------


def test_wrong_key_is_auth_error(sshd: SSHD, tmp_path: Path) -> None:
    stranger = tmp_path / "id_stranger"
    write_ed25519_keypair(stranger, "stranger")
    with pytest.raises(AuthError) as info:
        connect(sshd.conn_spec(key_files=(str(stranger),)))
    assert str(stranger) in str(info.value)


def test_wrong_password_is_auth_error_without_the_secret(
    sshd: SSHD, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "pw-Correct-Horse-7731"
    monkeypatch.setenv("SRSYNC_TEST_PASSWORD", secret)
    with pytest.raises(AuthError) as info:
        connect(sshd.conn_spec(key_files=(), password_env="SRSYNC_TEST_PASSWORD"))
    assert "SRSYNC_TEST_PASSWORD" in str(info.value)
    assert secret not in all_messages(info.value)


def test_unset_password_variable_is_reported(sshd: SSHD, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SRSYNC_TEST_UNSET", raising=False)
    with pytest.raises(AuthError, match=r"\$SRSYNC_TEST_UNSET"):
        connect(sshd.conn_spec(key_files=(), password_env="SRSYNC_TEST_UNSET"))


def test_encrypted_key_with_passphrase_from_env(
    sshd: SSHD, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passphrase = "Tr0ub4dor&3-phrase"
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "id_locked"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.BestAvailableEncryption(passphrase.encode()),
        )
    )
    path.chmod(0o600)
    pub = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    with open(sshd.authorized_keys, "a") as fh:
        fh.write(pub.decode() + " locked\n")
    # without the passphrase: a clear hint, no crash
    with pytest.raises(AuthError, match="passphrase"):
        connect(sshd.conn_spec(key_files=(str(path),)))
    monkeypatch.setenv("SRSYNC_TEST_PASSPHRASE", "wrong-one")
    with pytest.raises(AuthError) as info:
        connect(sshd.conn_spec(key_files=(str(path),), passphrase_env="SRSYNC_TEST_PASSPHRASE"))
    assert "wrong-one" not in all_messages(info.value)
    monkeypatch.setenv("SRSYNC_TEST_PASSPHRASE", passphrase)
    with connect(
        sshd.conn_spec(key_files=(str(path),), passphrase_env="SRSYNC_TEST_PASSPHRASE")
    ) as conn:
        assert conn.transport_alive()


# ---- reachability and timeouts ------------------------------------------------------


def test_closed_port_is_connect_error_quickly(sshd: SSHD) -> None:
    start = time.monotonic()
    with pytest.raises(ConnectError) as info:
        connect(sshd.conn_spec(port=free_port()))
    assert time.monotonic() - start < 2.0
    assert "connection refused" in str(info.value)
    assert not isinstance(info.value, (AuthError, HostKeyError))
    assert info.value.__cause__ is not None


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never says anything."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                client, _ = server.accept()
                accepted.append(client)
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(timeout=2)
    for client in accepted:
        client.close()
    server.close()


def test_silent_server_times_out(sshd: SSHD, silent_listener: int) -> None:
    start = time.monotonic()
    with pytest.raises(ConnectError) as info:
        connect(sshd.conn_spec(port=silent_listener, timeout=1.5))
    elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < 4.0
    assert "1.5s" in str(info.value)


def test_unknown_host_name_is_connect_error(sshd: SSHD, tmp_path: Path) -> None:
    # an alias whose HostName cannot resolve; no DNS query leaves the machine
    # because ".invalid" is reserved and fails in the local resolver
    config = sshd.write_file("ssh_config_bad", "Host nowhere\n  HostName no-such-host.invalid\n")
    with pytest.raises(ConnectError, match="not found"):
        connect(sshd.conn_spec(host="nowhere", port=None, ssh_config=config, timeout=2))


# ---- ssh config ---------------------------------------------------------------------


def alias_config(sshd: SSHD, extra: str = "") -> str:
    return (
        "Host myalias\n"
        "  HostName 127.0.0.1\n"
        f"  Port {sshd.port}\n"
        f"  User {sshd.user}\n"
        f"  IdentityFile {sshd.key_path}\n"
        f"{extra}"
    )


def test_ssh_config_alias(sshd: SSHD) -> None:
    config = sshd.write_file("ssh_config_alias", alias_config(sshd))
    spec = ConnSpec(
        host="myalias", known_hosts=sshd.known_hosts, ssh_config=config, use_agent=False, timeout=5
    )
    with connect(spec) as conn:
        assert conn.label == f"{sshd.user}@127.0.0.1:{sshd.port}"
        assert conn.exec_command("echo ok").stdout.read() == b"ok\n"


def test_missing_ssh_config_file_is_config_error(sshd: SSHD, tmp_path: Path) -> None:
    from srsync.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        connect(sshd.conn_spec(ssh_config=str(tmp_path / "nope")))


def test_proxy_jump_through_the_same_sshd(sshd: SSHD) -> None:
    config = sshd.write_file(
        "ssh_config_jump",
        alias_config(sshd, "  ProxyJump jumphost\n")
        + "Host jumphost\n"
        + "  HostName 127.0.0.1\n"
        + f"  Port {sshd.port}\n"
        + f"  User {sshd.user}\n"
        + f"  IdentityFile {sshd.key_path}\n",
    )
    spec = ConnSpec(
        host="myalias", known_hosts=sshd.known_hosts, ssh_config=config, use_agent=False, timeout=5
    )
    with connect(spec) as conn:
        assert len(conn._jumps) == 1 and conn._jumps[0].transport_alive()
        assert conn.exec_command("echo via-jump").stdout.read() == b"via-jump\n"
        fs = conn.open_sftp()
        assert fs.normalize("/") == "/"
    assert not conn._jumps[0].transport_alive()


def test_proxy_jump_chain_from_hop_syntax(sshd: SSHD) -> None:
    hop = f"{sshd.user}@127.0.0.1:{sshd.port}"
    config = sshd.write_file(
        "ssh_config_chain", alias_config(sshd, f"  ProxyJump {hop},{hop}\n")
    )
    spec = ConnSpec(
        host="myalias",
        known_hosts=sshd.known_hosts,
        ssh_config=config,
        key_files=(sshd.key_path,),
        use_agent=False,
        timeout=5,
    )
    with connect(spec) as conn:
        assert len(conn._jumps) == 1 and len(conn._jumps[0]._jumps) == 1
        assert conn.exec_command("echo two-hops").stdout.read() == b"two-hops\n"


def test_proxy_command(sshd: SSHD) -> None:
    if shutil.which("ssh") is None:
        pytest.skip("OpenSSH client not installed")
    proxy = (
        f"ssh -F /dev/null -i {sshd.key_path} -o BatchMode=yes -o StrictHostKeyChecking=yes "
        f"-o UserKnownHostsFile={sshd.known_hosts} -p {sshd.port} {sshd.user}@127.0.0.1 -W %h:%p"
    )
    config = sshd.write_file("ssh_config_proxycmd", alias_config(sshd, f"  ProxyCommand {proxy}\n"))
    spec = ConnSpec(
        host="myalias", known_hosts=sshd.known_hosts, ssh_config=config, use_agent=False, timeout=5
    )
    with connect(spec) as conn:
        assert conn.exec_command("echo via-proxy").stdout.read() == b"via-proxy\n"
