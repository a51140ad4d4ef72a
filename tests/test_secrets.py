"""Secrets never leak: not in output, logs, JSON logs, dry runs, history, status, mail or the state DB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import reliability_report as report
from helpers import make_tree
from test_cli import srsync
from test_notify import smtp  # noqa: F401 - the real SMTP server fixture

SSH_SECRET = "Ssh-Pa55-never-shown-7f3a"
MAIL_SECRET = "pw-123"  # the test SMTP server's password (it must be accepted to send mail)


def test_secrets_appear_nowhere(sshd: Any, smtp: Any, tmp_path: Path) -> None:  # noqa: F811
    inbox, smtp_port = smtp
    make_tree(tmp_path / "m", {"f": b"data"})
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "global.toml").write_text(
        f'known_hosts = "{sshd.known_hosts}"\nssh_config = "{sshd.ssh_config}"\nuse_agent = false\n'
        f'user = "{sshd.user}"\nport = {sshd.port}\npassword_env = "SRSYNC_SSH_PW"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        f'[notify]\nsmtp_host = "127.0.0.1"\nsmtp_port = {smtp_port}\nsmtp_user = "mailer"\n'
        f'password_env = "SRSYNC_MAIL_PW"\nfrom_addr = "srsync@example.org"\nto = ["ops@example.org"]\n'
        "log_level = 10\n")
    # one job that fails authentication (password refused), one local job that works
    (conf / "remote.toml").write_text(
        '[[targets]]\nhost = "127.0.0.1"\nmirror_remote = true\n'
        f'[[targets.paths]]\nmirror = "{tmp_path / "m"}"\ntarget = "{tmp_path / "pulled"}"\n')
    (conf / "local.toml").write_text(
        f'[[targets]]\n[[targets.paths]]\nmirror = "{tmp_path / "m"}"\ntarget = "{tmp_path / "t"}"\n')
    env = {"SRSYNC_SSH_PW": SSH_SECRET, "SRSYNC_MAIL_PW": MAIL_SECRET}
    log = tmp_path / "srsync.log"
    outputs = []
    for args in (
        ["autorun", "--dry-run", "-v"],
        ["autorun", "-v", "--log-file", str(log)],
        ["autorun", "-v", "--json-logs", "--log-file", str(log)],
        ["check"],
        ["status", "--json"],
        ["history", "--json"],
        ["overview", "--once"],
    ):
        proc = srsync(*args, "--conf-dir", str(conf), cwd=tmp_path, env_extra=env)
        outputs.append(proc.stdout + proc.stderr)
    assert any("authentication" in o for o in outputs), "the failing job must really have tried"
    assert inbox.messages, "notifications must really have been sent"
    haystacks = {
        "command output": "\n".join(outputs),
        "log file": log.read_text(),
        "mail": "\n".join(m.as_string() for m in inbox.messages),
    }
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            haystacks[f"state file {path.name}"] = path.read_bytes().decode("latin-1")
    report.add("secret_haystacks", len(haystacks))
    report.add("leaks", sum(1 for text in haystacks.values() if SSH_SECRET in text or MAIL_SECRET in text))
    for where, text in haystacks.items():
        assert SSH_SECRET not in text, f"SSH password leaked into {where}"
        assert MAIL_SECRET not in text, f"mail password leaked into {where}"
    assert len(haystacks["log file"]) > 0
