"""A local endpoint applies a long batch of small files (announced by expect_writes) through
the helper run as a child process (srsync.agent.pipe): same results and guards as in this
process, nothing left running."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import local_job, make_tree, remote_job, run, tree_state

from srsync.agent import pipe
from srsync.core.entry import Entry, Kind
from srsync.endpoints import local as local_mod
from srsync.endpoints.base import Step, StepKind
from srsync.endpoints.local import LocalEndpoint
from srsync.jobspec import Location
from srsync.plan import NewTreePlan

T0 = 1_600_000_000_123_456_789


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRSYNC_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv(local_mod.LOCAL_HELPER_ENV, raising=False)


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[pipe.PipeChannel]:
    """Every local helper started (its channel), to check it ran and was reaped."""
    started: list[pipe.PipeChannel] = []
    real = pipe.LocalHelperHost.open_command

    def spy(self: pipe.LocalHelperHost, command: str) -> pipe.PipeChannel:
        channel = real(self, command)
        started.append(channel)
        return channel

    monkeypatch.setattr(pipe.LocalHelperHost, "open_command", spy)
    return started


def _reaped(channel: pipe.PipeChannel) -> bool:
    return channel._proc.poll() is not None


def _writers_reaped(children: list[pipe.PipeChannel]) -> bool:
    """One writer endpoint's children (its helper and the extra ones it spreads batches
    over, see local_mod.WRITERS) were started and are all gone."""
    return 1 <= len(children) <= local_mod.WRITERS and all(map(_reaped, children))


def _steps(n_dirs: int, per_dir: int) -> list[Step]:
    """A new tree: directories first, then small files of assorted modes and a symlink each."""
    out = [Step(StepKind.MKDIR, f"d{i}", None, Entry(Kind.DIR, 0, T0, 0o750)) for i in range(n_dirs)]
    for i in range(n_dirs):
        for j in range(per_dir):
            data = f"{i}/{j}".encode() * (j % 7)
            mode = 0o755 if j % 5 == 0 else 0o640
            out.append(Step(StepKind.WRITE, f"d{i}/f{j}", None, Entry(Kind.FILE, len(data), T0 + j, mode), True, data))
        out.append(Step(StepKind.LINK, f"d{i}/link", None, Entry(Kind.LINK, 0, 0, 0, "f0")))
    return out


def test_long_batch_runs_in_a_child_helper_with_the_same_results(
    tmp_path: Path, children: list[pipe.PipeChannel], monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = _steps(10, local_mod.HELPER_WRITES // 10 + 10)
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()

    files = sum(s.kind is StepKind.WRITE for s in steps)
    monkeypatch.setenv(local_mod.LOCAL_HELPER_ENV, "off")
    ep = LocalEndpoint(str(here))
    ep.expect_writes(files)
    assert [r for r in ep.apply_steps(iter(steps)) if isinstance(r, OSError)] == []
    assert ep.helper_batches == 0 and children == []

    monkeypatch.delenv(local_mod.LOCAL_HELPER_ENV)
    ep = LocalEndpoint(str(there))
    ep.expect_writes(files)
    results = list(ep.apply_steps(iter(steps)))
    assert len(results) == len(steps)
    assert [r for r in results if isinstance(r, OSError)] == []
    assert ep.helper_batches == 1 and _writers_reaped(children)
    assert children[0].pid not in (os.getpid(), os.getpgid(0))

    assert tree_state(there) == tree_state(here)
    # nanosecond mtimes and exact modes, as asked
    s = os.lstat(there / "d3" / "f5")
    assert s.st_mtime_ns == T0 + 5 and s.st_mode & 0o7777 == 0o755
    assert os.lstat(there / "d3").st_mode & 0o7777 == 0o750
    assert os.readlink(there / "d9" / "link") == "f0"
    assert not [p for p in there.rglob("*") if p.name.startswith(".srsync")]  # no temporary left


def test_long_batch_is_spread_over_the_writers_in_order(
    tmp_path: Path, children: list[pipe.PipeChannel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an extra writer up, batches of puts go to both children, directories are made
    before the files in them and get their times after, and the tree is the one written
    in this process."""
    import time

    from srsync.agent.client import AgentClient

    if local_mod.WRITERS < 2:
        pytest.skip("one core: one writer")
    seen: list[tuple[int, str]] = []
    real_call = AgentClient.call

    def call(self: AgentClient, op: str, args: list[Any], raw: Any = b"") -> Any:
        if op == "batch":
            seen.append((id(self), "puts" if any(isinstance(c, int) for c in args[0]) else "other"))
        return real_call(self, op, args, raw)

    monkeypatch.setattr(AgentClient, "call", call)
    steps = _steps(20, local_mod.HELPER_WRITES // 20 + 10)
    steps += [Step(StepKind.META, f"d{i}", None, Entry(Kind.DIR, 0, T0 + 7, 0o700)) for i in range(20)]
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    monkeypatch.setenv(local_mod.LOCAL_HELPER_ENV, "off")
    assert not [r for r in LocalEndpoint(str(here)).apply_steps(iter(steps)) if isinstance(r, OSError)]
    monkeypatch.delenv(local_mod.LOCAL_HELPER_ENV)
    ep = LocalEndpoint(str(there))
    ep.expect_writes(sum(s.kind is StepKind.WRITE for s in steps))
    assert ep._helper is not None
    writer = ep._helper.result()
    deadline = time.monotonic() + 10
    while len(getattr(writer, "_extra", [])) < local_mod.WRITERS - 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    results = list(ep.apply_steps(iter(steps)))
    assert len(results) == len(steps) and not [r for r in results if isinstance(r, OSError)]
    assert len({helper for helper, kind in seen if kind == "puts"}) == local_mod.WRITERS, seen
    assert _writers_reaped(children) and len(children) == local_mod.WRITERS
    assert tree_state(there) == tree_state(here)
    assert os.lstat(there / "d7").st_mtime_ns == T0 + 7 and os.lstat(there / "d7").st_mode & 0o7777 == 0o700


@pytest.mark.parametrize("announced", [None, 100])
def test_short_or_unannounced_batch_stays_in_this_process(
    tmp_path: Path, children: list[pipe.PipeChannel], announced: int | None
) -> None:
    ep = LocalEndpoint(str(tmp_path))
    steps = _steps(2, 50) if announced else _steps(2, local_mod.HELPER_WRITES // 2 + 1)
    if announced:
        ep.expect_writes(announced)
    assert [r for r in ep.apply_steps(iter(steps)) if isinstance(r, OSError)] == []
    assert ep.helper_batches == 0 and children == []
    assert (tmp_path / "d1" / "f49").read_bytes() == b"1/49" * (49 % 7)


def test_terminal_interrupt_does_not_reach_the_helper(tmp_path: Path, children: list[pipe.PipeChannel]) -> None:
    """The child is in a session of its own: a Ctrl-C for srsync's process group leaves
    it running until srsync closes it."""
    ep = LocalEndpoint(str(tmp_path))
    ep.expect_writes(local_mod.HELPER_WRITES)
    pending = ep._helper
    assert pending is not None and pending.result() is not None  # started
    assert children
    for child in list(children):  # (an extra writer may still be starting)
        assert os.getsid(child.pid) == child.pid != os.getsid(0)
    ep.close()
    assert _writers_reaped(children)


def test_unused_helper_is_ended(tmp_path: Path, children: list[pipe.PipeChannel]) -> None:
    """A second announcement keeps the helper the first one started (the session announces
    a long first copy before the executor does), and closing the endpoint ends one that no
    batch took."""
    ep = LocalEndpoint(str(tmp_path))
    ep.expect_writes(local_mod.HELPER_WRITES)
    ep.expect_writes(local_mod.HELPER_WRITES)
    ep.close()
    assert _writers_reaped(children)
    assert ep.helper_batches == 0 and list(tmp_path.iterdir()) == []


def test_a_long_first_copy_starts_its_writer_before_planning(
    tmp_path: Path, children: list[pipe.PipeChannel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-way run with many new paths for a local target announces them as soon as
    the scans are done (the writer then starts while reconciling and planning leave a
    core idle), and the executor's batch uses that writer: no second start.  A dry run
    announces nothing."""
    import srsync.engine.session as session_mod

    monkeypatch.setattr(local_mod, "HELPER_WRITES", 20)
    events: list[str] = []
    real_plan, real_expect = session_mod.make_plan, LocalEndpoint.expect_writes

    def plan_spy(*args: Any, **kwargs: Any) -> Any:
        events.append("plan")
        return real_plan(*args, **kwargs)

    def expect_spy(self: LocalEndpoint, count: int) -> None:
        events.append(f"writes {count}")
        real_expect(self, count)

    real_finish = NewTreePlan.finish

    def finish_spy(self: NewTreePlan, snap: Any) -> Any:  # (the plan for an empty target)
        events.append("plan")
        return real_finish(self, snap)

    monkeypatch.setattr(session_mod, "make_plan", plan_spy)
    monkeypatch.setattr(NewTreePlan, "finish", finish_spy)
    monkeypatch.setattr(LocalEndpoint, "expect_writes", expect_spy)
    m, t = tmp_path / "mirror", tmp_path / "target"
    make_tree(m, {f"d/f{i}": b"x" * i for i in range(40)})
    r = run(local_job(m, t), dry_run=True)
    assert r.exit_code == 0 and events == ["plan"] and children == []
    events.clear()
    r = run(local_job(m, t))
    assert r.exit_code == 0, (r.error, r.pairs)
    # 41 new paths (d and its 40 files) announced before planning; the executor's 40 after
    assert events == ["writes 41", "plan", "writes 40"]
    assert _writers_reaped(children)
    assert tree_state(t) == tree_state(m)


def test_helper_keeps_the_guards(
    tmp_path: Path, children: list[pipe.PipeChannel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name taken since the scan, and a file changed since, are reported and left as they are."""
    monkeypatch.setattr(local_mod, "HELPER_WRITES", 20)
    (tmp_path / "taken").write_bytes(b"someone else's")
    (tmp_path / "old").write_bytes(b"old")
    old = LocalEndpoint(str(tmp_path)).stat("old")
    assert old is not None
    (tmp_path / "old").write_bytes(b"changed since the scan")
    new = Entry(Kind.FILE, 3, T0, 0o644)
    steps = [Step(StepKind.WRITE, f"n{i}", None, new, True, b"new") for i in range(30)]
    steps.insert(10, Step(StepKind.WRITE, "taken", None, new, True, b"new"))
    steps.insert(20, Step(StepKind.WRITE, "old", old, new, True, b"new"))
    ep = LocalEndpoint(str(tmp_path))
    ep.expect_writes(len(steps))
    results = list(ep.apply_steps(iter(steps)))
    assert ep.helper_batches == 1 and _writers_reaped(children)
    errors = {steps[i].path: r for i, r in enumerate(results) if isinstance(r, OSError)}
    assert set(errors) == {"taken", "old"}
    assert all(e.errno == errno.EAGAIN for e in errors.values())
    assert (tmp_path / "taken").read_bytes() == b"someone else's"
    assert (tmp_path / "old").read_bytes() == b"changed since the scan"
    assert all((tmp_path / f"n{i}").read_bytes() == b"new" for i in range(30))


@pytest.mark.parametrize("python", ["", "/nonexistent/python3", "/bin/false"])
def test_no_helper_means_this_process(
    tmp_path: Path, children: list[pipe.PipeChannel], monkeypatch: pytest.MonkeyPatch, python: str
) -> None:
    """No interpreter, a missing one, or one that fails: the batch is applied here, all of it."""
    monkeypatch.setattr(local_mod, "HELPER_WRITES", 20)
    monkeypatch.setattr(sys, "executable", python)
    steps = _steps(3, 20)
    ep = LocalEndpoint(str(tmp_path))
    ep.expect_writes(60)
    results = list(ep.apply_steps(iter(steps)))
    assert len(results) == len(steps) and not [r for r in results if isinstance(r, OSError)]
    assert ep.helper_batches == 0
    assert all(_reaped(c) for c in children)
    assert (tmp_path / "d2" / "f19").read_bytes() == b"2/19" * (19 % 7)


def test_abandoned_batch_stops_the_helper_and_tears_nothing(
    tmp_path: Path, children: list[pipe.PipeChannel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller stops part way (Ctrl-C, a failed source): the child is reaped, and every
    file at its final name is whole."""
    monkeypatch.setattr(local_mod, "HELPER_WRITES", 20)
    body = os.urandom(50_000)
    steps = [Step(StepKind.WRITE, f"f{i}", None, Entry(Kind.FILE, len(body), T0, 0o644), True, body)
             for i in range(400)]
    ep = LocalEndpoint(str(tmp_path))
    ep.expect_writes(len(steps))
    results = ep.apply_steps(iter(steps))
    for _ in range(5):
        assert not isinstance(next(results), OSError)
    results.close()
    assert _writers_reaped(children)
    names = [p for p in tmp_path.iterdir() if not p.name.startswith(".srsync")]
    assert len(names) >= 5
    assert all(p.read_bytes() == body for p in names)


def _big_tree(n: int) -> dict[str, bytes | str | None]:
    tree: dict[str, bytes | str | None] = {f"d{i % 40}/f{i}": str(i).encode() * (i % 13) for i in range(n)}
    tree["d0/link"] = "->f0"
    tree["empty"] = None
    return tree


@pytest.mark.parametrize("direction", ["local-local", "pull"])
def test_sync_of_many_small_files(
    direction: str, sshd: Any, tmp_path: Path, children: list[pipe.PipeChannel]
) -> None:
    """A first sync to a local target of more small files than HELPER_WRITES (over the test
    sshd for a pull): the local helper writes them; a second run finds nothing to do."""
    m, t = tmp_path / "mirror", tmp_path / "target"
    make_tree(m, _big_tree(local_mod.HELPER_WRITES + 500))
    os.chmod(m / "d3" / "f3", 0o600)
    if direction == "pull":
        job = remote_job(Location(str(m), sshd.conn_spec()), Location(str(t)))
    else:
        job = local_job(m, t)
    r = run(job)
    assert r.exit_code == 0, (r.error, r.pairs)
    assert tree_state(t) == tree_state(m)
    assert _writers_reaped(children)
    r = run(job)
    plan = r.pairs[0].plan
    assert r.exit_code == 0 and plan is not None and plan.empty, plan


def test_helper_started_here_reports_a_dead_child_as_an_error(
    tmp_path: Path, children: list[pipe.PipeChannel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child killed mid-batch: the caller gets ConnectError (the run fails, to be
    finished by the next one), never a hang, and no file is torn."""
    from srsync.errors import ConnectError

    monkeypatch.setattr(local_mod, "HELPER_WRITES", 20)
    body = os.urandom(20_000)

    def steps() -> Iterator[Step]:
        for i in range(3000):
            if i == 200:
                children[0]._proc.kill()
            yield Step(StepKind.WRITE, f"f{i}", None, Entry(Kind.FILE, len(body), T0, 0o644), True, body)

    ep = LocalEndpoint(str(tmp_path))
    ep.expect_writes(3000)
    with pytest.raises(ConnectError, match="helper on this machine"):
        for _ in ep.apply_steps(steps()):
            pass
    assert _reaped(children[0])
    names = [p for p in tmp_path.iterdir() if not p.name.startswith(".srsync")]
    assert all(p.read_bytes() == body for p in names)


def test_full_local_disk_through_the_helper(small_disk: Path, tmp_path: Path, children: list[pipe.PipeChannel]) -> None:
    """A first copy of more small files than a 2 MiB filesystem holds: what fits is written
    whole, every file that does not is reported, the run ends with exit code 3, and a
    second run after space is freed finishes the job."""
    m, t = tmp_path / "mirror", small_disk / "t"
    tree: dict[str, bytes | str | None] = {f"d{i % 10}/f{i:05d}": b"%05d" % i * 120 for i in range(local_mod.HELPER_WRITES + 200)}
    make_tree(m, tree)
    job = local_job(m, t)
    r = run(job)
    assert r.exit_code == 3, (r.error, r.pairs)
    assert _writers_reaped(children)
    problems = r.pairs[0].problems
    written = [p for p in t.rglob("f*") if p.is_file()]
    assert written and problems and len(written) + len(problems) == len(tree)
    assert all("space" in p.message.lower() or "full" in p.message.lower() for p in problems), problems[0]
    assert all(p.read_bytes() == tree[str(p.relative_to(t))] for p in written)  # nothing torn
    assert not [p for p in t.rglob(".srsync*")]  # no temporary left behind
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    r = run(job)
    assert r.exit_code == 0, (r.error, r.pairs)
    assert tree_state(t) == tree_state(m)
