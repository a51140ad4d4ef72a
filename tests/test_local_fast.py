"""LocalEndpoint's batch fast paths agree with the generic Endpoint ones, on real files.

``scan``, ``read_files``, ``hash_files`` and ``apply_steps`` of the local
endpoint are tight loops of their own; these tests hold them to the slow
path's results (``Endpoint.read_files`` / ``Endpoint.apply_steps`` run on the
same endpoint) and to the safety rules: guarded steps refuse a changed
target, no temporary file is left behind, paths are validated, symlinks are
never followed.
"""

from __future__ import annotations

import errno
import os
import threading
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import make_tree, tree_state

from srsync.core.entry import Entry, Kind
from srsync.core.ignore import IgnoreRules
from srsync.endpoints.base import Endpoint, FileRead, Step, StepKind
from srsync.endpoints.hashing import FD_CHUNK, digest_bytes
from srsync.endpoints.local import LocalEndpoint

T0 = 1_600_000_000_123_456_789


def _temps(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".srsync-tmp-*")]


def _plain(result: object) -> object:
    """A result with the inode (not part of Entry equality) and errors reduced to comparable parts."""
    if isinstance(result, OSError):
        return (type(result), result.errno)
    if isinstance(result, tuple):
        return tuple(_plain(r) for r in result)
    if isinstance(result, Entry):
        return (result.kind, result.size, result.mtime_ns, result.mode, result.target)
    return result


# ---- scan ----------------------------------------------------------------------


def test_scan_entries_match_lstat(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {"a/f": b"12345", "a/e": b"", "a/sub/g": b"x" * 5000, "top": b"t", "lnk": "->a/f", "a/empty": None},
    )
    os.chmod(tmp_path / "a" / "f", 0o640)
    res = LocalEndpoint(str(tmp_path)).scan(IgnoreRules())
    assert set(res.entries) == {"a", "a/f", "a/e", "a/sub", "a/sub/g", "top", "lnk", "a/empty"}
    for rel, e in res.entries.items():
        s = os.lstat(tmp_path / rel)
        assert e.ino == s.st_ino
        if e.kind is Kind.FILE:
            assert (e.size, e.mtime_ns, e.mode) == (s.st_size, s.st_mtime_ns, s.st_mode & 0o7777)
        elif e.kind is Kind.DIR:
            assert (e.size, e.mtime_ns, e.mode) == (0, s.st_mtime_ns, s.st_mode & 0o7777)
        else:
            assert e == Entry(Kind.LINK, target="a/f")
    assert res.problems == [] and res.temp_files == []


def test_scan_names_checked_in_plain_and_non_ascii_dirs(tmp_path: Path) -> None:
    nfd = unicodedata.normalize("NFD", "café")
    make_tree(
        tmp_path,
        {
            "plain/ok": b"1",
            "plain/.srsync-tmp-0123456789abcdef-ok": b"torn",
            f"mixed/{nfd}": b"2",
            "mixed/ascii": b"3",
            "mixed/.srsync-tmp-0123456789abcdef-x": b"torn",
            "twins/K": b"ascii",
            "twins/\u212a": b"kelvin sign: NFC is 'K'",
            f"twins/{nfd}": b"nfd",
            "twins/café": b"nfc",
            f"twins/{unicodedata.normalize('NFD', 'Über')}/inside": b"i",
            "twins/Über/inside": b"j",
            "twins/alone": b"a",
        },
    )
    (tmp_path / "mixed" / os.fsdecode(b"bad\xffname")).write_bytes(b"?")
    ep = LocalEndpoint(str(tmp_path))
    res = ep.scan(IgnoreRules())
    files = {p for p, e in res.entries.items() if e.kind is Kind.FILE}
    assert files == {"plain/ok", "mixed/café", "mixed/ascii", "twins/alone"}
    assert sorted(res.temp_files) == [
        "mixed/.srsync-tmp-0123456789abcdef-x",
        "plain/.srsync-tmp-0123456789abcdef-ok",
    ]
    problems = {(p.path, p.message.split(";")[0]) for p in res.problems}
    assert problems == {
        ("mixed/bad\\xffname", "name is not valid UTF-8 or not allowed"),
        ("twins/K", "two names differ only in Unicode normalisation"),
        ("twins/café", "two names differ only in Unicode normalisation"),
        ("twins/Über", "two names differ only in Unicode normalisation"),
    }
    # both twins are skipped, and nothing below a twin directory is listed
    assert not [p for p in res.entries if p.startswith("twins/Über")]
    # the NFD name stays addressable through its NFC path
    assert ep.stat("mixed/café") == res.entries["mixed/café"]
    got = list(ep.read_files([FileRead("mixed/café", 1)]))
    assert got[0] == (b"2", res.entries["mixed/café"])


