"""Shared test utilities: build trees, snapshot them byte for byte, run jobs."""

from __future__ import annotations

import hashlib
import os
import stat
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


def local_job(mirror: Path | str, target: Path | str, name: str = "t", **pair_kw: object) -> JobSpec:
    pair = PairSpec(Location(str(mirror)), Location(str(target)), **pair_kw)  # type: ignore[arg-type]
    return JobSpec(name=name, source="<test>", targets=(TargetSpec("local", (pair,)),))


def remote_job(mirror: Location, target: Location, name: str = "t", **pair_kw: object) -> JobSpec:
    pair = PairSpec(mirror, target, **pair_kw)  # type: ignore[arg-type]
    return JobSpec(name=name, source="<test>", targets=(TargetSpec("remote", (pair,)),))


def run(job: JobSpec, reporter: Reporter | None = None, **opts: bool) -> JobResult:
    return run_job(job, reporter or Reporter(), SyncOptions(**opts))
