"""TCP connections begun before paramiko is even imported.

A one-shot run cannot start its SSH handshake before paramiko is loaded (~80 ms of
imports), but it can open the TCP connection: the server accepts it and starts its
per-connection process (OpenSSH forks and executes a new one for every connection)
while the client imports, instead of after.  ``srsync.ssh.connection`` takes the
socket when it connects to the same address.

Only where the ssh config cannot send the connection elsewhere: a config that has
any keyword that may change the address (HostName, Port, a proxy, an Include or a
Match block, canonicalisation) gets no early connection at all, so no stray
connection ever reaches a host the real one would not.  A connection begun here and
not taken is closed at the end of the run (``close_unused``).
"""

from __future__ import annotations

import socket
import threading
from concurrent.futures import Future

from srsync.background import in_background
from srsync.jobspec import ssh_config_file

# ssh_config keywords that can change where a host's connection goes, or how it gets there
_REROUTING = frozenset({
    "hostname", "port", "proxycommand", "proxyjump", "include", "match",
    "canonicalizehostname", "canonicaldomains",
})

_early: dict[tuple[str, int], Future[socket.socket]] = {}
_lock = threading.Lock()


def config_keeps_address(path: str | None) -> bool:
    """Whether the ssh config at ``path`` (None: ~/.ssh/config if any) leaves every host
    at the name and port the job gives; False when unsure (unreadable, say)."""
    found = ssh_config_file(path)
    if found is None:
        return True
    try:
        with open(found, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # "Keyword value", "Keyword=value" or "Keyword = value"; keywords are case-insensitive
        if line.replace("=", " ", 1).split(None, 1)[0].lower() in _REROUTING:
            return False
    return True


def begin(host: str, port: int | None, timeout: float, ssh_config: str | None) -> None:
    """Start connecting to ``host:port`` (port None: 22) in the background, when the ssh
    config keeps that address; once per address."""
    key = (host, port or 22)
    if not config_keeps_address(ssh_config):
        return
    with _lock:
        if key not in _early:
            _early[key] = in_background(socket.create_connection, key, timeout, name="srsync-tcp")


def take(host: str, port: int) -> socket.socket | None:
    """The connection ``begin`` opened to ``host:port`` (waiting for it), None if it did
    not; its failure (refused, unreachable, timed out) is raised as ``create_connection``
    would have raised it, so the caller reports it alike and does not wait twice."""
    with _lock:
        pending = _early.pop((host, port), None)
    if pending is None:
        return None
    return pending.result()


def close_unused() -> None:
    """Close the connections begun and never taken (now, or as soon as they open)."""
    with _lock:
        left = list(_early.values())
        _early.clear()

    def close(done: Future[socket.socket]) -> None:
        if done.exception() is None:
            done.result().close()

    for pending in left:
        pending.add_done_callback(close)
