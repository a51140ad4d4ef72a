"""SSH connections: proxies, handshake with timeouts, host key check, authentication, keepalive.

``connect(spec)`` is the only way srsync opens an SSH connection.  The order
of events is the security argument: the host key is verified right after key
exchange and before any credential is offered, so a password or key
signature is never sent to an unverified server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, BinaryIO, NamedTuple, cast

import paramiko

from srsync import early_tcp
from srsync.errors import AuthError, ConnectError
from srsync.jobspec import ConnSpec
from srsync.ssh import hostkeys, inbound, rekey
from srsync.ssh.bulk import _P, batch_capable, send_batch
from srsync.ssh.errors import connect_errors, connection_lost
from srsync.ssh.sftpfs import SFTPFS, open_sftp_client
from srsync.ssh.sshconfig import (
    DEFAULT_IDENTITIES,
    HostSettings,
    jump_spec,
    load_ssh_config,
    resolve,
)

log = logging.getLogger(__name__)
# paramiko logs transport-thread failures (with tracebacks) that srsync reports
# itself as one sentence; without any handler Python's last-resort handler
# would print them to stderr.  Records still propagate to configured handlers.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

# AES-GCM needs no separate MAC pass and AES-CTR is hardware accelerated:
# both are the fastest ciphers paramiko offers.  Everything else paramiko
# supports stays enabled behind them, so compatibility is unchanged.
FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes128-ctr", "aes256-gcm@openssh.com", "aes256-ctr")
# Larger flow-control windows keep long fat links busy; memory cost is per channel.
WINDOW_SIZE = 8 * 1024 * 1024
# Exec channels of the remote helper: a bigger window keeps a long fat link
# busy when pulling; packets up to 256 KiB mean fewer of paramiko's costly
# per-packet steps (the server may still send smaller ones).
COMMAND_WINDOW = 32 * 1024 * 1024
COMMAND_PACKET = 256 * 1024
MAX_JUMP_DEPTH = 8
# An established connection silent for the configured timeout counts as
# stalled (SPEC: a silent connection is reported within the timeout; the
# remote helper sends keepalive frames during long operations, and no single
# SFTP request is legitimately silent that long).  A floor keeps tiny
# timeouts from tripping on scheduling noise.
MIN_IO_TIMEOUT = 1.0


class ExecStreams(NamedTuple):
    """stdin/stdout/stderr of a remote command; unpacks like a 3-tuple."""

    stdin: BinaryIO
    stdout: BinaryIO
    stderr: BinaryIO

    def exit_status(self) -> int:
        """Wait for the command to end and return its exit status (-1 if unknown)."""
        channel = cast(Any, self.stdout).channel
        return int(channel.recv_exit_status())

    def close(self) -> None:
        cast(Any, self.stdout).channel.close()


class CommandChannel:
    """A remote command's stdin and stdout as raw byte streams; paramiko stays inside.

    One thread may send while another receives (paramiko channels allow
    that); failures of the channel or connection become ``ConnectError``.
    """

    def __init__(self, channel: paramiko.Channel, label: str, io_timeout: float, open_rtt: float = 0.0) -> None:
        self._channel = channel
        self.label = label
        # a round trip, as measured while the channel opened (see open_command)
        self.open_rtt = open_rtt
        # several packets per call where the cipher allows it (srsync.ssh.bulk)
        self._batched = batch_capable(channel.get_transport())
        # a send blocks while the far side's window is full; longer than this is a stall
        channel.settimeout(io_timeout)

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data`` to the command's stdin.

        Not paramiko's ``sendall``: it re-slices the remaining bytes after
        every packet (a copy each time, quadratic for big buffers); a
        memoryview advances for free.  More than a packet goes in batches of
        packets (``srsync.ssh.bulk.send_batch``) on an AES-GCM connection;
        otherwise each piece handed to paramiko is ``bytes`` of at most one
        packet: its message builder takes anything else through two raised
        and caught exceptions per packet, which cost more than the copy.
        """
        view = memoryview(data).cast("B")
        channel = self._channel
        packet = channel.out_max_packet_size or 32768
        try:
            while view:
                if self._batched and len(view) > packet:
                    sent = send_batch(channel, view)
                else:
                    sent = channel.send(view[:packet].tobytes())
                if sent <= 0:
                    raise EOFError("the channel was closed while sending")
                view = view[sent:]
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise connection_lost(self.label, exc) from exc

    def send_room(self) -> int:
        """How much of the far side's window is open: what ``send`` takes without waiting."""
        return int(self._channel.out_window_size)

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes of stdout; b"" at the end.  May raise TimeoutError when idle."""
        try:
            return bytes(self._channel.recv(size))
        except TimeoutError:
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise connection_lost(self.label, exc) from exc

    def stderr_text(self, limit: int = 4096) -> str:
        """What the command wrote to stderr so far (for error messages), without blocking."""
        out = b""
        with contextlib.suppress(Exception):
            while self._channel.recv_stderr_ready() and len(out) < limit:
                out += self._channel.recv_stderr(limit - len(out))
        return out.decode("utf-8", "replace")

    def exit_status(self, timeout: float) -> int | None:
        """The command's exit status once it ended within ``timeout`` seconds, else None."""
        if self._channel.status_event.wait(timeout):
            return int(self._channel.recv_exit_status())
        return None

    @property
    def closed(self) -> bool:
        return bool(self._channel.closed) or self._channel.eof_received and not self._channel.recv_ready()

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a dead channel must not raise
            self._channel.close()


