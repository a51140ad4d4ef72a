"""The remote helper over a real sshd: start-up and fallback, scan semantics, batches, parallel uploads."""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sshd import SSHD, find_sshd

import srsync.agent.client as agent_client
import srsync.endpoints.agent as agent_mod
from srsync.core.compare import Comparator
from srsync.core.entry import Entry, Kind, ScanResult
from srsync.core.ignore import IgnoreRules
from srsync.core.reconcile import Mode, reconcile
from srsync.endpoints.agent import AgentEndpoint, HelperUnavailable, open_agent_endpoint
from srsync.endpoints.base import Endpoint, FileRead, Step, StepKind
from srsync.endpoints.hashing import digest_bytes
from srsync.endpoints.local import LocalEndpoint
from srsync.endpoints.registry import HELPER_ENV, EndpointPool
from srsync.endpoints.sftp import open_sftp_endpoint
from srsync.engine.executor import Executor
from srsync.engine.reporter import Reporter
from srsync.engine.transfer import apply_operations, transfer_file
from srsync.jobspec import Location
from srsync.plan import ALPHA, Operation, make_plan

T0 = 1_600_000_000_123_456_789
AgentFactory = Callable[..., AgentEndpoint]


@pytest.fixture(scope="module")
def sshd_no_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHD]:
    """A second sshd whose sessions find no python3 on PATH (an SFTP-only host)."""
    binary = find_sshd()
    if binary is None:
        pytest.skip("OpenSSH sshd not found")
    server = SSHD(
        workdir=tmp_path_factory.mktemp("sshd-nopy"),
        sshd_bin=binary,
        extra_config=("SetEnv PATH=/nonexistent",),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def tree(root: Path) -> dict[str, object]:
    """Everything that sync must reproduce: content, mode, mtime, link targets."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if os.path.islink(full):
                out[rel] = ("link", os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = ("dir", st.st_mode & 0o7777)
            else:
                out[rel] = ("file", Path(full).read_bytes(), st.st_mode & 0o7777, st.st_mtime_ns)
    return out


def sync(alpha: Endpoint, beta: Endpoint) -> list[tuple[str, object]]:
    """One Zero2One pass through apply_operations, the executor applying what is not batched."""
    rules = IgnoreRules()
    sa, sb = alpha.scan(rules), beta.scan(rules)
    precision = max(alpha.capabilities.mtime_precision_ns, beta.capabilities.mtime_precision_ns)
    rec = reconcile({}, sa.entries, sb.entries, Mode("Zero2One"), Comparator(precision_ns=precision))
    try:
        plan = make_plan(rec, sa.entries, sb.entries)  # type: ignore[call-arg]
    except TypeError:
        plan = make_plan(rec)  # type: ignore[call-arg]
    ex = Executor(alpha, beta, Reporter(), "job")

    def fallback(op: Operation) -> None:
        dest, src = (alpha, beta) if op.side == ALPHA else (beta, alpha)
        ex._apply(op, dest, src)

    return [
        (op.path, outcome)
        for op, outcome in apply_operations(
            plan.operations, alpha, beta, "job", Reporter(), threading.Event(), fallback
        )
    ]


# ---- start-up, fallback, protocol ---------------------------------------------


def test_registry_uses_helper_then_sftp_when_switched_off(
    sshd: SSHD, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loc = Location(str(tmp_path), sshd.conn_spec())
    with EndpointPool() as pool:
        ep = pool.open(loc)
        assert ep.capabilities.remote_helper and ep.capabilities.mtime_precision_ns == 1
        assert pool.open(loc).capabilities.remote_helper  # one connection, two helpers
    monkeypatch.setenv(HELPER_ENV, "off")
    with EndpointPool() as pool:
        ep = pool.open(loc)
        assert not ep.capabilities.remote_helper and ep.capabilities.remote


def test_registry_falls_back_to_sftp_without_python3(sshd_no_python: SSHD, tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": b"x"})
    loc = Location(str(tmp_path), sshd_no_python.conn_spec())
    with EndpointPool() as pool:
        ep = pool.open(loc)
        assert ep.capabilities.remote and not ep.capabilities.remote_helper
        assert set(ep.scan(IgnoreRules()).entries) == {"a"}
        # probed once per connection: the second path goes straight to SFTP
        assert id(pool.connection(loc.conn)) in pool._no_helper  # type: ignore[arg-type]
        assert not pool.open(loc).capabilities.remote_helper


def test_slow_helper_falls_back_to_sftp(sshd: SSHD, tmp_path: Path) -> None:
    # the interpreter starts later than the timeout, but the connection still
    # answers: SFTP takes over (a silent connection is a stall: test_faults)
    slow = tmp_path / "slow-python3"
    slow.write_text('#!/bin/sh\nsleep 3\nexec python3 "$@"\n')
    slow.chmod(0o755)
    make_tree(tmp_path / "root", {"a": b"x"})
    loc = Location(str(tmp_path / "root"), dataclasses.replace(sshd.conn_spec(), timeout=1.0))
    with EndpointPool(helper=str(slow)) as pool:
        ep = pool.open(loc)
        assert ep.capabilities.remote and not ep.capabilities.remote_helper
        assert set(ep.scan(IgnoreRules()).entries) == {"a"}


def test_missing_interpreter_is_reported(sshd: SSHD, tmp_path: Path) -> None:
    with pytest.raises(HelperUnavailable, match="not found on the remote PATH"):
        open_agent_endpoint(sshd.conn_spec(), str(tmp_path), python="/nonexistent/python3")


def test_protocol_mismatch_is_refused(
    sshd: SSHD, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_client, "PROTOCOL", 999)
    with pytest.raises(HelperUnavailable, match="protocol"):
        open_agent_endpoint(sshd.conn_spec(), str(tmp_path))


def test_helper_exits_when_closed(agent_endpoint_factory: AgentFactory, tmp_path: Path) -> None:
    ep = agent_endpoint_factory(str(tmp_path))
    pid = ep._client.info["pid"]
    assert os.path.exists(f"/proc/{pid}")
    ep.close()
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")
    assert os.listdir(tmp_path) == []  # nothing left behind


# ---- scan semantics: the same as SFTP and local -----------------------------------


def _tricky_tree(root: Path) -> None:
    make_tree(
        root,
        {
            "keep/a.txt": b"a",
            "keep/b.o": b"o",
            "keep/important.o": b"i",
            "cache/big": b"c" * 10,
            "sub/deep/x.tmp": b"t",
            "sub/.srsyncignore": b"*.log\n",
            "sub/app.log": b"l",
            ".srsync-tmp-0123-left": b"leftover",
        },
    )
    nfd = unicodedata.normalize("NFD", "café")
    (root / nfd).write_bytes(b"nfd")
    (root / "keep" / "link").symlink_to("a.txt")
    os.mkfifo(root / "fifo")
    (root / os.fsdecode(b"bad\xffname")).write_bytes(b"?")
    (root / "empty").mkdir(mode=0o700)
    os.chmod(root / "empty", 0o700)


def _shape(res: ScanResult) -> tuple[dict[str, tuple[object, ...]], set[str], list[str], dict[str, str]]:
    entries = {
        p: (e.kind, e.size, e.mode, e.target, e.mtime_ns // 10**9) for p, e in res.entries.items()
    }
    return entries, {p.path for p in res.problems}, sorted(res.temp_files), res.ignore_files


def test_scan_matches_sftp_and_local(
    agent_endpoint_factory: AgentFactory,
    sftp_endpoint_factory: Callable[[str], Endpoint],
    tmp_path: Path,
) -> None:
    _tricky_tree(tmp_path)
    rules = IgnoreRules.from_patterns(["*.o", "!important.o", "cache/", "/sub/deep/*.tmp"])
    agent = agent_endpoint_factory(str(tmp_path)).scan(rules)
    sftp = sftp_endpoint_factory(str(tmp_path)).scan(rules)
    local = LocalEndpoint(str(tmp_path)).scan(rules)
    assert _shape(agent) == _shape(sftp)
    assert _shape(agent)[0] == _shape(local)[0]
    assert "café" in agent.entries and "keep/important.o" in agent.entries
    assert "keep/b.o" not in agent.entries and "cache" not in agent.entries
    assert agent.temp_files == [".srsync-tmp-0123-left"]
    assert sorted(p.message for p in agent.problems) == sorted(p.message for p in sftp.problems)
    # precise mtimes, unlike SFTP's seconds
    st = os.stat(tmp_path / "keep" / "a.txt")
    assert agent.entries["keep/a.txt"].mtime_ns == st.st_mtime_ns


def test_rules_without_wildcards_exclude_alike_on_the_helper(
    agent_endpoint_factory: AgentFactory, tmp_path: Path
) -> None:
    """Plain-name rules (the helper matches them without ``re``) exclude exactly what the
    same rules exclude in a local scan, regex-special characters and all."""
    for rel in ["a.b/x", "a-b+c", "x y/z", "(p)/q", "d/a.b", "d/keep.txt", "top/file", "s/top/file", "[v]"]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    rules = IgnoreRules.from_patterns(["a.b/", "a-b+c", "x y", "/(p)", "/top/", "\\[v]"])
    agent = agent_endpoint_factory(str(tmp_path)).scan(rules)
    local = LocalEndpoint(str(tmp_path)).scan(rules)
    assert _shape(agent)[0] == _shape(local)[0]
    # ("a.b/" names directories only: the file d/a.b stays)
    assert sorted(agent.entries) == ["d", "d/a.b", "d/keep.txt", "s", "s/top", "s/top/file"]


def test_nfd_names_stay_addressable(agent_endpoint_factory: AgentFactory, tmp_path: Path) -> None:
    nfd = unicodedata.normalize("NFD", "résumé")
    (tmp_path / nfd).mkdir()
    ep = agent_endpoint_factory(str(tmp_path))
    assert "résumé" in ep.scan(IgnoreRules()).entries
    ep.write_file("résumé/f", iter([b"data"]), 0o644, T0)
    assert (tmp_path / nfd / "f").read_bytes() == b"data"


def test_missing_root_and_file_root(agent_endpoint_factory: AgentFactory, tmp_path: Path) -> None:
    ep = agent_endpoint_factory(str(tmp_path / "absent" / "deeper"))
    assert not ep.root_exists()
    assert not ep.scan(IgnoreRules()).root_exists
    ep.ensure_root()
    assert ep.root_exists() and (tmp_path / "absent" / "deeper").is_dir()
    (tmp_path / "file").write_bytes(b"x")
    res = agent_endpoint_factory(str(tmp_path / "file")).scan(IgnoreRules())
    assert not res.root_exists and res.problems


# ---- hashing with and without xxhash on the remote --------------------------------


@pytest.mark.parametrize("python", ["python3", "/usr/bin/python3", sys.executable])
def test_hash_matches_local(agent_endpoint_factory: AgentFactory, tmp_path: Path, python: str) -> None:
    if python.startswith("/") and not os.access(python, os.X_OK):
        pytest.skip(f"{python} not installed")
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "f").write_bytes(data)
    (tmp_path / "g").write_bytes(b"")
    ep = agent_endpoint_factory(str(tmp_path), python=python)
    assert ep.hash_file("f") == digest_bytes(data)
    got = list(ep.hash_files(["f", "g", "missing"]))
    assert got[:2] == [digest_bytes(data), digest_bytes(b"")]
    assert isinstance(got[2], FileNotFoundError)


# ---- batches --------------------------------------------------------------------


def test_read_files_reports_per_file(agent_endpoint_factory: AgentFactory, tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": b"aaa", "b": b"", "c": b"c" * 100_000})
    ep = agent_endpoint_factory(str(tmp_path))
    scan = ep.scan(IgnoreRules()).entries
    got = list(ep.read_files([FileRead("a", 3), FileRead("missing", 1), FileRead("b", 0), FileRead("c", 10)]))
    assert got[0] == (b"aaa", scan["a"])
    assert isinstance(got[1], FileNotFoundError)
    assert got[2] == (b"", scan["b"])
    data, after = got[3]  # type: ignore[misc]
    assert len(data) == 11 and after == scan["c"]  # read stops at scanned size + 1


def test_steps_are_guarded_and_failures_stay_per_step(
    agent_endpoint_factory: AgentFactory, tmp_path: Path
) -> None:
    make_tree(tmp_path, {"old": b"old", "gone": b"g"})
    ep = agent_endpoint_factory(str(tmp_path))
    scan = ep.scan(IgnoreRules()).entries
    (tmp_path / "old").write_bytes(b"changed behind our back")
    f = Entry(Kind.FILE, size=3, mtime_ns=T0, mode=0o600)
    steps = [
        Step(StepKind.WRITE, "old", scan["old"], f, data=b"new"),  # changed since scan: refused
        Step(StepKind.MKDIR, "d", None, Entry(Kind.DIR, mode=0o750)),
        Step(StepKind.WRITE, "d/f", None, f, data=b"new"),
        Step(StepKind.WRITE, "nodir/f", None, f, data=b"x"),  # parent missing
        Step(StepKind.LINK, "d/l", None, Entry(Kind.LINK, target="f")),
        Step(StepKind.REMOVE, "gone", scan["gone"]),
        Step(StepKind.META, "d", None, Entry(Kind.DIR, mode=0o700, mtime_ns=T0)),
        Step(StepKind.MKDIR, "d", None, Entry(Kind.DIR, mode=0o750)),  # exists: fine
    ]
    results = list(ep.apply_steps(steps))
    assert isinstance(results[0], BlockingIOError) and "changed since scan" in str(results[0])
    assert isinstance(results[3], FileNotFoundError)
    assert [r for i, r in enumerate(results) if i not in (0, 3)] == [None] * 6
    assert (tmp_path / "old").read_bytes() == b"changed behind our back"
    assert (tmp_path / "d" / "f").read_bytes() == b"new"
    st = os.stat(tmp_path / "d" / "f")
    assert st.st_mode & 0o7777 == 0o600 and st.st_mtime_ns == T0
    assert os.readlink(tmp_path / "d" / "l") == "f"
    assert not (tmp_path / "gone").exists()
    st = os.stat(tmp_path / "d")
    assert st.st_mode & 0o7777 == 0o700 and st.st_mtime_ns == T0
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".srsync-tmp-")]


def _sample_tree(root: Path, count: int) -> None:
    files = {f"d{i % 7}/f{i}": os.urandom(i % 5000) for i in range(count)}
    files["big/huge.bin"] = os.urandom(3 * 1024 * 1024)
    make_tree(root, files)
    (root / "d0" / "link").symlink_to("f0")
    (root / "emptydir").mkdir()
    os.chmod(root / "d1" / "f1", 0o600)


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_sync_through_batches(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, direction: str
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _sample_tree(src, 600)
    dst.mkdir()
    remote = agent_endpoint_factory(str(dst if direction == "push" else src))
    local = LocalEndpoint(str(src if direction == "push" else dst))
    alpha, beta = (local, remote) if direction == "push" else (remote, local)
    outcomes = sync(alpha, beta)
    assert outcomes and all(o is None for _, o in outcomes), [o for o in outcomes if o[1] is not None]
    assert tree(dst) == tree(src)
    assert sync(alpha, beta) == []
    # change some, delete some, then again
    (src / "d2" / "f2").write_bytes(b"changed")
    shutil.rmtree(src / "d3")
    outcomes = sync(alpha, beta)
    assert all(o is None for _, o in outcomes)
    assert tree(dst) == tree(src)


def test_parallel_upload_of_a_big_file(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_mod, "PARALLEL_MIN", 1024 * 1024)
    monkeypatch.setattr(agent_mod, "PARALLEL_RTT", 0.0)  # loopback: force the parallel path
    monkeypatch.setattr(agent_mod, "STRIPE", 256 * 1024)
    src, dst = tmp_path / "src", tmp_path / "dst"
    data = os.urandom(5 * 1024 * 1024 + 123)
    make_tree(src, {"big": data})
    dst.mkdir()
    local = LocalEndpoint(str(src))
    remote = agent_endpoint_factory(str(dst), streams=3)
    entry = local.stat("big")
    assert entry is not None
    got = transfer_file(local, remote, "big", entry, "job", Reporter())
    assert (dst / "big").read_bytes() == data
    assert got.size == len(data) and got.mtime_ns == entry.mtime_ns
    assert len(remote._extra) == 2  # three channels did the work
    assert os.listdir(dst) == ["big"]
    # a source that changes meanwhile is not installed, and the temp file goes away
    (src / "big").write_bytes(data[:-1] + b"!")
    os.utime(src / "big", ns=(entry.mtime_ns + 10**9, entry.mtime_ns + 10**9))
    with pytest.raises(OSError, match="changed while being read"):
        transfer_file(local, remote, "big", entry, "job", Reporter())
    assert (dst / "big").read_bytes() == data
    assert os.listdir(dst) == ["big"]


def test_parallel_upload_failures_install_nothing(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source failing after some stripes went out, and a helper refusing a stripe: the
    error is raised, the temporary file goes away, the old file stays, and the endpoint
    (with its extra channels) serves the next file."""
    monkeypatch.setattr(agent_mod, "PARALLEL_MIN", 1024 * 1024)
    monkeypatch.setattr(agent_mod, "PARALLEL_RTT", 0.0)
    monkeypatch.setattr(agent_mod, "STRIPE", 256 * 1024)
    (tmp_path / "big").write_bytes(b"old")
    ep = agent_endpoint_factory(str(tmp_path), streams=4)
    entry = Entry(Kind.FILE, size=4 * 1024 * 1024, mode=0o644, mtime_ns=10**18)

    def failing() -> Iterator[bytes]:
        for _ in range(6):
            yield os.urandom(256 * 1024)
        raise OSError("source vanished")

    old = ep.stat("big")
    step = Step(StepKind.WRITE, "big", old, entry, chunks=failing())
    (result,) = list(ep.apply_steps([step]))
    assert isinstance(result, OSError) and "source vanished" in str(result)
    assert sorted(os.listdir(tmp_path)) == ["big"] and (tmp_path / "big").read_bytes() == b"old"

    # a file that grew past its scanned size: the stripes beyond it are never installed
    grown = [os.urandom(256 * 1024) for _ in range(17)]
    step = Step(StepKind.WRITE, "big", old, entry, chunks=iter(grown))
    (result,) = list(ep.apply_steps([step]))
    assert isinstance(result, OSError) and "changed while being read" in str(result)
    assert sorted(os.listdir(tmp_path)) == ["big"] and (tmp_path / "big").read_bytes() == b"old"

    data = os.urandom(entry.size)
    pieces = iter([data[i : i + 100_000] for i in range(0, len(data), 100_000)])
    step = Step(StepKind.WRITE, "big", old, entry, chunks=pieces)
    (result,) = list(ep.apply_steps([step]))
    assert isinstance(result, Entry) and result.size == entry.size
    assert (tmp_path / "big").read_bytes() == data and sorted(os.listdir(tmp_path)) == ["big"]
    assert len(ep._extra) == 3


def _force_striping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_mod, "PARALLEL_MIN", 1024 * 1024)
    monkeypatch.setattr(agent_mod, "PARALLEL_RTT", 0.0)  # loopback: force the striped path
    monkeypatch.setattr(agent_mod, "STRIPE", 256 * 1024)


