"""A real `srsync autorun --daemon` process against the real sshd: schedules, watch,
backoff and recovery, live enable/disable, clean SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import make_tree
from test_cli import REPO, srsync, ssh_conf, write_conf

from srsync.engine.state import HistoryRow, StateDB
from srsync.engine.status import StatusRow, StatusStore

pytestmark = pytest.mark.ssh


class DaemonProc:
    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.tmp = tmp_path
        env = dict(os.environ)
        env.pop("SRSYNC_CONF_DIR", None)
        env["SRSYNC_STATE_DIR"] = str(tmp_path / ".state")
        env["HOME"] = str(tmp_path)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        self.log = tmp_path / "daemon.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "srsync", "autorun", "--daemon", "--conf-dir",
             str(tmp_path / "conf"), *args],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"),  # noqa: SIM115
        )

    def history(self, job: str) -> list[HistoryRow]:
        if not (self.tmp / ".state/state.db").exists():
            return []
        db = StateDB(self.tmp / ".state")
        try:
            return db.history(job, 1000)
        finally:
            db.close()

    def status(self, job: str) -> StatusRow | None:
        if not (self.tmp / ".state/state.db").exists():
            return None
        with StatusStore(self.tmp / ".state") as store:
            rows = store.rows(job)
        return rows[0] if rows else None

    def wait_for(self, what: str, cond: Callable[[], Any], timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = cond()
            if value:
                return value
            assert self.proc.poll() is None, f"daemon died: {self.log.read_text()[-3000:]}"
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; log:\n{self.log.read_text()[-3000:]}")

    def terminate(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., DaemonProc]]:
    started: list[DaemonProc] = []

    def start(*args: str) -> DaemonProc:
        d = DaemonProc(tmp_path, *args)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


def push_job(tmp_path: Path, sshd: Any, name: str = "push", **keys: object) -> Path:
    ssh_conf(tmp_path, sshd)
    top = "\n".join(f"{k} = {v!r}".replace("'", '"').replace("True", "true").replace("False", "false")
                    for k, v in keys.items())
    return write_conf(tmp_path / "conf", name, f"""\
# pushed to the test sshd
{top}

[[targets]]
host = "{sshd.host}"
  [[targets.paths]]
  mirror = "../m"
  target = "{tmp_path / 'remote'}"
