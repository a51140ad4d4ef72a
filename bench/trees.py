"""Deterministic benchmark data sets (a)-(e): generation, caching and the (d)/(e) edits."""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30

# Every generated file gets this mtime (plus a small per-file offset), so trees are
# byte- and metadata-identical between runs and machines.
BASE_MTIME = 1_700_000_000
# Bumped whenever generation changes, so stale cached trees are rebuilt.
GENERATOR_VERSION = 1
CHUNK = 16 * MiB


@dataclass(frozen=True, slots=True)
class CaseSpec:
    """What one case's source tree looks like."""

    name: str
    title: str
    files: int
    dirs: int
    min_size: int
    max_size: int
    seed: int
    edit: str = ""  # "" | "inplace" (d) | "insert" (e)

    @property
    def phases(self) -> tuple[str, ...]:
        return ("cold", "nochange", "edit") if self.edit else ("cold", "nochange")


def case_specs(scale: float) -> dict[str, CaseSpec]:
    """The five cases of issue 4, sizes and counts multiplied by ``scale``."""

    def n(x: int, floor: int = 1) -> int:
        return max(floor, round(x * scale))

    big = n(GiB, 1 * MiB)
    return {
        "a": CaseSpec("a", "1 GiB in 8 random files", 8, 1, n(GiB // 8, 64 * 1024), n(GiB // 8, 64 * 1024), 101),
        "b": CaseSpec("b", "20k files of 100 B-8 KB in 200 dirs", n(20_000, 20), n(200), 100, 8 * 1024, 102),
        "c": CaseSpec("c", "100k files of 0-200 B in 1000 dirs", n(100_000, 20), n(1000), 0, 200, 103),
        "d": CaseSpec("d", "one 1 GiB file, 16 scattered 100 B in-place edits", 1, 1, big, big, 104, "inplace"),
        "e": CaseSpec("e", "one 1 GiB file, 100 B insertion near the start", 1, 1, big, big, 104, "insert"),
        # not part of the default set: the memory check of issue 4 (a 1M-file tree must sync)
        "m": CaseSpec("m", "1M files of 0-200 B in 10k dirs", n(1_000_000, 20), n(10_000), 0, 200, 105),
    }


def _random_chunks(rng: random.Random, size: int) -> Iterator[bytes]:
    left = size
    while left > 0:
        step = min(CHUNK, left)
        yield rng.randbytes(step)
        left -= step


def _write_file(path: Path, rng: random.Random, size: int, mtime: int) -> None:
    with open(path, "wb") as fh:
        for chunk in _random_chunks(rng, size):
            fh.write(chunk)
    os.utime(path, (mtime, mtime))


def _generate(spec: CaseSpec, root: Path) -> None:
    rng = random.Random(spec.seed)
    root.mkdir(parents=True)
    if spec.files == 1 or spec.dirs == 1:
        names = [root / f"file{i:02d}.bin" for i in range(spec.files)]
        for i, path in enumerate(names):
            _write_file(path, rng, rng.randint(spec.min_size, spec.max_size), BASE_MTIME + i)
        return
    dirs = [root / f"d{i:04d}" for i in range(spec.dirs)]
    for d in dirs:
        d.mkdir()
    for i in range(spec.files):
        path = dirs[i % spec.dirs] / f"f{i:06d}.dat"
        _write_file(path, rng, rng.randint(spec.min_size, spec.max_size), BASE_MTIME + i % 86_400)
    for d in dirs:
        os.utime(d, (BASE_MTIME, BASE_MTIME))
    os.utime(root, (BASE_MTIME, BASE_MTIME))


def ensure_dataset(spec: CaseSpec, cache: Path) -> Path:
    """The pristine source tree of ``spec`` under ``cache``, generated once and reused.

    (d) and (e) share one tree: the same seed and size give the same file.  A lock
    file serialises benches sharing the cache, so none reads a half-built tree.
    """
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_dataset_locked(spec, cache)


def _ensure_dataset_locked(spec: CaseSpec, cache: Path) -> Path:
    key = "de" if spec.edit else spec.name
    root = cache / f"{key}-{spec.files}x{spec.max_size}-{spec.seed}"
    marker = root.with_suffix(".json")
    wanted = {"version": GENERATOR_VERSION, **asdict(spec)}
    wanted.pop("name")
    wanted.pop("title")
    wanted.pop("edit")
    if marker.exists() and root.is_dir():
        try:
            if json.loads(marker.read_text()) == wanted:
                return root
        except ValueError:
            pass
    if root.exists():
        shutil.rmtree(root)
    marker.unlink(missing_ok=True)
    _generate(spec, root)
    marker.write_text(json.dumps(wanted))
    return root


def apply_edit(spec: CaseSpec, root: Path) -> int:
    """Apply the case's edit to its single file in ``root``; return the bytes changed.

    (d): 16 scattered 100-byte overwrites, size unchanged.  (e): 100 bytes inserted
    1000 bytes from the start, everything after shifts.  The mtime moves forward by
    an hour either way, so a size+mtime comparison sees the change.
    """
    (path,) = sorted(p for p in root.iterdir() if p.is_file())
    size = path.stat().st_size
    rng = random.Random(spec.seed + 1)
    if spec.edit == "inplace":
        with open(path, "r+b") as fh:
            for i in range(16):
                offset = (size // 16) * i + rng.randrange(max(1, size // 16 - 100))
                fh.seek(offset)
                fh.write(rng.randbytes(100))
    elif spec.edit == "insert":
        tmp = path.with_name(path.name + ".bench-tmp")
        at = min(1000, size)
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(src.read(at))
            dst.write(rng.randbytes(100))
            shutil.copyfileobj(src, dst, CHUNK)
        os.replace(tmp, path)
    else:
        raise ValueError(f"case {spec.name} has no edit")
    mtime = BASE_MTIME + 3600
    os.utime(path, (mtime, mtime))
    return 100 * 16 if spec.edit == "inplace" else 100


def tree_listing(root: Path) -> dict[str, tuple[str, int, int]]:
    """relpath -> (kind, size, whole-second mtime) of regular files and directories."""
    out: dict[str, tuple[str, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames:
            out[os.path.normpath(os.path.join(rel_dir, name))] = ("d", 0, 0)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.normpath(os.path.join(rel_dir, name))] = ("f", st.st_size, int(st.st_mtime))
    return out


# Tool metadata kept inside a replica root that is not part of the synced tree:
# srsync's trash of replaced/deleted files (excluded from its own scans).
TOOL_DIRS = (".srsync-trash",)


def _without_tool_dirs(listing: dict[str, tuple[str, int, int]]) -> dict[str, tuple[str, int, int]]:
    return {p: v for p, v in listing.items() if p.split("/", 1)[0] not in TOOL_DIRS}


def same_tree(a: Path, b: Path, content: bool) -> str:
    """"" when ``b`` mirrors ``a`` (names, sizes, file mtimes; bytes too if ``content``).

    Tool metadata directories at the root (``TOOL_DIRS``) are left out on both sides.
    """
    if not b.is_dir():
        return "target missing"
    la, lb = _without_tool_dirs(tree_listing(a)), _without_tool_dirs(tree_listing(b))
    if la.keys() != lb.keys():
        missing = len(la.keys() - lb.keys())
        extra = len(lb.keys() - la.keys())
        return f"{missing} missing, {extra} extra"
    bad = [p for p in la if la[p] != lb[p]]
    if bad:
        return f"{len(bad)} differ in size/mtime (e.g. {bad[0]})"
    if content:
        for rel, (kind, _size, _mtime) in la.items():
            if kind == "f" and not _same_bytes(a / rel, b / rel):
                return f"content differs: {rel}"
    return ""


def _same_bytes(x: Path, y: Path) -> bool:
    with open(x, "rb") as fx, open(y, "rb") as fy:
        while True:
            bx, by = fx.read(CHUNK), fy.read(CHUNK)
            if bx != by:
                return False
            if not bx:
                return True


def copy_tree(src: Path, dst: Path) -> None:
    """A fresh copy of ``src`` at ``dst`` with metadata (mtimes) preserved."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)
    # copytree sets directory mtimes before filling them; set them again afterwards.
    for dirpath, _dirnames, _filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        st = os.stat(dirpath)
        os.utime(os.path.join(dst, rel), ns=(st.st_atime_ns, st.st_mtime_ns))


def tree_bytes(root: Path) -> int:
    """Total size of the regular files under ``root``."""
    return sum(v[1] for v in tree_listing(root).values() if v[0] == "f")
