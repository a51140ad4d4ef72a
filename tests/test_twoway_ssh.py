"""Two-way sync (One2One) over a real sshd: the classic change matrix, policies, crashes."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import reliability_report as report
from helpers import make_tree, remote_job, run, tree_state

from srsync import errors
from srsync.engine.reporter import Reporter
from srsync.jobspec import ONE2ONE, Location
from srsync.plan import Operation

BASE: dict[str, bytes | str | None] = {
    "mod_m": b"base", "mod_t": b"base", "del_m": b"base", "del_t": b"base", "both": b"base",
    "chg_m_del_t": b"base", "del_m_chg_t": b"base", "del_both": b"base", "same_edit": b"base",
    "fvd": b"base", "dir/keep": b"base", "dir/deep/x": b"base", "link": "->mod_m",
}


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRSYNC_STATE_DIR", str(tmp_path / "state"))


def write(p: Path, data: bytes, age: float = 0.0) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    t = time.time() - age
    os.utime(p, (t, t))


def edit_both_sides(m: Path, t: Path) -> None:
    write(m / "new_m", b"new on mirror")
    write(t / "new_t", b"new on target")
    write(m / "mod_m", b"mirror edit")
    write(t / "mod_t", b"target edit")
    (m / "del_m").unlink()
    (t / "del_t").unlink()
    write(m / "both", b"mirror's both edit", age=100)  # older
    write(t / "both", b"target's both edit, newer")
    write(m / "chg_m_del_t", b"changed on mirror")
    (t / "chg_m_del_t").unlink()
    (m / "del_m_chg_t").unlink()
    write(t / "del_m_chg_t", b"changed on target")
    (m / "del_both").unlink()
    (t / "del_both").unlink()
    write(m / "same_edit", b"identical edit")
    write(t / "same_edit", b"identical edit")
    (m / "fvd").unlink()
    write(m / "fvd/child", b"file became a dir on mirror")
    write(t / "fvd", b"file edited on target")


def job_for(direction: str, sshd: Any, m: Path, t: Path, **kw: Any) -> Any:
    conn = sshd.conn_spec()
    if direction == "push":
        return remote_job(Location(str(m)), Location(str(t), conn), sync_type=ONE2ONE, **kw)
    return remote_job(Location(str(m), conn), Location(str(t)), sync_type=ONE2ONE, **kw)


def conflict_copies(root: Path, name: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in root.glob(f"{name}.conflict-*")}


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_change_matrix_keep_both(direction: str, sshd: Any, tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, BASE)
    job = job_for(direction, sshd, m, t, max_delete=100.0)
    r = run(job)
    assert r.exit_code == 0, r.pairs
    assert tree_state(m) == tree_state(t)
    edit_both_sides(m, t)
    r = run(job)
    assert r.exit_code == 0, r.pairs
    assert tree_state(m) == tree_state(t), "converged"
    for side in (m, t):
        assert (side / "new_m").read_bytes() == b"new on mirror"
        assert (side / "new_t").read_bytes() == b"new on target"
        assert (side / "mod_m").read_bytes() == b"mirror edit"
        assert (side / "mod_t").read_bytes() == b"target edit"
        assert not (side / "del_m").exists() and not (side / "del_t").exists()
        assert not (side / "del_both").exists()
        assert (side / "chg_m_del_t").read_bytes() == b"changed on mirror"
        assert (side / "del_m_chg_t").read_bytes() == b"changed on target"
        assert (side / "same_edit").read_bytes() == b"identical edit"
        # changed on both: the newer (target's) wins, the mirror's is kept beside it
        assert (side / "both").read_bytes() == b"target's both edit, newer"
        assert list(conflict_copies(side, "both").values()) == [b"mirror's both edit"]
        assert (side / "fvd/child").read_bytes() == b"file became a dir on mirror"
        assert list(conflict_copies(side, "fvd").values()) == [b"file edited on target"]
    conflicts = {c.path for c in r.pairs[0].plan.conflicts}  # type: ignore[union-attr]
    assert conflicts == {"both", "fvd"}
    assert run(job).pairs[0].plan.empty  # type: ignore[union-attr]


@pytest.mark.parametrize(("policy", "winner", "copies"), [
    ("newer", b"target's both edit, newer", 0),
    ("mirror", b"mirror's both edit", 0),
    ("target", b"target's both edit, newer", 0),
    ("keep-both", b"target's both edit, newer", 1),
])
def test_conflict_policies(policy: str, winner: bytes, copies: int, sshd: Any, tmp_path: Path) -> None:
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {"both": b"base", "other": b"x"})
    job = job_for("push", sshd, m, t, conflict=policy)
    assert run(job).exit_code == 0
    write(m / "both", b"mirror's both edit", age=100)
    write(t / "both", b"target's both edit, newer")
    r = run(job)
    assert r.exit_code == 0
    assert (m / "both").read_bytes() == (t / "both").read_bytes() == winner
    assert len(conflict_copies(m, "both")) == len(conflict_copies(t, "both")) == copies


def test_ask_then_resolve_through_the_cli(sshd: Any, tmp_path: Path) -> None:
    from test_cli import srsync

    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {"both": b"base", "other": b"x"})
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "global.toml").write_text(
        f'known_hosts = "{sshd.known_hosts}"\nssh_config = "{sshd.ssh_config}"\nuse_agent = false\n'
        f'key = "{sshd.key_path}"\nuser = "{sshd.user}"\nport = {sshd.port}\n'
        f'state_dir = "{tmp_path / "jobstate"}"\n')
    (conf / "two.toml").write_text(
        'sync_type = "One2One"\nconflict = "ask"\n[[targets]]\nhost = "127.0.0.1"\n'
        f'[[targets.paths]]\nmirror = "{m}"\ntarget = "{t}"\n')
    assert srsync("autorun", "--conf-dir", str(conf), cwd=tmp_path).returncode == 0
    write(m / "both", b"mirror's edit", age=100)
    write(t / "both", b"target's edit")
    proc = srsync("autorun", "--conf-dir", str(conf), cwd=tmp_path)
    assert proc.returncode == errors.EXIT_CONFLICTS, proc.stdout + proc.stderr
    assert (m / "both").read_bytes() == b"mirror's edit" and (t / "both").read_bytes() == b"target's edit"
    listing = srsync("conflicts", "two", "--conf-dir", str(conf), cwd=tmp_path)
    assert listing.returncode == 0 and "both" in listing.stdout and "changed on both sides" in listing.stdout
    proc = srsync("resolve", "two", "nope", "--keep", "mirror", "--conf-dir", str(conf), cwd=tmp_path)
    assert proc.returncode == 2 and "no open conflict" in proc.stderr
    proc = srsync("resolve", "two", "both", "--keep", "mirror", "--conf-dir", str(conf), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = srsync("autorun", "--conf-dir", str(conf), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (m / "both").read_bytes() == (t / "both").read_bytes() == b"mirror's edit"
    assert "no conflicts" in srsync("conflicts", "--conf-dir", str(conf), cwd=tmp_path).stdout


class Crash(BaseException):
    """The process dies here: no cleanup, no state save."""


class CrashAt(Reporter):
    def __init__(self, k: int) -> None:
        self.k, self.n = k, 0

    def op_started(self, job: str, op: Operation) -> None:
        if self.n == self.k:
            raise Crash
        self.n += 1


def test_crash_at_every_mutating_step_then_rerun_converges(
    sshd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m0, t0 = tmp_path / "m0", tmp_path / "t0"
    make_tree(m0, BASE)
    shutil.copytree(m0, t0, symlinks=True)
    (tmp_path / "state0").mkdir()
    monkeypatch.setenv("SRSYNC_STATE_DIR", str(tmp_path / "state0"))
    # establish the ancestor on identical trees, then diverge both sides
    assert run(job_for("push", sshd, m0, t0, max_delete=100.0)).exit_code == 0
    edit_both_sides(m0, t0)
    dirty = {p.read_bytes() for root in (m0, t0) for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
    probe = run(job_for("push", sshd, m0, t0, max_delete=100.0), dry_run=True)
    n_ops = len(probe.pairs[0].plan.operations)  # type: ignore[union-attr]
    assert n_ops >= 15
    for k in range(n_ops):
        case = tmp_path / f"k{k}"
        m, t, state = case / "m", case / "t", case / "state"
        shutil.copytree(m0, m, symlinks=True)
        shutil.copytree(t0, t, symlinks=True)
        shutil.copytree(tmp_path / "state0", state)
        monkeypatch.setenv("SRSYNC_STATE_DIR", str(state))
        job = job_for("push", sshd, m, t, max_delete=100.0)
        # the state keys on locations: give this copy the ancestor the original had
        _rekey_state(state, m0, t0, m, t)
        with pytest.raises(Crash):
            run(job, reporter=CrashAt(k))
        # after the crash every file holds a whole version from before or after the run
        versions = dirty | {b"base"}
        for root in (m, t):
            for p in root.rglob("*"):
                if p.is_file() and not p.is_symlink() and not p.name.startswith(".srsync-tmp-"):
                    assert p.read_bytes() in versions, f"torn file {p} after crash at op {k}"
        r = run(job)
        assert r.exit_code == 0, (k, r.pairs)
        assert tree_state(m) == tree_state(t), f"not converged after crash at op {k}"
        present = {p.read_bytes() for root in (m, t) for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
        lost = {d for d in dirty if d != b"base"} - present
        assert not lost, f"crash at op {k} lost {lost}"
        assert run(job).pairs[0].plan.empty, f"second run after crash at op {k} still has work"  # type: ignore[union-attr]
        report.add("crash_points")
        report.add("crash_converged")
        assert not list(m.rglob(".srsync-tmp-*")) and not list(t.rglob(".srsync-tmp-*"))


def _rekey_state(state: Path, m0: Path, t0: Path, m: Path, t: Path) -> None:
    import sqlite3

    db = sqlite3.connect(state / "state.db")
    with db:
        for table in ("ancestors", "ancestor_info"):
            rows = db.execute(f"SELECT DISTINCT pair FROM {table}").fetchall()
            for (pair,) in rows:
                db.execute(f"UPDATE {table} SET pair = ? WHERE pair = ?",
                           (pair.replace(str(m0), str(m)).replace(str(t0), str(t)), pair))
    db.close()


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_quiet_directories_through_the_helper(
    direction: str, sshd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The remote helper leaves out directories that still match the ancestor, and a
    change on either side inside one is still found and synced."""
    from srsync.core.entry import ScanResult
    from srsync.endpoints.agent import AgentEndpoint

    remote_scans: list[ScanResult] = []
    real = AgentEndpoint.scan

    def scan(self: AgentEndpoint, rules: Any, expect: Any = None) -> ScanResult:
        res = real(self, rules, expect)
        remote_scans.append(res)
        return res

    monkeypatch.setattr(AgentEndpoint, "scan", scan)
    m, t = tmp_path / "m", tmp_path / "t"
    make_tree(m, {**{f"d{i}/f{j}": f"{i}{j}".encode() for i in range(5) for j in range(4)},
                  "ünï/f": b"u", "ünï/l": "->f"})
    job = job_for(direction, sshd, m, t)
    assert run(job).exit_code == 0
    assert run(job).pairs[0].outcome == "unchanged"
    assert remote_scans[-1].quiet == {"": 0, "ünï": 2, **{f"d{i}": 4 for i in range(5)}}
    assert set(remote_scans[-1].entries) == {"ünï", *(f"d{i}" for i in range(5))}

    remote, local = (t, m) if direction == "push" else (m, t)
    write(remote / "d2/f1", b"edited on the remote side")
    write(local / "ünï/f", b"edited on the local side")
    (remote / "d4/f0").unlink()
    r = run(job)
    assert r.exit_code == 0, r.pairs[0].error
    assert set(remote_scans[-1].quiet) == {"", "ünï", "d0", "d1", "d3"}
    assert tree_state(m) == tree_state(t)
    assert (local / "d2/f1").read_bytes() == b"edited on the remote side"
    assert (remote / "ünï/f").read_bytes() == b"edited on the local side"
    assert not (local / "d4/f0").exists()
    assert run(job).pairs[0].outcome == "unchanged"
    assert len(remote_scans[-1].quiet) == 7