def test_scan_prunes_with_rules_and_never_follows_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    make_tree(outside, {"secret": b"s"})
    root = tmp_path / "root"
    make_tree(root, {"keep/a.txt": b"a", "keep/b.o": b"o", "cache/x": b"x", "src/.srsyncignore": b"*.c\r\n"})
    (root / "keep" / "out").symlink_to(outside)
    res = LocalEndpoint(str(root)).scan(IgnoreRules.from_patterns(["*.o", "cache/"]))
    assert set(res.entries) == {"keep", "keep/a.txt", "keep/out", "src", "src/.srsyncignore"}
    assert res.entries["keep/out"].kind is Kind.LINK
    assert res.ignore_files == {"src": "*.c\n"}  # read as text, as before


def test_scan_reports_special_files(tmp_path: Path) -> None:
    make_tree(tmp_path, {"f": b"x"})
    os.mkfifo(tmp_path / "fifo")
    res = LocalEndpoint(str(tmp_path)).scan(IgnoreRules())
    assert set(res.entries) == {"f"}
    assert [(p.path, p.message) for p in res.problems] == [
        ("fifo", "special file (device, fifo or socket); skipped")
    ]


def test_scan_of_a_symlinked_root_lists_its_target(tmp_path: Path) -> None:
    make_tree(tmp_path / "real", {"d/f": b"x"})
    (tmp_path / "link").symlink_to(tmp_path / "real")
    res = LocalEndpoint(str(tmp_path / "link")).scan(IgnoreRules())
    assert set(res.entries) == {"d", "d/f"}


# ---- read_files ----------------------------------------------------------------


def _slow_read(ep: LocalEndpoint, files: list[FileRead]) -> list[object]:
    return [_plain(r) for r in Endpoint.read_files(ep, files)]


def test_read_files_matches_slow_path(tmp_path: Path) -> None:
    big = os.urandom(3 * FD_CHUNK + 5)
    make_tree(tmp_path, {"a": b"aaa", "e": b"", "d/b": b"b" * 4096, "big": big, "sub/x": None, "l": "->a"})
    ep = LocalEndpoint(str(tmp_path))
    scan = ep.scan(IgnoreRules()).entries
    files = [
        FileRead("a", 3), FileRead("e", 0), FileRead("d/b", 4096), FileRead("big", len(big)),
        FileRead("missing", 1), FileRead("d/missing", 1), FileRead("l", 1), FileRead("sub/x", 0),
        FileRead("a", 1),  # scanned smaller than it is: size + 1 bytes show the growth
        FileRead("d/b", 5000),  # scanned bigger: shorter content shows it
        # (files are opened in their directory's fd: a directory that fails fails alone)
        FileRead("gone/x", 1), FileRead("d/b", 4096), FileRead("a/x", 1), FileRead("d/b", 4096), FileRead("a", 3),
    ]
    fast = [_plain(r) for r in ep.read_files(files)]
    assert fast == _slow_read(ep, files)
    got = list(ep.read_files(files[:4]))
    assert got == [(b"aaa", scan["a"]), (b"", scan["e"]), (b"b" * 4096, scan["d/b"]), (big, scan["big"])]
    assert [r[1].ino for r in got if isinstance(r, tuple) and r[1] is not None] == [
        scan[p].ino for p in ("a", "e", "d/b", "big")
    ]
    assert fast[6] == (OSError, errno.ELOOP)  # a symlink is never read through
    assert fast[8] == (b"aa", fast[0][1])  # type: ignore[index]
    assert fast[9][0] == b"b" * 4096  # type: ignore[index]
    assert fast[10] == (FileNotFoundError, errno.ENOENT) and fast[12] == (NotADirectoryError, errno.ENOTDIR)
    assert fast[11] == fast[13] == fast[2] and fast[14] == fast[0]


