"""A state database that cannot be opened (full disk, no inodes) is a one-line error that changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import make_tree


def test_unopenable_state_database_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    make_tree(tmp_path / "m", {"a": b"x", "d/b": b"y"})
    state = tmp_path / "state"
    (state / "state.db").mkdir(parents=True)  # sqlite cannot open a directory as its file
    repo = str(Path(__file__).resolve().parent.parent)  # the code under test, wherever installed
    env = {**os.environ, "SRSYNC_STATE_DIR": str(state),
           "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "srsync", "manual", "-M", str(tmp_path / "m"), "-T", str(tmp_path / "t")],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "cannot open the state database" in out
    assert "Traceback" not in out
    assert not (tmp_path / "t").exists()