class SSHConnection:
    """One authenticated SSH connection (and the jump-host connections it tunnels through)."""

    def __init__(
        self,
        transport: paramiko.Transport,
        settings: HostSettings,
        timeout: float,
        jumps: list[SSHConnection] | None = None,
    ) -> None:
        self._transport = transport
        self.settings = settings
        self.label = settings.label
        self.timeout = timeout
        self.io_timeout = max(timeout, MIN_IO_TIMEOUT)
        self._jumps = jumps or []
        self._closed = False
        self.near = _is_near(transport)


    # ---- channels ---------------------------------------------------------
    def open_sftp(self) -> SFTPFS:
        """A new SFTP session on this connection (each session is one server process)."""
        with connect_errors(self.label, self.timeout):
            client = open_sftp_client(
                self._transport, self.label, self.timeout, self.io_timeout, WINDOW_SIZE
            )
        return SFTPFS(client, self.label)

    def exec_command(self, command: str) -> ExecStreams:
        """Run ``command`` on the server; returns its stdin, stdout and stderr streams."""
        with connect_errors(self.label, self.timeout):
            channel = self._transport.open_session(timeout=self.timeout)
            channel.exec_command(command)
            return ExecStreams(
                cast(BinaryIO, channel.makefile_stdin("wb")),
                cast(BinaryIO, channel.makefile("rb")),
                cast(BinaryIO, channel.makefile_stderr("rb")),
            )

    def open_command(self, command: str, window: int | None = None) -> CommandChannel:
        """Start ``command`` on an exec channel with a large window and large packets.

        The window bounds how much the server may send ahead of our reads
        (bytes in flight on a long link); bigger packets cut paramiko's
        per-packet cost.  ``window`` defaults to ``COMMAND_WINDOW``.
        """
        with connect_errors(self.label, self.timeout):
            started = time.monotonic()
            channel = self._transport.open_session(
                window_size=window or COMMAND_WINDOW, max_packet_size=COMMAND_PACKET, timeout=self.timeout
            )
            opened = time.monotonic()
            channel.in_buffer = inbound.ChunkPipe()  # before any data can arrive
            try:
                channel.settimeout(self.timeout)
                channel.exec_command(command)
            except BaseException:
                channel.close()
                raise
        # two exchanges of one round trip each; the first channel's opening can also
        # wait for an acknowledgement the server's Nagle holds back: the shorter counts
        rtt = min(opened - started, time.monotonic() - opened)
        return CommandChannel(channel, self.label, self.io_timeout, rtt)

    def _open_tunnel(self, host: str, port: int) -> paramiko.Channel:
        """A direct-tcpip channel to ``host:port`` as seen from this server (ProxyJump)."""
        try:
            return self._transport.open_channel(
                "direct-tcpip",
                dest_addr=(host, port),
                src_addr=("127.0.0.1", 0),
                timeout=self.timeout,
            )
        except paramiko.ChannelException as exc:
            raise ConnectError(
                f"cannot connect to {host}:{port} through the jump host {self.label}: it refused "
                f"the tunnel ({exc.text}); check ProxyJump and that the jump host allows TCP "
                "forwarding"
            ) from exc

    # ---- state ------------------------------------------------------------
    def answers(self, within: float) -> bool:
        """Whether the server answers a request within ``within`` seconds.

        The request is OpenSSH's own keepalive (a global request that wants a
        reply; servers answer unknown ones with a failure); any packet that
        arrives in time counts: it moves the packetizer's inbound sequence
        number, which every reader (paramiko's and ``srsync.ssh.inbound``'s)
        advances.  Where that number is not there (another paramiko) or the
        request cannot go out at once (keys are being exchanged, the
        connection is gone) nothing is known: True.
        """
        packetizer = self._transport.packetizer

        def seqno() -> object:
            return getattr(packetizer, _P + "sequence_number_in", None)

        before = seqno()
        if before is None or not self._transport.clear_to_send.is_set():
            return True
        request = paramiko.Message()
        request.add_byte(paramiko.common.cMSG_GLOBAL_REQUEST)
        request.add_string("keepalive@openssh.com")
        request.add_boolean(True)
        try:
            self._transport._send_user_message(request)
        except Exception:  # a connection already gone: whatever runs next reports it
            return True
        deadline = time.monotonic() + within
        while seqno() == before and time.monotonic() < deadline and self._transport.is_active():
            time.sleep(0.005)
        return seqno() != before or not self._transport.is_active()

    def transport_alive(self) -> bool:
        t = self._transport
        if self._closed or not t.is_active() or not t.is_authenticated():
            return False
        return all(j.transport_alive() for j in self._jumps)

    def close(self) -> None:
        """Close this connection, then the jump connections under it; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._transport.close()
        finally:
            for jump in reversed(self._jumps):
                jump.close()

    def __enter__(self) -> SSHConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SSHConnection {self.label}{' closed' if self._closed else ''}>"


_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class _PromptAckSocket(socket.socket):
    """A TCP socket that acknowledges what it reads at once (Linux ``TCP_QUICKACK``).

    OpenSSH's sshd leaves Nagle on for sessions without a terminal, so a
    reply it sends while an earlier packet is still unacknowledged waits for
    our ACK, which the kernel may hold back up to 40 ms when we have nothing
    to send.  Opening a channel hit that every time (sshd's hostkeys-00
    message goes out unanswered right before): 44 ms of a 3 ms exchange on
    this machine, and any reply can meet it later.  The kernel drops quick-ack
    mode by itself, so it is asked for again after every read.
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        self._ack_now()
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        got = super().recv_into(buffer, nbytes, flags)
        self._ack_now()
        return got

    def _ack_now(self) -> None:
        if _QUICKACK is not None:
            with contextlib.suppress(OSError):
                self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


