"""Open endpoints for Locations, sharing one SSH connection per host within a job.

A remote location is served by the remote helper (AgentEndpoint) when the
host can run it, else by plain SFTP.  Whether it can is probed once per
connection: a host without python3 costs one failed exec, not one per path.
``SRSYNC_HELPER`` chooses: unset or ``auto`` (helper with ``python3``, SFTP
fallback), ``off`` (always SFTP), or the python command to run the helper
with (e.g. ``/opt/python3/bin/python3``), still falling back to SFTP.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import TYPE_CHECKING

from srsync.endpoints.base import Endpoint
from srsync.endpoints.local import LocalEndpoint
from srsync.jobspec import ConnSpec, Location

if TYPE_CHECKING:
    from srsync.ssh.connection import SSHConnection

log = logging.getLogger(__name__)

HELPER_ENV = "SRSYNC_HELPER"
DEFAULT_PYTHON = "python3"


def helper_python(setting: str | None = None) -> str | None:
    """The python command for the remote helper, or None when the helper is switched off."""
    value = (setting if setting is not None else os.environ.get(HELPER_ENV, "")).strip()
    if value.lower() in ("off", "no", "0", "false", "sftp"):
        return None
    if value.lower() in ("", "auto", "on", "yes", "1", "true"):
        return DEFAULT_PYTHON
    return value


class EndpointPool:
    """Owns the SSH connections behind the endpoints it opens; close() releases them.

    ``helper`` overrides ``$SRSYNC_HELPER`` (same values).
    """

    def __init__(self, helper: str | None = None) -> None:
        self._conns: dict[ConnSpec, SSHConnection] = {}
        self._endpoints: list[Endpoint] = []
        self._lock = threading.Lock()
        self._python = helper_python(helper)
        # connections (by id) whose server could not start the helper
        self._no_helper: set[int] = set()

    def connection(self, spec: ConnSpec) -> SSHConnection:
        with self._lock:
            conn = self._conns.get(spec)
            if conn is not None and conn.transport_alive():
                return conn
        from srsync.ssh.connection import connect

        conn = connect(spec)
        with self._lock:
            self._conns[spec] = conn
        return conn

    def open(self, loc: Location) -> Endpoint:
        if loc.conn is None:
            ep: Endpoint = LocalEndpoint(loc.path)
        else:
            ep = self._open_remote(self.connection(loc.conn), loc.path)
        self._endpoints.append(ep)
        return ep

    def _open_remote(self, conn: SSHConnection, path: str) -> Endpoint:
        from srsync.endpoints.sftp import SFTPEndpoint

        if self._python is not None and id(conn) not in self._no_helper:
            from srsync.endpoints.agent import AgentEndpoint, HelperUnavailable

            try:
                return AgentEndpoint(conn, path, python=self._python)
            except HelperUnavailable as exc:
                with self._lock:
                    self._no_helper.add(id(conn))
                log.info("%s: %s; using SFTP", conn.label, exc)
        return SFTPEndpoint(conn, path)

    def close(self) -> None:
        for ep in self._endpoints:
            with contextlib.suppress(Exception):  # closing must never mask the run's outcome
                ep.close()
        self._endpoints.clear()
        with self._lock:
            conns = list(self._conns.values())
            self._conns.clear()
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

    def __enter__(self) -> EndpointPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
