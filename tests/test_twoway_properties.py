"""Property tests of two-way sync: random histories on in-memory endpoints through the real engine.

After every sync: no lost update (every version edited since the last sync
survives at its path or as a conflict copy), the ancestor only ever records
states both sides really hold (or the old one), and after a complete sync
both sides are equal and a second sync plans nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from srsync.core.entry import Kind, Snapshot
from srsync.core.paths import parent
from srsync.core.quiet import snapshot_summaries
from srsync.endpoints.memory import MemoryEndpoint
from srsync.engine.reporter import Reporter
from srsync.engine.session import PairSession, SyncOptions
from srsync.engine.state import StateDB
from srsync.jobspec import ONE2ONE, Location, PairSpec
from srsync.plan import Operation

PATHS = ["a", "b", "d/a", "d/b", "d/e/c", "e"]
TRASH = ".srsync-trash"
EXAMPLES = 500 if os.environ.get("CI") else 100


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs, not even the state save."""


class StopAfter(Reporter):
    """Sets the stop event after k operations (Ctrl-C), or crashes at operation k."""

    def __init__(self, k: int, stop: threading.Event, crash: bool) -> None:
        self.k, self.stop, self.crash, self.seen = k, stop, crash, 0

    def op_started(self, job: str, op: Operation) -> None:
        if self.seen == self.k and self.crash:
            raise Crash
        self.seen += 1

    def op_done(self, job: str, op: Operation) -> None:
        if self.seen >= self.k and not self.crash:
            self.stop.set()


def content_view(ep: MemoryEndpoint) -> dict[str, object]:
    out: dict[str, object] = {}
    for path, e in ep.entries.items():
        if path.split("/")[0] == TRASH:
            continue
        if e.kind is Kind.FILE:
            out[path] = ("file", ep.data[path], e.mode)
        elif e.kind is Kind.LINK:
            out[path] = ("link", e.target)
        else:
            out[path] = ("dir", e.mode)
    return out