def _tcp_socket(host: str, port: int, timeout: float) -> socket.socket:
    """A connected TCP socket to ``host:port``: no Nagle, prompt acknowledgements.

    The connection a one-shot run began before loading paramiko is taken when it is
    to this address (see ``srsync.early_tcp``)."""
    with early_tcp.take(host, port) or socket.create_connection((host, port), timeout=timeout) as plain:
        # SFTP pipelines many small requests; Nagle would hold each
        # burst back by a round trip
        plain.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = _PromptAckSocket(plain.family, plain.type, plain.proto, fileno=plain.fileno())
        plain.detach()  # the fd is sock's now
    sock.settimeout(timeout)
    sock._ack_now()
    return sock


def _is_near(transport: paramiko.Transport) -> bool:
    """Whether the server is on this machine or the local network (a loopback, private or
    link-local address reached directly): a fast link, where sending more bytes to save
    the server work pays.  Tunnelled or proxied connections count as distant."""
    sock = transport.sock
    if not isinstance(sock, socket.socket):
        return False
    try:
        addr = ipaddress.ip_address(sock.getpeername()[0])
    except (OSError, ValueError, IndexError):
        return False
    return addr.is_loopback or addr.is_private or addr.is_link_local


def connect(spec: ConnSpec) -> SSHConnection:
    """Open an authenticated, host-key-verified SSH connection for ``spec``.

    Raises ConnectError (unreachable, refused, stalled, not SSH), HostKeyError
    (unknown, changed or revoked host key) or AuthError (credentials refused).
    """
    config = load_ssh_config(spec.ssh_config)
    return _connect(spec, config, resolve(spec, config), depth=0)


