"""The bench's own throwaway OpenSSH sshd on 127.0.0.1: keys, known_hosts, config, lifecycle."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path, comment: str) -> str:
    """An unencrypted ed25519 key pair at ``path``; returns the public key line."""
    path.unlink(missing_ok=True)
    Path(f"{path}.pub").unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return Path(f"{path}.pub").read_text().strip()


def _children(pid: int) -> list[int]:
    """Pids of every live descendant of ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        parents.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(parents.get(child, []))
    return out


class BenchSSHD:
    """One sshd listening on 127.0.0.1 with its own host key, user key and client files.

    ``known_hosts`` lists the host key for every port a client may dial (the sshd
    port and the proxy port), so strict host key checking works through the proxy.
    """

    def __init__(self, workdir: Path, unison_remote_dir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_key = workdir / "ssh_host_ed25519_key"
        self.host_pub = _keygen(self.host_key, "srsync-bench-host")
        self.key = workdir / "id_ed25519"
        self.user_pub = _keygen(self.key, "srsync-bench-user")
        self.authorized_keys = workdir / "authorized_keys"
        self.authorized_keys.write_text(self.user_pub + "\n")
        self.known_hosts = workdir / "known_hosts"
        self.ssh_config = workdir / "ssh_config"
        self.ssh_config.write_text("")  # keeps ~/.ssh/config out of every client
        self.log = workdir / "sshd.log"
        self.config = workdir / "sshd_config"
        self.unison_remote_dir = unison_remote_dir
        self.pid = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self.allow_ports([self.port])

    def allow_ports(self, ports: list[int]) -> None:
        keytype, b64 = self.host_pub.split()[:2]
        lines = [f"[{self.host}]:{p} {keytype} {b64}" for p in ports]
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def _config_text(self) -> str:
        return "\n".join(
            [
                f"Port {self.port}",
                f"ListenAddress {self.host}",
                f"HostKey {self.host_key}",
                f"PidFile {self.workdir / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.authorized_keys}",
                "StrictModes no",
                "PermitRootLogin yes",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "UseDNS no",
                "X11Forwarding no",
                "PrintMotd no",
                "MaxStartups 100",
                "LogLevel ERROR",
                # unison's server side keeps its archive here, not in ~/.unison
                f"SetEnv UNISON={self.unison_remote_dir}",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )

    def start(self, wait: float = 5.0) -> None:
        """Start sshd and wait for its banner."""
        sshd = "/usr/sbin/sshd" if os.access("/usr/sbin/sshd", os.X_OK) else shutil.which("sshd")
        if not sshd:
            raise RuntimeError("no sshd on this machine: apt-get install -y openssh-server")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.unison_remote_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self._config_text())
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.pid = self._proc.pid
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sshd exited early: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 0.5) as s:
                if s.recv(4) == b"SSH-":
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not come up: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop the listener, then any session it forked, each by its own pid."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        children = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)

    def ssh_command(self, port: int) -> list[str]:
        """The OpenSSH client command line rsync/unison use (isolated from ~/.ssh)."""
        return [
            "ssh",
            "-F", str(self.ssh_config),
            "-p", str(port),
            "-i", str(self.key),
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "ControlMaster=no",
        ]

    def srsync_global_toml(self, port: int) -> str:
        """global.toml for srsync pointing at the same key, known_hosts, ssh_config and port."""
        return "\n".join(
            [
                f'known_hosts = "{self.known_hosts}"',
                f'ssh_config = "{self.ssh_config}"',
                "use_agent = false",
                'host_key_policy = "strict"',
                f'key = "{self.key}"',
                f'user = "{self.user}"',
                f"port = {port}",
                "timeout = 30",
                "",
            ]
        )
