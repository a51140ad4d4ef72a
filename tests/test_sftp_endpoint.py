"""SFTPEndpoint against a real sshd on this machine (the root is a local tmp dir seen over SFTP)."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import xxhash
from sshd import SSHD

from srsync.core.entry import Kind
from srsync.core.ignore import IgnoreRules
from srsync.core.paths import TEMP_PREFIX
from srsync.endpoints.sftp import SFTPEndpoint, open_sftp_endpoint, temp_name
from srsync.errors import ConnectError
from srsync.ssh.connection import connect

pytestmark = pytest.mark.ssh

Make = Callable[[str], SFTPEndpoint]
T = 1_650_000_000  # whole seconds
NS = 10**9


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


def build_tree(root: Path) -> None:
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "private").mkdir(mode=0o700)
    os.chmod(root / "private", 0o700)
    (root / "a" / "b" / "c" / "deep.txt").write_bytes(b"deep")
    (root / "with space.txt").write_bytes(b"spaces")
    (root / "ünïcödé €.txt").write_bytes("ü".encode())
    (root / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o750)
    os.symlink("a/b/c/deep.txt", root / "rel-link")
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("missing-target", root / "dangling")
    # sub-second part must be dropped: SFTP v3 keeps whole seconds
    os.utime(root / "with space.txt", ns=(T * NS + 987_654_321, T * NS + 987_654_321))
    os.utime(root / "a", ns=(T * NS, (T + 5) * NS + 1))


def test_scan_tree(sftp_endpoint_factory: Make, root: Path) -> None:
    build_tree(root)
    ep = sftp_endpoint_factory(str(root))
    assert ep.root_exists()
    assert ep.capabilities.mtime_precision_ns == NS and ep.capabilities.remote
    res = ep.scan(IgnoreRules())
    assert res.root_exists and res.problems == [] and res.temp_files == []
    e = res.entries
    assert set(e) == {
        "a", "a/b", "a/b/c", "a/b/c/deep.txt", "empty", "private", "with space.txt",
        "ünïcödé €.txt", "run.sh", "rel-link", "abs-link", "dangling",
    }  # fmt: skip
    assert e["a/b/c/deep.txt"].kind is Kind.FILE and e["a/b/c/deep.txt"].size == 4
    assert e["with space.txt"].mtime_ns == T * NS
    assert e["a"].kind is Kind.DIR and e["a"].mtime_ns == (T + 5) * NS
    assert e["private"].mode == 0o700 and e["empty"].kind is Kind.DIR
    assert e["run.sh"].mode == 0o750
    assert e["ünïcödé €.txt"].size == 2
    assert e["rel-link"].kind is Kind.LINK and e["rel-link"].target == "a/b/c/deep.txt"
    assert e["abs-link"].target == "/etc/passwd"
    assert e["dangling"].target == "missing-target"
    assert ep.description.endswith(f":{root}") and "@127.0.0.1:" in ep.description


def test_scan_excludes_temp_files_and_ignore_files(sftp_endpoint_factory: Make, root: Path) -> None:
    (root / "cache" / "deep").mkdir(parents=True)
    (root / "cache" / "deep" / "x").write_bytes(b"x")
    (root / "src").mkdir()
    (root / "src" / ".srsyncignore").write_text("*.o\n# comment\n")
    (root / "src" / "a.o").write_bytes(b"o")
    (root / "src" / "skip.tmp").write_bytes(b"t")
    leftover = f"{TEMP_PREFIX}0123abcd-file.txt"
    (root / "src" / leftover).write_bytes(b"partial")
    ep = sftp_endpoint_factory(str(root))
    res = ep.scan(IgnoreRules.from_patterns(["cache/", "*.tmp"]))
    assert set(res.entries) == {"src", "src/.srsyncignore", "src/a.o"}
    assert res.ignore_files == {"src": "*.o\n# comment\n"}
    assert res.temp_files == [f"src/{leftover}"]


def test_scan_deep_tree_in_parallel(sftp_endpoint_factory: Make, root: Path) -> None:
    expected = set()
    for i in range(30):
        d = root / f"d{i}"
        for j in range(5):
            sub = d / f"s{j}"
            sub.mkdir(parents=True)
            (sub / "f").write_bytes(b"x" * i)
            expected |= {f"d{i}", f"d{i}/s{j}", f"d{i}/s{j}/f"}
    ep = sftp_endpoint_factory(str(root))
    start = time.monotonic()
    res = ep.scan(IgnoreRules())
    assert time.monotonic() - start < 10
    assert set(res.entries) == expected
    # scans are repeatable on the pooled sessions
    assert set(ep.scan(IgnoreRules()).entries) == expected


def test_non_utf8_name_is_a_problem_not_a_crash(sftp_endpoint_factory: Make, root: Path) -> None:
    (root / "ok.txt").write_bytes(b"fine")
    (root / "sub").mkdir()
    for directory in (bytes(root), bytes(root / "sub")):
        fd = os.open(directory + b"/bad-\xff\xfe.txt", os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
    ep = sftp_endpoint_factory(str(root))
    res = ep.scan(IgnoreRules())
    assert set(res.entries) == {"ok.txt", "sub"}
    assert len(res.problems) == 2
    assert {p.path for p in res.problems} == {"bad-\\xff\\xfe.txt", "sub/bad-\\xff\\xfe.txt"}
    assert all("UTF-8" in p.message for p in res.problems)


def test_nfd_names_are_reported_nfc_and_stay_addressable(
    sftp_endpoint_factory: Make, root: Path
) -> None:
    nfd_dir, nfd_file = "cafe\u0301", "e\u0301te\u0301.txt"
    (root / nfd_dir).mkdir()
    (root / nfd_dir / nfd_file).write_bytes(b"summer")
    ep = sftp_endpoint_factory(str(root))
    res = ep.scan(IgnoreRules())
    assert set(res.entries) == {"café", "café/été.txt"}
    assert ep.stat("café/été.txt") is not None
    assert b"".join(ep.read_chunks("café/été.txt")) == b"summer"
    ep.write_file("café/été.txt", iter([b"winter"]), 0o644, T * NS)
    assert (root / nfd_dir / nfd_file).read_bytes() == b"winter"


def test_stat(sftp_endpoint_factory: Make, root: Path) -> None:
    build_tree(root)
    ep = sftp_endpoint_factory(str(root))
    assert ep.stat("nope") is None
    assert ep.stat("nope/deeper") is None
    assert ep.stat("run.sh/under-a-file") is None
    st = ep.stat("with space.txt")
    assert st is not None and st.kind is Kind.FILE and st.size == 6 and st.mtime_ns == T * NS
    link = ep.stat("dangling")
    assert link is not None and link.kind is Kind.LINK and link.target == "missing-target"
    d = ep.stat("private")
    assert d is not None and d.kind is Kind.DIR and d.mode == 0o700
    root_entry = ep.stat("")
    assert root_entry is not None and root_entry.kind is Kind.DIR


def test_write_file_roundtrip_hash_and_meta(sftp_endpoint_factory: Make, root: Path) -> None:
    ep = sftp_endpoint_factory(str(root))
    data = os.urandom(3 * 1024 * 1024 + 17)
    chunks = [data[i : i + 1_000_000] for i in range(0, len(data), 1_000_000)]
    entry = ep.write_file("big.bin", iter(chunks), 0o640, T * NS + 123)
    assert entry.kind is Kind.FILE and entry.size == len(data)
    assert entry.mode == 0o640 and entry.mtime_ns == T * NS
    on_disk = os.stat(root / "big.bin")
    assert stat.S_IMODE(on_disk.st_mode) == 0o640 and on_disk.st_mtime_ns == T * NS
    assert (root / "big.bin").read_bytes() == data
    assert b"".join(ep.read_chunks("big.bin", 65536)) == data
    assert ep.hash_file("big.bin") == xxhash.xxh3_128(data).hexdigest()
    ep.write_file("empty", iter([]), 0o600, T * NS)
    assert (root / "empty").read_bytes() == b""
    assert ep.hash_file("empty") == xxhash.xxh3_128(b"").hexdigest()
    assert leftovers(root) == []


def test_write_is_atomic_when_the_source_fails(sftp_endpoint_factory: Make, root: Path) -> None:
    (root / "f").write_bytes(b"old content")
    ep = sftp_endpoint_factory(str(root))

    def broken() -> Iterator[bytes]:
        yield b"x" * 500_000
        yield b"y" * 500_000
        raise OSError("source vanished")

    with pytest.raises(OSError, match="source vanished"):
        ep.write_file("f", broken(), 0o644, T * NS)
    assert (root / "f").read_bytes() == b"old content"
    assert leftovers(root) == []
    assert ep.scan(IgnoreRules()).temp_files == []


def test_write_replaces_symlink_without_following_it(
    sftp_endpoint_factory: Make, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"must not change")
    os.symlink(str(outside), root / "link")
    ep = sftp_endpoint_factory(str(root))
    ep.write_file("link", iter([b"a regular file now"]), 0o644, T * NS)
    assert not (root / "link").is_symlink()
    assert (root / "link").read_bytes() == b"a regular file now"
    assert outside.read_bytes() == b"must not change"


def test_write_refuses_to_replace_a_directory(sftp_endpoint_factory: Make, root: Path) -> None:
    (root / "d").mkdir()
    ep = sftp_endpoint_factory(str(root))
    with pytest.raises(IsADirectoryError):
        ep.write_file("d", iter([b"x"]), 0o644, T * NS)
    assert (root / "d").is_dir() and leftovers(root) == []


def test_long_names_get_a_fitting_temp_name(sftp_endpoint_factory: Make, root: Path) -> None:
    name = "é" * 127  # 254 bytes
    assert len(temp_name(name).encode()) <= 255
    ep = sftp_endpoint_factory(str(root))
    ep.write_file(name, iter([b"long"]), 0o644, T * NS)
    assert (root / name).read_bytes() == b"long"


def test_symlink_create_and_replace(sftp_endpoint_factory: Make, root: Path) -> None:
    (root / "f").write_bytes(b"file")
    ep = sftp_endpoint_factory(str(root))
    ep.symlink("l", "f")
    assert os.readlink(root / "l") == "f"
    ep.symlink("l", "other")  # replaces the link atomically
    assert os.readlink(root / "l") == "other"
    ep.symlink("f", "now-a-link")  # replaces a file
    assert os.readlink(root / "f") == "now-a-link"
    assert leftovers(root) == []


def test_mkdir_remove_and_errors(sftp_endpoint_factory: Make, root: Path) -> None:
    ep = sftp_endpoint_factory(str(root))
    ep.mkdir("d", 0o775)
    assert stat.S_IMODE(os.stat(root / "d").st_mode) == 0o775  # exact despite the umask
    with pytest.raises(FileExistsError):
        ep.mkdir("d", 0o755)
    ep.write_file("d/f", iter([b"x"]), 0o644, T * NS)
    os.symlink("f", root / "d" / "l")
    with pytest.raises(OSError) as info:
        ep.remove("d", Kind.DIR)
    assert info.value.errno is not None  # ENOTEMPTY, not a bare SFTP "failure"
    ep.remove("d/l", Kind.LINK)
    assert (root / "d" / "f").exists()  # removing the link left its target alone
    ep.remove("d/f", Kind.FILE)
    ep.remove("d", Kind.DIR)
    assert not (root / "d").exists()
    with pytest.raises(FileNotFoundError):
        ep.remove("d", Kind.DIR)
    with pytest.raises(FileNotFoundError):
        ep.remove("nope", Kind.FILE)
    with pytest.raises(PermissionError):
        ep.remove("", Kind.DIR)


def test_set_meta_and_rename(sftp_endpoint_factory: Make, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"o")
    os.chmod(outside, 0o644)
    (root / "f").write_bytes(b"x")
    (root / "d").mkdir()
    os.symlink(str(outside), root / "l")
    ep = sftp_endpoint_factory(str(root))
    ep.set_meta("f", 0o600, T * NS + 999)
    st = os.stat(root / "f")
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime_ns == T * NS
    ep.set_meta("d", None, (T + 1) * NS)
    assert os.stat(root / "d").st_mtime_ns == (T + 1) * NS
    ep.set_meta("d", 0o711, None)
    assert stat.S_IMODE(os.stat(root / "d").st_mode) == 0o711
    with pytest.raises(OSError):
        ep.set_meta("l", 0o777, None)  # never through a link
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o644
    (root / "g").write_bytes(b"old")
    ep.rename("f", "g")
    assert (root / "g").read_bytes() == b"x" and not (root / "f").exists()


def test_paths_cannot_escape_the_root(sftp_endpoint_factory: Make, root: Path) -> None:
    ep = sftp_endpoint_factory(str(root))
    for bad in ("../x", "/etc/passwd", "a/../../x", "a//b", "./a"):
        with pytest.raises(ValueError):
            ep.stat(bad)
        with pytest.raises(ValueError):
            ep.write_file(bad, iter([b"x"]), 0o644, T * NS)


def test_missing_root_and_ensure_root(sftp_endpoint_factory: Make, tmp_path: Path) -> None:
    target = tmp_path / "not" / "yet"
    ep = sftp_endpoint_factory(str(target))
    assert not ep.root_exists()
    res = ep.scan(IgnoreRules())
    assert not res.root_exists and res.entries == {}
    ep.ensure_root()
    assert ep.root_exists() and target.is_dir()
    ep.write_file("f", iter([b"x"]), 0o644, T * NS)
    assert (target / "f").read_bytes() == b"x"


def test_relative_root_is_below_the_login_directory(sshd: SSHD, root: Path) -> None:
    (root / "f").write_bytes(b"x")
    home = os.path.expanduser(f"~{sshd.user}")
    relative = os.path.relpath(root, home)
    with open_sftp_endpoint(sshd.conn_spec(), relative) as ep:
        assert isinstance(ep, SFTPEndpoint)
        assert ep.root == os.path.realpath(root)
        assert set(ep.scan(IgnoreRules()).entries) == {"f"}
        assert ep.connection.transport_alive()
    assert not ep.connection.transport_alive()  # the factory's endpoint owns its connection


def test_lost_connection_is_connect_error(sshd: SSHD, root: Path) -> None:
    (root / "f").write_bytes(b"x")
    ep = open_sftp_endpoint(sshd.conn_spec(), str(root))
    try:
        assert ep.stat("f") is not None
        sshd.stop()  # kills the listener and every session
        with pytest.raises(ConnectError):
            for _ in range(50):  # the drop is noticed at the latest by the next request
                ep.stat("f")
                time.sleep(0.05)
        with pytest.raises(ConnectError):
            ep.write_file("g", iter([b"y"]), 0o644, T * NS)
    finally:
        ep.close()
        sshd.start()
    assert not (root / "g").exists()


def test_scan_degrades_when_the_server_refuses_more_sessions(sshd: SSHD, root: Path) -> None:
    for i in range(8):
        (root / f"d{i}").mkdir()
        (root / f"d{i}" / "f").write_bytes(b"x")
    conn = connect(sshd.conn_spec())
    try:
        # OpenSSH's default MaxSessions is 10: leave room for the endpoint's main session only
        hogs = [conn.open_sftp() for _ in range(9)]
        ep = SFTPEndpoint(conn, str(root))
        res = ep.scan(IgnoreRules())
        assert len(res.entries) == 16 and res.problems == []
        assert ep._pool_refused  # the server did refuse: the scan ran on the main session
        ep.close()
        for fs in hogs:
            fs.close()
    finally:
        conn.close()


def test_many_symlinks_in_one_directory(sftp_endpoint_factory: Make, root: Path) -> None:
    for i in range(600):  # more than one pipelined readlink batch
        os.symlink(f"target-{i}", root / f"l{i}")
    os.mkfifo(root / "fifo")
    ep = sftp_endpoint_factory(str(root))
    res = ep.scan(IgnoreRules())
    assert len(res.entries) == 600
    assert all(res.entries[f"l{i}"].target == f"target-{i}" for i in range(600))
    assert [p.path for p in res.problems] == ["fifo"]


def test_write_errors_are_not_lost(sshd: SSHD) -> None:
    """A failing pipelined write (ENOSPC from /dev/full) must raise, not pass silently."""
    with connect(sshd.conn_spec()) as conn:
        fs = conn.open_sftp()
        writer = fs.open_write("/dev/full")
        with pytest.raises(OSError):
            writer.write(b"x" * (2 * 1024 * 1024))
            writer.finish()
        writer.abort()
        assert fs.lstat("/dev/full").mode  # the session is still usable
        fs.close()


def test_other_requests_while_a_file_is_streaming(sftp_endpoint_factory: Make, root: Path) -> None:
    data = os.urandom(2 * 1024 * 1024)
    (root / "a").write_bytes(data)
    (root / "b").write_bytes(b"small")
    ep = sftp_endpoint_factory(str(root))
    got = bytearray()
    with ep.open_read("a") as fh:
        got += fh.read(100_000)
        # replies of the reads in flight must reach the reader, not be swallowed
        assert ep.stat("b") is not None
        assert b"".join(ep.read_chunks("b")) == b"small"
        while block := fh.read(300_000):
            got += block
    assert bytes(got) == data