""")


def temp_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if ".srsync-tmp-" in p.name]


def test_schedule_runs_repeatedly_then_sigterm_exits_cleanly(sshd: Any, tmp_path: Path,
                                                             daemon_factory: Any) -> None:
    make_tree(tmp_path / "m", {"a.txt": b"a", "d/b.txt": b"b"})
    push_job(tmp_path, sshd, schedule="1s")
    d = daemon_factory()
    d.wait_for("three scheduled runs", lambda: len(d.history("push")) >= 3)
    assert (tmp_path / "remote/d/b.txt").read_bytes() == b"b"
    (tmp_path / "m/c.txt").write_bytes(b"c")
    d.wait_for("the next scheduled run to copy c.txt", lambda: (tmp_path / "remote/c.txt").exists())
    rows = d.history("push")
    starts = sorted(r.started for r in rows)
    assert all(b - a >= 0.5 for a, b in zip(starts, starts[1:], strict=False)), starts
    st = d.status("push")
    assert st is not None and st.next_run > time.time() - 1 and st.last_result in ("ok", "unchanged")
    assert d.terminate() == 0
    assert temp_files(tmp_path / "remote") == []


def test_watch_propagates_local_edit(sshd: Any, tmp_path: Path, daemon_factory: Any) -> None:
    make_tree(tmp_path / "m", {"page.html": b"v1"})
    push_job(tmp_path, sshd, watch=True)
    d = daemon_factory()
    d.wait_for("initial sync", lambda: d.history("push"))
    assert (tmp_path / "remote/page.html").read_bytes() == b"v1"
    runs = len(d.history("push"))
    time.sleep(0.5)
    assert len(d.history("push")) == runs, (d.history("push"), d.log.read_text())
    t0 = time.monotonic()
    (tmp_path / "m/page.html").write_bytes(b"version 2")
    d.wait_for("the edit to reach the remote",
               lambda: (tmp_path / "remote/page.html").read_bytes() == b"version 2", timeout=10)
    assert time.monotonic() - t0 < 5
    assert d.terminate() == 0


def test_unreachable_host_backs_off_and_recovers(sshd: Any, tmp_path: Path, daemon_factory: Any) -> None:
    make_tree(tmp_path / "m", {"a": b"a"})
    push_job(tmp_path, sshd, schedule="1s")
    d = daemon_factory("--retry-max", "2")
    d.wait_for("first sync", lambda: (tmp_path / "remote/a").exists())
    try:
        sshd.stop()
        fail_since = time.time()
        d.wait_for("two failed runs", lambda: len([r for r in d.history("push")
                                                   if r.outcome == "failed"]) >= 2)
        time.sleep(2)
        failed = sorted(r.started for r in d.history("push")
                        if r.outcome == "failed" and r.started >= fail_since - 1)
        # backoff: 1s-interval schedule, retries every >= 2s once capped; never a busy loop
        assert 2 <= len(failed) <= 4, failed
        # between retries the status row says "error"; a retry under way briefly says
        # "scanning", so wait for the row rather than reading it at one instant
        st = d.wait_for("error status between retries",
                        lambda: (s := d.status("push")) and s.state == "error" and s,
                        timeout=6)
        assert "refused" in st.last_error
        assert st.next_run > time.time() - 0.5
        (tmp_path / "m/new").write_bytes(b"after the outage")
    finally:
        sshd.start()
    d.wait_for("recovery after sshd is back",
               lambda: (tmp_path / "remote/new").exists(), timeout=10)
    d.wait_for("status back to idle", lambda: (s := d.status("push")) and s.state == "idle")
    assert "recovered" in d.log.read_text()
    assert d.terminate() == 0


def test_disable_enable_take_effect_live(sshd: Any, tmp_path: Path, daemon_factory: Any) -> None:
    make_tree(tmp_path / "m", {"a": b"a"})
    push_job(tmp_path, sshd, schedule="1s")
    d = daemon_factory()
    d.wait_for("first sync", lambda: (tmp_path / "remote/a").exists())
    proc = srsync("disable", "push", "--conf-dir", str(tmp_path / "conf"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "# pushed to the test sshd" in (tmp_path / "conf/push.toml").read_text()
    d.wait_for("disabled status", lambda: (s := d.status("push")) and s.state == "disabled")
    n = len(d.history("push"))
    (tmp_path / "m/b").write_bytes(b"b")
    time.sleep(1.5)
    assert len(d.history("push")) <= n + 1  # at most the run already under way
    assert not (tmp_path / "remote/b").exists()
    proc = srsync("enable", "push", "--conf-dir", str(tmp_path / "conf"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    d.wait_for("sync after enable", lambda: (tmp_path / "remote/b").exists(), timeout=10)
    assert d.terminate() == 0


def test_sigterm_mid_transfer_leaves_no_temp_or_torn_files(sshd: Any, tmp_path: Path,
                                                           daemon_factory: Any) -> None:
    # big enough that a transfer is surely under way when the signal comes, also
    # with the remote helper's pipelined writes (about 150 MB/s here)
    blob = os.urandom(1024 * 1024)
    make_tree(tmp_path / "m", {f"f{i:03}": blob[i:] + blob[:i] for i in range(300)})
    push_job(tmp_path, sshd, schedule="1h")
    d = daemon_factory()
    d.wait_for("a transfer under way", lambda: (s := d.status("push")) and s.state == "transferring")
    time.sleep(0.05)
    assert d.terminate() == 0
    assert temp_files(tmp_path / "remote") == []
    copied = [p for p in (tmp_path / "remote").iterdir()]
    for p in copied:  # every installed file is whole
        assert p.read_bytes() == (tmp_path / "m" / p.name).read_bytes()
    st = d.status("push")
    assert st is not None and st.state != "transferring"
    assert len(copied) < 300, "the signal came before the end of the run"
