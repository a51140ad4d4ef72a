"""The value rules of config keys, without pydantic: plain functions that return the value
or raise RuleError with the message a user sees.

``srsync.config.models`` turns them into pydantic validators; ``srsync.config.quick``
calls them directly.  Keeping them here lets both share one wording, and lets code that
only needs a rule (the scheduler's cron parser, the fast path of ``srsync manual``) avoid
importing pydantic.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NoReturn

# The pydantic error type of these rules (see models.py); the loader prints its message verbatim.
ERROR_TYPE = "srsync"

LOG_LEVELS = (10, 20, 30, 40, 50)

# Keys that would hold a secret in plain text.  They are refused wherever they appear,
# before any other validation, and their values are never echoed.
SECRET_KEYS = ("password", "passphrase")


class RuleError(ValueError):
    """A value breaks a rule; ``str(exc)`` is the message shown to the user."""


def fail(message: str) -> NoReturn:
    raise RuleError(message)


def is_secret_key(key: str) -> bool:
    low = key.lower()
    return low in SECRET_KEYS or low.endswith(tuple("_" + k for k in SECRET_KEYS))


def one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            fail(f"must be one of {', '.join(choices)} (got {value!r})")
        return value

    return check


def nonempty(value: str) -> str:
    if not value:
        fail("must not be empty")
    return value


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def env_name(value: str) -> str:
    # The value is not echoed: a user who misread the key may have put the secret here.
    if not _ENV_NAME.match(value):
        fail(
            "must be the NAME of an environment variable that holds the secret "
            "(letters, digits and _), not the secret itself"
        )
    return value


def str_or_list(value: Any) -> Any:
    """Let a single string stand for a one-element list (``key = "~/.ssh/id"``)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        fail("must be a string or a list of strings")
    return value


def job_name(value: str) -> str:
    # Names appear in `--job NAME` and `JOB/TARGET` arguments and in the state database.
    if not value or value != value.strip():
        fail("must be a non-empty name without leading or trailing spaces")
    if "/" in value or "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        fail("must not contain '/', '\\' or control characters")
    return value


def host(value: str) -> str:
    if not value:
        fail("must not be empty")
    if any(c.isspace() for c in value) or "/" in value:
        fail(f"{value!r} is not a host name or ~/.ssh/config alias")
    if "@" in value:
        fail("write the user as user = \"NAME\", not in host")
    if value.count(":") == 1:  # one colon is a port; IPv6 addresses have several
        fail("write the port as port = N, not in host")
    return value


def email(value: str) -> str:
    from email.utils import parseaddr  # only [notify] tables have addresses

    _name, addr = parseaddr(value)
    if not addr or "@" not in addr or addr.startswith("@") or addr.endswith("@"):
        fail(f"{value!r} is not an email address")
    return value


def log_level(value: int) -> int:
    if value not in LOG_LEVELS:
        fail("must be one of 10 (DEBUG), 20 (INFO), 30 (WARNING), 40 (ERROR), 50 (CRITICAL)")
    return value


_INTERVAL = re.compile(r"(?:\d+[smhd])+\Z")
_INTERVAL_PART = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# (name, low, high) of the five cron fields, in order.
CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),  # 0 and 7 are both Sunday, as in Vixie cron
)


def interval_seconds(text: str) -> int | None:
    """Seconds of an interval like ``30s``, ``15m``, ``2h``, ``1d`` or ``1h30m``; None if not one."""
    if not _INTERVAL.match(text):
        return None
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in _INTERVAL_PART.findall(text))


def cron_problem(text: str) -> str | None:
    """Why ``text`` is not a 5-field numeric cron expression, or None when it is one.

    Accepted per field: ``*``, ``N``, ``N-M``, each optionally ``/STEP``, joined by commas.
    Month and weekday names are not accepted, so every scheduler reading it agrees.
    """
    fields = text.split()
    if len(fields) != 5:
        return f"a cron expression has 5 fields (minute hour day month weekday), not {len(fields)}"
    for raw, (what, low, high) in zip(fields, CRON_FIELDS, strict=True):
        for item in raw.split(","):
            problem = _cron_item_problem(item, low, high)
            if problem:
                return f"cron {what} field {raw!r}: {problem}"
    return None


def _cron_item_problem(item: str, low: int, high: int) -> str | None:
    body, slash, step = item.partition("/")
    if slash and (not step.isdigit() or int(step) == 0):
        return f"step {step!r} must be a positive number"
    if body == "*":
        return None
    start, dash, end = body.partition("-")
    for part in (start, end) if dash else (start,):
        if not part.isdigit():
            return f"{part!r} is not a number (use {low}-{high})"
        if not low <= int(part) <= high:
            return f"{part} is out of range {low}-{high}"
    if dash and int(start) > int(end):
        return f"range {body} runs backwards"
    return None


def schedule(value: str) -> str:
    text = value.strip()
    if not text:
        fail("must not be empty (leave the key out for no schedule)")
    seconds = interval_seconds(text)
    if seconds is not None:
        if seconds == 0:
            fail("an interval must be longer than 0s")
        return text
    if len(text.split()) == 1:
        fail(f"{text!r} is not an interval like 30s, 15m, 2h, 1d or a 5-field cron expression")
    problem = cron_problem(text)
    if problem:
        fail(problem)
    return text
