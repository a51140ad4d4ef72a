"""A state database that cannot be opened (full disk, no inodes) is a one-line error that changes
nothing; one that several jobs open at once opens for all of them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from helpers import make_tree

from srsync.engine.state import StateDB


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


def test_jobs_opening_a_new_state_database_at_once_all_get_it(tmp_path: Path) -> None:
    """The jobs of one run start together and open the same new database: switching it
    to WAL and writing its schema must wait for the other jobs, never fail with
    "database is locked" (it did for about one first run in six with four jobs)."""
    for trial in range(25):
        folder = tmp_path / str(trial)
        start = threading.Barrier(4)
        errors: list[BaseException] = []

        def open_it(folder: Path = folder, start: threading.Barrier = start, errors: list[BaseException] = errors) -> None:
            start.wait()
            try:
                StateDB(folder).close()
            except BaseException as exc:  # noqa: BLE001  (reported below)
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [], f"trial {trial}: {errors}"
        db = StateDB(folder)
        try:
            assert db._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            db.close()
