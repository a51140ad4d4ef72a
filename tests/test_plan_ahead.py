"""A first one-way run into an empty target plans while this process would wait.

(srsync.engine.session._PlanAhead, srsync.plan.NewTreePlan.)  Over the test sshd: the
plan built from the helper's listing (or a local one) is the one run, and anything that makes the
listing differ from the snapshot the run ends up with (an ignore file, a target
that holds something) makes the run plan as before.  With in-memory endpoints: a
listing that hands out a path the scan then drops, or a scan that fails halfway.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from helpers import make_tree, numbered_tree, remote_job, run, tree_state

from srsync.core.entry import Entry, Kind, ScanResult
from srsync.core.ignore import IgnoreRules
from srsync.core.paths import RelPath
from srsync.endpoints.base import Listed
from srsync.endpoints.memory import MemoryEndpoint
from srsync.engine import session as session_mod
from srsync.engine.reporter import Reporter
from srsync.engine.session import PairSession, SyncOptions
from srsync.errors import ConnectError
from srsync.jobspec import Location, PairSpec
from srsync.plan import NewTreePlan


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRSYNC_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture()
def builders(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(thread name, entries) of every NewTreePlan.add during the test."""
    seen: list[tuple[str, int]] = []
    real = NewTreePlan.add

    def add(self: NewTreePlan, items: Any) -> None:
        items = list(items)
        seen.append((threading.current_thread().name, len(items)))
        real(self, items)

    monkeypatch.setattr(NewTreePlan, "add", add)
    return seen


def _no_plan_ahead_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name == "plan-ahead"]


def _locations(direction: str, sshd: Any, m: Path, t: Path) -> tuple[Location, Location]:
    if direction == "pull":
        return Location(str(m), sshd.conn_spec()), Location(str(t))
    return Location(str(m)), Location(str(t), sshd.conn_spec())


@pytest.mark.parametrize("direction", ["pull", "push"])
def test_first_run_into_empty_target_uses_the_plan_built_ahead(
    direction: str, sshd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, builders: list[tuple[str, int]],
) -> None:
    """Pull: built from the helper's pieces while it lists.  Push: from the whole local
    listing, at once (before the remote target's verdict, if that is still to come)."""
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {**numbered_tree(30, 40), "links/l": "->../d0/f0", "empty": None})

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("reconciled after the scan")

    monkeypatch.setattr(session_mod, "reconcile", refuse)
    monkeypatch.setattr(session_mod, "make_plan", refuse)
    r = run(remote_job(*_locations(direction, sshd, m, t)))
    assert r.exit_code == 0, (r.error, r.pairs)
    assert tree_state(t) == tree_state(m)
    pair = r.pairs[0]
    assert pair.applied.created == len(tree_state(m))
    assert pair.plan is not None and pair.plan.stats.created == pair.applied.created
    # every entry went in from the planning thread (pulling, in the pieces the helper sent)
    assert builders and {name for name, _ in builders} == {"plan-ahead"}
    assert direction == "pull" or len(builders) == 1
    assert sum(n for _, n in builders) == len(tree_state(m))
    assert _no_plan_ahead_threads()


def test_ignore_file_in_the_mirror_makes_the_run_plan_its_filtered_snapshot(
    sshd: Any, tmp_path: Path, builders: list[tuple[str, int]],
) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {**numbered_tree(3, 5), "d1/.srsyncignore": b"f1\nf2\n", "keep.txt": b"k"})
    r = run(remote_job(Location(str(m), sshd.conn_spec()), Location(str(t))))
    assert r.exit_code == 0, (r.error, r.pairs)
    assert sorted(p.name for p in (t / "d1").iterdir()) == [".srsyncignore", "f0", "f3", "f4"]
    assert (t / "d2" / "f1").exists() and (t / "keep.txt").read_bytes() == b"k"
    # the pieces listed ahead held the ignored files: the plan was made again, here
    assert "MainThread" in {name for name, _ in builders}


@pytest.mark.parametrize("direction", ["pull", "push"])
def test_target_holding_anything_plans_as_before(
    direction: str, sshd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, builders: list[tuple[str, int]],
) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, numbered_tree(4, 5))
    make_tree(t, {"d0/f0": b"old content", "stray": b"goes"})
    calls: list[int] = []
    real = session_mod.reconcile

    def counted(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(session_mod, "reconcile", counted)
    r = run(remote_job(*_locations(direction, sshd, m, t), max_delete=100.0))
    assert r.exit_code == 0, (r.error, r.pairs)
    assert tree_state(t) == tree_state(m)
    assert calls == [1]
    # pushing, the local listing may have been built before the target's verdict: unused
    assert direction == "push" or builders == []
    assert _no_plan_ahead_threads()


class _Listing(MemoryEndpoint):
    """An in-memory mirror that hands out its listing as a remote helper does; ``phantom``:
    a path it hands out and then drops (found gone); ``fail``: raise after handing out."""

    lists_ahead = True

    def __init__(self, phantom: RelPath | None = None, fail: bool = False) -> None:
        super().__init__("listing")
        self.phantom = phantom
        self.fail = fail

    def scan(
        self, rules: IgnoreRules, expect: Mapping[RelPath, str] | None = None, listed: Listed | None = None
    ) -> ScanResult:
        res = super().scan(rules, expect)
        if listed is not None:
            items = list(res.entries.items())
            if self.phantom is not None:
                items.append((self.phantom, Entry(Kind.FILE, 1, 10**18, 0o644)))
            listed(items[: len(items) // 2])
            listed(items[len(items) // 2 :])
        if self.fail:
            raise ConnectError("connection to listing lost")
        return res


def _mirror(ep: MemoryEndpoint) -> MemoryEndpoint:
    ep.put_dir("d")
    for i in range(6):
        ep.put(f"d/f{i}", b"x" * i)
    ep.put("top", b"top")
    return ep


def test_a_path_listed_ahead_and_then_dropped_is_not_planned(builders: list[tuple[str, int]]) -> None:
    alpha, beta = _mirror(_Listing(phantom="d/gone-since")), MemoryEndpoint("b")
    pair = PairSpec(Location("a"), Location("b"))
    res = PairSession("j", "t", pair, alpha, beta, Reporter(), None, SyncOptions()).run()
    assert res.outcome == "ok", res.error
    assert res.plan is not None and "d/gone-since" not in {op.path for op in res.plan.operations}
    assert set(beta.entries) == set(alpha.entries)
    assert {name for name, _ in builders} == {"plan-ahead", "MainThread"}
    assert _no_plan_ahead_threads()


def test_a_scan_that_fails_after_listing_ends_the_planning_thread() -> None:
    alpha, beta = _mirror(_Listing(fail=True)), MemoryEndpoint("b")
    pair = PairSpec(Location("a"), Location("b"))
    res = PairSession("j", "t", pair, alpha, beta, Reporter(), None, SyncOptions()).run()
    assert res.outcome == "failed" and "lost" in res.error
    assert beta.entries == {}
    assert _no_plan_ahead_threads()


def test_two_way_and_later_runs_never_plan_ahead(builders: list[tuple[str, int]]) -> None:
    alpha, beta = _mirror(_Listing()), MemoryEndpoint("b")
    pair = PairSpec(Location("a"), Location("b"), sync_type="One2One")
    res = PairSession("j", "t", pair, alpha, beta, Reporter(), None, SyncOptions()).run()
    assert res.outcome == "ok", res.error
    assert set(beta.entries) == set(alpha.entries)
    assert builders == []