def _connect(
    spec: ConnSpec, config: paramiko.SSHConfig, settings: HostSettings, depth: int
) -> SSHConnection:
    label = settings.label
    if depth > MAX_JUMP_DEPTH:
        raise ConnectError(
            f"cannot connect to {label}: ProxyJump chain longer than {MAX_JUMP_DEPTH} hops "
            "(a loop in the ssh config?); check ProxyJump"
        )
    jumps: list[SSHConnection] = []
    sock: Any = None
    transport: paramiko.Transport | None = None
    try:
        if settings.proxy_jump:
            hops = [h for h in settings.proxy_jump.split(",") if h.strip()]
            hop_spec = jump_spec(spec, hops[-1])
            hop_settings = resolve(hop_spec, config)
            if len(hops) > 1:
                # earlier hops of the chain carry us to the last one
                hop_settings = _with_proxy(hop_settings, ",".join(hops[:-1]))
            jumps.append(_connect(hop_spec, config, hop_settings, depth + 1))
        with connect_errors(label, spec.timeout):
            if jumps:
                sock = jumps[-1]._open_tunnel(settings.hostname, settings.port)
            elif settings.proxy_command:
                sock = paramiko.ProxyCommand(settings.proxy_command)
            else:
                sock = _tcp_socket(settings.hostname, settings.port, spec.timeout)
            known_hosts = os.path.expanduser(spec.known_hosts or hostkeys.default_known_hosts())
            key_name = settings.host_key_alias or hostkeys.host_key_name(
                settings.hostname, settings.port
            )
            transport = _handshake(sock, spec.timeout, known_hosts, key_name)
            server_key = transport.get_remote_server_key()
            hostkeys.check_host_key(
                known_hosts,
                key_name,
                server_key.asbytes(),
                spec.host_key_policy,
                label,
                scan_hint=_keyscan_command(settings, known_hosts),
            )
            _authenticate(transport, settings, spec)
            inbound.install(transport)  # several packets per read on AES-GCM (srsync.ssh.inbound)
            rekey.install(transport)  # its own replies wait out a key exchange without blocking it
            if spec.keepalive > 0:
                transport.set_keepalive(spec.keepalive)
        log.debug(
            "connected to %s (%s, cipher %s%s)",
            label,
            transport.remote_version,
            transport.local_cipher,
            f", via {jumps[-1].label}" if jumps else "",
        )
        return SSHConnection(transport, settings, spec.timeout, jumps)
    except BaseException:
        if transport is not None:
            transport.close()
        elif sock is not None:
            sock.close()
        for jump in reversed(jumps):
            jump.close()
        raise


def _keyscan_command(settings: HostSettings, known_hosts: str) -> str:
    port = "" if settings.port == 22 else f"-p {settings.port} "
    return f"ssh-keyscan {port}{settings.hostname} >> {known_hosts}"


def _with_proxy(settings: HostSettings, proxy_jump: str) -> HostSettings:
    return replace(settings, proxy_jump=proxy_jump, proxy_command=None)


def _nudge_after_global_requests(transport: paramiko.Transport) -> None:
    """Answer a server's global request that wants no reply (OpenSSH sends
    ``hostkeys-00@openssh.com`` right after authentication) with an SSH_MSG_IGNORE.

    sshd keeps Nagle on, so its next small packet (the confirmation of our first
    channel) waits until that request is acknowledged.  Talking to sshd directly,
    ``_PromptAckSocket`` acknowledges at once; through a relay (a jump host's sshd, a
    TCP proxy) the relay's kernel delays the acknowledgement up to 40 ms, unless data
    flows towards sshd: this packet is that data.  (Through the bench's proxy: the
    first channel open 42-45 ms -> 1-3 ms.)  Sent without paramiko's rekey gate,
    from its own thread: a generic transport message, allowed during a key exchange.
    The count of packets sent is kept in ``transport.srsync_nudges``.
    """
    table = getattr(transport, "_handler_table", None)
    if not isinstance(table, dict):
        return
    handler = table.get(paramiko.common.MSG_GLOBAL_REQUEST)
    send = getattr(transport, "_send_message", None)
    if handler is None or send is None:
        return
    transport.srsync_nudges = 0

    def on_global_request(m: paramiko.Message) -> None:
        try:
            at = m.packet.tell()
            m.get_text()
            wants_reply = m.get_boolean()
            m.packet.seek(at)
        except Exception:  # noqa: BLE001 (paramiko's own handler reports a bad message)
            wants_reply = True
        handler(m)
        if not wants_reply:
            nudge = paramiko.Message()
            nudge.add_byte(paramiko.common.cMSG_IGNORE)
            nudge.add_string(b"")
            send(nudge)
            transport.srsync_nudges += 1

    table[paramiko.common.MSG_GLOBAL_REQUEST] = on_global_request


