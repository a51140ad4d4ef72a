"""Trash and restore: whatever a run deletes or replaces can be put back."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import make_tree, remote_job, run, tree_state
from test_cli import srsync

from srsync.engine.state import StateDB
from srsync.engine.trash import TRASH_DIR, purge_expired
from srsync.jobspec import ONE2ONE, Location


def trash_files(root: Path) -> dict[str, bytes]:
    base = root / TRASH_DIR
    return {str(p.relative_to(base)).split("/", 1)[1]: p.read_bytes()
            for p in base.rglob("*") if p.is_file() and not p.is_symlink()} if base.exists() else {}


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRSYNC_STATE_DIR", str(tmp_path / "state"))


@pytest.mark.parametrize("remote", [False, True])
def test_deleted_and_replaced_files_are_kept(remote: bool, sshd: Any, tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {"keep": b"k", "edit": b"version 1", "gone/deep": b"deleted", "x": b"x", "y": b"y"})
    target = Location(str(t), sshd.conn_spec() if remote else None)
    job = remote_job(Location(str(m)), target, max_delete=100.0)
    assert run(job).exit_code == 0
    (m / "edit").write_bytes(b"version 2")
    (m / "gone/deep").unlink()
    (m / "gone").rmdir()
    r = run(job)
    assert r.exit_code == 0
    assert trash_files(t) == {"edit": b"version 1", "gone/deep": b"deleted"}
    assert tree_state(m) == tree_state(t), "the trash is never synced and never a difference"
    assert run(job).pairs[0].plan.empty  # type: ignore[union-attr]


def test_mass_deletion_is_undone_with_restore(tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    files = {f"d{i}/f{j}": f"{i}-{j}".encode() for i in range(3) for j in range(5)}
    make_tree(m, files)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "job.toml").write_text(f'[[targets]]\n[[targets.paths]]\nmirror = "{m}"\ntarget = "{t}"\n')
    assert srsync("autorun", "--conf-dir", str(conf), cwd=tmp_path).returncode == 0
    before = tree_state(t)
    for rel in files:  # someone wipes most of the mirror...
        if not rel.startswith("d0/"):
            (m / rel).unlink()
    proc = srsync("autorun", "--conf-dir", str(conf), "--force", cwd=tmp_path)  # ...and forces it
    assert proc.returncode == 0, proc.stderr
    assert len([p for p in t.rglob("f*") if TRASH_DIR not in p.parts]) == 5
    listing = srsync("restore", "job", "--list", "--conf-dir", str(conf), cwd=tmp_path)
    assert listing.returncode == 0 and "10 path(s)" in listing.stdout
    proc = srsync("restore", "job", "d1", "--conf-dir", str(conf), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (t / "d1").iterdir()) == [f"f{j}" for j in range(5)]
    proc = srsync("restore", "job", "--conf-dir", str(conf), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {k: v for k, v in tree_state(t).items() if not k.startswith(".srsync")} == {
        k: v for k, v in before.items()}
    assert "nothing in its trash" in srsync("restore", "job", "--conf-dir", str(conf), cwd=tmp_path).stdout


def test_restore_never_overwrites_what_is_there_now(tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {"f.txt": b"old", "other": b"o"})
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "job.toml").write_text(f'[[targets]]\n[[targets.paths]]\nmirror = "{m}"\ntarget = "{t}"\n')
    assert srsync("autorun", "--conf-dir", str(conf), cwd=tmp_path).returncode == 0
    (m / "f.txt").write_bytes(b"new")
    assert srsync("autorun", "--conf-dir", str(conf), cwd=tmp_path).returncode == 0
    proc = srsync("restore", "job", "f.txt", "--conf-dir", str(conf), cwd=tmp_path)
    assert proc.returncode == 0 and "restored beside it" in proc.stdout
    assert (t / "f.txt").read_bytes() == b"new"
    beside = [p for p in t.iterdir() if p.name.startswith("f.restored-")]
    assert len(beside) == 1 and beside[0].read_bytes() == b"old" and beside[0].suffix == ".txt"


def test_two_way_overwritten_loser_is_in_the_trash(sshd: Any, tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {"both": b"base", "x": b"x"})
    job = remote_job(Location(str(m)), Location(str(t), sshd.conn_spec()), sync_type=ONE2ONE,
                     conflict="newer")
    assert run(job).exit_code == 0
    (m / "both").write_bytes(b"mirror edit")
    os.utime(m / "both", (time.time() - 100, time.time() - 100))
    (t / "both").write_bytes(b"target edit, newer")
    assert run(job).exit_code == 0
    assert (m / "both").read_bytes() == b"target edit, newer"
    assert trash_files(m) == {"both": b"mirror edit"}


def test_trash_off_and_retention(tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {"a": b"1", "b": b"2", "c": b"3"})
    job = remote_job(Location(str(m)), Location(str(t)), max_delete=100.0, trash=False)
    assert run(job).exit_code == 0
    (m / "a").unlink()
    assert run(job).exit_code == 0
    assert not (t / TRASH_DIR).exists()
    job = dataclasses.replace(job, targets=(dataclasses.replace(
        job.targets[0], pairs=(dataclasses.replace(job.targets[0].pairs[0], trash=True),)),))
    (m / "b").unlink()
    assert run(job).exit_code == 0
    assert trash_files(t) == {"b": b"2"}
    from srsync.endpoints.local import LocalEndpoint

    db = StateDB(tmp_path / "state")
    pair_key = db.trash_rows()[0][1]
    assert purge_expired(db, pair_key, {"beta": LocalEndpoint(str(t))}, days=1) == 0
    assert purge_expired(db, pair_key, {"beta": LocalEndpoint(str(t))}, days=1,
                         now=time.time() + 2 * 86400) == 1
    db.close()
    assert trash_files(t) == {}
    assert not any((t / TRASH_DIR).iterdir())
