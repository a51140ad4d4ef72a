"""SFTPEndpoint's pipelined batches (apply_steps, read_files, hash_files) against a real sshd.

Each batch keeps many paths in flight; results must equal the one-at-a-time
reference (``Endpoint._apply_step``, the base ``read_files``/``hash_files``)
step for step, and the safety rules must hold: nothing is renamed over a final
name that changed since the scan, no temporary file is left behind, and one
path's failure never stops the others.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import make_tree, tree_state
from sshd import SSHD

from srsync.core.entry import Entry, Kind
from srsync.core.ignore import IgnoreRules
from srsync.core.paths import TEMP_PREFIX
from srsync.endpoints.base import Endpoint, FileRead, Step, StepKind
from srsync.endpoints.sftp import SFTPEndpoint
from srsync.errors import ConnectError
from srsync.ssh.connection import connect
from srsync.ssh.sftpfs import LSETSTAT

pytestmark = pytest.mark.ssh

Make = Callable[[str], SFTPEndpoint]
T = 1_650_000_000
NS = 10**9
BIG = os.urandom(700_000)  # more than one write request


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def outcome(result: Entry | None | OSError) -> object:
    """A result in comparable form (errors by type and errno; entries by what they state)."""
    if isinstance(result, OSError):
        return (type(result).__name__, result.errno)
    if result is None:
        return None
    return (result.kind, result.size, result.mtime_ns, result.mode)


def reference(ep: SFTPEndpoint, steps: list[Step]) -> list[object]:
    """The one-at-a-time path every pipelined step must equal."""
    return [outcome(r) for r in Endpoint.apply_steps(ep, steps)]


def new_entry(size: int, i: int, mode: int = 0o644) -> Entry:
    return Entry(Kind.FILE, size=size, mtime_ns=(T + i) * NS + 123_456_789, mode=mode)


def mixed_steps(scan: dict[str, Entry]) -> list[Step]:
    """A plan's worth of steps over the tree made by ``base_tree``, in plan order."""
    steps: list[Step] = []
    # removals (deepest first), including a directory emptied just before
    steps.append(Step(StepKind.REMOVE, "old/sub/gone.txt", scan["old/sub/gone.txt"]))
    steps.append(Step(StepKind.REMOVE, "old/sub", scan["old/sub"]))
    steps.append(Step(StepKind.REMOVE, "old-link", scan["old-link"]))
    # directories, parents first; an existing one is fine
    for d in ("new", "new/a", "new/a/b", "new/c", "keep"):
        steps.append(Step(StepKind.MKDIR, d, scan.get(d), Entry(Kind.DIR, mode=0o750, mtime_ns=T * NS)))
    # files: many small ones, an empty one, one bigger than a write request, replacements
    for i in range(300):
        data = bytes([i % 251]) * (i * 37 % 9000)
        path = f"new/{'a/b' if i % 3 == 0 else 'c' if i % 3 == 1 else 'a'}/f{i:03}"
        steps.append(Step(StepKind.WRITE, path, None, new_entry(len(data), i), data=data))
    steps.append(Step(StepKind.WRITE, "new/big.bin", None, new_entry(len(BIG), 7, 0o600), data=BIG))
    steps.append(Step(StepKind.WRITE, "new/empty", None, new_entry(0, 8, 0o755), data=b""))
    steps.append(Step(StepKind.WRITE, "keep/replace.txt", scan["keep/replace.txt"], new_entry(3, 9), data=b"new"))
    steps.append(Step(StepKind.LINK, "new/link", None, Entry(Kind.LINK, target="a/b/f000")))
    steps.append(Step(StepKind.LINK, "keep/relink", scan["keep/relink"], Entry(Kind.LINK, target="elsewhere")))
    # metadata: a file, then directories deepest first (after everything written into them)
    steps.append(Step(StepKind.META, "keep/meta.txt", scan["keep/meta.txt"], Entry(Kind.FILE, mode=0o640, mtime_ns=(T + 50) * NS)))
    for d in ("new/a/b", "new/a", "new/c", "new", "keep", "old"):
        steps.append(Step(StepKind.META, d, None, Entry(Kind.DIR, mode=0o755, mtime_ns=(T + 100) * NS)))
    return steps


