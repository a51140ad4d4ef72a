"""Batches of small steps spread over several helper channels (a window-bound link).

Against the real test sshd: the spreading is forced on loopback (it normally
starts at a 5 ms round trip), with small batches so that one call makes many.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_agent import T0, make_tree, sync, tree

import srsync.endpoints.agent as agent_mod
from srsync.agent.client import AgentClient
from srsync.core.entry import Entry, Kind
from srsync.endpoints.agent import AgentEndpoint, _may_overtake
from srsync.endpoints.base import Step, StepKind
from srsync.endpoints.local import LocalEndpoint

AgentFactory = Callable[..., AgentEndpoint]


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[AgentClient, list[list[Any]]]]]:
    """Forces spreading with batches of 8 steps; records each batch call and its helper."""
    monkeypatch.setattr(agent_mod, "PARALLEL_RTT", 0.0)
    monkeypatch.setattr(agent_mod, "SPREAD_RATE", 10**15)  # as many channels as allowed
    monkeypatch.setattr(agent_mod, "SPREAD_AFTER", 0)
    monkeypatch.setattr(agent_mod, "BATCH_STEPS", 8)
    seen: list[tuple[AgentClient, list[list[Any]]]] = []
    real_call = AgentClient.call

    def call(self: AgentClient, op: str, args: list[Any], raw: Any = b"") -> Any:
        if op == "batch":
            seen.append((self, args[0]))
        return real_call(self, op, args, raw)

    monkeypatch.setattr(AgentClient, "call", call)
    yield seen


def _file(size: int, i: int = 0, mode: int = 0o644) -> Entry:
    return Entry(Kind.FILE, size=size, mode=mode, mtime_ns=T0 + i)


def test_channels_for_spreading_follow_the_round_trip(agent_endpoint_factory: AgentFactory, tmp_path: Path) -> None:
    """Enough OpenSSH windows per round trip for SPREAD_RATE: none on a fast link, two at
    20 ms, four (SPREAD_STREAMS) from 42 ms; never more than the endpoint's streams."""
    ep = agent_endpoint_factory(str(tmp_path), streams=6)
    # the round trip measured while the helper's channel opened, on loopback
    assert 0 < ep._client.rtt < agent_mod.PARALLEL_RTT
    counts = {}
    for ms in (0.5, 4, 10, 13, 15, 20, 27, 30, 41, 43, 50, 200):
        ep._client.rtt = ms / 1000
        counts[ms] = ep._spread_streams()
    assert counts == {0.5: 1, 4: 1, 10: 1, 13: 1, 15: 2, 20: 2, 27: 2, 30: 3, 41: 3, 43: 4, 50: 4, 200: 4}
    ep._client.rtt = 0.01
    assert not ep._spreads()
    ep._client.rtt = 0.02
    assert ep._spreads()
    narrow = agent_endpoint_factory(str(tmp_path), streams=2)
    narrow._client.rtt = 0.2
    assert narrow._spread_streams() == 2


def test_many_new_files_announced_start_the_extra_helpers_at_once(
    agent_endpoint_factory: AgentFactory, tmp_path: Path
) -> None:
    """On a window-bound link an announcement of many new files (expect_writes, made
    before planning) starts the extra channels then; a few files, or a fast link, none."""
    ep = agent_endpoint_factory(str(tmp_path), streams=2)
    ep._client.rtt = 0.02  # two channels at 20 ms
    ep.expect_writes(agent_mod.SPREAD_ANNOUNCED - 1)
    fast = agent_endpoint_factory(str(tmp_path), streams=2)
    fast.expect_writes(agent_mod.SPREAD_ANNOUNCED * 10)  # loopback: one channel is enough
    time.sleep(0.3)
    assert ep._extra == [] and not ep._growing and fast._extra == [] and not fast._growing
    ep.expect_writes(agent_mod.SPREAD_ANNOUNCED)
    deadline = time.monotonic() + 10
    while not ep._extra and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(ep._extra) == 1 and ep._extra[0].alive  # before any step was sent
    ep.close()
    assert not ep._extra


def test_may_overtake_only_paths_and_parents_not_touched() -> None:
    touched: set[str] = set()
    assert _may_overtake(touched, "d/a")
    assert _may_overtake(touched, "d/b")
    assert _may_overtake(touched, "top")
    assert not _may_overtake(touched, "d/a")  # the same path again waits
    assert not _may_overtake(touched, "top/x")  # under a path written meanwhile
    assert _may_overtake(touched, "e/a")
    assert touched == {"d/a", "d/b", "top", "e/a"}


