"""Quiet directories in two-way runs: what both sides hold as the ancestor does is left out
of scans, loading, reconciliation and recording, and nothing else changes."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import check_delete_guard, local_job, make_tree, numbered_tree, run, tree_state

from srsync.core.entry import ScanResult, dir_entry, file_entry, link_entry
from srsync.core.ignore import IgnoreRules
from srsync.core.quiet import snapshot_summaries
from srsync.core.summary import TAG as SUMMARY_TAG
from srsync.endpoints.local import LocalEndpoint
from srsync.engine.state import StateDB
from srsync.jobspec import ONE2ONE


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRSYNC_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture()
def scans(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, ScanResult]]:
    """The real local scans of each run, by root (the scan itself is not changed)."""
    seen: dict[str, ScanResult] = {}
    real = LocalEndpoint.scan

    def scan(self: LocalEndpoint, rules: IgnoreRules, expect: dict[str, str] | None = None) -> ScanResult:
        res = real(self, rules, expect)
        seen[os.path.basename(self.root)] = res
        return res

    monkeypatch.setattr(LocalEndpoint, "scan", scan)
    yield seen


def test_quiet_rescan_sees_every_change_and_leaves_out_the_rest(
    tmp_path: Path, scans: dict[str, ScanResult]
) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, numbered_tree(8, 5))
    job = local_job(m, t, sync_type=ONE2ONE)
    assert run(job).exit_code == 0
    assert tree_state(m) == tree_state(t)

    second = run(job)  # nothing changed: every directory quiet on both sides
    assert second.pairs[0].outcome == "unchanged"
    for res in (scans["m"], scans["t"]):
        assert res.quiet == {"": 1, "d0": 6, **{f"d{i}": 5 for i in range(1, 8)}}
        assert set(res.entries) == {f"d{i}" for i in range(8)}

    (t / "d3/f1").write_bytes(b"edited on the target")
    (m / "d5/f2").unlink()
    (m / "d6/new").write_bytes(b"new on the mirror")
    os.chmod(m / "d7/f0", 0o600)
    third = run(job)
    assert third.exit_code == 0, third.pairs[0].error
    assert set(scans["m"].quiet) == {"", "d0", "d1", "d2", "d3", "d4"}
    assert set(scans["t"].quiet) == {"", "d0", "d1", "d2", "d4", "d5", "d6", "d7"}
    assert tree_state(m) == tree_state(t)
    assert (m / "d3/f1").read_bytes() == b"edited on the target"
    assert not (t / "d5/f2").exists() and (t / "d6/new").exists()
    assert os.stat(t / "d7/f0").st_mode & 0o777 == 0o600

    fourth = run(job)
    assert fourth.pairs[0].outcome == "unchanged"
    assert len(scans["m"].quiet) == len(scans["t"].quiet) == 9


def test_delete_guard_counts_what_quiet_directories_hold(tmp_path: Path, scans: dict[str, ScanResult]) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, numbered_tree(10, 10))
    def few_listed(_: object) -> None:
        assert len(scans["t"].entries) < 25

    # 10 of 112 entries are under the limit and 90 of 102 over it, although the
    # target's scan lists few entries
    check_delete_guard(m, t, local_job(m, t, sync_type=ONE2ONE, max_delete=20.0), few_listed)


def test_an_ancestor_without_summaries_is_read_then_rewritten(tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, numbered_tree(3, 3))
    job = local_job(m, t, sync_type=ONE2ONE)
    assert run(job).exit_code == 0
    # turn the stored ancestor into the first format: one ancestors row per entry
    db_path = tmp_path / "state" / "state.db"
    state = StateDB(tmp_path / "state")
    ((pair,),) = state._db.execute("SELECT pair FROM ancestor_info").fetchall()
    snap = state.load_ancestor(pair)
    state.close()
    db = sqlite3.connect(db_path)
    with db:
        db.execute("DELETE FROM ancestors")
        db.execute("DELETE FROM ancestor_dirs")
        db.executemany(
            "INSERT INTO ancestors (pair, path, kind, size, mtime_ns, mode, target, digest) VALUES (?,?,?,?,?,?,?,?)",
            [(pair, p, e.kind.value, e.size, e.mtime_ns, e.mode, e.target, e.digest) for p, e in snap.items()],
        )
    db.close()
    state = StateDB(tmp_path / "state")
    assert state.ancestor_summaries(pair) is None and state.load_ancestor(pair) == snap
    state.close()

    (t / "d1/f1").write_bytes(b"changed")  # the old ancestor still tells this edit apart
    r = run(job)
    assert r.exit_code == 0 and (m / "d1/f1").read_bytes() == b"changed"
    state = StateDB(tmp_path / "state")
    try:
        summaries = state.ancestor_summaries(pair)
        new = state.load_ancestor(pair)
        assert summaries is not None and summaries == snapshot_summaries(new)
        assert set(new) == set(snap)
    finally:
        state.close()


def test_summaries_of_an_older_format_are_dropped_then_rewritten(
    tmp_path: Path, scans: dict[str, ScanResult]
) -> None:
    """Summaries stored by an older srsync (untagged) are never compared: the run
    after an upgrade lists everything, stores current ones, and the next is quiet."""
    for sync_type, table in ((ONE2ONE, "ancestor_dirs"), ("Zero2One", "mirror_dirs")):
        m, t = tmp_path / sync_type / "m", tmp_path / sync_type / "t"
        make_tree(m, numbered_tree(3, 3))
        job = local_job(m, t, sync_type=sync_type)
        assert run(job).exit_code == 0
        listed = len(scans["m"].entries)  # (the first run has no summaries: everything)
        assert run(job).pairs[0].outcome == "unchanged" and len(scans["m"].quiet) == 4
        db = sqlite3.connect(tmp_path / "state" / "state.db")
        with db:  # as the first summary format wrote them: 32 hex digits, no tag
            assert db.execute(f"UPDATE {table} SET summary = substr(summary, 3)").rowcount == 4
        db.close()
        state = StateDB(tmp_path / "state")
        ((pair,),) = state._db.execute(f"SELECT DISTINCT pair FROM {table}").fetchall()
        if table == "ancestor_dirs":
            assert state.ancestor_summaries(pair) is None
        else:
            assert state.mirror_summaries(pair) == {}
        state.close()

        assert run(job).pairs[0].outcome == "unchanged"
        assert scans["m"].quiet == {} and len(scans["m"].entries) == listed
        state = StateDB(tmp_path / "state")
        stored = state.ancestor_summaries(pair) if table == "ancestor_dirs" else state.mirror_summaries(pair)
        state.close()
        assert stored is not None and len(stored) == 4 and all(v.startswith(SUMMARY_TAG) for v in stored.values())
        assert run(job).pairs[0].outcome == "unchanged" and len(scans["m"].quiet) == 4
        (tmp_path / "state" / "state.db").unlink()
        for extra in ("-wal", "-shm"):
            (tmp_path / "state" / ("state.db" + extra)).unlink(missing_ok=True)


def test_save_keeps_the_rows_of_kept_directories(tmp_path: Path) -> None:
    state = StateDB(tmp_path / "state")
    try:
        full = {
            "a": dir_entry(), "a/x": file_entry(1, 10), "a/l": link_entry("x"),
            "b": dir_entry(), "b/y": file_entry(2, 20), "z": file_entry(3, 30, digest="d" * 32),
        }
        state.save_ancestor("p", "job", full)
        sums = state.ancestor_summaries("p")
        assert sums == snapshot_summaries(full)
        assert state.load_ancestor("p") == full
        assert state.load_ancestor("p", skip={"a"}) == {k: v for k, v in full.items() if k not in ("a/x", "a/l")}

        # "a" kept as stored while "b" loses its file and "z" changes
        visible = {"a": dir_entry(), "b": dir_entry(), "z": file_entry(4, 40)}
        state.save_ancestor("p", "job", visible, kept={"a": 2})
        assert state.load_ancestor("p") == {**visible, "a/x": full["a/x"], "a/l": full["a/l"]}
        assert state.ancestor_summaries("p") == snapshot_summaries(state.load_ancestor("p"))

        # a kept directory that is no longer in the tree loses its files and links
        state.save_ancestor("p", "job", {"b": dir_entry()}, kept={"a": 2})
        assert state.load_ancestor("p") == {"b": dir_entry()}
        assert set(state.ancestor_summaries("p") or {}) == {"", "b"}

        with pytest.raises(ValueError, match="both kept and given"):
            state.save_ancestor("p", "job", {"a": dir_entry(), "a/x": file_entry(1, 1)}, kept={"a": 1})
        assert state.load_ancestor("p") == {"b": dir_entry()}  # (nothing written)
    finally:
        state.close()


def test_a_quiet_root_still_gives_the_case_probe_its_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The case-folding probe looks up top-level names with their case swapped; a quiet
    root lists no files, but the probe must still get them (a case-folding target
    needs the collision checks)."""
    make_tree(tmp_path / "r", {"Alpha.txt": b"a", "Beta.txt": b"b"})
    ep = LocalEndpoint(str(tmp_path / "r"))
    probed: list[list[str]] = []
    real = LocalEndpoint._probe_case

    def probe(self: LocalEndpoint, names: list[str]) -> None:
        probed.append(sorted(names))
        real(self, names)

    monkeypatch.setattr(LocalEndpoint, "_probe_case", probe)
    full = ep.scan(IgnoreRules())
    quiet = ep.scan(IgnoreRules(), snapshot_summaries(full.entries))
    assert quiet.quiet == {"": 2} and quiet.entries == {}
    assert probed == [["Alpha.txt", "Beta.txt"], ["Alpha.txt", "Beta.txt"]]
