"""The SQLite state database: hash cache, run history (ancestors and live status later)."""

from __future__ import annotations

import contextlib
import marshal
import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from srsync.core.entry import Entry, Kind, Snapshot
from srsync.core.paths import ROOT, RelPath, parent
from srsync.core.quiet import children_by_dir, summary_of
from srsync.core.summary import TAG as SUMMARY_TAG
from srsync.engine.statedir import default_state_dir as default_state_dir  # re-exported
from srsync.engine.statedir import state_dir_for as state_dir_for  # re-exported

SCHEMA_VERSION = 1

# seconds a connection waits for another one that holds the database
_BUSY_TIMEOUT = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hash_cache (
    endpoint TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (endpoint, path)
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    target TEXT NOT NULL,
    pair TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL NOT NULL,
    outcome TEXT NOT NULL,
    created INTEGER NOT NULL DEFAULT 0,
    updated INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    meta INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    problems INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    dry_run INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS history_job ON history (job, id);
CREATE TABLE IF NOT EXISTS ancestors (
    pair TEXT NOT NULL,
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    target TEXT,
    digest TEXT,
    PRIMARY KEY (pair, path)
);
-- the files and links of each directory of an ancestor, one row per
-- directory (the directories themselves are rows of ``ancestors``); a pair
-- with no rows here is in the first format, where ``ancestors`` holds every
-- entry (read as such, rewritten on the next save)
CREATE TABLE IF NOT EXISTS ancestor_dirs (
    pair TEXT NOT NULL,
    dir TEXT NOT NULL,
    summary TEXT NOT NULL,
    count INTEGER NOT NULL,
    children BLOB NOT NULL,
    PRIMARY KEY (pair, dir)
);
-- one-way pairs: each directory's summary of the mirror's files and links
-- as the last run listed them; a directory both sides still summarise so
-- holds the same files on both and need not be listed (srsync.core.summary)
CREATE TABLE IF NOT EXISTS mirror_dirs (
    pair TEXT NOT NULL,
    dir TEXT NOT NULL,
    summary TEXT NOT NULL,
    PRIMARY KEY (pair, dir)
);
CREATE TABLE IF NOT EXISTS ancestor_info (
    pair TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    saved REAL NOT NULL,
    entries INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS conflicts (
    pair TEXT NOT NULL,
    job TEXT NOT NULL,
    path TEXT NOT NULL,
    reason TEXT NOT NULL,
    mirror TEXT NOT NULL,
    target TEXT NOT NULL,
    detected REAL NOT NULL,
    PRIMARY KEY (pair, path)
);
CREATE TABLE IF NOT EXISTS trash (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pair TEXT NOT NULL,
    job TEXT NOT NULL,
    run_id TEXT NOT NULL,
    side TEXT NOT NULL,
    path TEXT NOT NULL,
    trash_path TEXT NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    recorded REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS trash_pair ON trash (pair, recorded);
CREATE TABLE IF NOT EXISTS decisions (
    pair TEXT NOT NULL,
    job TEXT NOT NULL,
    path TEXT NOT NULL,
    keep TEXT NOT NULL,
    decided REAL NOT NULL,
    PRIMARY KEY (pair, path)
);
"""


@dataclass(frozen=True, slots=True)
class HistoryRow:
    id: int
    job: str
    target: str
    pair: str
    started: float
    finished: float
    outcome: str
    created: int
    updated: int
    deleted: int
    meta: int
    bytes: int
    problems: int
    error: str
    dry_run: bool


def _current_summaries(summaries: dict[RelPath, str]) -> dict[RelPath, str]:
    """``summaries`` if all are of the current format, else none (they were saved together)."""
    if all(s.startswith(SUMMARY_TAG) for s in summaries.values()):
        return summaries
    return {}


class StateDB:
    """One connection to the state database; safe to share between threads."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(directory, 0o700)
        self.path = directory / "state.db"
        self._lock = threading.Lock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        """A connection in WAL mode with the schema in place.

        Several jobs of one run open the same database at once.  Switching a new
        database to WAL, and a transaction that first reads and then writes, can fail
        at once with "database is locked" instead of waiting for the other (SQLite
        does not wait where waiting could deadlock): the schema is written in a
        transaction that takes the write lock first, and a refused switch is retried.
        """
        deadline = time.monotonic() + _BUSY_TIMEOUT
        while True:
            db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(
                    f"BEGIN IMMEDIATE;{_SCHEMA};INSERT OR IGNORE INTO meta (key, value) "
                    f"VALUES ('schema', '{int(SCHEMA_VERSION)}');COMMIT;"
                )
                return db
            except sqlite3.OperationalError as exc:
                db.close()
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.01)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- hash cache ----------------------------------------------------
    def cached_digests(self, endpoint: str) -> dict[str, tuple[int, int, int, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT path, size, mtime_ns, ino, digest FROM hash_cache WHERE endpoint = ?",
                (endpoint,),
            ).fetchall()
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    def store_digests(self, endpoint: str, rows: Iterable[tuple[str, int, int, int, str]]) -> None:
        data = [(endpoint, *r) for r in rows]
        if not data:
            return
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO hash_cache (endpoint, path, size, mtime_ns, ino, digest)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                data,
            )

    # ---- directory summaries of one-way pairs ---------------------------
    def mirror_summaries(self, pair: str) -> dict[RelPath, str]:
        """What ``save_mirror_summaries`` last stored for ``pair``."""
        with self._lock:
            rows = self._db.execute("SELECT dir, summary FROM mirror_dirs WHERE pair = ?", (pair,)).fetchall()
        return _current_summaries({r[0]: r[1] for r in rows})

    def save_mirror_summaries(self, pair: str, summaries: Mapping[RelPath, str]) -> None:
        """Replace a one-way pair's directory summaries in one transaction."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM mirror_dirs WHERE pair = ?", (pair,))
            self._db.executemany(
                "INSERT INTO mirror_dirs (pair, dir, summary) VALUES (?, ?, ?)",
                [(pair, d, s) for d, s in summaries.items()],
            )

    # ---- ancestors (two-way state) --------------------------------------
    def ancestor_summaries(self, pair: str) -> dict[RelPath, str] | None:
        """Each directory's summary (srsync.core.summary) of the files and links the
        ancestor records there; None when there is no ancestor in this format, or its
        summaries are of an older format (the next save then rewrites them)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT dir, summary FROM ancestor_dirs WHERE pair = ?", (pair,)
            ).fetchall()
        return _current_summaries({r[0]: r[1] for r in rows}) or None

    def load_ancestor(self, pair: str, skip: Collection[RelPath] = ()) -> Snapshot:
        """The ancestor, without the files and links of the directories in ``skip``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT path, kind, size, mtime_ns, mode, target, digest FROM ancestors WHERE pair = ?",
                (pair,),
            ).fetchall()
            blobs = self._db.execute(
                "SELECT dir, children FROM ancestor_dirs WHERE pair = ?", (pair,)
            ).fetchall()
        kinds = {k.value: k for k in Kind}
        snap = {r[0]: Entry(kinds[r[1]], r[2], r[3], r[4], r[5], r[6]) for r in rows}
        for rel_dir, blob in blobs:
            if rel_dir in skip:
                continue
            prefix = rel_dir + "/" if rel_dir else ""
            for name, kind, size, mtime_ns, mode, target, digest in marshal.loads(blob):
                snap[prefix + name] = Entry(kinds[kind], size, mtime_ns, mode, target, digest)
        return snap

    def has_ancestor(self, pair: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM ancestor_info WHERE pair = ?", (pair,)).fetchone()
        return row is not None

    def save_ancestor(
        self, pair: str, job: str, snapshot: Snapshot, kept: Mapping[RelPath, int] | None = None
    ) -> None:
        """Replace a pair's ancestor in one transaction, after checking it is a valid tree.

        ``kept`` maps directories whose files and links are not in ``snapshot``
        to how many there are: their stored rows stay as they are (a directory
        no longer in the tree loses them).
        """
        for path, entry in snapshot.items():
            par = parent(path)
            if par != ROOT and (par not in snapshot or snapshot[par].kind is not Kind.DIR):
                raise ValueError(f"ancestor for {pair!r} is not a tree: {path!r} has no directory parent")
            if entry.kind is Kind.LINK and entry.target is None:
                raise ValueError(f"ancestor for {pair!r}: link {path!r} without a target")
        groups = children_by_dir(snapshot)
        keep = {d: n for d, n in (kept or {}).items() if d in groups}
        for d in keep:
            if groups[d]:
                raise ValueError(f"ancestor for {pair!r}: {d!r} is both kept and given")
        dirs = [
            (pair, p, e.kind.value, e.size, e.mtime_ns, e.mode, e.target, e.digest)
            for p, e in snapshot.items() if e.kind is Kind.DIR
        ]
        children = [
            (pair, d, summary_of(group), len(group), marshal.dumps([
                (name, e.kind.value, e.size, e.mtime_ns, e.mode, e.target, e.digest) for name, e in group
            ]))
            for d, group in groups.items() if d not in keep
        ]
        with self._lock, self._db:
            self._db.execute("DELETE FROM ancestors WHERE pair = ?", (pair,))
            self._db.executemany(
                "INSERT INTO ancestors (pair, path, kind, size, mtime_ns, mode, target, digest)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                dirs,
            )
            if keep:
                stored = [r[0] for r in self._db.execute(
                    "SELECT dir FROM ancestor_dirs WHERE pair = ?", (pair,)).fetchall()]
                self._db.executemany(
                    "DELETE FROM ancestor_dirs WHERE pair = ? AND dir = ?",
                    [(pair, d) for d in stored if d not in keep],
                )
            else:
                self._db.execute("DELETE FROM ancestor_dirs WHERE pair = ?", (pair,))
            self._db.executemany(
                "INSERT INTO ancestor_dirs (pair, dir, summary, count, children) VALUES (?, ?, ?, ?, ?)",
                children,
            )
            self._db.execute(
                "INSERT OR REPLACE INTO ancestor_info (pair, job, saved, entries) VALUES (?, ?, ?, ?)",
                (pair, job, time.time(), len(snapshot) + sum(keep.values())),
            )

    # ---- conflicts left for review, and the user's decisions ------------
    def set_conflicts(self, pair: str, job: str, rows: list[tuple[str, str, str, str]]) -> None:
        """Replace the open conflicts of a pair: (path, reason, mirror, target) descriptions."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute("DELETE FROM conflicts WHERE pair = ?", (pair,))
            self._db.executemany(
                "INSERT INTO conflicts (pair, job, path, reason, mirror, target, detected)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(pair, job, *r, now) for r in rows],
            )

    def conflicts(self, job: str | None = None) -> list[tuple[str, str, str, str, str, str, float]]:
        """Open conflicts: (job, pair, path, reason, mirror, target, detected)."""
        sql = "SELECT job, pair, path, reason, mirror, target, detected FROM conflicts"
        args: tuple[str, ...] = ()
        if job:
            sql += " WHERE job = ?"
            args = (job,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY job, pair, path", args).fetchall()
        return [tuple(r) for r in rows]

    def decide(self, pair: str, job: str, path: str, keep: str) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO decisions (pair, job, path, keep, decided) VALUES (?, ?, ?, ?, ?)",
                (pair, job, path, keep, time.time()),
            )

    def decisions(self, pair: str) -> dict[str, str]:
        with self._lock:
            rows = self._db.execute("SELECT path, keep FROM decisions WHERE pair = ?", (pair,)).fetchall()
        return {r[0]: r[1] for r in rows}

    def clear_decisions(self, pair: str, paths: list[str]) -> None:
        with self._lock, self._db:
            self._db.executemany(
                "DELETE FROM decisions WHERE pair = ? AND path = ?", [(pair, p) for p in paths]
            )

    # ---- trash ---------------------------------------------------------
    def add_trash(self, pair: str, job: str, run_id: str, side: str, path: str, trash_path: str,
                  kind: str, size: int, mtime_ns: int) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO trash (pair, job, run_id, side, path, trash_path, kind, size, mtime_ns,"
                " recorded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (pair, job, run_id, side, path, trash_path, kind, size, mtime_ns, time.time()),
            )

    def trash_rows(
        self, pair: str | None = None, *, job: str | None = None, run_id: str | None = None,
        before: float | None = None,
    ) -> list[tuple[int, str, str, str, str, str, str, str, int, float]]:
        """(id, pair, job, run_id, side, path, trash_path, kind, size, recorded), oldest first."""
        sql = ("SELECT id, pair, job, run_id, side, path, trash_path, kind, size, recorded FROM trash"
               " WHERE 1=1")
        args: list[object] = []
        for col, val in (("pair", pair), ("job", job), ("run_id", run_id)):
            if val is not None:
                sql += f" AND {col} = ?"
                args.append(val)
        if before is not None:
            sql += " AND recorded < ?"
            args.append(before)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [tuple(r) for r in rows]

    def delete_trash_rows(self, pair: str, ids: list[int]) -> None:
        with self._lock, self._db:
            self._db.executemany("DELETE FROM trash WHERE pair = ? AND id = ?", [(pair, i) for i in ids])

    # ---- history -------------------------------------------------------
    def add_history(
        self,
        *,
        job: str,
        target: str,
        pair: str,
        started: float,
        outcome: str,
        created: int = 0,
        updated: int = 0,
        deleted: int = 0,
        meta: int = 0,
        bytes_: int = 0,
        problems: int = 0,
        error: str = "",
        dry_run: bool = False,
    ) -> int:
        with self._lock, self._db:
            cur = self._db.execute(
                "INSERT INTO history (job, target, pair, started, finished, outcome, created,"
                " updated, deleted, meta, bytes, problems, error, dry_run)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job, target, pair, started, time.time(), outcome, created, updated, deleted,
                 meta, bytes_, problems, error, int(dry_run)),
            )
            return int(cur.lastrowid or 0)

    def history(self, job: str | None = None, count: int = 20) -> list[HistoryRow]:
        sql = "SELECT * FROM history"
        args: tuple[object, ...] = ()
        if job:
            sql += " WHERE job = ?"
            args = (job,)
        sql += " ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, count)).fetchall()
        return [
            HistoryRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11],
                       r[12], r[13], bool(r[14]))
            for r in rows
        ]
