"""Quiet directories in one-way runs: a directory whose files and links both sides still
summarise as the mirror's did at the last run is left out of both scans; one quiet on one
side only is listed again there, so every change on either side is still seen."""

from __future__ import annotations

import copy
import os
import sqlite3
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    check_delete_guard,
    local_job,
    make_tree,
    numbered_tree,
    remote_job,
    run,
    tree_state,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from srsync.core.entry import ScanResult
from srsync.core.ignore import IgnoreRules
from srsync.endpoints.agent import AgentEndpoint
from srsync.endpoints.local import LocalEndpoint
from srsync.endpoints.memory import MemoryEndpoint
from srsync.engine.reporter import Reporter
from srsync.engine.runner import JobResult
from srsync.engine.session import PairSession, SyncOptions
from srsync.engine.state import StateDB
from srsync.jobspec import Location, PairSpec


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRSYNC_STATE_DIR", str(tmp_path / "state"))


class Seen:
    """The real scans and relists of the last run, by the root's last name."""

    def __init__(self) -> None:
        self.scans: dict[str, ScanResult] = {}
        self.relists: dict[str, set[str]] = {}

    def quiet(self, root: str) -> set[str]:
        return set(self.scans[root].quiet)


@pytest.fixture()
def seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[Seen]:
    spy = Seen()
    for cls in (LocalEndpoint, AgentEndpoint):
        real_scan, real_relist = cls.scan, cls.relist

        def scan(
            self: Any, rules: IgnoreRules, expect: Any = None, listed: Any = None, _real: Any = real_scan
        ) -> ScanResult:
            res: ScanResult = _real(self, rules, expect, listed)
            spy.scans[os.path.basename(self.root if isinstance(self, LocalEndpoint) else self.description)] = res
            return res

        def relist(self: Any, rules: IgnoreRules, dirs: Iterable[str], _real: Any = real_relist) -> ScanResult:
            dirs = list(dirs)
            name = os.path.basename(self.root if isinstance(self, LocalEndpoint) else self.description)
            spy.relists.setdefault(name, set()).update(dirs)
            res: ScanResult = _real(self, rules, dirs)
            return res

        monkeypatch.setattr(cls, "scan", scan)
        monkeypatch.setattr(cls, "relist", relist)
    yield spy


def _again(seen: Seen) -> None:
    seen.scans.clear()
    seen.relists.clear()


ALL = {"", *(f"d{i}" for i in range(8))}


def test_unchanged_directories_are_left_out_and_every_change_is_still_seen(tmp_path: Path, seen: Seen) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, numbered_tree(8, 5))
    job = local_job(m, t)
    assert run(job).exit_code == 0
    assert tree_state(m) == tree_state(t)
    assert seen.quiet("m") == seen.quiet("t") == set()  # nothing stored yet

    _again(seen)
    second = run(job)
    assert second.pairs[0].outcome == "unchanged"
    assert seen.quiet("m") == seen.quiet("t") == ALL
    assert set(seen.scans["t"].entries) == {f"d{i}" for i in range(8)}  # only the directories
    assert seen.relists == {}

    (m / "d1/f1").write_bytes(b"edited on the mirror")
    (t / "d2/f0").unlink()
    (t / "d3/extra").write_bytes(b"only on the target")
    (t / "d4/f3").write_bytes(b"changed on the target")
    os.chmod(m / "d5/f0", 0o600)
    (m / "d6/new").write_bytes(b"new on the mirror")
    _again(seen)
    third = run(job)
    assert third.exit_code == 0, third.pairs[0].error
    assert tree_state(m) == tree_state(t)
    assert (t / "d1/f1").read_bytes() == b"edited on the mirror"
    assert (t / "d2/f0").read_bytes() == b"2.0"
    assert not (t / "d3/extra").exists()
    assert (t / "d4/f3").read_bytes() == b"4.3"
    # each directory changed on one side was listed again on the other, and only those
    assert seen.relists == {"m": {"d2", "d3", "d4"}, "t": {"d1", "d5", "d6"}}
    applied = third.pairs[0].applied
    # (meta: d5/f0 and the mtimes of d2, d3 and d6)
    assert (applied.created, applied.updated, applied.deleted, applied.meta) == (2, 2, 1, 4)

    _again(seen)
    fourth = run(job)
    assert fourth.pairs[0].outcome == "unchanged"
    assert seen.quiet("m") == seen.quiet("t") == ALL