def test_read_files_sees_a_file_grown_after_the_scan(tmp_path: Path) -> None:
    make_tree(tmp_path, {"log": b"0123456789"})
    ep = LocalEndpoint(str(tmp_path))
    before = ep.scan(IgnoreRules()).entries["log"]
    with open(tmp_path / "log", "ab") as fh:
        fh.write(b"more")
    os.utime(tmp_path / "log", ns=(before.mtime_ns, before.mtime_ns))  # even with the old mtime
    ((data, after),) = list(ep.read_files([FileRead("log", before.size)]))  # type: ignore[misc]
    assert len(data) == before.size + 1 and data == b"0123456789m"
    assert after is not None and after.size == 14 and after != before


def test_read_files_does_not_hang_on_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "p")
    ep = LocalEndpoint(str(tmp_path))
    out: list[object] = []
    t = threading.Thread(target=lambda: out.extend(ep.read_files([FileRead("p", 3)])), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "read_files blocked on a fifo"
    assert out == [(b"", None)] or isinstance(out[0], OSError)
    got = list(ep.hash_files(["p"]))
    assert isinstance(got[0], OSError)


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../x", "a/..", "a//b", "a/", "a/\0b"])
def test_batches_validate_every_path(tmp_path: Path, bad: str) -> None:
    make_tree(tmp_path, {"a/f": b"x"})
    ep = LocalEndpoint(str(tmp_path))
    assert list(ep.read_files([FileRead("a/f", 1)]))[0][0] == b"x"  # type: ignore[index]
    # the parent "a" is known good now: the bad part must still be caught
    with pytest.raises(ValueError):
        list(ep.read_files([FileRead(bad, 1)]))
    # amid good paths (read_files checks them a batch at a time): the good ones before
    # it are read, and it is refused in its place
    results = ep.read_files([FileRead("a/f", 1), FileRead(bad, 1), FileRead("a/f", 1)])
    assert next(results)[0] == b"x"  # type: ignore[index]
    with pytest.raises(ValueError):
        next(results)
    with pytest.raises(ValueError):
        list(ep.hash_files([bad]))
    with pytest.raises(ValueError):
        list(ep.apply_steps([Step(StepKind.WRITE, bad, None, Entry(Kind.FILE, 1, T0, 0o644), data=b"x")]))
    with pytest.raises(ValueError):
        ep.stat(bad)
    assert tree_state(tmp_path) == {"a": ("dir", 0o755), "a/f": tree_state(tmp_path)["a/f"]}


# ---- hash_files ----------------------------------------------------------------


def test_hash_files_matches_digest(tmp_path: Path) -> None:
    blobs = {
        "e": b"", "s": b"small", "c": os.urandom(FD_CHUNK), "c1": os.urandom(FD_CHUNK - 1),
        "big": os.urandom(3 * FD_CHUNK + 17),
    }
    make_tree(tmp_path, {**blobs, "d": None, "l": "->s"})
    ep = LocalEndpoint(str(tmp_path))
    got = list(ep.hash_files([*blobs, "missing", "d", "l"]))
    assert got[: len(blobs)] == [digest_bytes(b) for b in blobs.values()]
    assert [ep.hash_file(p) for p in blobs] == [digest_bytes(b) for b in blobs.values()]
    missing, directory, link = got[len(blobs) :]
    assert isinstance(missing, FileNotFoundError)
    assert isinstance(directory, IsADirectoryError)
    assert isinstance(link, OSError) and link.errno == errno.ELOOP


# ---- apply_steps ---------------------------------------------------------------

_TREE: dict[str, bytes | str | None] = {
    "d/old": b"old content",
    "d/keep": b"keep",
    "d/lnk": "->old",
    "gone/f": b"f",
    "emptydir": None,
    "file": b"a file",
    "x": None,
}


def _steps(root: Path) -> list[Step]:
    ep = LocalEndpoint(str(root))
    e = ep.scan(IgnoreRules()).entries
    stale = Entry(Kind.FILE, 1, 1, 0o644)
    f = Entry(Kind.FILE, 3, T0, 0o640)
    return [
        Step(StepKind.MKDIR, "new", None, Entry(Kind.DIR, 0, T0, 0o750)),
        Step(StepKind.MKDIR, "emptydir", None, Entry(Kind.DIR, 0, T0, 0o755)),  # there already: fine
        Step(StepKind.MKDIR, "file", None, Entry(Kind.DIR, 0, T0, 0o755)),  # a file in the way
        Step(StepKind.WRITE, "new/a", None, f, data=b"abc"),
        Step(StepKind.WRITE, "new/b", None, Entry(Kind.FILE, 0, T0, 0o600), data=b""),
        Step(StepKind.WRITE, "new/c", None, f, chunks=iter([b"a", b"", b"bc"])),
        Step(StepKind.WRITE, "d/old", e["d/old"], f, data=b"new"),  # expected state: replaced
        Step(StepKind.WRITE, "d/keep", stale, f, data=b"new"),  # changed since scan: refused
        Step(StepKind.WRITE, "file", None, f, data=b"new"),  # appeared since scan: refused
        Step(StepKind.WRITE, "x", None, f, data=b"new", guarded=False),  # a directory in the way
        Step(StepKind.WRITE, "nodir/f", None, f, data=b"new"),
        Step(StepKind.WRITE, "unguarded", None, f, data=b"abc", guarded=False),
        Step(StepKind.LINK, "d/lnk", e["d/lnk"], Entry(Kind.LINK, target="keep")),
        Step(StepKind.LINK, "new/l", None, Entry(Kind.LINK, target="a")),
        Step(StepKind.LINK, "d/keep", None, Entry(Kind.LINK, target="a")),  # refused
        Step(StepKind.META, "d/keep", e["d/keep"], Entry(Kind.FILE, 4, T0, 0o600)),
        Step(StepKind.META, "emptydir", None, Entry(Kind.DIR, 0, T0, 0o700)),
        Step(StepKind.META, "d/lnk", None, Entry(Kind.LINK, target="keep")),  # never through a link
        Step(StepKind.META, "file", None, Entry(Kind.DIR, 0, T0, 0o700)),  # kind changed: refused
        Step(StepKind.META, "missing", None, Entry(Kind.FILE, 0, T0, 0o600)),
        Step(StepKind.META, "file", stale, Entry(Kind.FILE, 0, T0, 0o600)),  # refused
        Step(StepKind.REMOVE, "gone/f", e["gone/f"]),
        Step(StepKind.REMOVE, "gone", e["gone"]),
        Step(StepKind.REMOVE, "file", stale),  # refused
        Step(StepKind.REMOVE, "", Entry(Kind.DIR, 0, 0, 0o755), guarded=False),  # never the root
        Step(StepKind.WRITE, "gone/again", None, f, data=b"abc"),  # its directory was just removed
        Step(StepKind.MKDIR, "gone", None, Entry(Kind.DIR, 0, T0, 0o755)),
        Step(StepKind.WRITE, "gone/again", None, f, data=b"abc"),
    ]


@pytest.mark.parametrize("unnamed", [True, False], ids=["o_tmpfile", "named-temp"])
def test_apply_steps_matches_slow_path(tmp_path: Path, unnamed: bool) -> None:
    fast_root, slow_root = tmp_path / "fast", tmp_path / "slow"
    make_tree(fast_root, _TREE)
    make_tree(slow_root, _TREE)
    fast_steps = _steps(fast_root)
    fast_ep = LocalEndpoint(str(fast_root))
    fast_ep._tmpfile = fast_ep._tmpfile and unnamed
    fast = [_plain(r) for r in fast_ep.apply_steps(fast_steps)]
    slow_ep = LocalEndpoint(str(slow_root))
    slow = [_plain(r) for r in Endpoint.apply_steps(slow_ep, _steps(slow_root))]
    # a small write done reports nothing (None: written as asked, no fstat per file), a
    # streamed one what it stored; the stored states are compared through the trees below
    small = {i for i, st in enumerate(fast_steps) if st.kind is StepKind.WRITE and st.chunks is None}
    done = {i for i in small if isinstance(slow[i], tuple) and len(slow[i]) == 5}
    assert done and all(fast[i] is None for i in done)
    assert [None if i in done else r for i, r in enumerate(slow)] == fast
    assert tree_state(fast_root) == tree_state(slow_root)
    assert _temps(fast_root) == []
    refused = [i for i, r in enumerate(fast) if isinstance(r, tuple) and r[1] == errno.EAGAIN]
    assert refused == [2, 7, 8, 14, 18, 19, 20, 23]
    assert (fast_root / "d" / "keep").read_bytes() == b"keep"
    assert (fast_root / "file").read_bytes() == b"a file"
    assert slow[3] == (Kind.FILE, 3, T0, 0o640, None) and fast[3] is None
    st = os.stat(fast_root / "new/a")
    assert (st.st_size, st.st_mtime_ns, st.st_mode & 0o7777) == (3, T0, 0o640)
    assert fast[9] == (IsADirectoryError, errno.EISDIR)
    assert fast[17] == (OSError, errno.ELOOP)
    assert fast[24] == (PermissionError, errno.EPERM)
    assert fast[25] == (FileNotFoundError, errno.ENOENT) and fast[27] is None and slow[27] == slow[3]
    st = os.stat(fast_root / "new" / "a")
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o640, T0)


