"""Parsing location strings (local path, ``[user@]host:path``, ``sftp://...``) into Locations.

Rules, shared by config files and the command line:

* ``sftp://[user@]host[:port]/path``: the path is absolute; ``sftp://host/~/x`` (and
  ``sftp://host/~``) are relative to the login (home) directory; ``sftp://host`` is the
  login directory itself.  The path is percent-decoded.
* ``[user@]host:path`` (scp style): only when the part before the first ``:`` contains no
  ``/`` and no whitespace, so ``./a:b`` and ``/x/y:z`` are local paths.  ``[::1]:path``
  writes an IPv6 address.  ``host:`` is the login directory; ``host:~/x`` is ``x``.
* anything else is a local path: ``~`` is expanded and a relative path is resolved against
  ``base_dir`` (for a config file, the directory containing the file; on the command line,
  the current directory), then normalised to an absolute path.  Symlinks are not resolved.
* remote paths are kept as written apart from the ``~`` forms above: a relative remote
  path is relative to the login directory, because SFTP servers do not expand ``~``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from urllib.parse import quote, unquote

from srsync.errors import ConfigError
from srsync.jobspec import ConnSpec, Location

SFTP_PREFIX = "sftp://"

# user: no "@", "/", ":"; host: a bracketed IPv6 address or a name without "/", ":", "@",
# brackets or whitespace.  A "/" before the first ":" therefore always means a local path.
_SCP = re.compile(
    r"(?:(?P<user>[^@/:\s]+)@)?(?P<host>\[[^\]/\s]+\]|[^@/:\[\]\s]+):(?P<path>.*)\Z", re.S
)


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteParts:
    """The pieces of a remote location string, before any defaults are applied."""

    host: str
    path: str
    user: str | None = None
    port: int | None = None


def is_full_location(text: str) -> bool:
    """Whether ``text`` names a host itself (``host:path`` or ``sftp://...``)."""
    return text[: len(SFTP_PREFIX)].lower() == SFTP_PREFIX or _SCP.match(text) is not None


def remote_path(text: str) -> str:
    """A remote path as used over SFTP: ``~`` forms become login-relative, empty is ``.``."""
    if text in ("", "~", "~/"):
        return "."
    if text.startswith("~/"):
        return text[2:]
    return text


def local_path(text: str, base_dir: Path) -> str:
    """An absolute, normalised local path; relative paths are taken from ``base_dir``."""
    if not text:
        raise ConfigError("the path is empty")
    expanded = os.path.expanduser(text)
    return os.path.abspath(os.path.join(base_dir, expanded))


def split_remote(text: str) -> RemoteParts | None:
    """The host, user, port and path of a full location; None for a local path."""
    if text[: len(SFTP_PREFIX)].lower() == SFTP_PREFIX:
        return _split_url(text)
    match = _SCP.match(text)
    if match is None:
        return None
    return RemoteParts(
        host=_unbracket(match["host"]), path=remote_path(match["path"]), user=match["user"]
    )


def _split_url(text: str) -> RemoteParts:
    rest = text[len(SFTP_PREFIX) :]
    netloc, slash, path = rest.partition("/")
    user: str | None = None
    if "@" in netloc:
        raw_user, _, netloc = netloc.rpartition("@")
        user = unquote(raw_user)
        if not user:
            raise ConfigError(f"{text!r}: the user name before '@' is empty")
    port: int | None = None
    if netloc.startswith("["):  # [IPv6]:port
        end = netloc.find("]")
        if end < 0:
            raise ConfigError(f"{text!r}: unclosed '[' in the host")
        host, after = netloc[1:end], netloc[end + 1 :]
        if after and not after.startswith(":"):
            raise ConfigError(f"{text!r}: unexpected text after ']'")
        port_text = after[1:] if after else None
    else:
        host, colon, port_text_raw = netloc.partition(":")
        port_text = port_text_raw if colon else None
    if not host:
        raise ConfigError(f"{text!r}: an sftp:// location needs a host")
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ConfigError(f"{text!r}: the port must be a number from 1 to 65535")
        port = int(port_text)
    decoded = unquote(path)
    if not slash:
        resolved = "."
    elif decoded == "~" or decoded.startswith("~/"):
        resolved = remote_path(decoded)
    else:
        resolved = "/" + decoded
    return RemoteParts(host=host, path=resolved, user=user, port=port)


def _unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def conn_for(parts: RemoteParts, default_conn: ConnSpec | None) -> ConnSpec:
    """A ConnSpec for ``parts.host`` with every setting of ``default_conn`` (its host is
    ignored), overridden by a user or port written in the location itself."""
    if default_conn is None:
        return ConnSpec(host=parts.host, user=parts.user, port=parts.port)
    return dataclasses.replace(
        default_conn,
        host=parts.host,
        user=parts.user if parts.user is not None else default_conn.user,
        port=parts.port if parts.port is not None else default_conn.port,
    )


def parse_location(text: str, default_conn: ConnSpec | None, base_dir: Path) -> Location:
    """Parse a local path, ``[user@]host:path`` or ``sftp://[user@]host[:port]/path``.

    A remote location inherits every connection setting of ``default_conn`` (key files,
    known_hosts, host key policy, timeout, ...; its host is ignored), with the user and port
    written in ``text`` taking precedence.  Relative local paths resolve against
    ``base_dir``.  Raises ConfigError for an empty or malformed location.
    """
    if not text:
        raise ConfigError("the location is empty")
    parts = split_remote(text)
    if parts is None:
        return Location(local_path(text, base_dir))
    return Location(parts.path, conn_for(parts, default_conn))


def format_location(loc: Location) -> str:
    """The location string that parses back to ``loc``'s host, user, port and path.

    Connection settings other than host, user and port cannot be written in a location;
    they come from the ``default_conn`` given to :func:`parse_location`.
    """
    conn = loc.conn
    if conn is None:
        return loc.path
    host = f"[{conn.host}]" if ":" in conn.host else conn.host
    user = f"{conn.user}@" if conn.user else ""
    # The scp form cannot carry a port, and a user with ":" or "@" does not survive it.
    if conn.port is None and not (conn.user and re.search(r"[@/:\s]", conn.user)):
        path = loc.path
        return f"{user}{host}:{path}"
    if loc.path == ".":
        url_path = "/~"
    elif loc.path.startswith("/"):
        url_path = quote(loc.path, safe="/")
    else:
        url_path = "/~/" + quote(loc.path, safe="/")
    port = f":{conn.port}" if conn.port is not None else ""
    user = f"{quote(conn.user, safe='')}@" if conn.user else ""
    return f"{SFTP_PREFIX}{user}{host}{port}{url_path}"
