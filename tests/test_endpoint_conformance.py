"""One conformance suite, run against every endpoint: memory, local, and SFTP over a real sshd."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from srsync.core.entry import Kind
from srsync.core.ignore import IgnoreRules
from srsync.core.quiet import snapshot_summaries
from srsync.endpoints.base import Endpoint
from srsync.endpoints.hashing import digest_bytes
from srsync.endpoints.local import LocalEndpoint
from srsync.endpoints.memory import MemoryEndpoint
from srsync.endpoints.sftp import SFTPEndpoint

T0 = 1_600_000_000_123_456_789


@pytest.fixture(params=["memory", "local", "sftp", "agent"])
def endpoint(request: pytest.FixtureRequest, tmp_path) -> Iterator[Endpoint]:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    if request.param == "memory":
        yield MemoryEndpoint("conf")
    elif request.param == "local":
        root.mkdir()
        yield LocalEndpoint(str(root))
    else:
        root.mkdir()
        factory: Callable[[str], Endpoint] = request.getfixturevalue(f"{request.param}_endpoint_factory")
        yield factory(str(root))


def _write(ep: Endpoint, path: str, data: bytes, mode: int = 0o644, mtime: int = T0) -> None:
    ep.write_file(path, iter([data[: len(data) // 2], data[len(data) // 2 :]]), mode, mtime)


def _prec(ep: Endpoint) -> int:
    return ep.capabilities.mtime_precision_ns


def test_write_read_stat_roundtrip(endpoint: Endpoint) -> None:
    data = os.urandom(300_000)
    _write(endpoint, "f.bin", data, 0o640)
    st = endpoint.stat("f.bin")
    assert st is not None and st.kind is Kind.FILE and st.size == len(data)
    assert st.mode == 0o640
    assert st.mtime_ns == T0 // _prec(endpoint) * _prec(endpoint)
    assert b"".join(endpoint.read_chunks("f.bin")) == data
    assert endpoint.hash_file("f.bin") == digest_bytes(data)


def test_missing_paths(endpoint: Endpoint) -> None:
    assert endpoint.stat("nope") is None
    assert endpoint.stat("nope/deeper") is None
    with pytest.raises(FileNotFoundError):
        endpoint.remove("nope", Kind.FILE)
    with pytest.raises(FileNotFoundError), endpoint.open_read("nope") as fh:
        fh.read()


def test_dirs_links_and_scan(endpoint: Endpoint) -> None:
    endpoint.mkdir("d", 0o755)
    endpoint.mkdir("d/empty", 0o700)
    endpoint.mkdir("d/sub dir", 0o755)
    _write(endpoint, "d/sub dir/ünï cödé.txt", b"hello")
    endpoint.symlink("d/link", "sub dir/ünï cödé.txt")
    _write(endpoint, "skip.tmp", b"x")
    res = endpoint.scan(IgnoreRules.from_patterns(["*.tmp"]))
    assert res.root_exists
    e = res.entries
    assert set(e) == {"d", "d/empty", "d/sub dir", "d/sub dir/ünï cödé.txt", "d/link"}
    assert e["d/empty"].kind is Kind.DIR and e["d/empty"].mode == 0o700
    assert e["d/link"].kind is Kind.LINK and e["d/link"].target == "sub dir/ünï cödé.txt"
    assert e["d/sub dir/ünï cödé.txt"].size == 5
    assert res.problems == []


def test_scan_prunes_excluded_dirs_and_reports_ignore_files(endpoint: Endpoint) -> None:
    endpoint.mkdir("cache", 0o755)
    _write(endpoint, "cache/big", b"x" * 10)
    endpoint.mkdir("src", 0o755)
    _write(endpoint, "src/.srsyncignore", b"*.o\n")
    _write(endpoint, "src/a.o", b"o")
    res = endpoint.scan(IgnoreRules.from_patterns(["cache/"]))
    assert "cache" not in res.entries and "cache/big" not in res.entries
    assert res.ignore_files == {"src": "*.o\n"}
    assert "src/a.o" in res.entries  # ignore files are applied by the engine, not the scan


def test_quiet_scan_leaves_out_what_summarises_as_expected(endpoint: Endpoint) -> None:
    """Every endpoint that can summarise agrees with the summaries of a snapshot
    (what the state database stores); SFTP may ignore them and list everything."""
    endpoint.mkdir("d", 0o755)
    endpoint.mkdir("d/sub dir", 0o750)
    _write(endpoint, "d/sub dir/ünï cödé.txt", b"hello", 0o600)
    endpoint.symlink("d/link", "sub dir/ünï cödé.txt")
    _write(endpoint, "d/.srsyncignore", b"*.o\n")
    _write(endpoint, "d/a.o", b"o")
    _write(endpoint, "top", b"t", mtime=T0 + 7)
    endpoint.mkdir("e", 0o755)
    _write(endpoint, "e/skip.tmp", b"x")
    rules = IgnoreRules.from_patterns(["*.tmp"])
    full = endpoint.scan(rules)
    expect = snapshot_summaries(full.entries)
    assert set(expect) == {"", "d", "d/sub dir", "e"}

    again = endpoint.scan(rules, {**expect, "gone": expect["d"]})
    dirs = {p for p, e in full.entries.items() if e.is_dir}
    if not again.quiet:  # allowed: everything listed, as without expectations
        assert isinstance(endpoint, SFTPEndpoint)
        assert again.entries == full.entries
        return
    assert again.quiet == {"": 1, "d": 3, "d/sub dir": 1, "e": 0}
    assert set(again.entries) == dirs
    assert again.ignore_files == {"d": "*.o\n"}  # still read in a quiet directory
    assert again.problems == []

    # a changed mtime, a new file and a changed link are each seen in their own directory
    endpoint.set_meta("d/sub dir/ünï cödé.txt", None, T0 + 10**9)
    _write(endpoint, "e/new", b"n")
    endpoint.remove("d/link", Kind.LINK)
    endpoint.symlink("d/link", "elsewhere")
    third = endpoint.scan(rules, expect)
    assert third.quiet == {"": 1}
    assert set(third.entries) == set(full.entries) - {"top"} | {"e/new"}
    assert third.entries["d/link"].target == "elsewhere"


def test_directory_rules_leave_files_of_that_name_alone(endpoint: Endpoint) -> None:
    """With only directory rules (as the trash folder's), files are never matched:
    a full and a quiet scan both prune the directory and keep the file."""
    endpoint.mkdir("a", 0o755)
    endpoint.mkdir("a/cache", 0o755)
    _write(endpoint, "a/cache/big", b"x" * 10)
    _write(endpoint, "a/keep", b"k")
    endpoint.mkdir("b", 0o755)
    _write(endpoint, "b/cache", b"a file, not a directory")
    endpoint.symlink("b/cache.link", "cache")
    rules = IgnoreRules.from_patterns(["cache/", "*.link/"])
    full = endpoint.scan(rules)
    assert set(full.entries) == {"a", "a/keep", "b", "b/cache", "b/cache.link"}
    expect = snapshot_summaries(full.entries)
    again = endpoint.scan(rules, expect)
    if not again.quiet:
        assert isinstance(endpoint, SFTPEndpoint)
        return
    assert again.quiet == {"": 0, "a": 1, "b": 2}
    assert set(again.entries) == {"a", "b"}
    assert again.problems == []


def test_write_is_atomic_when_source_fails(endpoint: Endpoint) -> None:
    _write(endpoint, "f", b"old content")

    def broken() -> Iterator[bytes]:
        yield b"new "
        raise OSError("source vanished")

    with pytest.raises(OSError, match="source vanished"):
        endpoint.write_file("f", broken(), 0o644, T0)
    assert b"".join(endpoint.read_chunks("f")) == b"old content"
    res = endpoint.scan(IgnoreRules())
    assert set(res.entries) == {"f"} and res.temp_files == []


def test_write_replaces_file_and_symlink_but_not_dir(endpoint: Endpoint) -> None:
    _write(endpoint, "f", b"one")
    _write(endpoint, "f", b"two!")
    assert b"".join(endpoint.read_chunks("f")) == b"two!"
    endpoint.symlink("l", "f")
    _write(endpoint, "l", b"now a file")
    st = endpoint.stat("l")
    assert st is not None and st.kind is Kind.FILE
    endpoint.symlink("f", "elsewhere")  # a link replaces a file, atomically
    st = endpoint.stat("f")
    assert st is not None and st.kind is Kind.LINK and st.target == "elsewhere"
    endpoint.mkdir("d", 0o755)
    with pytest.raises(OSError):
        _write(endpoint, "d", b"x")
    st = endpoint.stat("d")
    assert st is not None and st.kind is Kind.DIR


def test_remove_and_set_meta(endpoint: Endpoint) -> None:
    endpoint.mkdir("d", 0o755)
    _write(endpoint, "d/f", b"x")
    with pytest.raises(OSError):
        endpoint.remove("d", Kind.DIR)  # not empty
    endpoint.set_meta("d/f", 0o600, T0 + 7 * 10**9)
    st = endpoint.stat("d/f")
    assert st is not None and st.mode == 0o600
    assert st.mtime_ns == (T0 + 7 * 10**9) // _prec(endpoint) * _prec(endpoint)
    endpoint.set_meta("d", 0o750, T0)
    st = endpoint.stat("d")
    assert st is not None and st.mode == 0o750
    endpoint.remove("d/f", Kind.FILE)
    endpoint.remove("d", Kind.DIR)
    assert endpoint.scan(IgnoreRules()).entries == {}


def test_paths_cannot_escape_the_root(endpoint: Endpoint) -> None:
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(ValueError):
            endpoint.write_file(bad, iter([b"x"]), 0o644, T0)
        with pytest.raises(ValueError):
            endpoint.stat(bad)


def test_missing_root(tmp_path, request: pytest.FixtureRequest) -> None:  # type: ignore[no-untyped-def]
    eps: list[Endpoint] = [MemoryEndpoint(exists=False), LocalEndpoint(str(tmp_path / "absent"))]
    for ep in eps:
        assert not ep.root_exists()
        res = ep.scan(IgnoreRules())
        assert not res.root_exists and res.entries == {}
        ep.ensure_root()
        assert ep.root_exists()
