"""A hostile SFTP server (in-process paramiko: no real server sends these) must not get us
to write outside the root, follow escaping links or crash.

This is the one test double in the suite, for names a real OpenSSH server cannot produce.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paramiko
import pytest
import reliability_report as report
from helpers import remote_job, run, tree_state

from srsync.jobspec import ConnSpec, Location

NOW = int(time.time()) - 100

# what the server claims: directory -> [(name, kind, payload)]
HOSTILE: dict[str, list[tuple[str, str, str]]] = {
    "/root": [
        ("good.txt", "file", "good"),
        ("../evil", "file", "escaped one level"),
        ("../../canary/pwned", "file", "escaped into the canary"),
        ("a/b", "file", "slash in a name"),
        ("/abs", "file", "absolute"),
        ("", "file", "empty name"),
        ("..", "dir", ""),
        (".", "dir", ""),
        ("nul\x00byte", "file", "nul"),
        ("link-out", "link", "/etc/passwd"),
        ("link-up", "link", "../../canary"),
        ("sub", "dir", ""),
    ],
    "/root/sub": [("ok", "file", "fine"), ("..", "dir", ""), ("../../x", "file", "climb")],
}


def _attrs(name: str, kind: str, payload: str) -> paramiko.SFTPAttributes:
    a = paramiko.SFTPAttributes()
    a.filename = name
    a.st_size = len(payload.encode())
    a.st_mtime = a.st_atime = NOW
    a.st_uid = a.st_gid = 0
    a.st_mode = {"file": stat.S_IFREG | 0o644, "dir": stat.S_IFDIR | 0o755, "link": stat.S_IFLNK | 0o777}[kind]
    return a


def _lookup(path: str) -> tuple[str, str] | None:
    if path in HOSTILE or path == "/root":
        return ("dir", "")
    parent, _, name = path.rpartition("/")
    for n, kind, payload in HOSTILE.get(parent, []):
        if n == name:
            return (kind, payload)
    return None


class _Handle(paramiko.SFTPHandle):
    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]

    def stat(self) -> paramiko.SFTPAttributes:
        return _attrs("", "file", self.data.decode())


class HostileSFTP(paramiko.SFTPServerInterface):
    def canonicalize(self, path: str) -> str:
        return "/root" if path in (".", "", "/root") else path

    def list_folder(self, path: str) -> Any:
        if path not in HOSTILE:
            return paramiko.SFTPServer.convert_errno(2)
        return [_attrs(*e) for e in HOSTILE[path]]

    def lstat(self, path: str) -> Any:
        found = _lookup(path)
        if found is None:
            return paramiko.SFTPServer.convert_errno(2)
        return _attrs(path.rsplit("/", 1)[-1], found[0], found[1])

    stat = lstat

    def readlink(self, path: str) -> Any:
        found = _lookup(path)
        if found is None or found[0] != "link":
            return paramiko.SFTPServer.convert_errno(22)
        return found[1]

    def open(self, path: str, flags: int, attr: Any) -> Any:
        found = _lookup(path)
        if found is None or found[0] != "file":
            return paramiko.SFTPServer.convert_errno(2)
        return _Handle(found[1].encode())


class _Server(paramiko.ServerInterface):
    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: Any, command: bytes) -> bool:
        return False  # no remote helper here: plain SFTP only


@pytest.fixture
def hostile_server(tmp_path: Path) -> Any:
    host_key = paramiko.Ed25519Key.from_private_key_file(str(_keygen(tmp_path / "host")))
    user_key = _keygen(tmp_path / "user")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)
    port = sock.getsockname()[1]
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key.get_name()} {host_key.get_base64()}\n")
    (tmp_path / "ssh_config").write_text("")
    stop = threading.Event()
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            t = paramiko.Transport(conn)
            t.add_server_key(host_key)
            t.set_subsystem_handler("sftp", paramiko.SFTPServer, HostileSFTP)
            t.start_server(server=_Server())
            transports.append(t)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    spec = ConnSpec(host="127.0.0.1", port=port, user="evil", key_files=(str(user_key),),
                    known_hosts=str(tmp_path / "known_hosts"), ssh_config=str(tmp_path / "ssh_config"),
                    use_agent=False, timeout=5.0)
    yield spec
    stop.set()
    thread.join(5)
    for t in transports:
        t.close()
    sock.close()


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def test_hostile_names_never_escape_the_root(hostile_server: ConnSpec, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRSYNC_STATE_DIR", str(tmp_path / "state"))
    work = tmp_path / "work"
    target = work / "deep" / "target"
    canary = work / "canary"
    canary.mkdir(parents=True)
    (canary / "keep").write_bytes(b"canary")
    before_work = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    before_canary = tree_state(canary)

    r = run(remote_job(Location("/root", hostile_server), Location(str(target)), max_delete=100.0))
    assert r.exit_code == 3, (r.error, r.pairs)  # partial: bad names reported, the rest synced
    assert tree_state(canary) == before_canary
    after = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    outside = [a for a in set(after) - set(before_work) if not a.startswith("deep")]
    report.add("outside_writes", len(outside))
    report.add("hostile_names", sum(1 for entries in HOSTILE.values() for n, kind, _ in entries
                                    if kind == "link" or n in ("", ".", "..") or "/" in n or "\x00" in n))
    assert set(after) - set(before_work) == {"deep", "deep/target", "deep/target/good.txt",
                                            "deep/target/sub", "deep/target/sub/ok"}
    assert (target / "good.txt").read_bytes() == b"good"
    assert not os.path.lexists(target / "link-out") and not os.path.lexists(target / "link-up")
    messages = " | ".join(f"{p.path}: {p.message}" for p in r.pairs[0].problems)
    for bad in ("link-out", "link-up", "not allowed"):
        assert bad in messages, messages



def test_a_refused_helper_is_told_from_its_answer(hostile_server: ConnSpec, tmp_path: Path) -> None:
    # A server that turns the exec request down: the client says so (and the
    # registry then uses SFTP on that connection), the connection stays usable.
    from srsync.agent.client import HelperUnavailable, start_client
    from srsync.ssh.connection import connect

    conn = connect(hostile_server)
    try:
        with pytest.raises(HelperUnavailable, match="refused to run the helper") as caught:
            start_client(conn.open_command, conn.label, conn.io_timeout, "python3")
        assert not caught.value.not_found
        # the connection is fine: SFTP serves the root
        assert conn.transport_alive()
        assert "good.txt" in [name for name, _ in conn.open_sftp().listdir("/root")]
    finally:
        conn.close()