def test_small_steps_spread_over_channels_keep_their_order(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, batches: list[tuple[AgentClient, list[list[Any]]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Removes, then mkdirs, then many writes and links, the same path written twice, a
    mkdir and a write into it after the writes, directory mtimes last: every step lands
    as if one after another, results come in order, and several channels carried them."""
    make_tree(tmp_path, {"old/f": b"gone", "taken": b"was here first"})
    ep = agent_endpoint_factory(str(tmp_path), streams=3)
    assert ep._start_extra() is not None and ep._start_extra() is not None
    # as on a window-bound link: the main channel's window reads as closed, so the
    # batches that may go elsewhere do (what sshd's window adjustments would decide)
    main = ep._client
    monkeypatch.setattr(main, "send_room", lambda: 0)
    old_f, old_dir = ep.stat("old/f"), ep.stat("old")
    assert old_f is not None and old_dir is not None
    d_entry = Entry(Kind.DIR, mode=0o755, mtime_ns=T0)
    datas = {f"d{d}/f{i}": os.urandom(100 + i) for d in (1, 2) for i in range(60)}
    steps = [
        Step(StepKind.REMOVE, "old/f", old_f),
        Step(StepKind.REMOVE, "old", old_dir),
        Step(StepKind.MKDIR, "d1", None, d_entry),
        Step(StepKind.MKDIR, "d2", None, d_entry),
    ]
    steps += [Step(StepKind.WRITE, p, None, _file(len(b), i), True, data=b)
              for i, (p, b) in enumerate(datas.items())]
    steps += [
        Step(StepKind.LINK, "d1/ln", None, Entry(Kind.LINK, target="f0"), True),
        Step(StepKind.WRITE, "taken", None, _file(3), True, data=b"new"),  # fails alone
        # the same path again: lands after the first write of it, not before
        Step(StepKind.WRITE, "d1/f0", _file(len(datas["d1/f0"]), 0), _file(6, 99), False, data=b"second"),
        Step(StepKind.MKDIR, "late", None, d_entry),
        Step(StepKind.WRITE, "late/f", None, _file(4, 7), True, data=b"late"),
    ]
    steps += [Step(StepKind.WRITE, f"d2/g{i}", None, _file(5, i), True, data=b"g%04d" % i) for i in range(40)]
    steps += [Step(StepKind.META, d, None, Entry(Kind.DIR, mode=0o750, mtime_ns=T0 + 5))
              for d in ("d1", "d2", "late")]
    results = list(ep.apply_steps(steps))

    assert len(results) == len(steps)
    taken = next(i for i, s in enumerate(steps) if s.path == "taken")
    assert isinstance(results[taken], OSError) and results[taken].errno == 11  # type: ignore[union-attr]
    assert all(r is None for i, r in enumerate(results) if i != taken), results
    assert not (tmp_path / "old").exists()
    assert (tmp_path / "taken").read_bytes() == b"was here first"
    assert (tmp_path / "d1/f0").read_bytes() == b"second"
    assert os.stat(tmp_path / "d1/f0").st_mtime_ns == T0 + 99
    for path, data in datas.items():
        if path != "d1/f0":
            assert (tmp_path / path).read_bytes() == data
    assert all((tmp_path / f"d2/g{i}").read_bytes() == b"g%04d" % i for i in range(40))
    assert os.readlink(tmp_path / "d1/ln") == "f0"
    assert (tmp_path / "late/f").read_bytes() == b"late"
    for d in ("d1", "d2", "late"):  # set after every write into them
        st = os.stat(tmp_path / d)
        assert st.st_mtime_ns == T0 + 5 and st.st_mode & 0o7777 == 0o750
    assert sorted(os.listdir(tmp_path)) == ["d1", "d2", "late", "taken"]
    assert sorted(os.listdir(tmp_path / "d1")) == sorted([f"f{i}" for i in range(60)] + ["ln"])

    helpers = {id(h) for h, _ in batches}
    assert len(helpers) == 3, "the batches went over one channel only"
    # a batch off the main channel holds only puts and symlinks
    for helper, batch in batches:
        if helper is not ep._client:
            # (an int in a batch: that many puts, their arguments in columns)
            assert {"put" if isinstance(item, int) else item[0] for item in batch} <= {"put", "symlink"}, batch


def test_sync_spread_over_channels_matches_the_source(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, batches: list[tuple[AgentClient, list[list[Any]]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A whole push through apply_operations with spreading on: the extra helpers start by
    themselves in the background; a second pass after changes (type changes, removals,
    new files in new directories) converges too."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = {f"a{d}/b{d % 3}/f{i}": os.urandom(50 + i * 7) for d in range(6) for i in range(80)}
    make_tree(src, files)
    for d in range(6):
        os.symlink(f"b{d % 3}/f1", src / f"a{d}/ln")
    dst.mkdir()
    remote = agent_endpoint_factory(str(dst), streams=4)
    outcomes = sync(LocalEndpoint(str(src)), remote)
    assert all(o is None for _, o in outcomes), [x for x in outcomes if x[1] is not None]
    assert tree(dst) == tree(src)
    # the extra helpers were asked for while the first pass ran, and come up by themselves
    assert remote._growing
    deadline = time.monotonic() + 15
    while len(remote._extra) < 3 and not remote._extra_refused and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(remote._extra) == 3

    # dirs become files and files dirs; some go, some come into new directories
    for path in ("a0/b0/f3", "a1/b1/f4"):
        os.unlink(src / path)
        make_tree(src, {f"{path}/inner": b"now a dir"})
    for d in (2, 3):
        for name in os.listdir(src / f"a{d}/b{d % 3}"):
            os.unlink(src / f"a{d}/b{d % 3}" / name)
        os.rmdir(src / f"a{d}/b{d % 3}")
        (src / f"a{d}/b{d % 3}").write_bytes(b"was a dir")
    make_tree(src, {f"new{i}/x/y{j}": os.urandom(30) for i in range(3) for j in range(40)})
    shown = len(batches)
    # every window reads the same: the batches go by bytes unanswered, whatever the
    # timing of sshd's window adjustments
    monkeypatch.setattr(AgentClient, "send_room", lambda self: 1 << 20)
    outcomes = sync(LocalEndpoint(str(src)), remote)
    assert all(o is None for _, o in outcomes), [x for x in outcomes if x[1] is not None]
    assert tree(dst) == tree(src)
    assert len({id(h) for h, _ in batches[shown:]}) > 1
    assert sync(LocalEndpoint(str(src)), remote) == []
