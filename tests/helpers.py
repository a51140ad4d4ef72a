"""Shared test utilities: build trees, snapshot them byte for byte, run jobs."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

from srsync.engine.reporter import Reporter
from srsync.engine.runner import JobResult, run_job
from srsync.engine.session import SyncOptions
from srsync.jobspec import JobSpec, Location, PairSpec, TargetSpec

TRASH = ".srsync-trash"


def tree_state(root: Path, with_mtime: bool = True) -> dict[str, tuple[object, ...]]:
    """Everything srsync promises to preserve below ``root``: kind, content hash, mode, mtime."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root) and TRASH in dirnames:
            dirnames.remove(TRASH)  # kept deleted/replaced files: tested on their own
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            s = os.lstat(full)
            if stat.S_ISLNK(s.st_mode):
                out[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(s.st_mode):
                out[rel] = ("dir", stat.S_IMODE(s.st_mode))
            else:
                digest = hashlib.sha256(Path(full).read_bytes()).hexdigest()
                mt = s.st_mtime_ns // 10**9 if with_mtime else 0
                out[rel] = ("file", digest, stat.S_IMODE(s.st_mode), mt)
    return out


def make_tree(root: Path, spec: dict[str, bytes | str | None]) -> None:
    """Create files (bytes), symlinks ("->target" strings) and dirs (None) below root."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, value in spec.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if value is None:
            p.mkdir(exist_ok=True)
        elif isinstance(value, str):
            p.symlink_to(value.removeprefix("->"))
        else:
            p.write_bytes(value)


def numbered_tree(dirs: int, files: int) -> dict[str, bytes | str | None]:
    """``dirs`` directories d0.. of ``files`` files f0.. each, a top file and a link in d0."""
    tree: dict[str, bytes | str | None] = {f"d{i}/f{j}": f"{i}.{j}".encode() for i in range(dirs) for j in range(files)}
    tree["top"] = b"top"
    tree["d0/link"] = "->f0"
    return tree


def check_delete_guard(
    m: Path, t: Path, job: JobSpec, after_first: Callable[[JobResult], None] | None = None
) -> None:
    """On ``numbered_tree(10, 10)`` synced with max_delete = 20: the mirror's d4 emptied
    (10 of 112 entries) runs (``after_first`` then checks more); then 90 of the
    remaining 102 files gone halts."""
    assert run(job).exit_code == 0
    for j in range(10):
        (m / f"d4/f{j}").unlink()
    first = run(job)
    assert first.exit_code == 0, first.pairs[0].error
    assert not any((t / "d4").iterdir())
    if after_first is not None:
        after_first(first)
    for i in range(10):
        if i != 4:
            for j in range(10):
                (m / f"d{i}/f{j}").unlink()
    r = run(job)
    assert r.exit_code != 0 and "90 of 102" in (r.pairs[0].error or "")
    assert (t / "d0/f0").exists()


def local_job(mirror: Path | str, target: Path | str, name: str = "t", **pair_kw: object) -> JobSpec:
    pair = PairSpec(Location(str(mirror)), Location(str(target)), **pair_kw)  # type: ignore[arg-type]
    return JobSpec(name=name, source="<test>", targets=(TargetSpec("local", (pair,)),))


def remote_job(mirror: Location, target: Location, name: str = "t", **pair_kw: object) -> JobSpec:
    pair = PairSpec(mirror, target, **pair_kw)  # type: ignore[arg-type]
    return JobSpec(name=name, source="<test>", targets=(TargetSpec("remote", (pair,)),))


def run(job: JobSpec, reporter: Reporter | None = None, **opts: bool) -> JobResult:
    return run_job(job, reporter or Reporter(), SyncOptions(**opts))