def _handshake(sock: Any, timeout: float, known_hosts: str, key_name: str) -> paramiko.Transport:
    """Banner and key exchange, bounded by ``timeout``; returns the encrypted transport."""
    transport = paramiko.Transport(sock, default_window_size=WINDOW_SIZE)
    _nudge_after_global_requests(transport)
    try:
        transport.banner_timeout = timeout
        transport.handshake_timeout = timeout
        transport.auth_timeout = timeout
        transport.channel_timeout = timeout
        options = transport.get_security_options()
        ciphers = tuple(options.ciphers)
        options.ciphers = tuple(c for c in FAST_CIPHERS if c in ciphers) + tuple(
            c for c in ciphers if c not in FAST_CIPHERS
        )
        options.key_types = tuple(
            hostkeys.preferred_host_key_algorithms(known_hosts, key_name, tuple(options.key_types))
        )
        done = threading.Event()
        transport.start_client(event=done)
        # The banner wait has its own timeout inside paramiko; this deadline is
        # the backstop for a server that sends a banner and then stalls, and
        # leaves paramiko's more precise error the first chance to surface.
        deadline = time.monotonic() + timeout + 1.0
        while not done.wait(0.05):
            if time.monotonic() > deadline:
                raise TimeoutError("SSH handshake timed out")
        if not transport.is_active():
            exc = transport.get_exception()
            raise exc if exc is not None else paramiko.SSHException("negotiation failed")
        return transport
    except BaseException:
        transport.close()
        raise


def _authenticate(transport: paramiko.Transport, settings: HostSettings, spec: ConnSpec) -> None:
    """Offer key files, then agent keys, then a password, as OpenSSH does.

    Raises AuthError naming what was tried (file names and environment
    variable names, never their secret contents).
    """
    user = settings.user
    tried: list[str] = []
    notes: list[str] = []
    publickey_allowed = True

    def attempt(what: str, call: Callable[[], list[str]]) -> bool:
        """Run one auth call; True when fully authenticated."""
        nonlocal publickey_allowed
        tried.append(what)
        try:
            call()
        except paramiko.BadAuthenticationType as exc:
            if what.startswith("key") or what.startswith("agent"):
                publickey_allowed = "publickey" in exc.allowed_types
            else:
                notes.append(f"the server does not accept {what.split()[0]}s")
            return False
        except paramiko.AuthenticationException as exc:
            if "timeout" in str(exc).lower():
                raise
            return False
        return bool(transport.is_authenticated())

    passphrase = _secret(spec.passphrase_env, notes, "key passphrase")
    explicit = settings.identity_files
    candidates = explicit or tuple(
        p for p in (os.path.expanduser(d) for d in DEFAULT_IDENTITIES) if os.path.isfile(p)
    )
    for path in candidates:
        if not publickey_allowed:
            break
        key = _load_key(path, passphrase, spec.passphrase_env, notes)
        if key is not None and attempt(f"key {path}", partial(transport.auth_publickey, user, key)):
            return

    if spec.use_agent and publickey_allowed and not (settings.identities_only and explicit):
        agent = paramiko.Agent()
        try:
            for key in agent.get_keys():
                if not publickey_allowed:
                    break
                if attempt("agent key", partial(transport.auth_publickey, user, key)):
                    return
        finally:
            agent.close()

    if spec.password_env:
        password = _secret(spec.password_env, notes, "password")
        if password is not None and attempt(
            f"password from ${spec.password_env}",
            partial(transport.auth_password, user, password),
        ):
            return
    if transport.is_authenticated():
        return
    extra = f" ({'; '.join(notes)})" if notes else ""
    if not tried:
        raise AuthError(
            f"authentication to {settings.label} failed: no usable credentials{extra}; "
            "configure a key file, ssh-agent or password_env"
        )
    raise AuthError(
        f"authentication to {settings.label} failed: tried {', '.join(dict.fromkeys(tried))}"
        f"{extra}; check the user name, that the public key is in the server's "
        "authorized_keys, and the password"
    )


def _secret(env_name: str | None, notes: list[str], what: str) -> str | None:
    """The value of the environment variable named ``env_name`` (only the name is ever reported)."""
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if value is None:
        notes.append(f"${env_name} for the {what} is not set")
    return value


def _load_key(
    path: str, passphrase: str | None, passphrase_env: str | None, notes: list[str]
) -> paramiko.PKey | None:
    try:
        # paramiko 5 hands the password straight to cryptography, which wants bytes
        return paramiko.PKey.from_path(
            path, passphrase.encode("utf-8") if passphrase is not None else None
        )
    except FileNotFoundError:
        notes.append(f"key file {path} does not exist")
    except PermissionError:
        notes.append(f"key file {path} is not readable")
    except (ValueError, TypeError, paramiko.SSHException, paramiko.UnknownKeyType, OSError):
        # cryptography says "password was not given but key is encrypted" as TypeError
        # and a wrong passphrase as ValueError: tell the two cases apart by what we had.
        if passphrase is None:
            hint = "set passphrase_env" if not passphrase_env else f"${passphrase_env} is not set"
            notes.append(f"key file {path} could not be loaded (encrypted? {hint})")
        else:
            notes.append(
                f"key file {path} could not be loaded with the passphrase from ${passphrase_env}"
            )
    return None
