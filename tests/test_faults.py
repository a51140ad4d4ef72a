"""Fault injection: cut the SSH connection at many points of a mixed sync, in both directions
and both sync types; every file stays whole, the state stays honest, a rerun converges."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import reliability_report as report
from faultproxy import BLACKHOLE, FIN, RST, FaultProxy
from helpers import make_tree, remote_job, run, tree_state

import srsync.agent.client as agent_client
from srsync.endpoints.registry import EndpointPool
from srsync.engine.state import StateDB
from srsync.errors import ConnectError
from srsync.jobspec import ONE2ONE, ZERO2ONE, Location

CUTS = 16


def _h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _contents(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): _h(p.read_bytes()) for p in root.rglob("*")
            if p.is_file() and not p.is_symlink()}



def _scenario(m: Path, t: Path) -> None:
    """Both trees after an earlier sync, then a mix of edits (mostly on the mirror)."""
    base: dict[str, bytes | str | None] = {
        "keep": b"keep", "edit": b"old edit", "gone": b"will be deleted", "dir/a": b"a" * 5000,
        "dir/sub/b": b"b", "big.bin": os.urandom(600_000), "link": "->keep",
    }
    make_tree(m, base)
    shutil.copytree(m, t, symlinks=True)
    st = os.stat(m / "big.bin")
    os.utime(t / "big.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    for rel in ("keep", "edit", "gone", "dir/a", "dir/sub/b"):
        s = os.stat(m / rel)
        os.utime(t / rel, ns=(s.st_atime_ns, s.st_mtime_ns))


def _edit(m: Path, t: Path) -> None:
    (m / "edit").write_bytes(b"new edit, longer")
    (m / "gone").unlink()
    (m / "new-big.bin").write_bytes(os.urandom(800_000))
    for i in range(30):
        (m / f"many/f{i:02}").parent.mkdir(exist_ok=True)
        (m / f"many/f{i:02}").write_bytes(b"x" * (i * 100))
    (t / "target-side-new").write_bytes(b"from the target")  # two-way: flows back


CASES = [(d, s) for d in ("push", "pull") for s in (ZERO2ONE, ONE2ONE)]


@pytest.mark.parametrize(("direction", "sync_type"), CASES)
def test_cut_points_sweep(direction: str, sync_type: str, sshd: Any, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    base_m, base_t = tmp_path / "base_m", tmp_path / "base_t"
    _scenario(base_m, base_t)
    # measure a clean run's traffic through the proxy to place the cut points
    probe_dir = tmp_path / "probe"
    shutil.copytree(tmp_path, probe_dir, symlinks=True, ignore=shutil.ignore_patterns("probe"))
    _edit(probe_dir / "base_m", probe_dir / "base_t")
    monkeypatch.setenv("SRSYNC_STATE_DIR", str(probe_dir / "state"))
    proxy = FaultProxy(sshd.port)
    try:
        r = run(_job(direction, sync_type, sshd, proxy.port, probe_dir / "base_m", probe_dir / "base_t"))
    finally:
        proxy.close()
    assert r.exit_code == 0, r.pairs
    traffic = dict(proxy.bytes)
    summary = []
    for i in range(CUTS):
        which = "down" if i % 2 == 0 else "up"
        mode = (RST, FIN, BLACKHOLE)[i % 3] if i < CUTS - 1 else RST
        cut = max(1, int(traffic[which] * (i + 0.5) / CUTS))
        case = tmp_path / f"cut{i}"
        m, t = case / "m", case / "t"
        shutil.copytree(base_m, m, symlinks=True)
        shutil.copytree(base_t, t, symlinks=True)
        monkeypatch.setenv("SRSYNC_STATE_DIR", str(case / "state"))
        # every run of a case goes through one proxy port: the two-way state is
        # keyed by location (user@host:port), so the port must not change
        proxy = FaultProxy(sshd.port)
        if sync_type == ONE2ONE:  # the earlier sync that made both sides equal
            assert run(_job(direction, sync_type, sshd, proxy.port, m, t)).exit_code == 0
        _edit(m, t)
        old = {"m": _contents(m), "t": _contents(t)}
        allowed: dict[str, set[str]] = {}
        for side in old.values():
            for rel, h in side.items():
                allowed.setdefault(rel, set()).add(h)
        anc_before = _ancestor(case / "state")
        proxy.arm(cut, which, mode)
        started = time.monotonic()
        r = run(_job(direction, sync_type, sshd, proxy.port, m, t))
        took = time.monotonic() - started
        report.add("cut_runs")
        report.add(f"cut_{mode}")
        summary.append((i, which, mode, cut, r.exit_code, round(took, 1)))
        if mode == BLACKHOLE and proxy.faulted.is_set():
            # a silent connection is reported within about the configured timeout
            # (2 s): once mid-run; at the helper's start, once plus up to 1 s for a
            # keepalive answer; at most twice during the handshake (banner, then
            # authentication); never a hang
            assert took < 2 * 2.0 + 1.0, f"cut {i}: a silent connection took {took:.1f}s to detect"
        if proxy.faulted.is_set() and r.exit_code != 0:
            err = r.error or " ".join(p.error for p in r.pairs)
            assert "127.0.0.1" in err, f"cut {i}: error does not name the host: {err!r}"
        # every file at a final name is a whole version that existed before
        for root in (m, t):
            for rel, h in _contents(root).items():
                if Path(rel).name.startswith(".srsync-tmp-"):
                    continue
                if rel.startswith(".srsync-trash/"):  # a kept old version of its original path
                    rel = rel.split("/", 2)[2]
                if h not in allowed.get(rel, set()):
                    report.add("torn")
                assert h in allowed.get(rel, set()), f"cut {i} ({mode} {which}@{cut}): torn {root.name}/{rel}"
        # the two-way state records only what both sides really hold (or its old value)
        if sync_type == ONE2ONE:
            sides = {"m": _entries(m), "t": _entries(t)}
            for rel, e in _ancestor(case / "state").items():
                holds = sides["m"].get(rel) == sides["t"].get(rel) == e
                assert holds or anc_before.get(rel) == e, f"cut {i}: state advanced for {rel}"
        # a rerun without the fault converges
        proxy.disarm()
        r2 = run(_job(direction, sync_type, sshd, proxy.port, m, t))
        assert r2.exit_code == 0, (i, r2.pairs)
        proxy.close()
        if sync_type == ZERO2ONE:
            assert tree_state(m) == tree_state(t)
        else:
            assert tree_state(m, with_mtime=False) == tree_state(t, with_mtime=False)
            assert (m / "target-side-new").read_bytes() == b"from the target"
        assert not list(t.rglob(".srsync-tmp-*")) and not list(m.rglob(".srsync-tmp-*"))
        report.add("converged")
        shutil.rmtree(case)
    report.COUNTS["cut_points"] = CUTS
    report.COUNTS["cut_modes"] = len({s for _, s in CASES})
    report.COUNTS["cut_directions"] = len({d for d, _ in CASES})
    print(f"\n{direction} {sync_type}: cut points (i, dir, mode, byte, exit, seconds): {summary}")
    assert sum(1 for s in summary if s[4] != 0) >= CUTS // 2, "most cuts must actually hit the run"


def test_silence_at_helper_start_is_one_stall(sshd: Any, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # the connection goes silent just as the helper is to start: the helper's
    # timeout is the stall, not a reason to try SFTP and wait out a second one
    proxy = FaultProxy(sshd.port)
    original = agent_client.start_client

    def start_in_silence(*args: Any, **kwargs: Any) -> Any:
        proxy.silence()
        return original(*args, **kwargs)

    monkeypatch.setattr(agent_client, "start_client", start_in_silence)
    conn = _proxied(sshd, proxy.port, tmp_path)
    try:
        with EndpointPool() as pool:
            started = time.monotonic()
            with pytest.raises(ConnectError) as info:
                pool.open(Location(str(tmp_path), conn))
            took = time.monotonic() - started
    finally:
        proxy.close()
    assert str(info.value).startswith(f"connection to {conn.label} stalled")
    assert "no longer answers" in str(info.value)
    assert took < 2 * conn.timeout, f"took {took:.1f}s: a second timeout was waited out"


def _ancestor(state_dir: Path) -> dict[str, tuple[object, ...]]:
    """The (only) pair's ancestor as comparable (kind, size, target) tuples."""
    import sqlite3

    db_path = state_dir / "state.db"
    if not db_path.exists():
        return {}
    db = sqlite3.connect(db_path)
    try:
        pairs = [r[0] for r in db.execute("SELECT pair FROM ancestor_info").fetchall()]
    finally:
        db.close()
    if not pairs:
        return {}
    (pair,) = pairs
    state = StateDB(state_dir)
    try:
        snap = state.load_ancestor(pair)
    finally:
        state.close()
    return {p: (e.kind.value, e.size, e.target) for p, e in snap.items()}


