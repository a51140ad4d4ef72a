"""Email notifications against a real SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import email
import socket
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from helpers import make_tree
from sshd import free_port
from test_cli import srsync, write_conf

from srsync.engine.session import PairResult
from srsync.notify import notify_run, run_level
from srsync.plan import PlanStats


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.envelopes.append(envelope)
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


def _auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login == b"mailer" and data.password == b"pw-123"
    return AuthResult(success=ok)


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port, authenticator=_auth,
                     auth_require_tls=False)
    ctl.start()
    try:
        yield inbox, port
    finally:
        ctl.stop()


def result(outcome: str, created: int = 0, error: str = "") -> PairResult:
    r = PairResult("j", "local", "/a -> /b", outcome=outcome, error=error)
    r.applied = PlanStats(created=created, bytes=10 * created)
    return r


def settings(port: int, level: int, **kw: object) -> dict[str, object]:
    return {"smtp_host": "127.0.0.1", "smtp_port": port, "starttls": False, "tls": False,
            "from_addr": "srsync@example.org", "to": ["ops@example.org"], "log_level": level, **kw}


@pytest.mark.parametrize(("level", "mailed"), [
    (40, {"failed"}),
    (20, {"failed", "changed"}),
    (10, {"failed", "changed", "unchanged"}),
])
def test_threshold_levels(smtp: tuple[Inbox, int], level: int, mailed: set[str]) -> None:
    inbox, port = smtp
    runs = {"failed": [result("failed", error="cannot connect to web1")],
            "changed": [result("ok", created=3)],
            "unchanged": [result("unchanged")]}
    assert [run_level(r) for r in runs.values()] == [40, 20, 10]
    sent = set()
    for what, results in runs.items():
        before = len(inbox.messages)
        assert notify_run("j", results, settings(port, level)) is None
        if len(inbox.messages) > before:
            sent.add(what)
    assert sent == mailed
    subjects = [m["Subject"] for m in inbox.messages]
    assert "[srsync] j: FAILED" in subjects
    failed = next(m for m in inbox.messages if "FAILED" in m["Subject"])
    assert "cannot connect to web1" in failed.get_payload()
    assert inbox.envelopes[0].rcpt_tos == ["ops@example.org"]


def test_login_with_password_from_env(smtp: tuple[Inbox, int], monkeypatch: pytest.MonkeyPatch) -> None:
    inbox, port = smtp
    monkeypatch.setenv("SRSYNC_MAIL_PW", "pw-123")
    cfg = settings(port, 10, smtp_user="mailer", password_env="SRSYNC_MAIL_PW")
    assert notify_run("j", [result("unchanged")], cfg) is None
    assert len(inbox.messages) == 1
    monkeypatch.delenv("SRSYNC_MAIL_PW")
    problem = notify_run("j", [result("unchanged")], cfg)
    assert problem and "cannot send" in problem and "SRSYNC_MAIL_PW" in problem
    assert len(inbox.messages) == 1


def test_job_mails_changed_paths_and_dead_server_never_fails_sync(
        smtp: tuple[Inbox, int], tmp_path: Path) -> None:
    inbox, port = smtp
    make_tree(tmp_path / "m", {"new.txt": b"n", "d/x": b"x"})
    write_conf(tmp_path / "conf", "mailed", f"""
        [notify]
        smtp_host = "127.0.0.1"
        smtp_port = {port}
        from_addr = "srsync@example.org"
        to = ["ops@example.org"]
        log_level = 20

        [[targets]]
          [[targets.paths]]
          mirror = "../m"
          target = "../t"
    """)
    proc = srsync("autorun", cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(inbox.messages) == 1
    body = inbox.messages[0].get_payload()
    assert "3 created" in body and "copy new.txt" in body and "copy d/x" in body
    proc = srsync("autorun", cwd=tmp_path, timeout=60)  # nothing changed: below level 20
    assert proc.returncode == 0 and len(inbox.messages) == 1

    # a mail server that is down: the sync still succeeds, the error is reported
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    conf = tmp_path / "conf/mailed.toml"
    conf.write_text(conf.read_text().replace(f"smtp_port = {port}", f"smtp_port = {dead}"))
    (tmp_path / "m/more").write_bytes(b"more")
    proc = srsync("autorun", cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "t/more").read_bytes() == b"more"
    assert "cannot send the notification" in proc.stderr
