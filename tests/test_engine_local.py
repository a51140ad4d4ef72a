"""Engine behaviour on real local directories: the one-way contract and its safety rules."""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Any

import pytest
from helpers import local_job, make_tree, run, tree_state

from srsync import errors
from srsync.engine.reporter import Reporter
from srsync.plan import Operation


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRSYNC_STATE_DIR", str(tmp_path / "state"))


BASE: dict[str, bytes | str | None] = {
    "a.txt": b"alpha\n",
    "dir/b.bin": os.urandom(100_000),
    "dir/sub/c": b"c",
    "empty": None,
    "nested/empty/deeper": None,
    "with space/ünïcödé ñame.txt": b"unicode",
    "link": "->a.txt",
    "dirlink": "->dir",
}


def test_first_sync_then_nothing(tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, BASE)
    os.chmod(m / "a.txt", 0o600)
    os.chmod(m / "dir/sub", 0o750)
    r = run(local_job(m, t))
    assert r.exit_code == 0, r
    assert tree_state(m) == tree_state(t)
    r2 = run(local_job(m, t))
    assert r2.exit_code == 0
    assert r2.pairs[0].plan is not None and r2.pairs[0].plan.empty, r2.pairs[0].plan
    assert r2.pairs[0].outcome == "unchanged"


def test_changes_deletions_renames_type_changes(tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {**BASE, **{f"bulk/{i}": b"x" * i for i in range(20)}})
    assert run(local_job(m, t)).exit_code == 0
    (m / "a.txt").write_bytes(b"changed content\n")
    os.rename(m / "dir/sub", m / "dir/renamed")
    (m / "dir/b.bin").unlink()
    os.remove(m / "link")
    (m / "link").mkdir()  # symlink -> directory
    (m / "link/inside").write_bytes(b"in")
    os.rmdir(m / "empty")
    (m / "empty").write_bytes(b"dir became a file")
    os.chmod(m / "with space", 0o700)
    r = run(local_job(m, t))
    assert r.exit_code == 0, r.pairs[0].problems
    assert tree_state(m) == tree_state(t)
    a = r.pairs[0].applied
    assert a.deleted >= 2 and a.updated >= 1


def test_dry_run_changes_nothing_on_either_side(tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, BASE)
    make_tree(t, {"old": b"old", "a.txt": b"different"})
    before_m, before_t = tree_state(m), tree_state(t)
    r = run(local_job(m, t), dry_run=True)
    assert r.exit_code == 0
    plan = r.pairs[0].plan
    assert plan is not None and plan.stats.created > 0 and plan.stats.deleted == 1
    assert tree_state(m) == before_m and tree_state(t) == before_t


