"""One-way sync in every direction over a real sshd: push, pull, remote->remote, local->local."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import make_tree, remote_job, run, tree_state

from srsync import errors
from srsync.jobspec import Location

DIRECTIONS = ["push", "pull", "remote-remote", "local-local"]

TREE: dict[str, bytes | str | None] = {
    "top.txt": b"top\n",
    "a/b/c/deep.bin": os.urandom(70_000),
    "a/empty": None,
    "a/b/empty-too": None,
    "name with spaces/ünïcödé ñame.txt": "ü".encode() * 100,
    "name with spaces/日本語.txt": b"nihongo",
    "links/rel": "->../top.txt",
    "links/dir": "->../a",
    "links/dangling": "->nowhere",
    "exec.sh": b"#!/bin/sh\necho hi\n",
    "to-rename/file": b"rename me",
    "becomes-dir": b"file now",
    "becomes-file/x": b"dir now",
}


def locations(direction: str, sshd: Any, m: Path, t: Path) -> tuple[Location, Location]:
    conn = sshd.conn_spec()
    other = dataclasses.replace(conn, keepalive=conn.keepalive + 1)  # a second, separate connection
    if direction == "push":
        return Location(str(m)), Location(str(t), conn)
    if direction == "pull":
        return Location(str(m), conn), Location(str(t))
    if direction == "remote-remote":
        return Location(str(m), conn), Location(str(t), other)
    return Location(str(m)), Location(str(t))


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRSYNC_STATE_DIR", str(tmp_path / "state"))


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_full_lifecycle(direction: str, sshd: Any, tmp_path: Path) -> None:
    m, t = tmp_path / "mirror", tmp_path / "target"
    make_tree(m, TREE)
    os.chmod(m / "exec.sh", 0o755)
    os.chmod(m / "a/b", 0o750)
    os.chmod(m / "top.txt", 0o600)
    mirror, target = locations(direction, sshd, m, t)
    job = remote_job(mirror, target, max_delete=100.0)

    # dry run: both sides byte-identical afterwards, nothing created
    before = tree_state(m)
    r = run(job, dry_run=True)
    assert r.exit_code == 0, r
    assert tree_state(m) == before and not t.exists()

    r = run(job)
    assert r.exit_code == 0, (r.error, r.pairs)
    assert tree_state(m) == tree_state(t)

    # second run: nothing to transfer, nothing planned
    r = run(job)
    plan = r.pairs[0].plan
    assert r.exit_code == 0 and plan is not None and plan.empty, plan

    # edits: content, chmod, delete, rename, file<->dir, symlink retarget
    (m / "top.txt").write_bytes(b"top, edited and longer\n")
    os.chmod(m / "exec.sh", 0o700)
    (m / "a/b/c/deep.bin").unlink()
    os.rename(m / "to-rename", m / "renamed")
    (m / "becomes-dir").unlink()
    (m / "becomes-dir").mkdir()
    (m / "becomes-dir/inner").write_bytes(b"inner")
    (m / "becomes-file/x").unlink()
    (m / "becomes-file").rmdir()
    (m / "becomes-file").write_bytes(b"a file again")
    (m / "links/rel").unlink()
    (m / "links/rel").symlink_to("../exec.sh")
    before_t = tree_state(t)
    assert run(job, dry_run=True).exit_code == 0
    assert tree_state(t) == before_t, "dry run changed the target"
    r = run(job)
    assert r.exit_code == 0, r.pairs
    assert tree_state(m) == tree_state(t)
    assert run(job).pairs[0].plan.empty  # type: ignore[union-attr]
    leftovers = [p for p in t.rglob("*") if p.name.startswith(".srsync-tmp-")]
    assert leftovers == []


def test_empty_mirror_over_ssh_halts(sshd: Any, tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    m.mkdir()
    make_tree(t, {"precious": b"keep me"})
    r = run(remote_job(Location(str(m), sshd.conn_spec()), Location(str(t))))
    assert r.exit_code == errors.EXIT_HALTED
    assert (t / "precious").read_bytes() == b"keep me"


def test_missing_remote_mirror_root_halts(sshd: Any, tmp_path: Path) -> None:
    t = tmp_path / "t"
    make_tree(t, {"precious": b"keep me"})
    r = run(remote_job(Location(str(tmp_path / "absent"), sshd.conn_spec()), Location(str(t))))
    assert r.exit_code == errors.EXIT_HALTED
    assert "does not exist" in r.pairs[0].error
    assert (t / "precious").read_bytes() == b"keep me"


@pytest.mark.slow
def test_large_file_push_and_pull(sshd: Any, tmp_path: Path) -> None:
    m, t, back = tmp_path / "m", tmp_path / "t", tmp_path / "back"
    m.mkdir()
    block = os.urandom(1 << 20)
    with open(m / "big.bin", "wb") as fh:
        for i in range(210):
            fh.write(block[i:] + block[:i])
    conn = sshd.conn_spec()
    r = run(remote_job(Location(str(m)), Location(str(t), conn)))
    assert r.exit_code == 0 and r.pairs[0].applied.bytes == 210 << 20
    r = run(remote_job(Location(str(t), conn), Location(str(back)), name="back"))
    assert r.exit_code == 0
    assert tree_state(m) == tree_state(t) == tree_state(back)
    assert run(remote_job(Location(str(m)), Location(str(t), conn))).pairs[0].plan.empty  # type: ignore[union-attr]


@pytest.mark.slow
def test_ten_thousand_files(sshd: Any, tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    for d in range(100):
        sub = m / f"d{d:03}"
        sub.mkdir(parents=True)
        for f in range(101):
            (sub / f"f{f:03}.txt").write_bytes(b"%d-%d" % (d, f))
    job = remote_job(Location(str(m)), Location(str(t), sshd.conn_spec()))
    r = run(job)
    assert r.exit_code == 0 and r.pairs[0].applied.created == 100 + 100 * 101
    assert tree_state(m) == tree_state(t)
    r = run(job)
    assert r.pairs[0].plan is not None and r.pairs[0].plan.empty
