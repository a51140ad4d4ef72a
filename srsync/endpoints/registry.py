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
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from srsync.errors import ConnectError
from srsync.jobspec import ConnSpec, Location

if TYPE_CHECKING:
    from srsync.agent.client import AgentClient
    from srsync.endpoints.base import Endpoint
    from srsync.ssh.connection import SSHConnection

log = logging.getLogger(__name__)

HELPER_ENV = "SRSYNC_HELPER"
DEFAULT_PYTHON = "python3"
HELPER_CACHE = "helper-python.json"  # in the job's state folder: host label -> interpreter path
# after a helper failed: how long a live connection may take to answer a keepalive
# (at most half the configured timeout)
ANSWER_WAIT = 2.0


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

    ``helper`` overrides ``$SRSYNC_HELPER`` (same values).  prestart() begins a
    connection, and the helper on it, in the background before any endpoint is asked
    for: a one-shot run calls it first, so that the imports and the local scan that
    follow overlap the handshake and the remote interpreter's start.
    """

    def __init__(self, helper: str | None = None, cache_dir: Path | None = None) -> None:
        self._conns: dict[ConnSpec, SSHConnection] = {}
        self._endpoints: list[Endpoint] = []
        self._lock = threading.Lock()
        self._python = helper_python(helper)
        # connections (by id) whose server could not start the helper
        self._no_helper: set[int] = set()
        # where the interpreters that served the helper are remembered (see _start_helper)
        self._cache = None if cache_dir is None else cache_dir / HELPER_CACHE
        self._cache_dir = cache_dir  # (also keeps the helper's program: srsync.agent.load_payload)
        # prestart(): connections still being opened, helpers started ahead (by connection id)
        self._connecting: dict[ConnSpec, Future[SSHConnection]] = {}
        self._spare: dict[int, Future[tuple[AgentClient, str] | None]] = {}
        self._closed = False

    @property
    def helper_enabled(self) -> bool:
        """Whether remote sides are served by the helper where it can start (else SFTP)."""
        return self._python is not None

    def prestart(self, spec: ConnSpec, root: str | None = None) -> None:
        """Start connecting to ``spec`` and the helper on it, in a daemon thread; with
        ``root``, the helper is asked at once to serve that path (the first endpoint
        opened there then takes the answer instead of asking: a round trip less).

        Nothing is reported from here: the endpoint asked for later gets the same
        connection, or raises the same error the connection attempt raised.
        """
        with self._lock:
            if spec in self._conns or spec in self._connecting:
                return
            conn_future: Future[SSHConnection] = Future()
            self._connecting[spec] = conn_future

        def work() -> None:
            try:
                conn = self._connect(spec)
            except BaseException as exc:  # raised again to whoever asks for the endpoint
                conn_future.set_exception(exc)
                return
            helper: Future[tuple[AgentClient, str] | None] = Future()
            with self._lock:
                if not self._closed and self._python is not None:
                    self._spare[id(conn)] = helper
            conn_future.set_result(conn)
            try:
                started = self._start_helper(conn, root)
            except BaseException as exc:
                helper.set_exception(exc)
                return
            with self._lock:
                closed = self._closed  # else the helper is kept, whether or not taken yet
            if started is not None and closed:
                started[0].close()
                started = None
            helper.set_result(started)

        threading.Thread(target=work, name=f"prestart-{spec.host}", daemon=True).start()

    def connection(self, spec: ConnSpec) -> SSHConnection:
        with self._lock:
            conn = self._conns.get(spec)
            if conn is not None and conn.transport_alive():
                return conn
            pending = self._connecting.pop(spec, None)
        if pending is not None:
            return pending.result()  # the prestarted connection, or its error
        return self._connect(spec)

    def _connect(self, spec: ConnSpec) -> SSHConnection:
        from srsync.ssh.connection import connect

        conn = connect(spec)
        with self._lock:
            self._conns[spec] = conn
            closed = self._closed
        if closed:
            conn.close()
        return conn

    def open(self, loc: Location) -> Endpoint:
        if loc.conn is None:
            from srsync.endpoints.local import LocalEndpoint

            ep: Endpoint = LocalEndpoint(loc.path)
        else:
            ep = self._open_remote(self.connection(loc.conn), loc.path)
        self._endpoints.append(ep)
        return ep

    def _open_remote(self, conn: SSHConnection, path: str) -> Endpoint:
        with self._lock:
            spare = self._spare.pop(id(conn), None)
        started = spare.result() if spare is not None else self._start_helper(conn)
        if started is not None:
            from srsync.endpoints.agent import AgentEndpoint

            client, python = started
            return AgentEndpoint(conn, path, python=python, client=client)
        from srsync.endpoints.sftp import SFTPEndpoint

        return SFTPEndpoint(conn, path)

    def _start_helper(self, conn: SSHConnection, root: str | None = None) -> tuple[AgentClient, str] | None:
        """A helper running on ``conn`` (asked to serve ``root``, see ``AgentClient.start``)
        and the python command that runs it; None: use SFTP."""
        if self._python is None or id(conn) in self._no_helper:
            return None
        from srsync.agent import load_payload
        from srsync.agent.client import HelperUnavailable, start_client

        load_payload(self._cache_dir)

        # ``python3`` on a server is often a wrapper (a pyenv shim, a version manager)
        # that costs more than the interpreter's own start: the helper reports the real
        # interpreter, which later runs start directly, falling back to the plain
        # command when it is gone.
        cached = self._cached_python(conn.label) if self._python == DEFAULT_PYTHON else None
        for python in ([cached] if cached else []) + [self._python]:
            try:
                client = start_client(conn.open_command, conn.label, conn.io_timeout, python, conn.near, root)
            except HelperUnavailable as exc:
                if python == cached and exc.not_found:
                    continue  # the remembered interpreter is gone: the plain command next
                # a helper that did not start in time may be a slow server (SFTP next) or
                # a connection gone silent: SFTP would then wait out a second timeout
                if conn.transport_alive() and not conn.answers(min(conn.timeout / 2, ANSWER_WAIT)):
                    raise ConnectError(
                        f"connection to {conn.label} stalled (the helper did not start and the "
                        "server no longer answers); retry later"
                    ) from exc
                with self._lock:
                    self._no_helper.add(id(conn))
                log.info("%s: %s; using SFTP", conn.label, exc)
                return None
            if self._python == DEFAULT_PYTHON:
                real = str(client.info.get("executable") or "")
                if real != (cached or "") and (real.startswith("/") or cached):
                    self._remember_python(conn.label, real if real.startswith("/") else "")
            return client, python
        return None

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
                # a helper started ahead may answer before the run has made its state folder
                self._cache.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
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
            self._closed = True
            conns = list(self._conns.values())
            self._conns.clear()
            spares = list(self._spare.values())
            self._spare.clear()
        for spare in spares:  # helpers started ahead that no endpoint took
            if spare.done() and spare.exception() is None and (started := spare.result()) is not None:
                started[0].close()
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

    def __enter__(self) -> EndpointPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Pools whose connections a one-shot run started before loading the engine (warm_up),
# by (job name, target name), until the runner takes them (take_pool), with the specs
# (and cache folder) each was started for.
_warm: dict[tuple[str, str], EndpointPool] = {}
_warm_for: dict[tuple[str, str], tuple[tuple[ConnSpec, ...], Path | None]] = {}
_warm_lock = threading.Lock()


def warm_up(
    job: str, target: str, cache_dir: Path | None, specs: list[ConnSpec], roots: Mapping[ConnSpec, str] | None = None
) -> None:
    """Begin connecting ``specs`` for ``target`` of ``job`` (see EndpointPool.prestart);
    ``roots``: a path to serve first on each, for the helper to open at once.

    Asked again for the same specs (the entry point's head start, then the command
    itself), the pool already under way is kept.
    """
    if not specs:
        return
    wanted = (tuple(dict.fromkeys(specs)), cache_dir)
    with _warm_lock:
        if _warm_for.get((job, target)) == wanted and (job, target) in _warm:
            return
    pool = EndpointPool(cache_dir=cache_dir)
    for spec in wanted[0]:
        pool.prestart(spec, (roots or {}).get(spec))
    if pool.helper_enabled:
        # have the helper's program ready now, while the handshake waits for the server
        # (with the bytecode: the usual case is a server not far away), and load the
        # endpoint that will drive it: imported when the helper answers, it would
        # stand between that answer and the first request (~20 ms)
        from srsync.agent import load_payload
        from srsync.endpoints import agent  # noqa: F401

        load_payload(cache_dir)
    with _warm_lock:
        old = _warm.pop((job, target), None)
        _warm[(job, target)] = pool
        _warm_for[(job, target)] = wanted
    if old is not None:
        old.close()


def take_pool(job: str, target: str, cache_dir: Path | None) -> EndpointPool:
    """The pool warm_up started for ``target`` of ``job``, else a new one."""
    with _warm_lock:
        pool = _warm.pop((job, target), None)
        _warm_for.pop((job, target), None)
    return pool if pool is not None else EndpointPool(cache_dir=cache_dir)


def drop_warm() -> None:
    """Close the connections of every pool warm_up started and no run took (and any
    TCP connection begun before them and never used: ``srsync.early_tcp``)."""
    from srsync import early_tcp

    early_tcp.close_unused()
    with _warm_lock:
        pools = list(_warm.values())
        _warm.clear()
        _warm_for.clear()
    for pool in pools:
        pool.close()
