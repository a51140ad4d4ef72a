"""Open endpoints for Locations, sharing one SSH connection per host within a job."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

from srsync.endpoints.base import Endpoint
from srsync.endpoints.local import LocalEndpoint
from srsync.jobspec import ConnSpec, Location

if TYPE_CHECKING:
    from srsync.ssh.connection import SSHConnection


class EndpointPool:
    """Owns the SSH connections behind the endpoints it opens; close() releases them."""

    def __init__(self) -> None:
        self._conns: dict[ConnSpec, SSHConnection] = {}
        self._endpoints: list[Endpoint] = []
        self._lock = threading.Lock()

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
            from srsync.endpoints.sftp import SFTPEndpoint

            ep = SFTPEndpoint(self.connection(loc.conn), loc.path)
        self._endpoints.append(ep)
        return ep

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