def test_empty_mirror_halts_and_force_overrides(tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    m.mkdir()
    make_tree(t, {"keep": b"precious"})
    r = run(local_job(m, t))
    assert r.exit_code == errors.EXIT_HALTED
    assert "empty" in r.pairs[0].error and "--force" in r.pairs[0].error
    assert (t / "keep").read_bytes() == b"precious"
    assert run(local_job(m, t), force=True).exit_code == 0
    assert not (t / "keep").exists()


def test_mass_delete_guard(tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {f"f{i}": b"x" for i in range(10)})
    assert run(local_job(m, t)).exit_code == 0
    for i in range(7):
        (m / f"f{i}").unlink()
    before = tree_state(t)
    r = run(local_job(m, t))
    assert r.exit_code == errors.EXIT_HALTED and "7 of 10" in r.pairs[0].error
    assert tree_state(t) == before
    assert run(local_job(m, t, max_delete=80.0)).exit_code == 0
    assert sorted(os.listdir(t)) == [".srsync-trash", "f7", "f8", "f9"]


def test_missing_mirror_root_halts(tmp_path: Path) -> None:
    t = tmp_path / "t"
    make_tree(t, {"keep": b"x"})
    r = run(local_job(tmp_path / "nope", t))
    assert r.exit_code == errors.EXIT_HALTED and "does not exist" in r.pairs[0].error
    assert (t / "keep").exists()


def test_excludes_and_srsyncignore(tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {"a.tmp": b"t", "keep.txt": b"k", ".cache/x": b"c", "sub/.srsyncignore": b"*.log\n",
                  "sub/x.log": b"l", "sub/y.txt": b"y", "top.log": b"not excluded at top"})
    make_tree(t, {"target-only.tmp": b"excluded paths on the target are left alone"})
    r = run(local_job(m, t, exclude=("*.tmp", ".cache/")))
    assert r.exit_code == 0
    assert sorted(str(p.relative_to(t)) for p in t.rglob("*") if ".srsync-trash" not in p.parts) == [
        "keep.txt", "sub", "sub/.srsyncignore", "sub/y.txt", "target-only.tmp", "top.log"]


def test_escaping_symlink_skipped_with_warning(tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {"ok": b"x", "evil": "->/etc/passwd", "d/up": "->../../outside", "d/fine": "->../ok"})
    r = run(local_job(m, t))
    assert r.exit_code == errors.EXIT_OK or r.exit_code == errors.EXIT_PARTIAL
    msgs = {p.path: p.message for p in r.pairs[0].problems}
    assert "outside the root" in msgs["evil"] and "outside the root" in msgs["d/up"]
    assert not os.path.lexists(t / "evil") and not os.path.lexists(t / "d/up")
    assert os.readlink(t / "d/fine") == "../ok"


def test_non_utf8_name_is_reported_and_frozen(tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {"good": b"g"})
    fd = os.open(os.path.join(os.fsencode(m), b"bad\xff"), os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    r = run(local_job(m, t))
    assert r.exit_code == errors.EXIT_PARTIAL
    assert any("UTF-8" in p.message for p in r.pairs[0].problems)
    assert (t / "good").read_bytes() == b"g"


class ChangeDuringRun(Reporter):
    """Changes files behind srsync's back at precise moments."""

    def __init__(self, action: dict[str, object]) -> None:
        self.action = action

    def op_started(self, job: str, op: Operation) -> None:
        fn = self.action.get(op.path)
        if callable(fn):
            fn()


def test_target_changed_after_scan_is_skipped(tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {"f": b"mirror"})
    make_tree(t, {"f": b"target old", "gone": b"to delete"})
    rep = ChangeDuringRun({
        "f": lambda: (t / "f").write_bytes(b"edited by a user meanwhile"),
        "gone": lambda: (t / "gone").write_bytes(b"edited too"),
    })
    r = run(local_job(m, t, max_delete=100.0), reporter=rep)
    assert r.exit_code == errors.EXIT_PARTIAL
    assert (t / "f").read_bytes() == b"edited by a user meanwhile"
    assert (t / "gone").read_bytes() == b"edited too"
    assert {p.path for p in r.pairs[0].problems} == {"f", "gone"}
    # the next run converges
    assert run(local_job(m, t, max_delete=100.0)).exit_code == 0
    assert tree_state(m) == tree_state(t)


def test_source_changed_while_read_leaves_target_intact(tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {"f": b"A" * 3_000_000})
    make_tree(t, {"f": b"old"})

    class Grow(Reporter):
        def bytes_transferred(self, job: str, n: int) -> None:
            with open(m / "f", "ab") as fh:
                fh.write(b"more")

    r = run(local_job(m, t), reporter=Grow())
    assert r.exit_code == errors.EXIT_PARTIAL
    assert "changed while being read" in r.pairs[0].problems[0].message
    assert (t / "f").read_bytes() == b"old"
    assert not [p for p in t.rglob("*") if p.name.startswith(".srsync-tmp-")], "no temp file left"


def test_leftover_temp_files_are_cleaned(tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {"f": b"x"})
    make_tree(t, {".srsync-tmp-deadbeef-f": b"torn"})
    assert run(local_job(m, t)).exit_code == 0
    assert sorted(os.listdir(t)) == ["f"]  # (nothing was deleted, so no trash either)


def test_checksum_detects_same_size_same_mtime_change(tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {"f": b"aaaa"})
    assert run(local_job(m, t)).exit_code == 0
    st = os.stat(m / "f")
    (t / "f").write_bytes(b"bbbb")
    os.utime(t / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
    r = run(local_job(m, t))
    assert r.pairs[0].plan is not None and r.pairs[0].plan.empty  # size+mtime cannot see it
    r = run(local_job(m, t, checksum=True))
    assert r.exit_code == 0 and r.pairs[0].applied.updated == 1
    assert (t / "f").read_bytes() == b"aaaa"
    # second checksum run: digests come from the cache, nothing to do
    r = run(local_job(m, t, checksum=True))
    assert r.pairs[0].plan is not None and r.pairs[0].plan.empty


def test_second_run_of_same_job_is_refused_while_locked(tmp_path: Path) -> None:
    from srsync.engine.lock import JobLock

    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {"f": b"x"})
    with JobLock(tmp_path / "state", "t"):
        r = run(local_job(m, t))
    assert r.exit_code == errors.EXIT_FAILURE and "already running" in r.error
    assert str(os.getpid()) in r.error
    assert run(local_job(m, t)).exit_code == 0


def test_history_is_recorded(tmp_path: Path) -> None:
    from srsync.engine.state import StateDB

    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {"f": b"12345"})
    run(local_job(m, t, name="hist"))
    db = StateDB(tmp_path / "state")
    rows = db.history("hist")
    db.close()
    assert len(rows) == 1 and rows[0].outcome == "ok" and rows[0].created == 1 and rows[0].bytes == 5


def test_nfd_names_on_disk_sync_and_nfc_twins_are_refused(tmp_path: Path) -> None:
    import unicodedata

    m, t = tmp_path / "m", tmp_path / "t"
    nfd_dir = unicodedata.normalize("NFD", "Über")
    make_tree(m, {f"{nfd_dir}/{unicodedata.normalize('NFD', 'café')}": b"nfd bytes", "plain": b"p"})
    r = run(local_job(m, t))
    assert r.exit_code == 0, r.pairs[0].problems
    assert (t / "Über" / "café").read_bytes() == b"nfd bytes"
    assert run(local_job(m, t)).pairs[0].plan.empty  # type: ignore[union-attr]
    # now two spellings of one name side by side: neither may shadow the other
    (m / nfd_dir / "café").write_bytes(b"nfc twin")
    before = tree_state(t)
    r = run(local_job(m, t))
    assert r.exit_code == errors.EXIT_PARTIAL
    assert any("Unicode normalisation" in p.message for p in r.pairs[0].problems)
    assert tree_state(t) == before


def test_case_collisions_refused_on_case_insensitive_target(tmp_path: Path) -> None:
    from srsync.endpoints.memory import MemoryEndpoint
    from srsync.engine.session import PairSession, SyncOptions
    from srsync.jobspec import Location, PairSpec

    alpha, beta = MemoryEndpoint("a"), MemoryEndpoint("b")
    beta.capabilities = type(beta.capabilities)(case_insensitive=True)
    alpha.put("Readme.md", b"one")
    alpha.put("README.md", b"two")
    alpha.put("other", b"fine")
    pair = PairSpec(Location("a"), Location("b"))
    res = PairSession("j", "t", pair, alpha, beta, Reporter(), None, SyncOptions()).run()
    assert res.outcome == "partial"
    assert {p.path for p in res.problems} == {"Readme.md", "README.md"}
    assert set(beta.entries) == {"other"}, "neither colliding name was written"
    # a case-sensitive target holds both
    beta2 = MemoryEndpoint("c")
    res = PairSession("j", "t", pair, alpha, beta2, Reporter(), None, SyncOptions()).run()
    assert res.outcome == "ok" and set(beta2.entries) == {"Readme.md", "README.md", "other"}


def test_case_probe_never_writes(tmp_path: Path) -> None:
    from srsync.core.ignore import IgnoreRules
    from srsync.endpoints.local import LocalEndpoint

    make_tree(tmp_path / "m", {"Name": b"x"})
    before = tree_state(tmp_path / "m")
    mtime = os.stat(tmp_path / "m").st_mtime_ns
    ep = LocalEndpoint(str(tmp_path / "m"))
    ep.scan(IgnoreRules())
    assert not ep.capabilities.case_insensitive  # ext4/tmpfs here
    assert tree_state(tmp_path / "m") == before and os.stat(tmp_path / "m").st_mtime_ns == mtime


def test_applied_operations_are_reported_in_order_around_problems(tmp_path: Path) -> None:
    """The executor reports applied operations in batches: every one exactly once, in plan
    order, and a problem comes after the operations applied before it."""
    from srsync.core.compare import Comparator
    from srsync.core.entry import Problem
    from srsync.core.ignore import IgnoreRules
    from srsync.core.reconcile import Mode, reconcile
    from srsync.endpoints.local import LocalEndpoint
    from srsync.engine.executor import Executor
    from srsync.plan import make_plan

    make_tree(tmp_path / "src", {f"f{i:03}": b"x" * i for i in range(150)})
    (tmp_path / "dst").mkdir()
    src, dst = LocalEndpoint(str(tmp_path / "src")), LocalEndpoint(str(tmp_path / "dst"))
    rules = IgnoreRules()
    rec = reconcile({}, src.scan(rules).entries, dst.scan(rules).entries, Mode.ONE_WAY_REPLICA, Comparator())
    plan = make_plan(rec)
    os.unlink(tmp_path / "src" / "f100")  # gone since the scan: that copy fails

    events: list[tuple[str, str]] = []

    class Recorder(Reporter):
        def op_done(self, job: str, op: Operation) -> None:
            events.append(("done", op.path))

        def problem(self, job: str, problem: Problem) -> None:
            events.append(("problem", problem.path))

    result = Executor(src, dst, Recorder(), "job").run(plan)
    assert [p for kind, p in events if kind == "problem"] == ["f100"]
    assert [p for _, p in events] == [op.path for op in plan.operations]
    assert len(result.applied_ops) == len(plan.operations) - 1 == 149


def test_a_run_of_copies_asks_the_source_as_it_goes(tmp_path: Path) -> None:
    """The executor hands the source its run's files as an iterator, read as the source
    asks for them: the first file is read before the rest of the run is even listed
    for it (on a big first copy, the source starts at once)."""
    from srsync.core.compare import Comparator
    from srsync.core.ignore import IgnoreRules
    from srsync.core.reconcile import Mode, reconcile
    from srsync.endpoints.memory import MemoryEndpoint
    from srsync.engine.executor import Executor
    from srsync.plan import make_plan

    src, dst = MemoryEndpoint("src"), MemoryEndpoint("dst")
    for i in range(50):
        src.put(f"f{i:02}", b"y" * i)
    rules = IgnoreRules()
    plan = make_plan(reconcile({}, src.scan(rules).entries, dst.scan(rules).entries,
                               Mode.ONE_WAY_REPLICA, Comparator()))
    taken: list[int] = []  # how many files the source had been given when it read one
    real = MemoryEndpoint.read_files

    def read_files(self: MemoryEndpoint, files: Any) -> Any:
        assert not isinstance(files, (list, tuple)), "the run's files were listed up front"
        count = 0

        def counted() -> Any:
            nonlocal count
            for f in files:
                count += 1
                yield f

        for got in real(self, counted()):
            taken.append(count)
            yield got

    src.read_files = types.MethodType(read_files, src)  # type: ignore[method-assign]
    result = Executor(src, dst, Reporter(), "job").run(plan)
    assert len(result.applied_ops) == 50 and not result.problems
    assert taken[0] == 1 and taken == list(range(1, 51))
    assert {p: dst.content(p) for p in dst.entries} == {p: src.content(p) for p in src.entries}
