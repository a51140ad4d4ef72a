"""In-memory endpoint for pure-logic and property tests (never a stand-in for SSH)."""

from __future__ import annotations

import errno
import io
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import BinaryIO, cast

from srsync.core.entry import Entry, Kind, ScanResult
from srsync.core.ignore import IGNORE_FILE, IgnoreRules
from srsync.core.paths import ROOT, RelPath, basename, is_temp_name, parent, validate_relpath
from srsync.core.quiet import children_by_dir, summary_of
from srsync.endpoints.base import Capabilities, Endpoint, Listed
from srsync.endpoints.hashing import digest_bytes


class MemoryEndpoint(Endpoint):
    """A tree held in dicts.  ``fail_after`` makes the n-th mutating call raise."""

    def __init__(self, name: str = "mem", precision_ns: int = 1, exists: bool = True) -> None:
        self.name = name
        self.capabilities = Capabilities(mtime_precision_ns=precision_ns, summaries=True)
        self.entries: dict[RelPath, Entry] = {}
        self.data: dict[RelPath, bytes] = {}
        self.exists = exists
        self.mutations = 0
        self.fail_after: int | None = None
        self.clock_ns = 1_700_000_000_000_000_000

    @property
    def description(self) -> str:
        return f"memory:{self.name}"

    # ---- test helpers --------------------------------------------------
    def _tick(self) -> int:
        self.clock_ns += 1_000_000_007
        return self.clock_ns

    def put(self, path: RelPath, content: bytes, mode: int = 0o644, mtime_ns: int | None = None) -> None:
        for d in _parents(path):
            if d not in self.entries:
                self.entries[d] = Entry(Kind.DIR, mode=0o755, mtime_ns=self._tick())
        mt = self._round(mtime_ns if mtime_ns is not None else self._tick())
        self.entries[path] = Entry(Kind.FILE, size=len(content), mtime_ns=mt, mode=mode)
        self.data[path] = content

    def put_dir(self, path: RelPath, mode: int = 0o755) -> None:
        for d in [*_parents(path), path]:
            if d not in self.entries:
                self.entries[d] = Entry(Kind.DIR, mode=mode, mtime_ns=self._tick())

    def put_link(self, path: RelPath, target: str) -> None:
        for d in _parents(path):
            if d not in self.entries:
                self.entries[d] = Entry(Kind.DIR, mode=0o755, mtime_ns=self._tick())
        self.entries[path] = Entry(Kind.LINK, target=target)

    def delete_tree(self, path: RelPath) -> None:
        for p in [p for p in self.entries if p == path or p.startswith(path + "/")]:
            self.entries.pop(p)
            self.data.pop(p, None)

    def content(self, path: RelPath) -> bytes:
        return self.data[path]

    def _round(self, ns: int) -> int:
        p = self.capabilities.mtime_precision_ns
        return ns // p * p

    def _mutate(self) -> None:
        self.mutations += 1
        if self.fail_after is not None and self.mutations > self.fail_after:
            raise OSError(errno.EIO, "injected failure")

    def _need_parent_dir(self, path: RelPath) -> None:
        par = parent(path)
        if par != ROOT and (par not in self.entries or not self.entries[par].is_dir):
            raise FileNotFoundError(errno.ENOENT, "no such directory", par)

    # ---- Endpoint ------------------------------------------------------
    def root_exists(self) -> bool:
        return self.exists

    def scan(
        self, rules: IgnoreRules, expect: Mapping[RelPath, str] | None = None, listed: Listed | None = None
    ) -> ScanResult:
        res = ScanResult(entries={})
        if not self.exists:
            res.root_exists = False
            return res
        excluded: set[RelPath] = set()
        for path in sorted(self.entries, key=lambda p: (p.count("/"), p)):
            entry = self.entries[path]
            par = parent(path)
            if par in excluded:
                excluded.add(path)
                continue
            if is_temp_name(basename(path)):
                res.temp_files.append(path)
                continue
            if rules.is_excluded(path, entry.is_dir):
                excluded.add(path)
                continue
            res.entries[path] = entry
            if basename(path) == IGNORE_FILE and entry.is_file:
                res.ignore_files[par] = self.data[path].decode("utf-8", "replace")
        if expect:
            self._leave_out_quiet(res, expect)
        return res

    @staticmethod
    def _leave_out_quiet(res: ScanResult, expect: Mapping[RelPath, str]) -> None:
        """Drop the files and links of each directory that summarises as expected."""
        for rel_dir, children in children_by_dir(res.entries).items():
            want = expect.get(rel_dir)
            if want is not None and summary_of(children) == want:
                prefix = rel_dir + "/" if rel_dir else ""
                for name, _ in children:
                    del res.entries[prefix + name]
                res.quiet[rel_dir] = len(children)

    def stat(self, path: RelPath) -> Entry | None:
        validate_relpath(path)
        return self.entries.get(path)

    def open_read(self, path: RelPath) -> AbstractContextManager[BinaryIO]:
        entry = self.entries.get(path)
        if entry is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        if not entry.is_file:
            raise IsADirectoryError(errno.EISDIR, "not a regular file", path)
        return cast(BinaryIO, io.BytesIO(self.data[path]))

    def hash_file(self, path: RelPath) -> str:
        with self.open_read(path) as fh:
            return digest_bytes(fh.read())

    def ensure_root(self) -> None:
        self.exists = True

    def write_file(self, path: RelPath, chunks: Iterator[bytes], mode: int, mtime_ns: int) -> Entry:
        validate_relpath(path)
        self._mutate()
        self._need_parent_dir(path)
        data = b"".join(chunks)  # an exception here leaves the final name untouched
        cur = self.entries.get(path)
        if cur is not None and cur.is_dir:
            raise IsADirectoryError(errno.EISDIR, "a directory is in the way", path)
        entry = Entry(Kind.FILE, size=len(data), mtime_ns=self._round(mtime_ns), mode=mode & 0o7777)
        self.entries[path] = entry
        self.data[path] = data
        return entry

    def mkdir(self, path: RelPath, mode: int) -> None:
        validate_relpath(path)
        self._mutate()
        self._need_parent_dir(path)
        if path in self.entries:
            raise FileExistsError(errno.EEXIST, "exists", path)
        self.entries[path] = Entry(Kind.DIR, mode=mode & 0o7777 | 0o700, mtime_ns=self._tick())

    def symlink(self, path: RelPath, target: str) -> None:
        validate_relpath(path)
        self._mutate()
        self._need_parent_dir(path)
        cur = self.entries.get(path)
        if cur is not None and cur.is_dir:
            raise IsADirectoryError(errno.EISDIR, "a directory is in the way", path)
        self.entries[path] = Entry(Kind.LINK, target=target)
        self.data.pop(path, None)

    def remove(self, path: RelPath, kind: Kind) -> None:
        validate_relpath(path)
        self._mutate()
        cur = self.entries.get(path)
        if cur is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        if kind is Kind.DIR:
            if not cur.is_dir:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
            if any(p.startswith(path + "/") for p in self.entries):
                raise OSError(errno.ENOTEMPTY, "directory not empty", path)
        elif cur.is_dir:
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        del self.entries[path]
        self.data.pop(path, None)

    def set_meta(self, path: RelPath, mode: int | None, mtime_ns: int | None) -> None:
        validate_relpath(path)
        self._mutate()
        cur = self.entries.get(path)
        if cur is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        if cur.is_link:
            raise OSError(errno.ELOOP, "refusing to change metadata through a symlink", path)
        new_mode = cur.mode if mode is None else mode & 0o7777
        new_mtime = cur.mtime_ns if mtime_ns is None else self._round(mtime_ns)
        self.entries[path] = Entry(cur.kind, cur.size, new_mtime, new_mode, cur.target, None)

    def link(self, src: RelPath, dst: RelPath) -> None:
        self._mutate()
        self._need_parent_dir(dst)
        if dst in self.entries:
            raise FileExistsError(errno.EEXIST, "exists", dst)
        self.entries[dst] = self.entries[src]
        self.data[dst] = self.data[src]

    def rename(self, src: RelPath, dst: RelPath) -> None:
        self._mutate()
        entry = self.entries.pop(src)
        self.entries[dst] = entry
        if src in self.data:
            self.data[dst] = self.data.pop(src)


def _parents(path: RelPath) -> list[RelPath]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]
