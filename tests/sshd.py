"""A throwaway OpenSSH sshd on 127.0.0.1 for integration tests: keys, config, lifecycle."""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from srsync.jobspec import ConnSpec

SSHD_BIN = "/usr/sbin/sshd"
# internal-sftp needs no helper binary; it is what every modern OpenSSH ships.
SFTP_SUBSYSTEM = "internal-sftp"


def find_sshd() -> str | None:
    """Path of an OpenSSH sshd binary, or None when this machine has none."""
    if os.access(SSHD_BIN, os.X_OK):
        return SSHD_BIN
    return shutil.which("sshd")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_ed25519_keypair(private_path: Path, comment: str) -> str:
    """Write an unencrypted OpenSSH ed25519 private key (0600) and .pub; return the pub line."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    line = f"{public} {comment}"
    Path(f"{private_path}.pub").write_text(line + "\n")
    return line


def _descendants(pid: int) -> list[int]:
    """Pids of every live descendant of ``pid`` (Linux /proc), children first."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name may contain spaces and parentheses: parse after the last ")"
        fields = stat[stat.rfind(b")") + 2 :].split()
        parents.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(parents.get(child, []))
    return out


@dataclasses.dataclass
class SSHD:
    """One sshd instance; ``start``/``stop`` may be called repeatedly on the same port."""

    workdir: Path
    sshd_bin: str
    host: str = "127.0.0.1"
    port: int = 0
    user: str = dataclasses.field(default_factory=getpass.getuser)
    pid: int = 0
    # extra sshd_config lines (e.g. "SetEnv PATH=/nowhere" for a host without python3)
    extra_config: tuple[str, ...] = ()
    _proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        self.host_key_path = self.workdir / "ssh_host_ed25519_key"
        self.host_pubkey = write_ed25519_keypair(self.host_key_path, "srsync-test-host")
        self.key_path = str(self.workdir / "id_ed25519")
        self.user_pubkey = write_ed25519_keypair(Path(self.key_path), "srsync-test-user")
        self.authorized_keys = self.workdir / "authorized_keys"
        self.authorized_keys.write_text(self.user_pubkey + "\n")
        keytype, b64 = self.host_pubkey.split()[:2]
        # The form OpenSSH itself writes for a non-standard port.
        self.host_pubkey_line = f"[{self.host}]:{self.port} {keytype} {b64}"
        self.known_hosts = str(self.workdir / "known_hosts")
        Path(self.known_hosts).write_text(self.host_pubkey_line + "\n")
        # An empty ssh_config keeps the developer's ~/.ssh/config out of every test.
        self.ssh_config = str(self.workdir / "ssh_config")
        Path(self.ssh_config).write_text("")
        self.config_path = self.workdir / "sshd_config"
        self.log_path = self.workdir / "sshd.log"
        self.config_path.write_text(self._config_text())

    def _config_text(self) -> str:
        return "\n".join(
            [
                f"Port {self.port}",
                f"ListenAddress {self.host}",
                f"HostKey {self.host_key_path}",
                f"PidFile {self.workdir / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.authorized_keys}",
                "StrictModes no",
                "PermitRootLogin yes",
                "PubkeyAuthentication yes",
                "PasswordAuthentication yes",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "UseDNS no",
                "AllowTcpForwarding yes",
                "X11Forwarding no",
                "PrintMotd no",
                "MaxStartups 200",
                "MaxSessions 10",  # the OpenSSH default, so session limits are realistic
                "LogLevel ERROR",
                f"Subsystem sftp {SFTP_SUBSYSTEM}",
                *self.extra_config,
                "",
            ]
        )

    # ---- lifecycle ------------------------------------------------------
    def start(self, wait: float = 5.0) -> None:
        """Start sshd and wait until it answers with an SSH banner."""
        if self._proc is not None and self._proc.poll() is None:
            return
        if os.geteuid() == 0:
            # privilege separation directory; sshd refuses to start without it
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        try:
            self._proc = subprocess.Popen(
                [self.sshd_bin, "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        self.pid = self._proc.pid
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sshd exited early: {self.log_path.read_text()[-2000:]}")
            if self._banner_ready():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"sshd did not come up within {wait}s: {self.log_path.read_text()[-2000:]}")

    def _banner_ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                return sock.recv(4) == b"SSH-"
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the listener and every session it forked, each by its own pid.

        sshd's per-connection children outlive a terminated listener, so they
        are found through /proc and killed too: a stopped server really drops
        the connections of the tests that want to see that.
        """
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        children = _descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ---- client side ------------------------------------------------------
    def conn_spec(self, **overrides: object) -> ConnSpec:
        """A ConnSpec wired to this server's throwaway key, known_hosts and ssh_config."""
        spec = ConnSpec(
            host=self.host,
            user=self.user,
            port=self.port,
            key_files=(self.key_path,),
            known_hosts=self.known_hosts,
            host_key_policy="strict",
            timeout=5.0,
            keepalive=0,
            ssh_config=self.ssh_config,
            use_agent=False,
        )
        return dataclasses.replace(spec, **overrides)  # type: ignore[arg-type]

    def bare_transport(self, cipher: str) -> paramiko.Transport:
        """An authenticated paramiko transport with only ``cipher`` offered, made without
        srsync's connect() (the caller closes it; the host key is not what it is for)."""
        sock = socket.create_connection((self.host, self.port), timeout=10)
        transport = paramiko.Transport(sock)
        try:
            transport.get_security_options().ciphers = (cipher,)
            transport.connect()
            transport.auth_publickey(self.user, paramiko.Ed25519Key.from_private_key_file(self.key_path))
        except BaseException:
            transport.close()
            raise
        return transport

    def write_file(self, name: str, text: str) -> str:
        """Write a helper file (ssh config, known_hosts variant) into the work dir."""
        path = self.workdir / name
        path.write_text(text)
        return str(path)
