"""A full disk on the receiving side: the file that does not fit is skipped and reported,
its old version stays intact, the rest of the run completes, exit code 3."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import reliability_report as report
from helpers import make_tree, remote_job, run

from srsync.jobspec import Location


@pytest.mark.parametrize("how", ["local", "helper", "sftp"])
def test_target_disk_full(how: str, small_disk: Path, sshd: Any, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRSYNC_STATE_DIR", str(tmp_path / "state"))
    if how == "sftp":
        monkeypatch.setenv("SRSYNC_HELPER", "off")
    m, t = tmp_path / "m", small_disk / "t"
    make_tree(m, {"a-small": b"a" * 100_000, "edit": b"old " * 100_000, "z-small": b"z" * 100_000})
    target = Location(str(t), None if how == "local" else sshd.conn_spec())
    job = remote_job(Location(str(m)), target)
    assert run(job).exit_code == 0
    # the new version of "edit" (3 MiB) cannot fit; two other files change too
    (m / "edit").write_bytes(os.urandom(3 * 1024 * 1024))
    (m / "a-small").write_bytes(b"A" * 90_000)
    (m / "z-small").write_bytes(b"Z" * 90_000)
    (m / "new").write_bytes(b"n" * 1000)
    r = run(job)
    assert r.exit_code == 3, (r.error, r.pairs)
    problems = r.pairs[0].problems
    assert [p.path for p in problems] == ["edit"], problems
    assert "full disk" in problems[0].message or "space" in problems[0].message.lower(), problems[0].message
    assert (t / "edit").read_bytes() == b"old " * 100_000, "the old version is intact"
    assert (t / "a-small").read_bytes() == b"A" * 90_000
    assert (t / "z-small").read_bytes() == b"Z" * 90_000
    assert (t / "new").read_bytes() == b"n" * 1000
    assert not [p for p in t.rglob("*") if p.name.startswith(".srsync-tmp-")]
    report.add("disk_full")


def test_mirror_disk_full_in_two_way(small_disk: Path, sshd: Any, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRSYNC_STATE_DIR", str(tmp_path / "state"))
    m, t = small_disk / "m", tmp_path / "t"
    make_tree(m, {"keep": b"k" * 1000, "edit": b"old " * 100_000})
    job = remote_job(Location(str(m)), Location(str(t), sshd.conn_spec()), sync_type="One2One")
    assert run(job).exit_code == 0
    (t / "edit").write_bytes(os.urandom(3 * 1024 * 1024))  # changed on the target: too big
    (t / "fits").write_bytes(b"f" * 5000)
    r = run(job)
    assert r.exit_code == 3, (r.error, r.pairs)
    assert [(p.path, p.side) for p in r.pairs[0].problems] == [("edit", "alpha")]
    assert (m / "edit").read_bytes() == b"old " * 100_000
    assert (m / "fits").read_bytes() == b"f" * 5000
    # once there is room again, the next run completes and nothing was lost
    (m / "keep").unlink()
    (t / "edit").write_bytes(os.urandom(1024 * 1024))
    r = run(job)
    assert r.exit_code == 0, r.pairs
    assert (m / "edit").read_bytes() == (t / "edit").read_bytes()
    assert not (t / "keep").exists()
    report.add("disk_full")
