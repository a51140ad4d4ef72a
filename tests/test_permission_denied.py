"""Permission denied on the receiving side: that path is skipped and reported, left as it
was, the rest of the run completes (exit 3), and a later run finishes the job.

The tests run as root, whom permission bits do not stop, so the denial comes from the
immutable attribute (chattr +i), which refuses writes, renames and deletes even to root.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import reliability_report as report
from helpers import make_tree, remote_job, run, tree_state

from srsync.jobspec import Location


@pytest.mark.parametrize("how", ["local", "helper", "sftp"])
def test_denied_paths_are_skipped_and_reported(how: str, immutable: Any, sshd: Any, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRSYNC_STATE_DIR", str(tmp_path / "state"))
    if how == "sftp":
        monkeypatch.setenv("SRSYNC_HELPER", "off")
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {"locked": b"v1", "free": b"v1", "gone-locked": b"x", "dir/old": b"o"})
    job = remote_job(Location(str(m)), Location(str(t), None if how == "local" else sshd.conn_spec()),
                     max_delete=100.0)
    assert run(job).exit_code == 0
    immutable(t / "locked")
    immutable(t / "gone-locked")
    immutable(t / "dir")
    (m / "locked").write_bytes(b"v2 cannot land")
    (m / "free").write_bytes(b"v2 lands")
    (m / "gone-locked").unlink()
    (m / "dir/new").write_bytes(b"cannot be created in an immutable directory")
    (m / "added").write_bytes(b"fine")
    r = run(job)
    assert r.exit_code == 3, (r.error, r.pairs)
    denied = {p.path for p in r.pairs[0].problems}
    # (the directory itself too: its mtime cannot be set either)
    assert denied == {"locked", "gone-locked", "dir/new", "dir"}, r.pairs[0].problems
    assert all("not permitted" in p.message.lower() or "denied" in p.message.lower()
               or "failure" in p.message.lower() for p in r.pairs[0].problems), r.pairs[0].problems
    assert (t / "locked").read_bytes() == b"v1" and (t / "gone-locked").exists()
    assert not (t / "dir/new").exists()
    assert (t / "free").read_bytes() == b"v2 lands" and (t / "added").read_bytes() == b"fine"
    assert not [p for p in t.rglob("*") if p.name.startswith(".srsync-tmp-")]
    # once the locks are gone, the next run finishes the job
    for p in (t / "locked", t / "gone-locked", t / "dir"):
        subprocess.run(["chattr", "-i", str(p)], check=True)
    assert run(job).exit_code == 0
    assert tree_state(m) == tree_state(t)
    report.add("denied")
