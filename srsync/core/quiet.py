"""Directory summaries of snapshots (see ``srsync.core.summary``), and what a quiet scan left out."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from srsync.core.entry import Entry, Kind, Snapshot
from srsync.core.paths import ROOT, RelPath
from srsync.core.summary import file_record, link_record, summarize


def entry_record(name: str, entry: Entry) -> str | None:
    """The summary record of a child; None for a directory (summaries skip subdirectories)."""
    if entry.kind is Kind.FILE:
        return file_record(name, entry.size, entry.mtime_ns, entry.mode)
    if entry.kind is Kind.LINK:
        return link_record(name, entry.target or "")
    return None


def children_by_dir(snap: Snapshot) -> dict[RelPath, list[tuple[str, Entry]]]:
    """The files and links of every directory of ``snap`` (the root and each DIR entry),
    by directory; a directory without any maps to an empty list."""
    groups: dict[RelPath, list[tuple[str, Entry]]] = {ROOT: []}
    dir_kind = Kind.DIR
    for path, entry in snap.items():
        if entry.kind is dir_kind:
            groups.setdefault(path, [])
    for path, entry in snap.items():
        if entry.kind is dir_kind:
            continue
        i = path.rfind("/")
        rel_dir, name = (path[:i], path[i + 1 :]) if i >= 0 else (ROOT, path)
        group = groups.get(rel_dir)
        if group is not None:
            group.append((name, entry))
    return groups


def summary_of(children: Iterable[tuple[str, Entry]]) -> str:
    """The summary of one directory's files and links."""
    records = [r for name, entry in children if (r := entry_record(name, entry)) is not None]
    return summarize(records)


def snapshot_summaries(snap: Snapshot, skip: Collection[RelPath] = ()) -> dict[RelPath, str]:
    """Every directory's summary, as a scan of a tree holding exactly ``snap`` reports it,
    except those of the directories in ``skip``.

    The same as ``summary_of`` over ``children_by_dir``, in one pass over the
    files with the records written out here (it runs per file after a sync).
    """
    dir_kind, file_kind = Kind.DIR, Kind.FILE
    groups: dict[RelPath, list[str]] = {ROOT: []}
    for path, entry in snap.items():
        if entry.kind is dir_kind:
            groups[path] = []
    for d in skip:
        groups.pop(d, None)
    get = groups.get
    for path, entry in snap.items():
        kind = entry.kind
        if kind is dir_kind:
            continue
        i = path.rfind("/")
        group = get(path[:i] if i >= 0 else ROOT)
        if group is None:
            continue
        # (file_record and link_record, inlined)
        if kind is file_kind:
            group.append(f"{path[i + 1 :]}\0f\0{entry.size}\0{entry.mtime_ns}\0{entry.mode}\0")
        elif kind is Kind.LINK:
            group.append(f"{path[i + 1 :]}\0l\0{entry.target or ''}\0")
    return {d: summarize(records) for d, records in groups.items()}
