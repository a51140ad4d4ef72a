"""status, history, overview, enable/disable, check and setup as real subprocesses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import make_tree
from test_cli import assert_one_line_error, srsync, ssh_conf, write_conf

LOCAL_JOB = """
    # two local targets
    [[targets]]
      [[targets.paths]]
      mirror = "../m"
      target = "../t1"

    [[targets]]
    host = "local"   # the second one
      [[targets.paths]]
      mirror = "../m"
      target = "../t2"
"""


def test_status_overview_history_agree(tmp_path: Path) -> None:
    make_tree(tmp_path / "m", {"a": b"12345", "d/b": b"xy"})
    write_conf(tmp_path / "conf", "site", LOCAL_JOB)
    assert srsync("autorun", cwd=tmp_path).returncode == 0
    (tmp_path / "m/a").write_bytes(b"1234567")
    assert srsync("autorun", cwd=tmp_path).returncode == 0
    hist = json.loads(srsync("history", "--json", "--count", "3", cwd=tmp_path).stdout)
    assert len(hist) == 3 and hist[0]["id"] > hist[1]["id"] > hist[2]["id"]  # newest first
    status = json.loads(srsync("status", "--json", cwd=tmp_path).stdout)
    # two targets with the same name are told apart by their number
    assert [(r["job"], r["target"]) for r in status] == [("site", "local#0"), ("site", "local#1")]
    for row, last in zip(status, [hist[1], hist[0]], strict=True):  # targets run in order
        assert row["last_result"] == last["outcome"] == "ok"
        for key in ("created", "updated", "deleted", "bytes"):
            assert row[key] == last[key], key
        assert (row["updated"], row["bytes"]) == (1, 7)
    frame = srsync("overview", "--once", cwd=tmp_path).stdout
    assert "site" in frame and "ok" in frame and "7 B" in frame
    table = srsync("status", "site", cwd=tmp_path)
    assert table.returncode == 0 and "site" in table.stdout
    assert_one_line_error(srsync("status", "nope", cwd=tmp_path), 2, "nope")
    assert json.loads(srsync("history", "site", "-n", "1", "--json", cwd=tmp_path).stdout)[0]["job"] == "site"


def test_enable_disable_job_and_target(tmp_path: Path) -> None:
    make_tree(tmp_path / "m", {"a": b"a"})
    conf = write_conf(tmp_path / "conf", "site", LOCAL_JOB)
    before = conf.read_text()
    proc = srsync("disable", "site/1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = conf.read_text()
    assert "# two local targets" in text and 'host = "local"   # the second one' in text
    assert srsync("autorun", cwd=tmp_path).returncode == 0
    assert (tmp_path / "t1/a").exists() and not (tmp_path / "t2").exists()
    status = json.loads(srsync("status", "--json", cwd=tmp_path).stdout)
    assert [r["state"] for r in status] == ["idle", "disabled"]
    assert srsync("enable", "site/1", cwd=tmp_path).returncode == 0
    assert conf.read_text().replace("enabled = true\n", "") == before
    proc = srsync("disable", "site", cwd=tmp_path)
    assert proc.returncode == 0 and "disabled" in proc.stdout
    assert "no enabled jobs" in srsync("autorun", cwd=tmp_path).stdout
    assert "already disabled" in srsync("disable", "site", cwd=tmp_path).stdout
    assert_one_line_error(srsync("enable", "site/local", cwd=tmp_path), 2, "site/0")
    assert_one_line_error(srsync("enable", "site/7", cwd=tmp_path), 2, "no target 7")
    assert_one_line_error(srsync("enable", "nojob", cwd=tmp_path), 2, "nojob")
    # enabling a job whose mirror is missing is refused; the file is unchanged
    (tmp_path / "m/a").unlink()
    (tmp_path / "m").rmdir()
    text = conf.read_text()
    assert_one_line_error(srsync("enable", "site", cwd=tmp_path), 2, "does not exist")
    assert conf.read_text() == text


def test_check_reports_every_problem_and_changes_nothing(sshd: Any, tmp_path: Path) -> None:
    make_tree(tmp_path / "m", {"a": b"a"})
    conf = ssh_conf(tmp_path, sshd)
    write_conf(conf, "good", f"""
        [[targets]]
        host = "{sshd.host}"
          [[targets.paths]]
          mirror = "../m"
          target = "{tmp_path / 'r'}"
    """)
    proc = srsync("check", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all good" in proc.stdout and "first run creates it" in proc.stdout  # target root note
    assert not (tmp_path / "r").exists()
    write_conf(conf, "deadhost", f"""
        [[targets]]
        host = "{sshd.host}"
        port = 1
          [[targets.paths]]
          mirror = "../m"
          target = "{tmp_path / 'r2'}"
    """)
    proc = srsync("check", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "deadhost" in proc.stderr and "refused" in proc.stderr
    write_conf(conf, "broken", "colour = 1\n")
    write_conf(conf, "broken2", "[[targets]]\n[[targets.paths]]\nmirror='../missing'\ntarget='../x'\n")
    proc = srsync("check", cwd=tmp_path)
    assert proc.returncode == 2
    assert "broken.toml" in proc.stderr and "broken2.toml" in proc.stderr and "refused" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_setup_non_interactive_confirms_host_key_and_writes_valid_job(sshd: Any, tmp_path: Path) -> None:
    make_tree(tmp_path / "m", {"a": b"a"})
    kh = tmp_path / "kh"
    kh.write_text("")
    conf = ssh_conf(tmp_path, sshd, known_hosts=kh)
    remote = tmp_path / "remote"
    remote.mkdir()
    args = ["setup", "web", "-H", sshd.host, "--direction", "push", "-M", "../m", "-T", str(remote),
            "--schedule", "15m", "--no-watch"]
    proc = srsync(*args, "--fingerprint", "SHA256:wrong", cwd=tmp_path)
    assert_one_line_error(proc, 1, "SHA256:")
    assert kh.read_text() == "" and not (conf / "web.toml").exists()
    proc = srsync(*args, "--yes", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SHA256:" in proc.stdout and "[127.0.0.1]" in kh.read_text()
    job = (conf / "web.toml").read_text()
    assert 'schedule = "15m"' in job and "mirror_remote = false" in job
    assert list(remote.iterdir()) == []  # the write probe left nothing behind
    assert srsync("autorun", cwd=tmp_path).returncode == 0
    assert (remote / "a").read_bytes() == b"a"
    # an existing name, a bad schedule, a missing mirror: nothing written
    assert_one_line_error(srsync(*args, "--yes", cwd=tmp_path), 2, "already exists")
    bad = ["setup", "web2", "-H", sshd.host, "--direction", "push", "-M", "../m", "-T", str(remote),
           "--yes", "--schedule", "every day"]
    assert_one_line_error(srsync(*bad, cwd=tmp_path), 2, "schedule")
    missing = ["setup", "web3", "-H", sshd.host, "--direction", "push", "-M", "../gone", "-T",
               str(remote), "--yes"]
    proc = srsync(*missing, cwd=tmp_path)
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    assert sorted(p.name for p in conf.iterdir()) == ["global.toml", "web.toml"]