def test_guards_count_the_files_of_quiet_directories(tmp_path: Path, seen: Seen) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {"a": b"1", "b": b"2"})
    job = local_job(m, t)
    assert run(job).exit_code == 0
    (t / "extra").mkdir()
    _again(seen)
    r = run(job)  # the mirror lists nothing (its root is quiet): not an empty mirror
    assert r.exit_code == 0, r.pairs[0].error
    assert seen.quiet("m") == {""} and not seen.scans["m"].entries
    assert not (t / "extra").exists() and (t / "a").exists()

    m2, t2 = tmp_path / "m2", tmp_path / "t2"
    make_tree(m2, numbered_tree(10, 10))
    _again(seen)

    def only_d4(first: JobResult) -> None:
        assert first.pairs[0].applied.deleted == 10
        assert seen.relists == {"t2": {"d4"}}  # (the mirror's d4 changed: the rest stayed quiet)

    check_delete_guard(m2, t2, local_job(m2, t2, max_delete=20.0), only_d4)


def test_a_directory_with_a_problem_is_listed_and_reported_every_run(tmp_path: Path, seen: Seen) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {**numbered_tree(3, 2), "d1/out": "->../../elsewhere"})
    job = local_job(m, t)
    for _ in range(2):
        _again(seen)
        r = run(job)
        assert [p.path for p in r.pairs[0].problems] == ["d1/out"]
    assert "d1" not in seen.quiet("m") and {"", "d0", "d2"} <= seen.quiet("m")
    assert not (t / "d1/out").exists()


def test_checksum_pairs_store_and_skip_nothing(tmp_path: Path, seen: Seen) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, numbered_tree(3, 2))
    job = local_job(m, t, checksum=True)
    assert run(job).exit_code == 0
    _again(seen)
    assert run(job).pairs[0].outcome == "unchanged"
    assert seen.quiet("m") == seen.quiet("t") == set()
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        assert db.execute("SELECT COUNT(*) FROM mirror_dirs").fetchone()[0] == 0


def _remote(sshd: Any, direction: str, m: Path, t: Path) -> tuple[Location, Location]:
    conn = sshd.conn_spec()
    if direction == "push":
        return Location(str(m)), Location(str(t), conn)
    return Location(str(m), conn), Location(str(t))


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_over_the_remote_helper(direction: str, sshd: Any, tmp_path: Path, seen: Seen) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    nfd = unicodedata.normalize("NFD", "café")  # listed as NFC, on disk as NFD
    make_tree(m, {**numbered_tree(8, 5), f"{nfd}/f0": b"c0", f"{nfd}/f1": b"c1"})
    job = remote_job(*_remote(sshd, direction, m, t))
    assert run(job).exit_code == 0
    _again(seen)
    assert run(job).pairs[0].outcome == "unchanged"
    assert seen.quiet("m") == seen.quiet("t") == ALL | {"café"}

    (m / "d1/f1").write_bytes(b"edited on the mirror")
    (t / "d2/f0").unlink()
    (t / "d3/extra").write_bytes(b"only on the target")
    (t / "café/f1").write_bytes(b"changed on the target")  # (written as NFC)
    _again(seen)
    r = run(job)
    assert r.exit_code == 0, (r.pairs[0].error, r.pairs[0].problems)
    assert seen.relists == {"m": {"d2", "d3", "café"}, "t": {"d1"}}
    assert (t / "d1/f1").read_bytes() == b"edited on the mirror"
    assert (t / "d2/f0").read_bytes() == b"2.0"
    assert not (t / "d3/extra").exists()
    assert (t / "café/f1").read_bytes() == b"c1"

    _again(seen)
    assert run(job).pairs[0].outcome == "unchanged"
    assert seen.quiet("m") == seen.quiet("t") == ALL | {"café"}


@pytest.mark.parametrize("where", ["local", "push", "pull"])
def test_a_quiet_directory_of_files_still_brings_its_ignore_file_and_its_changes(
    where: str, sshd: Any, tmp_path: Path, seen: Seen
) -> None:
    # leaf directories of plain files take the scans' fast path (srsync.core.summary.summarize_files)
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {"d/.srsyncignore": b"*.o\n", "d/a": b"a", "e/f": b"f", "e/g": b"g"})
    job = local_job(m, t) if where == "local" else remote_job(*_remote(sshd, where, m, t))
    assert run(job).exit_code == 0
    _again(seen)
    assert run(job).pairs[0].outcome == "unchanged"
    assert seen.quiet("m") == seen.quiet("t") == {"", "d", "e"}
    for side in ("m", "t"):
        assert seen.scans[side].ignore_files == {"d": "*.o\n"}  # read although the directory is quiet

    os.chmod(m / "e/f", 0o4755)  # only the mode, in a files-only directory
    os.mkfifo(m / "d/pipe")  # a special file among plain ones: the full listing reports it
    (m / "d/new.o").write_bytes(b"ignored")
    _again(seen)
    r = run(job)
    assert (r.exit_code, r.pairs[0].error) == (3, "")  # (3: done, with problems)
    assert seen.quiet("m") == seen.quiet("t") == {""}
    assert seen.relists == {"t": {"d", "e"}}  # quiet there, listed again as the mirror changed
    assert [p.path for p in r.pairs[0].problems] == ["d/pipe"]
    assert os.stat(t / "e/f").st_mode & 0o7777 == 0o4755
    assert not (t / "d/pipe").exists() and not (t / "d/new.o").exists()


