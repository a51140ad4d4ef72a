"""The one error tree of srsync, with the exit code each error maps to.

Foreign exceptions (paramiko, socket, SFTP status codes) are translated into
these in exactly one place per layer, always ``raise X(...) from exc``.  Every
message is one sentence a user can act on: what, where, what to do.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_HALTED = 4
EXIT_CONFLICTS = 5


class SrsyncError(Exception):
    """Base of every error srsync reports to the user."""

    exit_code = EXIT_FAILURE


class ConfigError(SrsyncError):
    """A config file or command-line value is malformed or inconsistent."""

    exit_code = EXIT_USAGE


class UsageError(SrsyncError):
    """The command line itself is wrong."""

    exit_code = EXIT_USAGE


class ConnectError(SrsyncError):
    """A host could not be reached, or the connection dropped or stalled."""


class AuthError(ConnectError):
    """The server refused every credential we offered."""


class HostKeyError(ConnectError):
    """The server's host key is unknown, changed or revoked."""


class PathError(SrsyncError):
    """A configured root is missing or not usable."""


class SafetyHalt(SrsyncError):
    """A safety guard stopped a run before anything was changed."""

    exit_code = EXIT_HALTED


class LockedError(SrsyncError):
    """Another run of the same job holds the lock."""


class ProtocolError(SrsyncError):
    """A peer sent something that breaks the protocol or the safety rules."""
