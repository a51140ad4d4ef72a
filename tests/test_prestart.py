"""Connections (and their helpers) started ahead of the run: used once, errors kept, never leaked."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import make_tree, tree_state
from sshd import SSHD, free_port

from srsync.core.ignore import IgnoreRules
from srsync.endpoints import registry
from srsync.endpoints.agent import AgentEndpoint
from srsync.endpoints.registry import HELPER_CACHE, EndpointPool, drop_warm, take_pool, warm_up
from srsync.errors import ConnectError, HostKeyError
from srsync.jobspec import Location
from srsync.ssh.connection import connect

REPO = str(Path(__file__).resolve().parent.parent)


def _wait(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_prestarted_connection_and_helper_serve_the_endpoint(sshd: SSHD, tmp_path: Path) -> None:
    make_tree(tmp_path / "root", {"a": b"x", "d/b": b"yy"})
    spec = sshd.conn_spec()
    with EndpointPool(cache_dir=tmp_path) as pool:
        pool.prestart(spec)
        pool.prestart(spec)  # a second call for the same host starts nothing more
        _wait(lambda: any(f.done() for f in pool._spare.values()))
        (spare,) = pool._spare.values()
        started = spare.result()
        assert started is not None
        ep = pool.open(Location(str(tmp_path / "root"), spec))
        assert isinstance(ep, AgentEndpoint)
        assert ep._client is started[0]  # the helper started ahead, not a new one
        assert len(pool._conns) == 1 and not pool._spare
        assert set(ep.scan(IgnoreRules()).entries) == {"a", "d", "d/b"}
        # a second endpoint on the same host shares the connection, with its own helper
        other = pool.open(Location(str(tmp_path / "root" / "d"), spec))
        assert isinstance(other, AgentEndpoint) and other._client is not ep._client
        assert other.connection is ep.connection
        assert set(other.scan(IgnoreRules()).entries) == {"b"}


def test_prestarted_helper_is_asked_for_its_root_at_once(
    sshd: SSHD, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The greeting and the root go with the program: the endpoint on that root asks
    nothing more; one on another root asks for its own, and gets it."""
    from srsync.agent.client import AgentClient

    make_tree(tmp_path / "one", {"a": b"x"})
    make_tree(tmp_path / "two", {"b": b"y"})
    spec = sshd.conn_spec()
    sent: list[tuple[int, str, list[object]]] = []
    real_call = AgentClient.call

    def spy(self: AgentClient, op: str, args: list[object], raw: bytes = b"") -> object:
        sent.append((id(self), op, args))
        return real_call(self, op, args, raw)

    monkeypatch.setattr(AgentClient, "call", spy)
    with EndpointPool() as pool:
        pool.prestart(spec, str(tmp_path / "one"))
        ep = pool.open(Location(str(tmp_path / "one"), spec))
        assert isinstance(ep, AgentEndpoint)
        # sent before the helper answered anything, and not again by the endpoint
        assert [op for _, op, _ in sent] == ["hello", "root"]
        assert ep.root == str(tmp_path / "one")
        assert set(ep.scan(IgnoreRules()).entries) == {"a"}

        sent.clear()
        pool.prestart(spec, str(tmp_path / "one"))  # same host: nothing new
        other = pool.open(Location(str(tmp_path / "two"), spec))
        assert isinstance(other, AgentEndpoint)
        assert [op for _, op, _ in sent if op != "scan"] == ["hello", "root"]
        assert other.root == str(tmp_path / "two")
        assert set(other.scan(IgnoreRules()).entries) == {"b"}

    sent.clear()
    with EndpointPool() as pool:
        # started ahead for one root, opened on another: the endpoint asks for its own,
        # which replaces the first on the helper
        pool.prestart(spec, str(tmp_path / "one"))
        ep = pool.open(Location(str(tmp_path / "two"), spec))
        assert isinstance(ep, AgentEndpoint)
        assert [(op, args) for _, op, args in sent if op == "root"] == [
            ("root", [str(tmp_path / "one")]), ("root", [str(tmp_path / "two")])
        ]
        assert ep.root == str(tmp_path / "two")
        assert set(ep.scan(IgnoreRules()).entries) == {"b"}