def test_big_uploads_back_to_back_overlap_and_answer_in_order(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Big files in a row share the pumps; one whose source fails and one whose name was
    taken meanwhile fail alone, in their places; the small step after the run and the big
    one after that still go; no temporary file is left."""
    _force_striping(monkeypatch)
    ep = agent_endpoint_factory(str(tmp_path), streams=3)
    size = 1024 * 1024 + 77
    datas = {name: os.urandom(size) for name in ("b1", "b2", "b4", "b6")}
    (tmp_path / "taken").write_bytes(b"was here first")

    def entry(i: int) -> Entry:
        return Entry(Kind.FILE, size=size, mode=0o640, mtime_ns=T0 + i)

    def pieces(data: bytes) -> Iterator[bytes]:
        return iter([data[i : i + 100_000] for i in range(0, len(data), 100_000)])

    def failing() -> Iterator[bytes]:
        yield os.urandom(300_000)
        raise OSError("source vanished")

    steps = [
        Step(StepKind.WRITE, "b1", None, entry(1), True, chunks=pieces(datas["b1"])),
        Step(StepKind.WRITE, "b2", None, entry(2), True, chunks=pieces(datas["b2"])),
        Step(StepKind.WRITE, "b3", None, entry(3), True, chunks=failing()),
        Step(StepKind.WRITE, "taken", None, entry(4), True, chunks=pieces(os.urandom(size))),
        Step(StepKind.WRITE, "b4", None, entry(5), True, chunks=pieces(datas["b4"])),
        Step(StepKind.WRITE, "small", None, Entry(Kind.FILE, size=5, mode=0o600, mtime_ns=T0), True,
             data=b"small"),
        Step(StepKind.WRITE, "b6", None, entry(7), True, chunks=pieces(datas["b6"])),
    ]
    results = list(ep.apply_steps(steps))
    assert len(results) == len(steps)
    for i in (0, 1, 4, 6):
        got = results[i]
        assert isinstance(got, Entry) and got.size == size and got.mtime_ns == steps[i].entry.mtime_ns  # type: ignore[union-attr]
    assert isinstance(results[2], OSError) and "source vanished" in str(results[2])
    assert isinstance(results[3], OSError)
    assert results[5] is None
    for name, data in datas.items():
        assert (tmp_path / name).read_bytes() == data
        assert (tmp_path / name).stat().st_mode & 0o7777 == 0o640
    assert (tmp_path / "taken").read_bytes() == b"was here first"
    assert (tmp_path / "small").read_bytes() == b"small"
    assert sorted(os.listdir(tmp_path)) == ["b1", "b2", "b4", "b6", "small", "taken"]
    assert len(ep._extra) == 2


def test_big_uploads_abandoned_midway_leave_no_temp(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller that stops taking results (a stop request) gets no half file and no temp
    files; the endpoint serves the next upload."""
    _force_striping(monkeypatch)
    ep = agent_endpoint_factory(str(tmp_path), streams=3)
    size = 2 * 1024 * 1024
    steps = (Step(StepKind.WRITE, f"f{i}", None, Entry(Kind.FILE, size=size, mode=0o644, mtime_ns=T0), True,
                  chunks=iter([os.urandom(size)])) for i in range(5))
    results = ep.apply_steps(steps)
    first = next(results)
    assert isinstance(first, Entry)
    results.close()  # type: ignore[attr-defined]
    names = sorted(os.listdir(tmp_path))
    assert names[0] == "f0" and all(n in ("f0", "f1", "f2") for n in names), names
    for name in names:
        assert (tmp_path / name).stat().st_size == size
    data = os.urandom(size)
    step = Step(StepKind.WRITE, "again", None, Entry(Kind.FILE, size=size, mode=0o644, mtime_ns=T0), True,
                chunks=iter([data]))
    (result,) = list(ep.apply_steps([step]))
    assert isinstance(result, Entry) and (tmp_path / "again").read_bytes() == data


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_sync_of_new_big_files_goes_striped(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    """Through apply_operations: new big files are one run of streamed steps, an update of a
    big file still goes through the executor (delta), and the trees end up equal."""
    _force_striping(monkeypatch)
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, {f"d/big{i}": os.urandom(1024 * 1024 + i) for i in range(4)} | {"d/small": b"s"})
    dst.mkdir()
    remote = agent_endpoint_factory(str(dst if direction == "push" else src), streams=3)
    local = LocalEndpoint(str(src if direction == "push" else dst))
    alpha, beta = (local, remote) if direction == "push" else (remote, local)
    outcomes = sync(alpha, beta)
    assert outcomes and all(o is None for _, o in outcomes), outcomes
    assert tree(dst) == tree(src)
    with open(src / "d/big2", "r+b") as f:
        f.seek(1000)
        f.write(b"edited")
    outcomes = sync(alpha, beta)
    assert "d/big2" in [p for p, _ in outcomes] and all(o is None for _, o in outcomes), outcomes
    assert tree(dst) == tree(src)


def test_streamed_write_failure_removes_temp(agent_endpoint_factory: AgentFactory, tmp_path: Path) -> None:
    ep = agent_endpoint_factory(str(tmp_path))

    def chunks() -> Iterator[bytes]:
        yield os.urandom(2 * 1024 * 1024)
        raise OSError("source vanished")

    step = Step(StepKind.WRITE, "f", None, Entry(Kind.FILE, size=9 * 1024 * 1024, mode=0o644), chunks=chunks())
    (result,) = list(ep.apply_steps([step]))
    assert isinstance(result, OSError) and "source vanished" in str(result)
    assert os.listdir(tmp_path) == []


def test_lost_connection_is_connect_error(sshd: SSHD, tmp_path: Path) -> None:
    from srsync.errors import ConnectError

    ep = open_agent_endpoint(sshd.conn_spec(), str(tmp_path))
    try:
        pid = ep._client.info["pid"]
        subprocess.run(["kill", "-9", str(pid)], check=True)
        with pytest.raises(ConnectError):
            for _ in range(50):
                ep.stat("x")
                time.sleep(0.05)
    finally:
        ep.close()


def test_sftp_endpoint_still_works_beside_helper(sshd: SSHD, tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": b"1"})
    sftp = open_sftp_endpoint(sshd.conn_spec(), str(tmp_path))
    try:
        assert set(sftp.scan(IgnoreRules()).entries) == {"a"}
    finally:
        sftp.close()


@pytest.mark.parametrize("kind", ["agent", "sftp"])
def test_hard_links_for_the_trash(
    agent_endpoint_factory: AgentFactory,
    sftp_endpoint_factory: Callable[[str], Endpoint],
    tmp_path: Path,
    kind: str,
) -> None:
    make_tree(tmp_path, {"f": b"content"})
    ep = agent_endpoint_factory(str(tmp_path)) if kind == "agent" else sftp_endpoint_factory(str(tmp_path))
    ep.mkdir("keep", 0o700)
    ep.link("f", "keep/f")
    assert os.stat(tmp_path / "f").st_ino == os.stat(tmp_path / "keep" / "f").st_ino
    with pytest.raises(FileExistsError):
        ep.link("f", "keep/f")
    with pytest.raises(FileNotFoundError):
        ep.link("missing", "keep/g")


def test_upload_refused_while_still_sending_leaves_the_helper_usable(
    agent_endpoint_factory: AgentFactory, tmp_path: Path
) -> None:
    """The helper refuses an upload (here: its parent is a file) and the client sees the
    refusal before it has sent everything: the refusal is the result, and the same helper
    serves the next call (the client once waited for an answer to its abort that never
    comes, until the connection was judged stalled and closed)."""
    (tmp_path / "p").write_bytes(b"a file, not a folder")
    ep = agent_endpoint_factory(str(tmp_path))
    client = ep._client

    def chunks() -> Iterator[bytes]:
        yield b"x" * 65536
        client.flush()
        deadline = time.monotonic() + 10
        while client._calls and time.monotonic() < deadline:  # until the refusal has arrived
            time.sleep(0.005)
        assert not client._calls, "the helper did not refuse the upload"
        yield b"y" * 65536
        yield b"z" * 65536

    with pytest.raises(OSError) as got:
        ep.write_file("p/f", chunks(), 0o644, T0)
    assert got.value.errno == errno.ENOTDIR, got.value
    assert ep.stat("p") is not None and ep._client is client and client.alive
    data = os.urandom(300_000)
    entry = ep.write_file("g", iter([data]), 0o644, T0)
    assert entry.size == len(data) and (tmp_path / "g").read_bytes() == data


def test_striped_upload_refused_at_open_leaves_the_helper_usable(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The helper refuses the temporary copy of a striped upload (its parent is a file):
    that file fails alone, and the big file after it still goes over the same channels
    (the client once asked again for the refused answer, waited until the I/O timeout
    closed the channel as stalled, and the next file failed with it)."""
    _force_striping(monkeypatch)
    (tmp_path / "p").write_bytes(b"a file, not a folder")
    ep = agent_endpoint_factory(str(tmp_path), streams=3)
    size = 2 * 1024 * 1024
    data = os.urandom(size)
    steps = [Step(StepKind.WRITE, name, None, Entry(Kind.FILE, size=size, mode=0o644, mtime_ns=T0), True,
                  chunks=iter([data])) for name in ("p/big", "big")]
    refused, installed = list(ep.apply_steps(steps))
    assert isinstance(refused, OSError) and refused.errno == errno.ENOTDIR, refused
    assert isinstance(installed, Entry) and (tmp_path / "big").read_bytes() == data
    assert ep._client.alive and sorted(os.listdir(tmp_path)) == ["big", "p"]


def test_waiting_again_for_an_answer_already_taken_fails_at_once(
    agent_endpoint_factory: AgentFactory, tmp_path: Path
) -> None:
    """A second wait for the same answer (a bug in srsync) is reported at once and leaves
    the helper serving, instead of waiting for the I/O timeout and closing the channel."""
    from srsync.errors import ConnectError

    ep = agent_endpoint_factory(str(tmp_path))
    client = ep._client
    call = client.call("stat", ["nothing-here"])
    client.result(call)
    with pytest.raises(ConnectError, match="waited twice for the answer to its 'stat' request"):
        client.result(call)
    assert client.alive and ep.stat("nothing-here") is None
    refused = client.call("mkdir", ["no-parent/d", 0o755, None])
    with pytest.raises(OSError) as got:
        client.result(refused)
    assert got.value.errno == errno.ENOENT, got.value
    with pytest.raises(ConnectError, match="waited twice"):
        client.result(refused)
    assert client.alive and ep.stat("nothing-here") is None