class TwoWayHistory(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.state = StateDB(Path(self.tmp.name))
        self.alpha = MemoryEndpoint("alpha")
        self.beta = MemoryEndpoint("beta")
        self.beta.clock_ns += 500_000_000  # the two sides' clocks differ
        self.pair = PairSpec(Location("mem-alpha"), Location("mem-beta"), sync_type=ONE2ONE,
                             max_delete=100.0)
        self.version = 0
        self.synced_once = False

    def teardown(self) -> None:
        self.state.close()
        self.tmp.cleanup()

    # ---- edits ---------------------------------------------------------
    def _side(self, which: bool) -> MemoryEndpoint:
        return self.alpha if which else self.beta

    @rule(which=st.booleans(), path=st.sampled_from(PATHS))
    def write(self, which: bool, path: str) -> None:
        ep = self._side(which)
        for anc in _parents(path):  # a file in the way of the new parent dir is replaced
            e = ep.entries.get(anc)
            if e is not None and not e.is_dir:
                ep.delete_tree(anc)
        if path in ep.entries and ep.entries[path].is_dir:
            ep.delete_tree(path)
        self.version += 1
        ep.put(path, f"v{self.version}".encode())

    @rule(which=st.booleans(), path=st.sampled_from(PATHS + ["d", "d/e"]))
    def delete(self, which: bool, path: str) -> None:
        self._side(which).delete_tree(path)

    @rule(which=st.booleans(), path=st.sampled_from(["a", "e", "d/b"]), dest=st.sampled_from(["x", "sub/y"]))
    def link(self, which: bool, path: str, dest: str) -> None:
        ep = self._side(which)
        if any(not ep.entries[p].is_dir for p in _parents(path) if p in ep.entries):
            return
        if path in ep.entries and ep.entries[path].is_dir:
            ep.delete_tree(path)
        ep.put_link(path, dest)

    @rule(which=st.booleans(), path=st.sampled_from(["d", "d/e", "a"]))
    def chmod(self, which: bool, path: str) -> None:
        ep = self._side(which)
        e = ep.entries.get(path)
        if e is not None and not e.is_link:
            ep.set_meta(path, e.mode ^ 0o040, None)

    # ---- syncs ---------------------------------------------------------
    def _dirty_versions(self) -> set[bytes]:
        """Contents edited on either side since the ancestor: these must never be lost."""
        anc = self.state.load_ancestor(self._key())
        out: set[bytes] = set()
        for ep in (self.alpha, self.beta):
            for path, e in ep.entries.items():
                if e.is_file and path.split("/")[0] != TRASH:
                    o = anc.get(path)
                    if o is None or o.kind is not Kind.FILE or o.size != e.size or o.mtime_ns != e.mtime_ns:
                        out.add(ep.data[path])
        return out

    def _key(self) -> str:
        return PairSession("prop", "t", self.pair, self.alpha, self.beta, Reporter(), self.state,
                           SyncOptions()).pair_key

    def _sync(self, reporter: Reporter | None = None, stop: threading.Event | None = None) -> str:
        session = PairSession("prop", "t", self.pair, self.alpha, self.beta, reporter or Reporter(),
                              self.state, SyncOptions(), stop)
        res = session.run()
        if res.outcome == "halted":
            # a side emptied since the last sync trips the guard, as it should;
            # the user then confirms with --force
            assert not content_view(self.alpha) or not content_view(self.beta), res.error
            session = PairSession("prop", "t", self.pair, self.alpha, self.beta,
                                  reporter or Reporter(), self.state, SyncOptions(force=True), stop)
            res = session.run()
        return res.outcome

    def _all_contents(self) -> set[bytes]:
        """Contents at their paths or as conflict copies (the trash deliberately not counted)."""
        return {ep.data[p] for ep in (self.alpha, self.beta) for p, e in ep.entries.items()
                if e.is_file and p.split("/")[0] != TRASH}

    def _check_after(self, dirty: set[bytes], before_anc: Snapshot) -> None:
        lost = dirty - self._all_contents()
        assert not lost, f"lost updates: {lost}"
        new_anc = self.state.load_ancestor(self._key())
        for path, e in new_anc.items():
            a, b = self.alpha.entries.get(path), self.beta.entries.get(path)
            holds = a is not None and b is not None and _same(a, e) and _same(b, e)
            assert holds or before_anc.get(path) == e, f"ancestor records {path} that is not on both sides"

    def _dry_plan(self, quiet: bool) -> list[tuple[object, ...]]:
        """The plan of a dry run, with or without the ancestor's directory summaries."""
        state = self.state
        if not quiet:
            state = _NoSummaries(state)
        res = PairSession("prop", "t", self.pair, self.alpha, self.beta, Reporter(), state,
                          SyncOptions(dry_run=True, force=True)).run()
        assert res.plan is not None, res.error
        return [
            (o.kind, _unstamped(o.path), o.side, o.expected, o.entry, o.is_update, _unstamped(o.new_path))
            for o in res.plan.operations
        ]

    @rule()
    def sync(self) -> None:
        # quiet directories left out of the scans change nothing in the plan
        assert self._dry_plan(quiet=True) == self._dry_plan(quiet=False)
        dirty, before = self._dirty_versions(), self.state.load_ancestor(self._key())
        outcome = self._sync()
        assert outcome in ("ok", "unchanged"), outcome
        self._check_after(dirty, before)
        assert content_view(self.alpha) == content_view(self.beta), "sides differ after a complete sync"
        again = PairSession("prop", "t", self.pair, self.alpha, self.beta, Reporter(), self.state,
                            SyncOptions(dry_run=True)).run()
        assert again.plan is not None and again.plan.empty, f"second sync plans {again.plan}"
        self.synced_once = True

    @rule(k=st.integers(min_value=0, max_value=6), crash=st.booleans())
    def interrupted_sync(self, k: int, crash: bool) -> None:
        dirty, before = self._dirty_versions(), self.state.load_ancestor(self._key())
        stop = threading.Event()
        with contextlib.suppress(Crash):
            self._sync(StopAfter(k, stop, crash), stop)
        self._check_after(dirty, before)
        for ep in (self.alpha, self.beta):  # never a half-written object at a final name
            for path in ep.entries:
                assert parent(path) == "" or ep.entries[parent(path)].is_dir

    @invariant()
    def summaries_match_the_ancestor(self) -> None:
        if not hasattr(self, "alpha"):
            return
        key = self._key()
        summaries = self.state.ancestor_summaries(key)
        if summaries is not None:
            assert summaries == snapshot_summaries(self.state.load_ancestor(key))

    @invariant()
    def trees_are_valid(self) -> None:
        if not hasattr(self, "alpha"):
            return
        for ep in (self.alpha, self.beta):
            for path in ep.entries:
                par = parent(path)
                assert par == "" or (par in ep.entries and ep.entries[par].is_dir), path


class _NoSummaries:
    """A state database whose ancestors have no directory summaries: full scans."""

    def __init__(self, state: StateDB) -> None:
        self._state = state

    def ancestor_summaries(self, pair: str) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


def _unstamped(path: str | None) -> str | None:
    return None if path is None else re.sub(r"\.conflict-(mirror|target)-[0-9-]+", ".conflict", path)


def _same(a: object, b: object) -> bool:
    from srsync.core.compare import Comparator, Diff

    return Comparator(dir_mtime=False).diff(a, b) is Diff.SAME  # type: ignore[arg-type]


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


TwoWayHistory.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_two_way_histories = TwoWayHistory.TestCase
