"""known_hosts: reading (hashed names, [host]:port, patterns, @revoked), checking and accept-new.

Host keys are checked by srsync itself rather than by paramiko's
``SSHClient`` policies, so that the rules are exactly OpenSSH's strict ones:

* a key listed for the host name: accepted;
* a key marked ``@revoked`` for the host: always refused;
* any other key while the host has known keys: refused as *changed*, also
  under ``accept-new`` (never auto-replace);
* a host with no known key: refused, unless the policy is ``accept-new``, in
  which case its key is appended to the file atomically.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field

from srsync.errors import HostKeyError

STRICT = "strict"
ACCEPT_NEW = "accept-new"
DEFAULT_SSH_PORT = 22

# Host key algorithms a transport may negotiate for each key type in known_hosts.
_ALGORITHMS_FOR_KEYTYPE: dict[str, tuple[str, ...]] = {
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"),
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
}

# Serialises accept-new writers inside this process (parallel jobs to one host).
_WRITE_LOCK = threading.Lock()


def host_key_name(host: str, port: int) -> str:
    """The name OpenSSH files a host under: ``host`` on port 22, else ``[host]:port``."""
    return host if port == DEFAULT_SSH_PORT else f"[{host}]:{port}"


def fingerprint_sha256(blob: bytes) -> str:
    """OpenSSH's fingerprint format: ``SHA256:`` + unpadded base64 of the key blob's digest."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def keytype_of_blob(blob: bytes) -> str:
    """The key type string a public key blob starts with (SSH wire format)."""
    if len(blob) < 4:
        return ""
    size = int.from_bytes(blob[:4], "big")
    return blob[4 : 4 + size].decode("ascii", "replace")


@dataclass(frozen=True, slots=True)
class KnownHostLine:
    lineno: int
    marker: str  # "", "@revoked" or "@cert-authority"
    patterns: str  # the comma-separated host field as written
    keytype: str
    blob: bytes

    def matches(self, name: str) -> bool:
        return host_field_matches(self.patterns, name)


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    # Only * and ? are wildcards in known_hosts; "[" is literal ([host]:port).
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body + r"\Z", re.IGNORECASE | re.DOTALL)


def _hashed_matches(entry: str, name: str) -> bool:
    # |1|base64(salt)|base64(HMAC-SHA1(salt, name))
    parts = entry.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt = base64.b64decode(parts[2], validate=True)
        expected = base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        return False
    actual = hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest()
    return hmac.compare_digest(actual, expected)


def host_field_matches(field_text: str, name: str) -> bool:
    """OpenSSH semantics: any negated pattern matching vetoes, else any positive match wins."""
    if field_text.startswith("|"):
        return _hashed_matches(field_text, name)
    lowered = name.lower()
    matched = False
    for pattern in field_text.split(","):
        if not pattern:
            continue
        negated = pattern.startswith("!")
        if negated:
            pattern = pattern[1:]
        if _wildcard_regex(pattern).match(lowered):
            if negated:
                return False
            matched = True
    return matched


def parse_known_hosts(text: str) -> list[KnownHostLine]:
    """Every well-formed key line; malformed lines are ignored as OpenSSH does."""
    out: list[KnownHostLine] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        marker = ""
        if fields[0].startswith("@"):
            marker = fields.pop(0)
            if marker not in ("@revoked", "@cert-authority"):
                continue
        if len(fields) < 3:
            continue
        patterns, keytype, b64 = fields[0], fields[1], fields[2]
        try:
            blob = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            continue
        out.append(KnownHostLine(lineno, marker, patterns, keytype, blob))
    return out


@dataclass(slots=True)
class HostKeyLookup:
    """What a known_hosts file says about one host name."""

    known: list[KnownHostLine] = field(default_factory=list)
    revoked: list[KnownHostLine] = field(default_factory=list)

    @property
    def keytypes(self) -> list[str]:
        seen: list[str] = []
        for line in self.known:
            if line.keytype not in seen:
                seen.append(line.keytype)
        return seen