def test_streamed_write_returns_the_stored_entry_small_write_none(tmp_path: Path) -> None:
    ep = LocalEndpoint(str(tmp_path))
    want = Entry(Kind.FILE, 2, T0, 0o644)
    (got,) = list(ep.apply_steps([Step(StepKind.WRITE, "f", None, want, chunks=iter([b"h", b"i"]))]))
    assert isinstance(got, Entry)
    assert got == ep.stat("f") == want and got.ino == os.stat(tmp_path / "f").st_ino
    (got,) = list(ep.apply_steps([Step(StepKind.WRITE, "g", None, want, data=b"hi")]))
    assert got is None and ep.stat("g") == want  # written as asked; no fstat per small file


def test_guarded_write_refused_when_target_changed_after_scan(tmp_path: Path) -> None:
    make_tree(tmp_path, {"d/f": b"original"})
    ep = LocalEndpoint(str(tmp_path))
    scanned = ep.scan(IgnoreRules()).entries["d/f"]
    (tmp_path / "d" / "f").write_bytes(b"edited by the user")
    step = Step(StepKind.WRITE, "d/f", scanned, Entry(Kind.FILE, 3, T0, 0o644), data=b"new")
    (got,) = list(ep.apply_steps([step]))
    assert isinstance(got, OSError) and got.errno == errno.EAGAIN
    assert (tmp_path / "d" / "f").read_bytes() == b"edited by the user"
    assert _temps(tmp_path) == []
    # a symlink swapped in for the file is refused as well, and not written through
    (tmp_path / "d" / "f").unlink()
    (tmp_path / "d" / "f").symlink_to(tmp_path / "elsewhere")
    (got,) = list(ep.apply_steps([step]))
    assert isinstance(got, OSError) and got.errno == errno.EAGAIN
    assert not (tmp_path / "elsewhere").exists() and _temps(tmp_path) == []