def _entries(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for p in root.rglob("*"):
        rel = str(p.relative_to(root))
        if rel.startswith(".srsync-"):
            continue
        if p.is_symlink():
            out[rel] = ("link", 0, os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", 0, None)
        else:
            out[rel] = ("file", p.stat().st_size, None)
    return out


def _proxied(sshd: Any, port: int, folder: Path) -> Any:
    """The sshd's connection spec through a proxy on ``port``, with a timeout of 2 s."""
    kh = folder / f"known_hosts_{port}"
    if not kh.exists():  # the proxy is the same server behind another port
        key = " ".join(sshd.host_pubkey_line.split()[-2:])
        kh.write_text(Path(sshd.known_hosts).read_text() + f"[127.0.0.1]:{port} {key}\n")
    return dataclasses.replace(sshd.conn_spec(), port=port, timeout=2.0, known_hosts=str(kh))


def _job(direction: str, sync_type: str, sshd: Any, port: int, m: Path, t: Path) -> Any:
    conn = _proxied(sshd, port, m.parent)
    if direction == "push":
        return remote_job(Location(str(m)), Location(str(t), conn), sync_type=sync_type, max_delete=100.0)
    return remote_job(Location(str(m), conn), Location(str(t)), sync_type=sync_type, max_delete=100.0)
