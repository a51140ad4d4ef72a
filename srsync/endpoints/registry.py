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
import json
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from srsync.endpoints.base import Endpoint
from srsync.endpoints.local import LocalEndpoint
from srsync.jobspec import ConnSpec, Location

if TYPE_CHECKING:
    from srsync.ssh.connection import SSHConnection

log = logging.getLogger(__name__)

HELPER_ENV = "SRSYNC_HELPER"
DEFAULT_PYTHON = "python3"
HELPER_CACHE = "helper-python.json"  # in the job's state folder: host label -> interpreter path


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

    def __init__(self, helper: str | None = None, cache_dir: Path | None = None) -> None:
        self._conns: dict[ConnSpec, SSHConnection] = {}
        self._endpoints: list[Endpoint] = []
        self._lock = threading.Lock()
        self._python = helper_python(helper)
        # connections (by id) whose server could not start the helper
        self._no_helper: set[int] = set()
        # where the interpreters that served the helper are remembered (see _open_remote)
        self._cache = None if cache_dir is None else cache_dir / HELPER_CACHE

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
        if self._python is not None and id(conn) not in self._no_helper:
            from srsync.endpoints.agent import AgentEndpoint, HelperUnavailable

            # ``python3`` on a server is often a wrapper (a pyenv shim, a version
            # manager) that costs more than the interpreter's own start: the helper
            # reports the real interpreter, which later runs start directly, falling
            # back to the plain command when it is gone.
            cached = self._cached_python(conn.label) if self._python == DEFAULT_PYTHON else None
            for python in ([cached] if cached else []) + [self._python]:
                try:
                    ep = AgentEndpoint(conn, path, python=python)
                except HelperUnavailable as exc:
                    if python == cached and exc.not_found:
                        continue  # the remembered interpreter is gone: the plain command next
                    with self._lock:
                        self._no_helper.add(id(conn))
                    log.info("%s: %s; using SFTP", conn.label, exc)
                    break
                if self._python == DEFAULT_PYTHON:
                    real = str(ep.helper_info.get("executable") or "")
                    if real != (cached or "") and (real.startswith("/") or cached):
                        self._remember_python(conn.label, real if real.startswith("/") else "")
                return ep
        from srsync.endpoints.sftp import SFTPEndpoint

        return SFTPEndpoint(conn, path)

    def _read_cache(self) -> dict[str, str]:
        if self._cache is None:
            return {}
        try:
            data = json.loads(self._cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _cached_python(self, label: str) -> str | None:
        return self._read_cache().get(label) or None

    def _remember_python(self, label: str, python: str) -> None:
        """Record (or with "" forget) the interpreter for ``label``; never fails the run."""
        if self._cache is None:
            return
        with self._lock:
            data = self._read_cache()
            if python:
                data[label] = python
            else:
                data.pop(label, None)
            tmp = self._cache.with_name(f"{self._cache.name}.{os.getpid()}.tmp")
            try:
                tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
                os.replace(tmp, self._cache)
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink()

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
