"""The remote helper's interpreter is remembered per host and started directly next time."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import make_tree
from sshd import SSHD

from srsync.core.ignore import IgnoreRules
from srsync.endpoints.agent import AgentEndpoint
from srsync.endpoints.registry import HELPER_CACHE, EndpointPool
from srsync.jobspec import Location


def _open(pool: EndpointPool, loc: Location) -> AgentEndpoint:
    ep = pool.open(loc)
    assert isinstance(ep, AgentEndpoint)
    return ep


def test_interpreter_is_remembered_and_used(sshd: SSHD, tmp_path: Path) -> None:
    make_tree(tmp_path / "root", {"a": b"x"})
    loc = Location(str(tmp_path / "root"), sshd.conn_spec())
    state = tmp_path / "state"
    state.mkdir()
    with EndpointPool(cache_dir=state) as pool:
        first = _open(pool, loc)
        assert first._python == "python3"  # nothing known yet: the plain command
        real = first.helper_info["executable"]
    assert real.startswith("/")
    cache = json.loads((state / HELPER_CACHE).read_text())
    assert list(cache.values()) == [real]
    with EndpointPool(cache_dir=state) as pool:
        second = _open(pool, loc)
        assert second._python == real  # started directly, no wrapper on the way
        assert set(second.scan(IgnoreRules()).entries) == {"a"}


def test_stale_interpreter_falls_back_and_is_replaced(sshd: SSHD, tmp_path: Path) -> None:
    make_tree(tmp_path / "root", {"a": b"x"})
    loc = Location(str(tmp_path / "root"), sshd.conn_spec())
    state = tmp_path / "state"
    state.mkdir()
    with EndpointPool(cache_dir=state) as pool:
        label = pool.connection(sshd.conn_spec()).label
    (state / HELPER_CACHE).write_text(json.dumps({label: "/nonexistent/bin/python3"}))
    with EndpointPool(cache_dir=state) as pool:
        ep = _open(pool, loc)  # the helper still runs: the plain command after the stale one
        assert ep._python == "python3"
        assert set(ep.scan(IgnoreRules()).entries) == {"a"}
    cache = json.loads((state / HELPER_CACHE).read_text())
    assert cache[label] == ep.helper_info["executable"] != "/nonexistent/bin/python3"


def test_without_a_cache_folder_nothing_is_written(sshd: SSHD, tmp_path: Path) -> None:
    loc = Location(str(tmp_path), sshd.conn_spec())
    with EndpointPool() as pool:
        assert _open(pool, loc)._python == "python3"
    assert not list(tmp_path.rglob(HELPER_CACHE))
