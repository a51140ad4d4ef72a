"""Trash: what a run deletes or replaces is kept on the same side, so any run can be undone.

Layout: ``<root>/.srsync-trash/<run-id>/<path>``.  The folder is excluded from
every scan.  Deleted files and links are *renamed* into it (no copy, same
filesystem); a replaced file is hard-linked there before the new version is
renamed over it, so the final name never goes missing (endpoints that cannot
link copy instead).  Every kept path is recorded in the state database, which
``srsync restore`` and the retention purge read.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from srsync.core.entry import Entry, Kind
from srsync.core.paths import ROOT, RelPath, ancestors, depth, join
from srsync.endpoints.base import Endpoint
from srsync.engine.state import StateDB

TRASH_DIR = ".srsync-trash"
EXCLUDE_PATTERN = f"/{TRASH_DIR}/"


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


@dataclass(slots=True)
class Trash:
    run_id: str
    pair: str
    job: str
    state: StateDB | None
    _made: dict[str, set[RelPath]] = field(default_factory=dict)
    kept: int = 0

    def path_for(self, path: RelPath) -> RelPath:
        return join(join(TRASH_DIR, self.run_id), path)

    def _parents(self, ep: Endpoint, side: str, trash_path: RelPath) -> None:
        made = self._made.setdefault(side, set())
        for d in ancestors(trash_path):
            if d in made:
                continue
            current = ep.stat(d)
            if current is None:
                ep.mkdir(d, 0o700)
            elif not current.is_dir:
                raise NotADirectoryError(f"{d} is in the way of the trash folder")
            made.add(d)

    def _record(self, side: str, path: RelPath, trash_path: RelPath, entry: Entry) -> None:
        self.kept += 1
        if self.state is not None:
            self.state.add_trash(self.pair, self.job, self.run_id, side, path, trash_path,
                                 entry.kind.value, entry.size, entry.mtime_ns)

    def keep_removed(self, ep: Endpoint, side: str, path: RelPath, entry: Entry) -> None:
        """Instead of deleting a file or link: move it into the trash."""
        tp = self.path_for(path)
        self._parents(ep, side, tp)
        ep.rename(path, tp)
        self._record(side, path, tp, entry)

    def keep_replaced(self, ep: Endpoint, side: str, path: RelPath, entry: Entry) -> None:
        """Before a file or link is replaced: keep its current version in the trash too."""
        tp = self.path_for(path)
        self._parents(ep, side, tp)
        if entry.kind is Kind.LINK:
            assert entry.target is not None
            ep.symlink(tp, entry.target)
        else:
            try:
                ep.link(path, tp)
            except NotImplementedError:
                ep.write_file(tp, ep.read_chunks(path), entry.mode, entry.mtime_ns)
        self._record(side, path, tp, entry)


def purge_expired(
    state: StateDB, pair: str, endpoints: dict[str, Endpoint], days: float, now: float | None = None
) -> int:
    """Remove trash runs of ``pair`` older than ``days``; returns how many paths went."""
    cutoff = (now if now is not None else time.time()) - days * 86400
    rows = state.trash_rows(pair, before=cutoff)
    dirs: dict[str, set[RelPath]] = {}
    for side, _path, trash_path, kind in ((r[4], r[5], r[6], r[7]) for r in rows):
        ep = endpoints.get(side)
        if ep is None:
            continue
        with contextlib.suppress(OSError):
            ep.remove(trash_path, Kind(kind))
        dirs.setdefault(side, set()).update(ancestors(trash_path))
    for side, paths in dirs.items():
        for d in sorted(paths, key=lambda p: -depth(p)):
            if d in (ROOT, TRASH_DIR):
                continue
            with contextlib.suppress(OSError):  # not empty: a newer run still uses it
                endpoints[side].remove(d, Kind.DIR)
    state.delete_trash_rows(pair, [r[0] for r in rows])
    return len(rows)


@dataclass(frozen=True, slots=True)
class Restored:
    side: str
    path: RelPath
    placed_at: RelPath | None  # None: not restored (see message)
    message: str = ""


def _restored_name(path: RelPath, run_id: str, ep: Endpoint) -> RelPath:
    from srsync.core.paths import basename, parent

    name = basename(path)
    dot = name.rfind(".")
    stem, ext = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    n = 0
    while True:
        suffix = f".restored-{run_id}" + (f"-{n}" if n else "")
        candidate = join(parent(path), f"{stem}{suffix}{ext}")
        if ep.stat(candidate) is None:
            return candidate
        n += 1


def restore_rows(
    state: StateDB,
    rows: list[tuple[int, str, str, str, str, str, str, str, int, float]],
    endpoint_for: Callable[[str, str], Endpoint],
) -> list[Restored]:
    """Move trashed paths back where they were.

    Whatever sits at the original path now is never overwritten: the trashed
    version is then restored beside it as ``name.restored-<run>.ext``.
    """
    out: list[Restored] = []
    for row_id, pair, _job, run_id, side, path, trash_path, _kind, _size, _rec in rows:
        ep = endpoint_for(pair, side)
        try:
            if ep.stat(trash_path) is None:
                out.append(Restored(side, path, None, "no longer in the trash (purged or moved)"))
                state.delete_trash_rows(pair, [row_id])
                continue
            dest = path if ep.stat(path) is None else _restored_name(path, run_id, ep)
            for d in ancestors(dest):
                current = ep.stat(d)
                if current is None:
                    ep.mkdir(d, 0o755)
                elif not current.is_dir:
                    raise NotADirectoryError(f"{d} is not a directory")
            ep.rename(trash_path, dest)
        except OSError as exc:
            out.append(Restored(side, path, None, f"cannot restore: {exc.strerror or exc}"))
            continue
        state.delete_trash_rows(pair, [row_id])
        out.append(Restored(side, path, dest))
    return out