def base_tree(root: Path) -> None:
    make_tree(root, {
        "old/sub/gone.txt": b"bye", "old-link": "->nowhere", "keep/replace.txt": b"old content",
        "keep/relink": "->before", "keep/meta.txt": b"meta",
    })  # fmt: skip


@pytest.mark.parametrize("lsetstat", [True, False], ids=["lsetstat", "no-lsetstat"])
def test_many_steps_equal_the_one_at_a_time_path(
    sftp_endpoint_factory: Make, tmp_path: Path, lsetstat: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    piped, single = tmp_path / "piped", tmp_path / "single"
    base_tree(piped)
    shutil.copytree(piped, single, symlinks=True)
    ep_p, ep_s = sftp_endpoint_factory(str(piped)), sftp_endpoint_factory(str(single))
    if not lsetstat:
        # as an older OpenSSH (before 8.x): lstat + setstat instead, on both paths
        for ep in (ep_p, ep_s):
            offered = ep._fs.has_extension
            monkeypatch.setattr(ep._fs, "has_extension", lambda name, offered=offered: name != LSETSTAT and offered(name))
    scan_p, scan_s = ep_p.scan(IgnoreRules()).entries, ep_s.scan(IgnoreRules()).entries
    got = [outcome(r) for r in ep_p.apply_steps(mixed_steps(scan_p))]
    want = reference(ep_s, mixed_steps(scan_s))
    assert got == want
    assert not [g for g in got if isinstance(g, tuple) and isinstance(g[0], str)], got  # no errors
    assert tree_state(piped) == tree_state(single)
    # the directory mtimes were set after the writes into them
    assert os.stat(piped / "new" / "a").st_mtime == T + 100
    assert os.stat(piped / "new").st_mtime == T + 100
    assert (piped / "new" / "big.bin").stat().st_mode & 0o7777 == 0o600
    assert not leftovers(piped)


def test_guarded_write_refused_when_the_target_changed_after_the_scan(
    sftp_endpoint_factory: Make, root: Path
) -> None:
    make_tree(root, {"x": b"scanned", "y": b"scanned", "z": b"scanned"})
    ep = sftp_endpoint_factory(str(root))
    scan = ep.scan(IgnoreRules()).entries
    os.utime(root / "y", (T, T))  # changed before the batch starts

    def steps() -> Iterator[Step]:
        for name in ("x", "y", "z"):
            yield Step(StepKind.WRITE, name, scan[name], new_entry(3, 1), data=b"new")
            if name == "x":
                # x's write is already under way (admitted, its temporary file being made)
                # when its target changes: the guard right before the rename must see it
                (root / "x").write_bytes(b"changed by someone else")

    results = list(ep.apply_steps(steps()))
    assert [outcome(r) for r in results] == [
        ("BlockingIOError", 11), ("BlockingIOError", 11), (Kind.FILE, 3, (T + 1) * NS, 0o644),
    ]
    assert "changed since scan" in str(results[0])
    assert (root / "x").read_bytes() == b"changed by someone else"
    assert (root / "y").read_bytes() == b"scanned"
    assert (root / "z").read_bytes() == b"new"
    assert not leftovers(root)


def test_new_files_never_replace_what_took_their_names(sftp_endpoint_factory: Make, root: Path) -> None:
    """A write that expects nothing at its name is installed by a rename that refuses to
    replace (no guard round trip): a file, a directory or a symlink that appeared there,
    before the batch or while the write was under way, stays, and the step says so."""
    make_tree(root, {"target": b"t"})
    ep = sftp_endpoint_factory(str(root))
    names = ("file", "dir", "link", "racer", "free")
    (root / "file").write_bytes(b"someone else's")
    (root / "dir").mkdir()
    (root / "link").symlink_to("target")

    def steps() -> Iterator[Step]:
        for name in names:
            yield Step(StepKind.WRITE, name, None, new_entry(3, 1), data=b"new")
            if name == "racer":  # admitted, its temporary file under way: now the name is taken
                (root / "racer").write_bytes(b"first")

    got = [outcome(r) for r in ep.apply_steps(steps())]
    eagain = ("BlockingIOError", 11)
    assert got == [eagain, eagain, eagain, eagain, (Kind.FILE, 3, (T + 1) * NS, 0o644)]
    assert (root / "file").read_bytes() == b"someone else's" and (root / "dir").is_dir()
    assert os.readlink(root / "link") == "target" and (root / "target").read_bytes() == b"t"
    assert (root / "racer").read_bytes() == b"first" and (root / "free").read_bytes() == b"new"
    assert not leftovers(root)
    # the one-at-a-time path agrees
    (root / "free").unlink()
    assert [outcome(r) for r in Endpoint.apply_steps(ep, list(steps()))] == got


def test_guards_of_the_other_kinds(sftp_endpoint_factory: Make, root: Path) -> None:
    make_tree(root, {"f": b"1", "g": b"2", "d": None, "l": "->t", "m": b"3"})
    ep = sftp_endpoint_factory(str(root))
    scan = ep.scan(IgnoreRules()).entries
    (root / "f").write_bytes(b"11")  # REMOVE's expectation is stale
    (root / "l").unlink()
    (root / "l").symlink_to("other")  # LINK's expectation (target) is stale
    (root / "newdir").write_bytes(b"")  # MKDIR expected nothing there
    steps = [
        Step(StepKind.REMOVE, "f", scan["f"]),
        Step(StepKind.REMOVE, "g", scan["g"]),
        Step(StepKind.LINK, "l", scan["l"], Entry(Kind.LINK, target="t2")),
        Step(StepKind.MKDIR, "newdir", None, Entry(Kind.DIR, mode=0o755)),
        Step(StepKind.MKDIR, "d", None, Entry(Kind.DIR, mode=0o755)),  # already a directory: fine
        Step(StepKind.META, "d", None, Entry(Kind.FILE, mode=0o600, mtime_ns=T * NS)),  # not a file
        Step(StepKind.META, "m", scan["m"], Entry(Kind.FILE, mode=0o600, mtime_ns=T * NS)),
        Step(StepKind.META, "missing", None, Entry(Kind.FILE, mode=0o600, mtime_ns=T * NS)),
    ]
    eagain = ("BlockingIOError", 11)
    assert [outcome(r) for r in ep.apply_steps(steps)] == [
        eagain, None, eagain, eagain, None, eagain, None, eagain,
    ]
    assert (root / "f").read_bytes() == b"11" and not (root / "g").exists()
    assert os.readlink(root / "l") == "other" and (root / "newdir").is_file()
    assert os.stat(root / "m").st_mtime == T and os.stat(root / "m").st_mode & 0o7777 == 0o600
    assert not leftovers(root)


@pytest.mark.parametrize("lsetstat", [True, False], ids=["lsetstat", "no-lsetstat"])
def test_metadata_never_goes_through_a_symlink(
    sftp_endpoint_factory: Make, root: Path, lsetstat: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(root, {"target": b"t", "link": "->target"})
    os.chmod(root / "target", 0o644)
    ep = sftp_endpoint_factory(str(root))
    if not lsetstat:
        offered = ep._fs.has_extension
        monkeypatch.setattr(ep._fs, "has_extension", lambda name: name != LSETSTAT and offered(name))
    step = Step(StepKind.META, "link", None, Entry(Kind.FILE, mode=0o600, mtime_ns=T * NS), guarded=False)
    got = [outcome(r) for r in ep.apply_steps([step])]
    assert got == [outcome(next(iter(Endpoint.apply_steps(ep, [step]))))]
    if not lsetstat:
        assert got == [("OSError", 40)]  # ELOOP: refused
    assert (root / "target").stat().st_mode & 0o7777 == 0o644
    assert os.stat(root / "target").st_mtime != T


def test_a_directory_in_the_way_fails_only_its_own_step(sftp_endpoint_factory: Make, tmp_path: Path) -> None:
    piped, single = tmp_path / "piped", tmp_path / "single"
    make_tree(piped, {"a": b"a", "blocked/inside": b"i", "z": b"z"})
    shutil.copytree(piped, single, symlinks=True)  # same mtimes: the trees are compared
    ep_p, ep_s = sftp_endpoint_factory(str(piped)), sftp_endpoint_factory(str(single))

    def steps(scan: dict[str, Entry]) -> list[Step]:
        out = [Step(StepKind.WRITE, f"n{i:02}", None, new_entry(2, i), data=b"ok") for i in range(20)]
        # the plan believed "blocked" was a file (unguarded: the rename meets the directory)
        out.insert(10, Step(StepKind.WRITE, "blocked", None, new_entry(1, 1), guarded=False, data=b"x"))
        out.insert(11, Step(StepKind.LINK, "blocked", None, Entry(Kind.LINK, target="a"), guarded=False))
        out.insert(12, Step(StepKind.REMOVE, "blocked", scan["blocked"].replace(kind=Kind.FILE), guarded=False))
        out.insert(13, Step(StepKind.REMOVE, "blocked", scan["blocked"]))  # not empty
        out.insert(14, Step(StepKind.MKDIR, "a", None, Entry(Kind.DIR, mode=0o755), guarded=False))
        out.insert(15, Step(StepKind.MKDIR, "nope/deeper", None, Entry(Kind.DIR, mode=0o755)))
        out.insert(16, Step(StepKind.WRITE, "nope/file", None, new_entry(1, 1), data=b"x"))
        return out

    got = [outcome(r) for r in ep_p.apply_steps(steps(ep_p.scan(IgnoreRules()).entries))]
    want = reference(ep_s, steps(ep_s.scan(IgnoreRules()).entries))
    assert got == want
    assert got[10] == ("IsADirectoryError", 21) and got[11] == ("IsADirectoryError", 21)
    assert got[12] == ("IsADirectoryError", 21) and got[13] == ("OSError", 39)
    assert got[14] == ("FileExistsError", 17) and got[15][0] == "FileNotFoundError"
    assert got[16][0] == "FileNotFoundError"
    assert sum(1 for g in got if isinstance(g, tuple) and g[0] is Kind.FILE) == 20
    assert tree_state(piped) == tree_state(single)
    assert (piped / "blocked" / "inside").read_bytes() == b"i"
    assert not leftovers(piped) and not leftovers(single)



def test_a_read_only_directory_in_the_middle(
    sftp_endpoint_factory: Make, tmp_path: Path, immutable: Callable[[Path], None]
) -> None:
    piped, single = tmp_path / "piped", tmp_path / "single"
    make_tree(piped, {"a/x": b"old", "locked/x": b"old", "z/x": b"old"})
    shutil.copytree(piped, single, symlinks=True)  # same mtimes: the trees are compared
    for r in (piped, single):
        immutable(r / "locked")
    ep_p, ep_s = sftp_endpoint_factory(str(piped)), sftp_endpoint_factory(str(single))

    def steps(scan: dict[str, Entry]) -> list[Step]:
        out: list[Step] = []
        for d in ("a", "locked", "z"):
            out.append(Step(StepKind.WRITE, f"{d}/x", scan[f"{d}/x"], new_entry(3, 1), data=b"new"))
            out.extend(Step(StepKind.WRITE, f"{d}/n{i}", None, new_entry(1, i), data=b"n") for i in range(30))
            out.append(Step(StepKind.REMOVE, f"{d}/x", scan[f"{d}/x"].replace(size=3, mtime_ns=(T + 1) * NS)))
            out.append(Step(StepKind.MKDIR, f"{d}/sub", None, Entry(Kind.DIR, mode=0o700)))
        for d in ("a", "locked", "z"):
            out.append(Step(StepKind.META, d, None, Entry(Kind.DIR, mode=0o755, mtime_ns=T * NS)))
        return out

    got = [outcome(r) for r in ep_p.apply_steps(steps(ep_p.scan(IgnoreRules()).entries))]
    want = reference(ep_s, steps(ep_s.scan(IgnoreRules()).entries))
    assert got == want
    failed = [i for i, g in enumerate(got) if isinstance(g, tuple) and isinstance(g[0], str)]
    # everything in the locked directory (and its own metadata) failed; all else landed
    assert failed == list(range(33, 66)) + [100], got
    # (the remove's guard saw the old file: the write before it had failed)
    assert [got[i] for i in failed if got[i][0] != "PermissionError"] == [("BlockingIOError", 11)]
    for r in (piped, single):
        subprocess.run(["chattr", "-i", str(r / "locked")], check=True)
    assert tree_state(piped) == tree_state(single)
    assert (piped / "locked" / "x").read_bytes() == b"old" and not (piped / "a" / "x").exists()
    assert not leftovers(piped)


def test_an_abandoned_batch_leaves_no_temporary_files(sftp_endpoint_factory: Make, root: Path) -> None:
    ep = sftp_endpoint_factory(str(root))
    steps = [Step(StepKind.WRITE, f"f{i:03}", None, new_entry(100, i), data=b"x" * 100) for i in range(200)]
    batch = ep.apply_steps(steps)
    first = next(batch)
    assert outcome(first) == (Kind.FILE, 100, T * NS, 0o644)
    batch.close()  # the rest was in flight: finished without being installed
    assert not leftovers(root)
    assert (root / "f000").read_bytes() == b"x" * 100
    assert ep.stat("f000") is not None  # the session is still usable
    assert list(ep.apply_steps(steps[199:])) and (root / "f199").exists()


def test_streamed_write_in_a_batch(sftp_endpoint_factory: Make, root: Path) -> None:
    ep = sftp_endpoint_factory(str(root))
    chunks = iter([b"a" * 100_000, b"b" * 100_000])
    steps = [
        Step(StepKind.WRITE, "before", None, new_entry(1, 1), data=b"1"),
        Step(StepKind.WRITE, "streamed", None, new_entry(200_000, 2), chunks=chunks),
        Step(StepKind.WRITE, "after", None, new_entry(1, 3), data=b"3"),
    ]
    assert [outcome(r) for r in ep.apply_steps(steps)] == [
        (Kind.FILE, 1, (T + 1) * NS, 0o644), (Kind.FILE, 200_000, (T + 2) * NS, 0o644),
        (Kind.FILE, 1, (T + 3) * NS, 0o644),
    ]
    assert (root / "streamed").read_bytes() == b"a" * 100_000 + b"b" * 100_000
    assert not leftovers(root)


def read_outcome(result: tuple[bytes, Entry | None] | OSError) -> object:
    if isinstance(result, OSError):
        return (type(result).__name__, result.errno)
    data, entry = result
    return (data, None if entry is None else (entry.kind, entry.size, entry.mtime_ns, entry.mode, entry.target))


def test_read_files_in_order_with_errors_in_place(sftp_endpoint_factory: Make, root: Path) -> None:
    files: dict[str, bytes | str | None] = {f"d{i % 7}/f{i:04}": os.urandom(i * 13 % 9000) for i in range(600)}
    files["big"] = os.urandom(900_000)
    files["empty"] = b""
    files["grew"] = b"0123456789"
    files["link"] = "->big"
    files["adir"] = None
    make_tree(root, files)
    ep = sftp_endpoint_factory(str(root))
    scan = ep.scan(IgnoreRules()).entries
    wanted = [FileRead(p, scan[p].size) for p in sorted(p for p in files if p.startswith("d"))]
    wanted[100:100] = [FileRead("missing", 5), FileRead("big", scan["big"].size), FileRead("adir", 0)]
    wanted[300:300] = [FileRead("empty", 0), FileRead("grew", 5), FileRead("link", 3), FileRead("d0/f0000/x", 1)]
    got = [read_outcome(r) for r in ep.read_files(wanted)]
    want = [read_outcome(r) for r in Endpoint.read_files(ep, wanted)]
    assert got[100] == ("FileNotFoundError", 2)
    assert got[101][0] == files["big"]
    assert isinstance(got[102], tuple) and isinstance(got[102][0], str)  # a directory: an error
    assert got[300] == (b"", (Kind.FILE, 0, scan["empty"].mtime_ns, scan["empty"].mode, None))
    assert got[301][0] == b"012345"  # at most size + 1 bytes: growth shows
    assert got[302][1][0] is Kind.LINK and got[302][1][4] == "big"  # the lstat reports the link
    assert got[303] == ("FileNotFoundError", 2)
    for i, (f, g) in enumerate(zip(wanted, got, strict=True)):
        if f.path in files and f.path.startswith("d"):
            assert g == (files[f.path], (Kind.FILE, scan[f.path].size, scan[f.path].mtime_ns, scan[f.path].mode, None)), i
    assert got == want


def test_hash_files_equals_hash_file(sftp_endpoint_factory: Make, root: Path) -> None:
    files: dict[str, bytes | str | None] = {f"h{i:03}": os.urandom(i * 97 % 70_000) for i in range(150)}
    files["big"] = os.urandom(3_000_000)
    files["adir"] = None
    make_tree(root, files)
    ep = sftp_endpoint_factory(str(root))
    paths = sorted(p for p in files if p.startswith("h"))
    paths[50:50] = ["missing", "big", "adir"]
    got = list(ep.hash_files(paths))
    assert isinstance(got[50], FileNotFoundError) and isinstance(got[52], OSError)
    for path, digest in zip(paths, got, strict=True):
        if path not in ("missing", "adir"):
            assert digest == ep.hash_file(path), path


def test_an_mtime_sftp_cannot_store_fails_only_its_step(sftp_endpoint_factory: Make, root: Path) -> None:
    ep = sftp_endpoint_factory(str(root))
    before_1970 = Entry(Kind.FILE, size=1, mtime_ns=-5 * NS, mode=0o644)
    steps = [
        Step(StepKind.WRITE, "old", None, before_1970, data=b"x"),
        Step(StepKind.WRITE, "fine", None, new_entry(1, 1), data=b"y"),
        Step(StepKind.META, "fine", None, Entry(Kind.FILE, mode=0o600, mtime_ns=2**40 * NS)),
    ]
    got = [outcome(r) for r in ep.apply_steps(steps)]
    assert got == [("OSError", 22), (Kind.FILE, 1, (T + 1) * NS, 0o644), ("OSError", 22)]
    assert not (root / "old").exists() and (root / "fine").read_bytes() == b"y"
    assert not leftovers(root)


def test_listdirs_equals_listdir(sshd: SSHD, root: Path) -> None:
    make_tree(root, {f"big/f{i:04}": b"" for i in range(1500)})  # many READDIR replies
    make_tree(root, {"empty": None, "small/a": b"a", "small/b": "->a", "file": b"f"})
    conn = connect(sshd.conn_spec())
    try:
        fs = conn.open_sftp()
        paths = [str(root / n) for n in ("big", "empty", "missing", "small", "file", "small")]
        got = fs.listdirs(paths)
        for path, listing in zip(paths, got, strict=True):
            if path.endswith(("missing", "file")):
                assert isinstance(listing, OSError), path
                continue
            assert not isinstance(listing, OSError)
            assert sorted(listing, key=str) == sorted(fs.listdir(path), key=str)
        assert isinstance(got[2], FileNotFoundError)
        assert len(got[0]) == 1500 and got[1] == []
        fs.close()
    finally:
        conn.close()


def test_a_lost_connection_ends_a_batch_with_connect_error(sshd: SSHD, root: Path) -> None:
    from srsync.endpoints.sftp import open_sftp_endpoint

    ep = open_sftp_endpoint(sshd.conn_spec(), str(root))
    try:
        steps = [Step(StepKind.WRITE, f"f{i:04}", None, new_entry(100, i), data=b"x" * 100) for i in range(3000)]
        batch = ep.apply_steps(steps)
        assert outcome(next(batch)) == (Kind.FILE, 100, T * NS, 0o644)
        sshd.stop()  # kills the listener and every session
        with pytest.raises(ConnectError):
            for _ in batch:
                pass
        with pytest.raises(ConnectError):
            list(ep.read_files([FileRead("f0000", 100)]))
    finally:
        ep.close()
        sshd.start()
    # whatever landed is whole: the content at every final name is complete
    assert all(p.read_bytes() == b"x" * 100 for p in root.iterdir() if not p.name.startswith(TEMP_PREFIX))
