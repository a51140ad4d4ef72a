"""Schedules, backoff, in-place enable/disable edits, and the live status written by runs."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

import pytest
from helpers import local_job, make_tree, run

from srsync.config.edit import edited_text
from srsync.engine.scheduler import Backoff, Cron, Schedule
from srsync.engine.state import StateDB
from srsync.engine.status import DISABLED, StatusStore
from srsync.errors import ConfigError
from srsync.jobspec import JobSpec, TargetSpec


def ts(*args: int) -> float:
    return dt.datetime(*args).timestamp()  # type: ignore[misc]


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("15m", 900), ("2h", 7200),
                                                ("1d", 86400), ("1h30m", 5400)])
def test_interval_schedules(text: str, seconds: int) -> None:
    s = Schedule.parse(text)
    assert s.interval == seconds
    assert s.next_after(None, 1000.0) == 1000.0  # first run is immediate
    assert s.next_after(1000.0, 1001.0) == 1000.0 + seconds  # rhythm counts from the start
    assert s.next_after(1000.0, 1000.0 + 10 * seconds) == 1000.0 + 10 * seconds  # never in the past


@pytest.mark.parametrize(("expr", "now", "expected"), [
    ("*/15 * * * *", (2024, 5, 1, 10, 7, 30), (2024, 5, 1, 10, 15)),
    ("0 3 * * *", (2024, 5, 1, 10, 7), (2024, 5, 2, 3, 0)),
    ("30 8 * * 1-5", (2024, 5, 3, 9, 0), (2024, 5, 6, 8, 30)),  # Friday -> Monday
    ("0 0 1 * *", (2024, 1, 31, 12, 0), (2024, 2, 1, 0, 0)),
    ("0 12 13 * 5", (2024, 9, 10, 0, 0), (2024, 9, 13, 12, 0)),  # day OR weekday (Vixie)
    ("0 0 * * 7", (2024, 5, 1, 0, 0), (2024, 5, 5, 0, 0)),  # 7 is Sunday too
    ("5,10 1 * * *", (2024, 5, 1, 1, 5), (2024, 5, 1, 1, 10)),  # strictly after
])
def test_cron_next(expr: str, now: tuple[int, ...], expected: tuple[int, ...]) -> None:
    assert Cron.parse(expr).next_after(ts(*now)) == ts(*expected)


def test_bad_schedules_are_config_errors() -> None:
    for bad in ("0s", "61 * * * *", "* * *"):
        with pytest.raises(ConfigError):
            Schedule.parse(bad)
    with pytest.raises(ConfigError, match="never fires"):
        Cron.parse("0 0 30 2 *").next_after(ts(2024, 1, 1))


def test_backoff_doubles_and_caps() -> None:
    b = Backoff(base=1.0, cap=5.0)
    assert [b.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    b.reset()
    assert b.next_delay() == 1.0


JOB = """\
# a job
name = "site"   # its name
schedule = "15m"

# first target
[[targets]]
host = "web1"
mirror_remote = false  # push
  [[targets.paths]]
  mirror = "/srv/a"
  target = "/var/www"

[[targets]]
enabled = true   # keep me
host = "web2"
  [[targets.paths]]
  mirror = "/srv/a"
  target = "/var/www"
"""


def test_enable_disable_edits_keep_everything_else(tmp_path: Path) -> None:
    p = tmp_path / "site.toml"
    text = edited_text(p, JOB, None, False)
    assert "enabled = false\n\n# first target\n[[targets]]" in text
    assert tomllib.loads(text)["enabled"] is False
    again = edited_text(p, text, None, True)
    assert again.replace("enabled = true\n", "", 1) == JOB
    t0 = edited_text(p, JOB, 0, False)
    assert "[[targets]]\nenabled = false\nhost = \"web1\"" in t0
    t1 = edited_text(p, JOB, 1, False)
    assert "enabled = false   # keep me" in t1
    assert tomllib.loads(t1)["targets"][1]["enabled"] is False
    for edited in (text, t0, t1):
        assert all(line in edited for line in JOB.splitlines() if "enabled" not in line)
    with pytest.raises(ConfigError, match="number 2"):
        edited_text(p, JOB, 2, False)
    inline = 'targets = [{host = "h", paths = [{mirror = "/a", target = "/b"}]}]\n'
    with pytest.raises(ConfigError, match="by hand"):
        edited_text(p, inline, 0, False)


def test_runs_write_status_matching_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRSYNC_STATE_DIR", str(tmp_path / "state"))
    make_tree(tmp_path / "m", {"a": b"aaa", "d/b": b"bb"})
    job = local_job(tmp_path / "m", tmp_path / "t", name="st")
    run(job)
    (tmp_path / "m/a").write_bytes(b"changed!")
    run(job)
    with StatusStore(tmp_path / "state") as store:
        row = store.get("st", "local")
    assert row is not None
    db = StateDB(tmp_path / "state")
    last = db.history("st", 1)[0]
    db.close()
    assert row.state == "idle" and row.last_result == "ok" == last.outcome
    assert (row.created, row.updated, row.deleted, row.bytes) == (
        last.created, last.updated, last.deleted, last.bytes) == (0, 1, 0, 8)
    assert row.last_finished >= row.last_started > 0
    # a disabled target is shown as disabled by the next run
    off = JobSpec(name="st", source="<t>", targets=(TargetSpec("local", job.targets[0].pairs, enabled=False),))
    run(off)
    with StatusStore(tmp_path / "state") as store:
        row = store.get("st", "local")
    assert row is not None and row.state == DISABLED
