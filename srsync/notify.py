"""Email notifications about runs over SMTP, with a threshold following Python logging levels."""

from __future__ import annotations

import logging
import os
import smtplib
import socket
import ssl
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from srsync.engine.session import PairResult

log = logging.getLogger("srsync.notify")

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
MAX_PATHS = 100  # changed paths listed in one mail; the rest is counted
SMTP_TIMEOUT = 15.0


def run_level(results: Sequence[PairResult], error: str = "") -> int:
    """How notable a run was: 40 failed or halted, 30 partial or conflicts, 20 changed
    files, 10 nothing changed."""
    outcomes = {r.outcome for r in results}
    if error or outcomes & {"failed", "halted"}:
        return ERROR
    if outcomes & {"partial", "conflicts"}:
        return WARNING
    if any(_changed(r) for r in results):
        return INFO
    return DEBUG


def _changed(r: PairResult) -> bool:
    a = r.applied
    return bool(a.created or a.updated or a.deleted or a.meta)


def _verdict(level: int) -> str:
    return {ERROR: "FAILED", WARNING: "needs attention", INFO: "changed files"}.get(level, "ok")


def build_message(
    job: str, results: Sequence[PairResult], settings: Mapping[str, object], error: str = ""
) -> EmailMessage | None:
    """The mail for one run of ``job``, or None when the run is below ``log_level``."""
    threshold = int(settings.get("log_level", ERROR) or ERROR)  # type: ignore[call-overload]
    level = run_level(results, error)
    if level < threshold or any(r.dry_run for r in results):
        return None
    lines = [f"srsync job {job!r} on {socket.gethostname()}: {_verdict(level)}", ""]
    if error:
        lines += [f"error: {error}", ""]
    paths: list[str] = []
    for r in results:
        a = r.applied
        lines.append(
            f"{r.target}: {r.pair}: {r.outcome}: {a.created} created, {a.updated} updated, "
            f"{a.deleted} deleted, {a.meta} attribute changes, {a.bytes} bytes in {r.duration:.1f}s"
        )
        if r.error:
            lines.append(f"  error: {r.error}")
        for p in r.problems[:20]:
            lines.append(f"  problem: {p.side + ' ' if p.side else ''}{p.path or '/'}: {p.message}")
        if len(r.problems) > 20:
            lines.append(f"  ... and {len(r.problems) - 20} more problems")
        if r.plan is not None and _changed(r):
            paths += [f"{op.kind.value} {op.path}" for op in r.plan.operations]
    if paths:
        lines += ["", "changed paths:"]
        lines += [f"  {p}" for p in paths[:MAX_PATHS]]
        if len(paths) > MAX_PATHS:
            lines.append(f"  ... and {len(paths) - MAX_PATHS} more")
    msg = EmailMessage()
    msg["Subject"] = f"[srsync] {job}: {_verdict(level)}"
    sender = str(settings.get("from_addr") or f"srsync@{socket.gethostname()}")
    msg["From"] = sender
    to = settings.get("to") or []
    msg["To"] = ", ".join(str(t) for t in to) if isinstance(to, list | tuple) else str(to)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain="srsync")
    msg.set_content("\n".join(lines) + "\n")
    return msg


def send(msg: EmailMessage, settings: Mapping[str, object]) -> None:
    """Deliver ``msg``; raises OSError/smtplib.SMTPException on failure."""
    host = str(settings.get("smtp_host"))
    port = int(settings.get("smtp_port") or 25)  # type: ignore[call-overload]
    user = settings.get("smtp_user")
    password_env = settings.get("password_env")
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if settings.get("tls"):
        smtp = smtplib.SMTP_SSL(host, port, timeout=SMTP_TIMEOUT, context=context)
    else:
        smtp = smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT)
    with smtp:
        if settings.get("starttls") and not settings.get("tls"):
            smtp.starttls(context=context)
        if user:
            password = os.environ.get(str(password_env)) if password_env else None
            if password is None:
                raise smtplib.SMTPAuthenticationError(
                    530, f"no password: set ${password_env or 'password_env'} for smtp_user {user}"
                )
            smtp.login(str(user), password)
        smtp.send_message(msg)


def notify_run(job: str, results: Sequence[PairResult], settings: Mapping[str, object] | None,
               error: str = "") -> str | None:
    """Mail about one run if it reaches the threshold.  Never raises: a failing mail
    server must not fail the sync.  Returns the delivery error, if any."""
    if not settings:
        return None
    try:
        msg = build_message(job, results, settings, error)
        if msg is None:
            return None
        send(msg, settings)
        log.info("%s: notification mailed to %s", job, msg["To"])
        return None
    except (OSError, smtplib.SMTPException, ValueError, TypeError) as exc:
        reason = f"cannot send the notification mail via {settings.get('smtp_host')}:" \
                 f"{settings.get('smtp_port')}: {exc}"
        log.error("%s: %s", job, reason)
        return reason