@pytest.mark.parametrize("unnamed", [True, False], ids=["o_tmpfile", "named-temp"])
def test_a_name_taken_while_a_new_file_is_written_is_never_replaced(tmp_path: Path, unnamed: bool) -> None:
    ep = LocalEndpoint(str(tmp_path))
    ep._tmpfile = ep._tmpfile and unnamed

    def racing() -> Iterator[bytes]:
        yield b"first half "
        (tmp_path / "f").write_bytes(b"created meanwhile")  # after the scan, during the write
        yield b"second half"

    step = Step(StepKind.WRITE, "f", None, Entry(Kind.FILE, 22, T0, 0o644), chunks=racing())
    (got,) = list(ep.apply_steps([step]))
    assert isinstance(got, OSError) and got.errno == errno.EAGAIN
    assert (tmp_path / "f").read_bytes() == b"created meanwhile"
    assert sorted(os.listdir(tmp_path)) == ["f"]  # no temporary file left either


def test_failing_chunks_leave_nothing_behind(tmp_path: Path) -> None:
    make_tree(tmp_path, {"f": b"old"})
    ep = LocalEndpoint(str(tmp_path))

    def broken():  # type: ignore[no-untyped-def]
        yield b"new "
        raise OSError(errno.EIO, "source vanished")

    step = Step(StepKind.WRITE, "f", ep.stat("f"), Entry(Kind.FILE, 9, T0, 0o644), chunks=broken())
    (got,) = list(ep.apply_steps([step]))
    assert isinstance(got, OSError) and got.errno == errno.EIO
    assert (tmp_path / "f").read_bytes() == b"old" and _temps(tmp_path) == []