def test_endpoint_asked_for_at_once_waits_for_the_prestarted_helper(sshd: SSHD, tmp_path: Path) -> None:
    make_tree(tmp_path / "root", {"a": b"x"})
    spec = sshd.conn_spec()
    with EndpointPool() as pool:
        pool.prestart(spec)
        ep = pool.open(Location(str(tmp_path / "root"), spec))  # while connecting
        assert isinstance(ep, AgentEndpoint)  # the helper, not the SFTP fallback
        assert len(pool._conns) == 1
        assert set(ep.scan(IgnoreRules()).entries) == {"a"}


def test_cli_run_uses_the_helper_started_ahead(sshd: SSHD, tmp_path: Path) -> None:
    """srsync manual to the sshd: the run's remote side is the helper (its interpreter
    gets remembered), not the SFTP fallback."""
    make_tree(tmp_path / "m", {"f": b"1", "d/g": b"22"})
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "global.toml").write_text(
        f'known_hosts = "{sshd.known_hosts}"\nssh_config = "{sshd.ssh_config}"\nuse_agent = false\n'
        f'key = "{sshd.key_path}"\nuser = "{sshd.user}"\nport = {sshd.port}\n')
    env = {**os.environ, "SRSYNC_STATE_DIR": str(tmp_path / "state"),
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "srsync", "manual", "--conf-dir", str(conf), "-H", sshd.host,
         "--remote", "target", "-M", str(tmp_path / "m"), "-T", str(tmp_path / "t")],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert tree_state(tmp_path / "m") == tree_state(tmp_path / "t")
    assert (tmp_path / "state" / HELPER_CACHE).exists()  # written only by a helper start


def test_open_raises_the_error_of_the_prestarted_attempt(sshd: SSHD, tmp_path: Path) -> None:
    closed = sshd.conn_spec(port=free_port(), timeout=3.0)
    with pytest.raises(ConnectError) as direct:
        connect(closed)
    with EndpointPool() as pool:
        pool.prestart(closed)
        with pytest.raises(ConnectError) as ahead:
            pool.open(Location("/tmp", closed))
    assert str(ahead.value) == str(direct.value)
    assert "\n" not in str(ahead.value)


def test_unknown_host_key_is_refused_ahead_too(sshd: SSHD, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    spec = sshd.conn_spec(known_hosts=str(empty))
    with EndpointPool() as pool:
        pool.prestart(spec)
        with pytest.raises(HostKeyError):
            pool.open(Location(str(tmp_path), spec))
    assert empty.read_text() == ""  # strict: nothing learned


def test_closing_while_a_prestart_runs_leaves_nothing_open(sshd: SSHD, tmp_path: Path) -> None:
    spec = sshd.conn_spec()
    pool = EndpointPool()
    pool.prestart(spec)
    pending = pool._connecting[spec]
    pool.close()  # before the handshake has finished
    conn = pending.result(timeout=10)
    _wait(lambda: not conn.transport_alive())
    assert not pool._spare


def test_warm_pool_is_taken_once_and_unclaimed_ones_are_closed(sshd: SSHD, tmp_path: Path) -> None:
    spec = sshd.conn_spec()
    make_tree(tmp_path / "root", {"f": b"1"})
    warm_up("job", "t1", tmp_path, [spec])
    warm_up("job", "t2", tmp_path, [spec, spec])
    warm_up("job", "t3", tmp_path, [])  # nothing remote: no pool
    assert set(registry._warm) == {("job", "t1"), ("job", "t2")}
    unclaimed = registry._warm[("job", "t2")]
    taken = take_pool("job", "t1", tmp_path)
    with taken:
        ep = taken.open(Location(str(tmp_path / "root"), spec))
        assert set(ep.scan(IgnoreRules()).entries) == {"f"}
    fresh = take_pool("job", "t1", tmp_path)  # taken already: a new, empty pool
    assert fresh is not taken and not fresh._connecting
    fresh.close()
    conn = unclaimed._connecting[spec].result(timeout=10)
    drop_warm()
    assert not registry._warm
    _wait(lambda: not conn.transport_alive())