def default_known_hosts() -> str:
    return os.path.join(os.path.expanduser("~"), ".ssh", "known_hosts")


def read_known_hosts(path: str) -> list[KnownHostLine]:
    """Parse ``path``; a missing file is an empty one."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return parse_known_hosts(fh.read())
    except FileNotFoundError:
        return []


def lookup(path: str, name: str) -> HostKeyLookup:
    result = HostKeyLookup()
    for line in read_known_hosts(path):
        if line.marker == "@cert-authority" or not line.matches(name):
            continue
        (result.revoked if line.marker == "@revoked" else result.known).append(line)
    return result


def preferred_host_key_algorithms(path: str, name: str, available: tuple[str, ...]) -> list[str]:
    """``available`` reordered so algorithms for keys we already know come first.

    This is what OpenSSH does: a server with several host keys presents the
    one we can verify, instead of one we would have to call changed.
    """
    wanted: list[str] = []
    for keytype in lookup(path, name).keytypes:
        for algo in _ALGORITHMS_FOR_KEYTYPE.get(keytype, (keytype,)):
            if algo in available and algo not in wanted:
                wanted.append(algo)
    return wanted + [a for a in available if a not in wanted]


def check_host_key(
    path: str, name: str, blob: bytes, policy: str, label: str, scan_hint: str = "ssh-keyscan"
) -> None:
    """Verify the server key ``blob`` of host ``name`` against ``path``; raise HostKeyError if not OK.

    Under ``accept-new`` an unknown host's key is appended to ``path``.
    """
    keytype = keytype_of_blob(blob)
    fpr = fingerprint_sha256(blob)
    try:
        found = lookup(path, name)
    except OSError as exc:
        raise HostKeyError(
            f"cannot read the known_hosts file {path} ({exc.strerror or exc}); "
            "fix its permissions or point known_hosts elsewhere"
        ) from exc
    if any(line.blob == blob for line in found.revoked):
        raise HostKeyError(
            f"the host key of {label} ({keytype} {fpr}) is marked @revoked in {path}; "
            "refusing to connect, ask the server's admin for its current key"
        )
    if any(line.blob == blob for line in found.known):
        return
    if found.known:
        where = ", ".join(str(line.lineno) for line in found.known)
        raise HostKeyError(
            f"the host key of {label} has CHANGED: it is now {keytype} {fpr}, which does not "
            f"match {path} line {where}, so the host was reinstalled or someone is "
            f"intercepting the connection; if the change is expected, remove the old key with "
            f"`ssh-keygen -R '{name}' -f {path}` and connect again"
        )
    if policy == ACCEPT_NEW:
        try:
            add_known_host(path, name, keytype, blob)
        except OSError as exc:
            raise HostKeyError(
                f"cannot record the new host key of {label} ({keytype} {fpr}) in {path} "
                f"({exc.strerror or exc}); fix its permissions or point known_hosts elsewhere"
            ) from exc
        return
    raise HostKeyError(
        f"the host key of {label} is unknown ({keytype} {fpr} is not in {path}); if that "
        f'fingerprint is right, accept it with `host_key_policy = "accept-new"` or '
        f"`srsync setup`, or add it with `{scan_hint}`"
    )


def add_known_host(path: str, name: str, keytype: str, blob: bytes) -> None:
    """Append ``name keytype key`` to ``path`` atomically, keeping every existing line.

    The new content goes to a temporary file in the same directory which
    then replaces the old file, so a crash never leaves a truncated
    known_hosts; the file's permission bits are kept (0600 for a new one).
    """
    line = f"{name} {keytype} {base64.b64encode(blob).decode('ascii')}\n"
    # a symlinked known_hosts (dotfile managers) stays a symlink: replace its target
    path = os.path.realpath(path)
    directory = os.path.dirname(path)
    with _WRITE_LOCK:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        try:
            with open(path, "rb") as fh:
                old = fh.read()
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            old, mode = b"", 0o600
        if old and not old.endswith(b"\n"):
            old += b"\n"
        fd, tmp = tempfile.mkstemp(prefix=".known_hosts.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(old + line.encode("ascii"))
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