def test_writes_below_a_symlinked_directory_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    make_tree(root, {"d": None})
    (root / "lnk").symlink_to(outside)
    ep = LocalEndpoint(str(root))
    f = Entry(Kind.FILE, 1, T0, 0o644)
    got = list(ep.apply_steps([Step(StepKind.WRITE, "d/a", None, f, data=b"x"),
                               Step(StepKind.WRITE, "lnk/a", None, f, data=b"x")]))
    assert got[0] is None and (root / "d" / "a").read_bytes() == b"x"  # written
    assert isinstance(got[1], OSError)
    assert list(outside.iterdir()) == []


def test_writes_reach_nfd_directories_found_by_the_scan(tmp_path: Path) -> None:
    nfd = unicodedata.normalize("NFD", "Über")
    (tmp_path / nfd).mkdir()
    ep = LocalEndpoint(str(tmp_path))
    assert "Über" in ep.scan(IgnoreRules()).entries
    got = list(ep.apply_steps([
        Step(StepKind.WRITE, "Über/f", None, Entry(Kind.FILE, 4, T0, 0o644), data=b"data"),
        Step(StepKind.MKDIR, "Über/sub", None, Entry(Kind.DIR, 0, T0, 0o755)),
        Step(StepKind.WRITE, "Über/sub/g", None, Entry(Kind.FILE, 1, T0, 0o644), data=b"g"),
    ]))
    assert all(isinstance(r, Entry) or r is None for r in got), got
    assert (tmp_path / nfd / "f").read_bytes() == b"data"
    assert (tmp_path / nfd / "sub" / "g").read_bytes() == b"g"
    assert sorted(os.listdir(tmp_path)) == [nfd]


def test_long_and_non_ascii_names_get_valid_temp_names(tmp_path: Path) -> None:
    ep = LocalEndpoint(str(tmp_path))
    names = ["é" * 127, "a" * 255, "ü" + "b" * 250]
    f = Entry(Kind.FILE, 1, T0, 0o644)
    got = list(ep.apply_steps([Step(StepKind.WRITE, n, None, f, data=b"x") for n in names]))
    assert all(r is None for r in got), got  # all written
    assert sorted(os.listdir(tmp_path)) == sorted(names)


def test_a_taken_temp_name_is_never_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    root = tmp_path / "root"
    root.mkdir()
    ep = LocalEndpoint(str(root))
    planted = root / ep._temp_name("f")
    planted.symlink_to(outside)  # someone guessed the next temporary name
    f = Entry(Kind.FILE, 3, T0, 0o644)
    (got,) = list(ep.apply_steps([Step(StepKind.WRITE, "f", None, f, data=b"new")]))
    assert got is None  # written
    assert (root / "f").read_bytes() == b"new" and outside.read_bytes() == b"precious"
    assert planted.is_symlink()  # left alone (the next scan reports it as a temp file)
    ep.symlink("l", "f")
    (root / ep._temp_name("g")).write_bytes(b"leftover")
    ep.write_file("g", iter([b"g"]), 0o644, T0)
    assert (root / "g").read_bytes() == b"g"
