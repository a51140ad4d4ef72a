"""Directory summaries of snapshots (see ``srsync.core.summary``), and what a quiet scan left out."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from srsync.core.entry import Entry, Kind, Snapshot
from srsync.core.paths import ROOT, RelPath
from srsync.core.summary import summarize


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
    """The summary of one directory's files and links (directories among them are skipped)."""
    names: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    modes: list[int] = []
    links: list[tuple[str, str]] = []
    for name, entry in children:
        if entry.kind is Kind.FILE:
            names.append(name)
            sizes.append(entry.size)
            mtimes.append(entry.mtime_ns)
            modes.append(entry.mode)
        elif entry.kind is Kind.LINK:
            links.append((name, entry.target or ""))
    return summarize(names, sizes, mtimes, modes, links)


def snapshot_summaries(snap: Snapshot, skip: Collection[RelPath] = ()) -> dict[RelPath, str]:
    """Every directory's summary, as a scan of a tree holding exactly ``snap`` reports it,
    except those of the directories in ``skip``.

    The same as ``summary_of`` over ``children_by_dir``, in one pass over the
    files with the columns filled here (it runs per file after a sync).
    """
    dir_kind, file_kind, link_kind = Kind.DIR, Kind.FILE, Kind.LINK
    # directory -> its files' names, sizes, mtimes, modes, and its links
    groups: dict[RelPath, tuple[list[str], list[int], list[int], list[int], list[tuple[str, str]]]] = {
        ROOT: ([], [], [], [], [])
    }
    for path, entry in snap.items():
        if entry.kind is dir_kind:
            groups[path] = ([], [], [], [], [])
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
        if kind is file_kind:
            group[0].append(path[i + 1 :])
            group[1].append(entry.size)
            group[2].append(entry.mtime_ns)
            group[3].append(entry.mode)
        elif kind is link_kind:
            group[4].append((path[i + 1 :], entry.target or ""))
    return {d: summarize(*columns) for d, columns in groups.items()}
