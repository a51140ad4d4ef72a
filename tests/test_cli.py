"""The srsync command line, run as a real subprocess: outputs, exit codes, one-line errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import make_tree, tree_state

REPO = str(Path(__file__).resolve().parent.parent)


def srsync(*args: str, cwd: Path, env_extra: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("SRSYNC_CONF_DIR", None)
    env["SRSYNC_STATE_DIR"] = str(cwd / ".state")
    env["HOME"] = str(cwd)  # never read the developer's ~/.ssh
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")  # the code under test
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "srsync", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert err_lines, proc.stdout
    text = " ".join(err_lines)
    for needle in needles:
        assert needle in text, text


def write_conf(conf: Path, name: str, body: str) -> Path:
    conf.mkdir(parents=True, exist_ok=True)
    p = conf / f"{name}.toml"
    p.write_text(textwrap.dedent(body))
    return p


def test_help_lists_commands(tmp_path: Path) -> None:
    proc = srsync("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for cmd in ("autorun", "loadconfig", "manual"):
        assert cmd in proc.stdout


def test_manual_local_to_local_and_save(tmp_path: Path) -> None:
    make_tree(tmp_path / "a", {"x/y.txt": b"hello", "z": b"z"})
    proc = srsync("manual", "-M", "a", "-T", "b", "--save", "saved.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "summary" in proc.stdout and "saved job config" in proc.stdout
    assert tree_state(tmp_path / "a") == tree_state(tmp_path / "b")
    # the saved config runs the same job
    (tmp_path / "a/new").write_bytes(b"new")
    proc = srsync("loadconfig", "-p", "saved.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "b/new").read_bytes() == b"new"


def test_autorun_dry_run_prints_plan_and_changes_nothing(tmp_path: Path) -> None:
    make_tree(tmp_path / "m", {"f1": b"1", "d/f2": b"22"})
    make_tree(tmp_path / "t", {"stale": b"s", "f1": b"old", "other": b"o", "d/f2": b"22"})
    write_conf(tmp_path / "conf", "j", """
        [[targets]]
          [[targets.paths]]
          mirror = "../m"
          target = "../t"
    """)
    before = tree_state(tmp_path / "t")
    proc = srsync("autorun", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "update  f1" in proc.stdout and "delete  stale" in proc.stdout
    assert "2 to update" in proc.stdout and "2 to delete" in proc.stdout
    assert tree_state(tmp_path / "t") == before
    proc = srsync("autorun", cwd=tmp_path)
    assert proc.returncode == 0
    assert tree_state(tmp_path / "m") == tree_state(tmp_path / "t")


def test_autorun_runs_jobs_in_parallel_and_selects_by_name(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    for n in ("one", "two", "three"):
        make_tree(tmp_path / f"m{n}", {"f": n.encode()})
        write_conf(conf, n, f"""
            [[targets]]
              [[targets.paths]]
              mirror = "../m{n}"
              target = "../t{n}"
        """)
    proc = srsync("autorun", "--conf-dir", str(conf), "--job", "two", cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "ttwo/f").exists() and not (tmp_path / "tone").exists()
    proc = srsync("autorun", "--conf-dir", str(conf), cwd=tmp_path)
    assert proc.returncode == 0
    assert all((tmp_path / f"t{n}/f").read_bytes() == n.encode() for n in ("one", "two", "three"))
    proc = srsync("autorun", "--conf-dir", str(conf), "--job", "nope", cwd=tmp_path)
    assert_one_line_error(proc, 2, "nope", "one", "three", "two")


@pytest.mark.parametrize(("body", "needles"), [
    ("sync_type = \n", ["line 1"]),
    ("colour = 'blue'\n[[targets]]\n[[targets.paths]]\nmirror='../m'\ntarget='../t'\n", ["colour", "unknown key"]),
    ("[[targets]]\n[[targets.paths]]\nmirror='../m'\n", ["targets[0].paths[0].target", "required"]),
    ("sync_type='Both'\n[[targets]]\n[[targets.paths]]\nmirror='../m'\ntarget='../t'\n", ["sync_type"]),
    ("[[targets]]\n[[targets.paths]]\nmirror='../missing'\ntarget='../t'\n", ["missing"]),
    ("[[targets]]\npassword='hunter2'\n[[targets.paths]]\nmirror='../m'\ntarget='../t'\n", ["password_env"]),
])
def test_bad_config_is_one_line_exit_2_and_changes_nothing(tmp_path: Path, body: str, needles: list[str]) -> None:
    make_tree(tmp_path / "m", {"f": b"x"})
    make_tree(tmp_path / "t", {"keep": b"k"})
    write_conf(tmp_path / "conf", "bad", body)
    before = tree_state(tmp_path / "t")
    proc = srsync("autorun", cwd=tmp_path)
    assert_one_line_error(proc, 2, "bad.toml", *needles)
    assert "hunter2" not in proc.stderr + proc.stdout
    assert tree_state(tmp_path / "t") == before


def test_empty_mirror_halts_with_exit_4(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    make_tree(tmp_path / "t", {"keep": b"k"})
    proc = srsync("manual", "-M", "m", "-T", "t", cwd=tmp_path)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "empty" in proc.stdout + proc.stderr and "--force" in proc.stdout + proc.stderr
    assert (tmp_path / "t/keep").exists()


def test_manual_needs_mirror_and_target(tmp_path: Path) -> None:
    proc = srsync("manual", "-M", "x", cwd=tmp_path)
    assert_one_line_error(proc, 2, "-T")


# ---- over SSH -------------------------------------------------------------

def ssh_conf(tmp_path: Path, sshd: Any, known_hosts: Path | None = None, **extra: object) -> Path:
    conf = tmp_path / "conf"
    conf.mkdir(exist_ok=True)
    lines = [
        f'known_hosts = "{known_hosts or sshd.known_hosts}"',
        f'ssh_config = "{sshd.ssh_config}"',
        "use_agent = false",
        f'key = "{sshd.key_path}"',
        f'user = "{sshd.user}"',
        f"port = {sshd.port}",
    ] + [f"{k} = {v!r}".replace("'", '"') for k, v in extra.items()]
    (conf / "global.toml").write_text("\n".join(lines) + "\n")
    return conf


def test_manual_pull_and_push_over_ssh(sshd: Any, tmp_path: Path) -> None:
    make_tree(tmp_path / "remote", {"r.txt": b"remote data", "sub/x": b"x"})
    conf = ssh_conf(tmp_path, sshd)
    proc = srsync("manual", "--conf-dir", str(conf), "-H", sshd.host, "-M", str(tmp_path / "remote"),
                  "-T", "pulled", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert tree_state(tmp_path / "remote") == tree_state(tmp_path / "pulled")
    proc = srsync("manual", "--conf-dir", str(conf), "-H", sshd.host, "--remote", "target",
                  "-M", "pulled", "-T", str(tmp_path / "pushed"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert tree_state(tmp_path / "remote") == tree_state(tmp_path / "pushed")


def test_unknown_host_key_refused_with_fingerprint(sshd: Any, tmp_path: Path) -> None:
    empty_kh = tmp_path / "empty_known_hosts"
    empty_kh.write_text("")
    conf = ssh_conf(tmp_path, sshd, known_hosts=empty_kh)
    make_tree(tmp_path / "t", {"keep": b"k"})
    before = tree_state(tmp_path / "t")
    proc = srsync("manual", "--conf-dir", str(conf), "-H", sshd.host, "-M", str(tmp_path),
                  "-T", "t", cwd=tmp_path)
    assert_one_line_error(proc, 1, "SHA256:", "accept-new")
    assert tree_state(tmp_path / "t") == before
    assert empty_kh.read_text() == "", "an unknown key is never added silently"


def test_changed_host_key_refused(sshd: Any, tmp_path: Path) -> None:
    import paramiko  # test-only: forge a different host key

    other = paramiko.Ed25519Key.from_private_key_file(str(sshd.key_path))
    kh = tmp_path / "kh"
    kh.write_text(f"[{sshd.host}]:{sshd.port} {other.get_name()} {other.get_base64()}\n")
    conf = ssh_conf(tmp_path, sshd, known_hosts=kh, host_key_policy="accept-new")
    proc = srsync("manual", "--conf-dir", str(conf), "-H", sshd.host, "-M", "/tmp", "-T", "t", cwd=tmp_path)
    assert_one_line_error(proc, 1, "ssh-keygen -R")
    assert not (tmp_path / "t").exists()


def test_wrong_key_refused(sshd: Any, tmp_path: Path) -> None:
    import paramiko

    bad = tmp_path / "bad_key"
    paramiko.Ed25519Key.generate().write_private_key_file(str(bad)) if hasattr(paramiko.Ed25519Key, "generate") else (
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(bad)], check=True))
    conf = ssh_conf(tmp_path, sshd)
    proc = srsync("manual", "--conf-dir", str(conf), "-H", sshd.host, "-k", str(bad), "-M", "/tmp",
                  "-T", "t", cwd=tmp_path)
    assert_one_line_error(proc, 1, "authentication")
    assert not (tmp_path / "t").exists()


def test_wrong_password_from_env_never_shown(sshd: Any, tmp_path: Path) -> None:
    conf = ssh_conf(tmp_path, sshd)
    (conf / "global.toml").write_text(
        (conf / "global.toml").read_text().replace(f'key = "{sshd.key_path}"\n', "")
        + 'password_env = "SRSYNC_TEST_PW"\n')
    proc = srsync("manual", "--conf-dir", str(conf), "-H", sshd.host, "-M", "/tmp", "-T", "t",
                  cwd=tmp_path, env_extra={"SRSYNC_TEST_PW": "s3cret-Pa55"})
    assert_one_line_error(proc, 1, "authentication")
    assert "s3cret-Pa55" not in proc.stdout + proc.stderr


def test_closed_port_and_silent_host(sshd: Any, tmp_path: Path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed_port = s.getsockname()[1]
    s.close()
    conf = ssh_conf(tmp_path, sshd)
    proc = srsync("manual", "--conf-dir", str(conf), "-H", "127.0.0.1", "-P", str(closed_port),
                  "-M", "/tmp", "-T", "t", cwd=tmp_path)
    assert_one_line_error(proc, 1, "refused")
    # a host that accepts TCP but never speaks: refused within the timeout
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    try:
        proc = srsync("manual", "--conf-dir", str(conf), "-H", "127.0.0.1", "-P",
                      str(silent.getsockname()[1]), "-t", "1.5", "-M", "/tmp", "-T", "t",
                      cwd=tmp_path, timeout=30)
    finally:
        silent.close()
    assert_one_line_error(proc, 1)
    assert not (tmp_path / "t").exists()


def test_the_summary_in_a_log_is_plain_aligned_columns(tmp_path: Path) -> None:
    """Not on a terminal, the summary is one plain line per pair, its columns lined up
    under the header: no box drawing, nothing wrapped, easy to grep and to parse."""
    conf = tmp_path / "conf"
    make_tree(tmp_path / "m1", {"f": b"1", "g": b"22"})
    make_tree(tmp_path / "m2", {"f": b"3"})
    for name, src in (("first", "m1"), ("second-job", "m2")):
        write_conf(conf, name, f"""
            [[targets]]
              [[targets.paths]]
              mirror = "../{src}"
              target = "../t-{src}"
        """)
    proc = srsync("autorun", "--conf-dir", str(conf), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    at = lines.index("srsync summary")
    header, rows = lines[at + 1], lines[at + 2 : at + 4]
    assert header.split() == ["job", "target", "pair", "result", "created", "updated", "deleted",
                              "conflicts", "bytes", "time"]
    assert not any(ch in proc.stdout for ch in "│┃━─")
    by_job = {row.split()[0]: row for row in rows}
    assert set(by_job) == {"first", "second-job"}
    assert lines[at + 4].startswith("done in ")
    for job, created in (("first", "2"), ("second-job", "1")):
        row = by_job[job]
        # text columns start under their heading, numbers end under theirs
        assert row[header.index("result") :].split()[0] == "ok"
        end = header.index("created") + len("created")
        assert row[:end].split()[-1] == created


def test_log_lines_show_names_exactly_as_they_are(tmp_path: Path) -> None:
    """Off a terminal, a pair's line carries its paths verbatim: markup-like brackets and
    emoji codes in a name are neither styled nor replaced."""
    odd = "m[bold]x:smile:"
    make_tree(tmp_path / odd, {"f": b"1"})
    write_conf(tmp_path / "conf", "odd", f"""
        [[targets]]
          [[targets.paths]]
          mirror = "../{odd}"
          target = "../t"
    """)
    proc = srsync("autorun", "--conf-dir", str(tmp_path / "conf"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("odd: "))
    assert f"{tmp_path / odd} -> " in line and ": ok: 1 created" in line
    assert "\N{SMILING FACE WITH OPEN MOUTH AND SMILING EYES}" not in proc.stdout
