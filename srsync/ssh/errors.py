"""The one place where paramiko, socket and SFTP exceptions become srsync errors.

Two translations live here:

* ``connect_errors``: while a connection is being set up, every foreign
  failure becomes a one-sentence ``ConnectError`` / ``AuthError`` /
  ``HostKeyError`` naming ``user@host:port`` and what to do.
* ``sftp_errors``: around each SFTP operation, SFTP status codes become the
  builtin ``OSError`` subclasses (``FileNotFoundError``, ``PermissionError``)
  carrying the remote path, exactly as local file operations raise them, and
  a lost or stalled connection becomes ``ConnectError``.

Messages never contain secrets: they are built from labels, paths and
paramiko's own texts, which never echo passwords or passphrases.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import paramiko

from srsync.errors import AuthError, ConnectError, HostKeyError, SrsyncError

__all__ = ["connect_errors", "sftp_errors", "connection_lost", "translate_connect_error"]


def translate_connect_error(exc: BaseException, label: str, timeout: float) -> SrsyncError:
    """The srsync error for a failure while connecting to ``label`` (user@host:port)."""
    where = f"cannot connect to {label}"
    if isinstance(exc, SrsyncError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyError(
            f"{where}: the server's host key does not match the known one; "
            f"remove the old key with `ssh-keygen -R host` if the change is expected"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        if "timeout" in str(exc).lower():
            return ConnectError(
                f"{where}: authentication did not complete within {timeout:g}s; "
                "check the server and the network"
            )
        return AuthError(
            f"authentication to {label} failed; check the user name, key files, "
            "ssh-agent and password settings"
        )
    if isinstance(exc, paramiko.ProxyCommandFailure):
        return ConnectError(f"{where}: the ProxyCommand failed ({exc}); check the ssh config")
    if isinstance(exc, paramiko.ChannelException):
        return ConnectError(f"{where}: the server refused to open a channel ({exc.text})")
    if isinstance(exc, socket.gaierror):
        host = label.rsplit("@", 1)[-1].rsplit(":", 1)[0]
        return ConnectError(f"{where}: host name {host!r} not found; check the host name")
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since 3.10
        return ConnectError(
            f"{where}: no answer within {timeout:g}s; check that the host is up and reachable"
        )
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"{where}: connection refused; check host and port")
    if isinstance(exc, ConnectionError):
        return ConnectError(f"{where}: the connection was closed ({exc}); check host and port")
    if isinstance(exc, EOFError):
        return ConnectError(f"{where}: the server closed the connection; check host and port")
    if isinstance(exc, paramiko.SSHException):
        text = str(exc)
        if text.startswith("Error reading SSH protocol banner"):
            detail = text[len("Error reading SSH protocol banner") :].strip()
            if not detail:  # paramiko appends nothing for a timeout
                return ConnectError(
                    f"{where}: no SSH greeting within {timeout:g}s; "
                    "check that the port is an SSH server"
                )
            return ConnectError(
                f"{where}: the server hung up before the SSH greeting ({detail}); check that "
                "the port is an SSH server and that it accepts connections"
            )
        return ConnectError(f"{where}: SSH negotiation failed ({text}); check host and port")
    if isinstance(exc, OSError):
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return ConnectError(f"{where}: host unreachable; check the network and host name")
        reason = exc.strerror or str(exc) or type(exc).__name__
        return ConnectError(f"{where}: {reason}; check host and port")
    return ConnectError(f"{where}: {type(exc).__name__}: {exc}")


@contextmanager
def connect_errors(label: str, timeout: float) -> Iterator[None]:
    """Translate anything raised while connecting to ``label``; srsync errors pass through."""
    try:
        yield
    except SrsyncError:
        raise
    except Exception as exc:
        raise translate_connect_error(exc, label, timeout) from exc


def connection_lost(label: str, exc: BaseException) -> ConnectError:
    """The error for an SFTP session that broke or stalled mid-operation."""
    if isinstance(exc, TimeoutError):
        return ConnectError(f"connection to {label} stalled (no answer in time); retry later")
    return ConnectError(f"connection to {label} was lost ({type(exc).__name__}: {exc}); retry later")


def _path_error(exc: OSError, path: str) -> OSError:
    """A builtin OSError for an SFTP status; OSError(errno, ...) picks the subclass itself."""
    if exc.errno is not None:
        return OSError(exc.errno, exc.strerror or str(exc), path)
    # SSH_FX_FAILURE and friends carry no errno: keep the server's text and the
    # path in the message (an OSError with a filename but no errno prints badly)
    text = str(exc) or "failure"
    hint = ""
    if text.strip().lower() == "failure":
        # SFTP v3 has no status for these: OpenSSH's sftp-server says just "Failure"
        hint = " (SFTP gives no reason; usually a full disk or an exceeded quota)"
    return OSError(f"the SFTP server reported {text!r} for {path!r}{hint}")


@contextmanager
def sftp_errors(label: str, path: str, alive: Callable[[], bool]) -> Iterator[None]:
    """Translate one SFTP operation's failure on ``path``.

    ``alive`` reports whether the SFTP channel is still usable: an errno-less
    OSError is ambiguous in paramiko (a generic SFTP failure status and
    "Socket is closed" look alike), so the channel's state decides.
    """
    try:
        yield
    except SrsyncError:
        raise
    except (paramiko.SSHException, EOFError, TimeoutError, ConnectionError) as exc:
        raise connection_lost(label, exc) from exc
    except OSError as exc:
        if alive():
            raise _path_error(exc, path) from exc
        raise connection_lost(label, exc) from exc
    except paramiko.SFTPError as exc:
        # a reply that breaks the SFTP protocol: the session cannot be trusted any more
        raise ConnectError(f"SFTP protocol error from {label} ({exc}); retry later") from exc
    except UnicodeDecodeError as exc:
        # paramiko decodes some server strings as strict UTF-8
        raise OSError(errno.EILSEQ, "the server sent a name that is not UTF-8", path) from exc

