"""The remote helper's bulk paths over a real sshd: columnar scans, packed read_files, directory
descriptors cached within a batch (never through a symlink), exact modes without a chmod per file."""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest

from srsync.agent import remote
from srsync.core.entry import Entry, Kind
from srsync.core.ignore import IgnoreRules
from srsync.endpoints.agent import AgentEndpoint
from srsync.endpoints.base import FileRead, Step, StepKind
from srsync.endpoints.local import LocalEndpoint

T0 = 1_600_000_000_123_456_789
FAR_FUTURE = 2**63 + 5 * 10**9 + 7  # past 2262: does not fit the scan's i64 column
AgentFactory = Callable[..., AgentEndpoint]


def _file(mode: int = 0o644, size: int = 0, mtime_ns: int = T0) -> Entry:
    return Entry(Kind.FILE, size=size, mtime_ns=mtime_ns, mode=mode)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _temps(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(remote.TEMP_PREFIX + "*")]


# ---- scan ------------------------------------------------------------------------


def test_scan_columns_match_local_scan(agent_endpoint_factory: AgentFactory, tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    # more entries than one ITEM carries, spread over directories of different sizes
    for d in range(30):
        (root / f"d{d}").mkdir()
        for i in range(d * 20):
            path = root / f"d{d}" / f"f{i}"
            path.write_bytes(b"x" * (i % 7))
            os.utime(path, ns=(T0 + i, T0 + i))
    (root / "d1" / "link").symlink_to("f0")
    (root / "d1" / "dangling").symlink_to("../nowhere/ünï")
    (root / unicodedata.normalize("NFD", "café")).mkdir()
    (root / unicodedata.normalize("NFD", "café") / "x").write_bytes(b"x")
    (root / "ünï cödé.txt").write_bytes(b"u")
    far = root / "d2" / "far-future"
    far.write_bytes(b"f")
    os.utime(far, ns=(FAR_FUTURE, FAR_FUTURE))
    os.chmod(root / "d3" / "f1", 0o4750)
    os.mkfifo(root / "d4" / "fifo")
    (root / os.fsdecode(b"bad\xffname")).write_bytes(b"?")
    ep = agent_endpoint_factory(str(root))
    got = ep.scan(IgnoreRules())
    want = LocalEndpoint(str(root)).scan(IgnoreRules())
    assert got.entries == want.entries
    assert got.entries["d2/far-future"].mtime_ns == FAR_FUTURE
    assert got.entries["d3/f1"].mode == 0o4750
    assert got.entries["d1/dangling"].target == "../nowhere/ünï"
    assert "café/x" in got.entries
    assert {p.path for p in got.problems} == {"d4/fifo", "bad\\xffname"}
    for path, entry in got.entries.items():
        if not entry.is_link:  # links carry no inode, as before
            assert entry.ino == os.lstat(root / ep._rel(path)).st_ino, path
    # NFD spelling on disk stays addressable
    assert ep.read_files([FileRead("café/x", 1)]).__next__()[0] == b"x"  # type: ignore[index]


def test_scan_wire_is_compact(tmp_path: Path) -> None:
    """Per entry: the name, one kind byte and 26 bytes of numbers (no repeated directory paths)."""
    names = [f"file-{i:05d}" for i in range(1000)]
    record, blob = remote.scan_columns(
        "some/deep/directory",
        names,
        ["f"] * 1000,
        list(range(1000)),
        [T0 + i for i in range(1000)],
        [0o644] * 1000,
        [10**6 + i for i in range(1000)],
        [],
    )
    assert record == ["some/deep/directory", 1000, 11 * 1000 - 1, []]
    assert len(blob) == 11 * 1000 - 1 + 1000 * (1 + 8 + 8 + 2 + 8)
    record, blob = remote.scan_columns("d", ["a", "l"], ["f", "l"], [1, 0], [FAR_FUTURE, 0], [0o600, 0], [5, 0], ["t"])
    assert (record, blob) == (["d", ["a", "f", 1, FAR_FUTURE, 0o600, 5, "l", "l", 0, 0, 0, "t"]], b"")


# ---- symlinks below the root are never followed ---------------------------------------


def test_symlinked_parent_is_never_followed(agent_endpoint_factory: AgentFactory, tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "victim").write_bytes(b"keep me")
    os.utime(outside / "victim", ns=(T0, T0))
    (root / "out").symlink_to(outside)
    (root / "real").mkdir()
    (root / "real" / "up").symlink_to("../../outside")
    ep = agent_endpoint_factory(str(root))
    victim = _file(0o644, 7)
    for parent in ("out", "real/up"):
        steps = [
            Step(StepKind.WRITE, f"{parent}/new", None, _file(0o644, 1), data=b"n"),
            Step(StepKind.WRITE, f"{parent}/victim", victim, _file(0o644, 1), data=b"n"),
            Step(StepKind.MKDIR, f"{parent}/d", None, Entry(Kind.DIR, mode=0o755)),
            Step(StepKind.LINK, f"{parent}/l", None, Entry(Kind.LINK, target="x")),
            Step(StepKind.META, f"{parent}/victim", None, _file(0o600, 7, T0 + 5), guarded=False),
            Step(StepKind.REMOVE, f"{parent}/victim", victim, guarded=False),
            Step(StepKind.REMOVE, f"{parent}/victim", victim),
        ]
        results = list(ep.apply_steps(steps))
        assert all(isinstance(r, OSError) for r in results), results
        assert isinstance(results[-1], BlockingIOError)  # guarded: nothing is there without following
        (got,) = ep.read_files([FileRead(f"{parent}/victim", 7)])
        assert isinstance(got, OSError)
        assert ep.stat(f"{parent}/victim") is None
    assert sorted(os.listdir(outside)) == ["victim"]
    assert (outside / "victim").read_bytes() == b"keep me"
    st = os.stat(outside / "victim")
    assert st.st_mtime_ns == T0 and st.st_mode & 0o7777 == 0o644
    assert _temps(root) == [] and _temps(outside) == []


# ---- batches -------------------------------------------------------------------------


def test_directory_replaced_within_one_batch(agent_endpoint_factory: AgentFactory, tmp_path: Path) -> None:
    ep = agent_endpoint_factory(str(tmp_path))
    d = Entry(Kind.DIR, mode=0o755)
    steps = [
        Step(StepKind.MKDIR, "a", None, d),
        Step(StepKind.MKDIR, "a/b", None, d),
        Step(StepKind.WRITE, "a/b/f", None, _file(size=1), data=b"1"),
        Step(StepKind.REMOVE, "a/b/f", _file(size=1)),
        Step(StepKind.REMOVE, "a/b", Entry(Kind.DIR, mode=0o755)),
        Step(StepKind.WRITE, "a/b", None, _file(size=4), data=b"file"),  # a file where the dir was
        Step(StepKind.WRITE, "a/b/g", None, _file(size=1), data=b"2"),  # so this has no directory
        Step(StepKind.META, "a", None, Entry(Kind.DIR, mode=0o700, mtime_ns=T0)),
        Step(StepKind.WRITE, "a/c", None, _file(size=1), data=b"3"),
    ]
    results = list(ep.apply_steps(steps))
    assert results[:6] == [None] * 6 and results[7:] == [None, None], results
    assert isinstance(results[6], NotADirectoryError)
    assert (tmp_path / "a" / "b").read_bytes() == b"file"
    assert (tmp_path / "a" / "c").read_bytes() == b"3"
    assert os.stat(tmp_path / "a").st_mode & 0o7777 == 0o700
    assert _temps(tmp_path) == []


def test_many_directories_in_one_batch(agent_endpoint_factory: AgentFactory, tmp_path: Path) -> None:
    """More directories than the helper keeps descriptors for: it starts over, leaks nothing."""
    ep = agent_endpoint_factory(str(tmp_path))
    pid = ep._client.info["pid"]
    before = _fds(pid)
    count = remote.DIR_CACHE + 50
    d = Entry(Kind.DIR, mode=0o755)
    steps = [Step(StepKind.MKDIR, f"p{i}", None, d) for i in range(count)]
    steps += [Step(StepKind.MKDIR, f"p{i}/q", None, d) for i in range(count)]
    steps += [
        Step(StepKind.WRITE, f"p{i}/q/f", None, _file(size=len(str(i))), data=str(i).encode())
        for i in range(count)
    ]
    assert list(ep.apply_steps(steps)) == [None] * len(steps)
    for i in range(count):
        assert (tmp_path / f"p{i}" / "q" / "f").read_bytes() == str(i).encode()
    got = list(ep.read_files([FileRead(f"p{i}/q/f", len(str(i))) for i in range(count)]))
    assert [g[0] for g in got] == [str(i).encode() for i in range(count)]  # type: ignore[index]
    assert _fds(pid) == before
    assert _temps(tmp_path) == []


MODES = [0o644, 0o640, 0o600, 0o755, 0o444, 0o400, 0o666, 0o777, 0o1644, 0o4755, 0o2750, 0o000]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_modes_are_exact_whatever_the_umask(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, umask: int
) -> None:
    python = tmp_path / "python-umask"
    python.write_text(f'#!/bin/sh\numask {umask:03o}\nexec python3 "$@"\n')
    python.chmod(0o755)
    root = tmp_path / "r"
    root.mkdir()
    ep = agent_endpoint_factory(str(root), python=str(python))
    steps = [
        Step(StepKind.WRITE, f"{sub}/m{mode:04o}-{n}", None, _file(mode, 1, T0 + mode), data=b"x")
        for sub in ("a", "b")
        for n in range(3)  # the first file of a directory and mode is checked, the others trust it
        for mode in MODES
    ]
    dirs = [Step(StepKind.MKDIR, sub, None, Entry(Kind.DIR, mode=0o755)) for sub in ("a", "b")]
    steps = dirs + steps
    assert list(ep.apply_steps(steps)) == [None] * len(steps)
    for step in steps[2:]:
        st = os.stat(root / step.path)
        assert step.entry is not None
        assert (oct(st.st_mode & 0o7777), st.st_mtime_ns) == (oct(step.entry.mode), step.entry.mtime_ns), step.path
    # the single-call paths give the same
    ep.write_file("c", iter([b"y"]), 0o640, T0)
    assert os.stat(root / "c").st_mode & 0o7777 == 0o640


# ---- read_files -------------------------------------------------------------------------


def test_read_files_packs_many_per_frame(agent_endpoint_factory: AgentFactory, tmp_path: Path) -> None:
    files = {f"d{i % 13}/f{i}": os.urandom(i % 300) for i in range(remote.READ_ITEM_FILES * 2 + 77)}
    files["big/one"] = os.urandom(remote.READ_CHUNK + 12345)  # cuts a frame by size
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    (tmp_path / "dir").mkdir()
    (tmp_path / "lnk").symlink_to("d0/f0")
    ep = agent_endpoint_factory(str(tmp_path))
    scan = ep.scan(IgnoreRules()).entries
    wanted = [FileRead(rel, len(data)) for rel, data in files.items()]
    wanted[5:5] = [FileRead("missing", 3), FileRead("dir", 0), FileRead("lnk", 5), FileRead("nodir/x", 1)]
    wanted.append(FileRead("d9/f100", 0))  # reads at most size + 1 bytes
    got = list(ep.read_files(wanted))
    assert len(got) == len(wanted)
    for want, result in zip(wanted, got, strict=True):
        if want.path in files and want is not wanted[-1]:
            assert result == (files[want.path], scan[want.path]), want.path
    assert isinstance(got[5], FileNotFoundError)
    assert isinstance(got[6], IsADirectoryError)
    assert isinstance(got[7], OSError)  # O_NOFOLLOW: a symlink is not read through
    assert isinstance(got[8], FileNotFoundError)
    assert got[-1] == (files["d9/f100"][:1], scan["d9/f100"])


def test_put_expecting_nothing_refuses_whatever_is_there(
    agent_endpoint_factory: AgentFactory, tmp_path: Path
) -> None:
    (tmp_path / "file").write_bytes(b"f")
    (tmp_path / "dangling").symlink_to("nowhere")
    (tmp_path / "link").symlink_to("file")
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    ep = agent_endpoint_factory(str(tmp_path))
    names = ["file", "dangling", "link", "dir", "fifo", "new"]
    steps = [Step(StepKind.WRITE, name, None, _file(size=1), data=b"n") for name in names]
    results = list(ep.apply_steps(steps))
    assert all(isinstance(r, BlockingIOError) for r in results[:4]), results
    assert isinstance(results[4], OSError)  # a special file: refused too
    assert results[5] is None
    assert (tmp_path / "file").read_bytes() == b"f"
    assert os.readlink(tmp_path / "dangling") == "nowhere" and os.readlink(tmp_path / "link") == "file"
    assert (tmp_path / "new").read_bytes() == b"n"
    assert _temps(tmp_path) == []


def test_paths_deeper_than_the_descriptor_limit(agent_endpoint_factory: AgentFactory, tmp_path: Path) -> None:
    ep = agent_endpoint_factory(str(tmp_path))
    depth = remote.DIR_LIMIT + 20
    dirs = ["/".join(["a"] * n) for n in range(1, depth + 1)]
    leaf = dirs[-1] + "/f"
    steps = [Step(StepKind.MKDIR, d, None, Entry(Kind.DIR, mode=0o755)) for d in dirs]
    steps.append(Step(StepKind.WRITE, leaf, None, _file(size=4), data=b"deep"))
    assert list(ep.apply_steps(steps)) == [None] * len(steps)
    assert (tmp_path / leaf).read_bytes() == b"deep"
    entry = ep.stat(leaf)
    assert entry is not None and entry.size == 4
    assert next(iter(ep.read_files([FileRead(leaf, 4)]))) == (b"deep", entry)
    assert ep.scan(IgnoreRules()).entries[leaf] == entry
    (result,) = ep.apply_steps([Step(StepKind.REMOVE, leaf, entry)])
    assert result is None and not (tmp_path / leaf).exists()
    # a symlink deep down is still not followed
    (tmp_path / dirs[-2] / "a").rename(tmp_path / "moved")
    (tmp_path / dirs[-2] / "a").symlink_to(tmp_path / "moved")
    (result,) = ep.apply_steps([Step(StepKind.WRITE, leaf, None, _file(size=1), data=b"x")])
    assert isinstance(result, NotADirectoryError)
    assert os.listdir(tmp_path / "moved") == []


@pytest.mark.parametrize("unnamed", [True, False], ids=["o_tmpfile", "named-temp"])
def test_helper_put_of_a_new_file_never_replaces_a_taken_name(tmp_path: Path, unnamed: bool) -> None:
    """The helper's small-file write, run in this process: unnamed (O_TMPFILE, linked in)
    where the platform has it, else through a named temporary file."""
    import errno
    import io

    agent = remote.Agent(io.BytesIO(), io.BytesIO())
    agent.root = os.fsencode(tmp_path)
    agent.tmpfile = agent.tmpfile and unnamed
    (tmp_path / "taken").write_bytes(b"already there")
    own = agent._scope()
    try:
        agent._put("new", 0o640, T0, [None], b"content")
        with pytest.raises(remote.CallFailed) as refused:
            agent._put("taken", 0o640, T0, [None], b"content")
    finally:
        if own:
            agent._end_scope()
    assert refused.value.code == errno.EAGAIN
    assert (tmp_path / "taken").read_bytes() == b"already there"
    st = os.stat(tmp_path / "new")
    assert ((tmp_path / "new").read_bytes(), st.st_mode & 0o7777, st.st_mtime_ns) == (b"content", 0o640, T0)
    assert sorted(os.listdir(tmp_path)) == ["new", "taken"]


FRAME_VALUES = [
    None, True, False, 0, -1, 2**64 + 3, 1.5, -0.0, 1e300, "", "plain", "é\n\t\"\\\x00\x7f\U0001f600",
    [], {}, [1, [2, [3, {"a": None}]]], {"k": ["v", 1, 2.25], "é": {"": []}},
]


@pytest.mark.parametrize("value", FRAME_VALUES)
def test_helper_frames_encode_and_decode_as_json_does(value: object) -> None:
    """The helper's codec (the C accelerator used directly) writes what the json module
    writes and reads it back the same; both of its halves and the fallback agree."""
    import json

    want = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode(value)
    assert remote._encode(value) == want
    assert remote._decode(want.encode("ascii")) == value
    assert json.loads(remote._encode(value)) == value


def test_helper_codec_refuses_what_json_refuses() -> None:
    for bad in (b"", b"[1,", b"nope", b"[1] 2", b'{"a" 1}'):
        with pytest.raises(ValueError):
            remote._decode(bad)
    with pytest.raises(TypeError):
        remote._encode({"a": object()})
    assert remote._decode(b" [NaN, Infinity] ")[1] == float("inf")


def test_helper_codec_falls_back_to_the_json_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a usable accelerator the helper still speaks the same JSON."""
    import sys

    monkeypatch.setitem(sys.modules, "_json", None)  # import _json now fails
    encode, decode = remote.json_codec()
    for value in FRAME_VALUES:
        assert decode(encode(value).encode("ascii")) == value
    assert encode({"a": [1, "é"]}) == remote._encode({"a": [1, "é"]})


# ---- puts and read_files in columns --------------------------------------------------

ODD_NAMES = ["plain", "with\nnewline", "ünï cödé", os.fsdecode(b"bad\xffbyte"), "tab\tand space ", "\U0001f600"]


def test_columns_and_names_read_back_exactly() -> None:
    names = [*ODD_NAMES, "", "lone\ud800surrogate", "x" * 300]
    assert remote.unpack_names(remote.pack_names(names), len(names)) == names
    assert remote.unpack_names(b"", 0) == []
    columns = [[0, 2**32 - 1, 7], [0, 0o7777, 0o644], [-(2**63), 2**63 - 1, T0]]
    raw = b"head" + remote.pack_columns(remote.PUT_COLUMNS, columns) + b"tail"
    got, end = remote.unpack_columns(remote.PUT_COLUMNS, 3, raw, 4)
    assert [list(c) for c in got] == columns and raw[end:] == b"tail"
    for short in (raw[: end - 1 - 4], b""):  # cut short: refused, never read past
        with pytest.raises(ValueError):
            remote.unpack_columns(remote.PUT_COLUMNS, 3, short, 0)
    # a count that does not match the names (a NUL inside one would do that) is refused
    for raw_names, count in ((remote.pack_names(["a", "b"]), 1), (b"a\x00b\x00c", 2), (b"a", 0)):
        with pytest.raises(ValueError):
            remote.unpack_names(raw_names, count)
    import struct

    with pytest.raises((struct.error, OverflowError)):
        remote.pack_columns(remote.PUT_COLUMNS, [[1], [0o644], [FAR_FUTURE]])


def test_puts_and_reads_with_any_names_and_numbers(agent_endpoint_factory: AgentFactory, tmp_path: Path) -> None:
    """Over sshd: names that need escaping, a failing put amid a batch of mixed calls, and
    mtimes past what the columns hold (those batches and answers are spelled out)."""
    ep = agent_endpoint_factory(str(tmp_path))
    (tmp_path / "taken").write_bytes(b"was here")
    d = Entry(Kind.DIR, mode=0o750)
    steps = [Step(StepKind.MKDIR, "d", None, d)]
    for i, name in enumerate(ODD_NAMES):
        steps.append(Step(StepKind.WRITE, f"d/{name}", None, _file(0o640, i, T0 + i), data=b"%d" % i * i))
    steps.append(Step(StepKind.WRITE, "taken", None, _file(size=3), data=b"new"))  # refused: not empty
    steps.append(Step(StepKind.LINK, "d/ln", None, Entry(Kind.LINK, target=ODD_NAMES[1])))
    steps.append(Step(StepKind.WRITE, "d/unguarded", None, _file(size=1), guarded=False, data=b"u"))
    steps.append(Step(StepKind.WRITE, "d/empty", None, _file(0o600, 0), data=b""))
    results = list(ep.apply_steps(steps))
    taken = len(ODD_NAMES) + 1
    assert isinstance(results[taken], BlockingIOError), results
    assert all(r is None for i, r in enumerate(results) if i != taken), results
    assert (tmp_path / "taken").read_bytes() == b"was here"
    scan = ep.scan(IgnoreRules()).entries
    for i, name in enumerate(ODD_NAMES):
        st = os.stat(tmp_path / "d" / name)
        assert (st.st_size, st.st_mtime_ns, st.st_mode & 0o7777) == (i, T0 + i, 0o640), name
    wanted = [FileRead(f"d/{name}", i) for i, name in enumerate(ODD_NAMES)]
    wanted[2:2] = [FileRead("d/ln", 1), FileRead("d/missing", 1)]
    got = list(ep.read_files([*wanted, FileRead("d/empty", 0)]))
    assert isinstance(got[2], OSError) and isinstance(got[3], FileNotFoundError)
    for want, result in zip(wanted, got[:-1], strict=True):
        if want.path in scan and want.path != "d/ln":
            assert result == (b"%d" % want.size * want.size, scan[want.path]), want.path
    assert got[-1] == (b"", scan["d/empty"])

    # past 2262: the batch goes spelled out, and so does the answer that reads it back
    steps = [Step(StepKind.WRITE, "far", None, _file(0o644, 3, FAR_FUTURE), data=b"far")]
    steps.append(Step(StepKind.WRITE, "near", None, _file(0o600, 4, T0), data=b"near"))
    assert list(ep.apply_steps(steps)) == [None, None]
    assert os.stat(tmp_path / "far").st_mtime_ns == FAR_FUTURE
    (far, near) = ep.read_files([FileRead("far", 3), FileRead("near", 4)])
    assert far == (b"far", Entry(Kind.FILE, 3, FAR_FUTURE, 0o644, None, None, os.stat(tmp_path / "far").st_ino))
    assert near == (b"near", Entry(Kind.FILE, 4, T0, 0o600, None, None, os.stat(tmp_path / "near").st_ino))
    assert _temps(tmp_path) == []


def test_malformed_columns_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    """The helper checks a batch's columns, names and content lengths against each other
    before it runs any of its calls, and a read_files request likewise."""
    import errno
    import io

    agent = remote.Agent(io.BytesIO(), io.BytesIO())
    agent.root = os.fsencode(tmp_path)
    names = remote.pack_names(["a", "b"])

    def batch(calls: list[object], count: int, names: bytes, lengths: list[int], data: bytes) -> None:
        columns = remote.pack_columns(remote.PUT_COLUMNS, [lengths, [0o644] * len(lengths), [T0] * len(lengths)])
        agent.op_batch(1, [calls, [count, len(names), []]], columns + names + data)

    bad = [
        lambda: batch([2], 2, names, [1, 1], b"x"),  # contents cut short
        lambda: batch([2], 2, names, [1, 1], b"xyz"),  # more contents than said
        lambda: batch([3], 2, names, [1, 1], b"xy"),  # more puts than columns
        lambda: batch([1, ["mkdir", ["c", 0o755, None], 0], 1], 2, b"a\x00b\x00c", [1, 1], b"xy"),  # a NUL
        lambda: agent.op_batch(1, [[2], [2, len(names)]], b""),  # no odd list
        lambda: agent.op_read_files(1, [2, len(names)], remote.pack_columns("q", [[1, 1]]) + names[:-1]),
        lambda: agent.op_read_files(1, [3, len(names)], remote.pack_columns("q", [[1, 1]]) + names),
    ]
    for call in bad:
        with pytest.raises(remote.CallFailed) as refused:
            call()
        assert refused.value.code == errno.EPROTO
    assert os.listdir(tmp_path) == []
    batch([1, ["mkdir", ["c", 0o755, None], 0], 1], 2, names, [1, 1], b"xy")  # the same, well formed
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c"]
    assert (tmp_path / "b").read_bytes() == b"y"