def test_the_helper_relists_only_directories_inside_its_root(
    agent_endpoint_factory: Callable[..., AgentEndpoint], tmp_path: Path
) -> None:
    make_tree(tmp_path / "root", {"d/f": b"in", "d/sub/g": b"below"})
    (tmp_path / "secret").write_bytes(b"outside")
    ep = agent_endpoint_factory(str(tmp_path / "root"))
    ep.scan(IgnoreRules())
    assert set(ep.relist(IgnoreRules(), ["d"]).entries) == {"d/f"}  # not below it, no directories
    for bad in ["..", "d/..", "/", "/etc", "d//sub", "d/./sub"]:
        with pytest.raises(OSError):
            ep.relist(IgnoreRules(), [bad])
    assert set(ep.relist(IgnoreRules(), ["d/sub"]).entries) == {"d/sub/g"}  # (the helper still works)


def test_a_side_that_cannot_leave_directories_out_turns_it_off(
    sshd: Any, tmp_path: Path, seen: Seen, monkeypatch: pytest.MonkeyPatch
) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, numbered_tree(4, 3))
    job = remote_job(*_remote(sshd, "push", m, t))
    assert run(job).exit_code == 0
    monkeypatch.setenv("SRSYNC_HELPER", "off")  # the target is now reached over SFTP only
    for _ in range(2):
        _again(seen)
        r = run(job)
        assert r.exit_code == 0 and r.pairs[0].outcome == "unchanged"
    assert seen.quiet("m") == set() and seen.relists == {}  # (the first of the two relisted)
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        assert db.execute("SELECT COUNT(*) FROM mirror_dirs").fetchone()[0] == 0


# ---- property: a run with stored summaries does what a run listing everything does ----

PATHS = ["a", "b", "d/a", "d/b", "d/e/c", "e", "f/g"]
EDIT = st.tuples(st.booleans(), st.sampled_from(["put", "touch", "delete", "chmod", "link"]), st.sampled_from(PATHS))


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _edit(ep: MemoryEndpoint, action: str, path: str, version: int) -> None:
    if action == "delete":
        ep.delete_tree(path)
        return
    e = ep.entries.get(path)
    if action == "chmod":
        if e is not None and not e.is_link:
            ep.set_meta(path, e.mode ^ 0o040, None)
        return
    for anc in _parents(path):  # a file in the way of a parent directory goes
        a = ep.entries.get(anc)
        if a is not None and not a.is_dir:
            ep.delete_tree(anc)
    if e is not None and e.is_dir:
        ep.delete_tree(path)
    if action == "link":
        ep.put_link(path, f"t{version}")
    elif action == "touch" and e is not None and e.is_file:
        ep.put(path, ep.data[path], mode=e.mode)  # same bytes, new mtime
    else:
        ep.put(path, f"v{version}".encode())


@settings(max_examples=300 if os.environ.get("CI") else 60, deadline=None)
@given(first=st.lists(EDIT, max_size=8), rounds=st.lists(st.lists(EDIT, max_size=5), min_size=1, max_size=4))
def test_quiet_runs_end_as_full_listings_end(
    first: list[tuple[bool, str, str]], rounds: list[list[tuple[bool, str, str]]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = StateDB(Path(tmp))
        alpha, beta = MemoryEndpoint("alpha"), MemoryEndpoint("beta")
        beta.clock_ns += 500_000_000
            # (no trash folder: its run ids differ between the two runs)
        pair = PairSpec(Location("mem-alpha"), Location("mem-beta"), max_delete=100.0, trash=False)
        version = 0
        try:
            for edits in [first, *rounds]:
                for which, action, path in edits:
                    version += 1
                    _edit(alpha if which else beta, action, path, version)
                full_a, full_b = copy.deepcopy(alpha), copy.deepcopy(beta)
                quiet = PairSession("p", "t", pair, alpha, beta, Reporter(), state, SyncOptions()).run()
                full = PairSession("p", "t", pair, full_a, full_b, Reporter(), None, SyncOptions()).run()
                assert (quiet.outcome, quiet.error) == (full.outcome, full.error)
                assert quiet.applied == full.applied
                assert (alpha.entries, beta.entries, beta.data) == (full_a.entries, full_b.entries, full_b.data)
        finally:
            state.close()
