"""Pydantic models of global.toml and job files: the shape and value rules of every key."""

from __future__ import annotations

import re
from email.utils import parseaddr
from typing import Annotated, Any, NoReturn

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from srsync.jobspec import CONFLICT_POLICIES, HOST_KEY_POLICIES, SYNC_TYPES

# The error type every hand-written rule raises; the loader prints its message verbatim.
ERROR_TYPE = "srsync"

LOG_LEVELS = (10, 20, 30, 40, 50)

# Keys that would hold a secret in plain text.  They are refused wherever they appear,
# before any other validation, and their values are never echoed.
SECRET_KEYS = ("password", "passphrase")


def fail(message: str) -> NoReturn:
    """Raise a validation error whose message the loader shows as is."""
    raise PydanticCustomError(ERROR_TYPE, message)


def is_secret_key(key: str) -> bool:
    low = key.lower()
    return low in SECRET_KEYS or low.endswith(tuple("_" + k for k in SECRET_KEYS))


# ---------------------------------------------------------------------------
# value rules


def _one_of(choices: tuple[str, ...]) -> AfterValidator:
    def check(value: str) -> str:
        if value not in choices:
            fail(f"must be one of {', '.join(choices)} (got {value!r})")
        return value

    return AfterValidator(check)


def _nonempty(value: str) -> str:
    if not value:
        fail("must not be empty")
    return value


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _env_name(value: str) -> str:
    # The value is not echoed: a user who misread the key may have put the secret here.
    if not _ENV_NAME.match(value):
        fail(
            "must be the NAME of an environment variable that holds the secret "
            "(letters, digits and _), not the secret itself"
        )
    return value


def _str_or_list(value: Any) -> Any:
    """Let a single string stand for a one-element list (``key = "~/.ssh/id"``)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        fail("must be a string or a list of strings")
    return value


def _job_name(value: str) -> str:
    # Names appear in `--job NAME` and `JOB/TARGET` arguments and in the state database.
    if not value or value != value.strip():
        fail("must be a non-empty name without leading or trailing spaces")
    if "/" in value or "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        fail("must not contain '/', '\\' or control characters")
    return value


def _host(value: str) -> str:
    if not value:
        fail("must not be empty")
    if any(c.isspace() for c in value) or "/" in value:
        fail(f"{value!r} is not a host name or ~/.ssh/config alias")
    if "@" in value:
        fail("write the user as user = \"NAME\", not in host")
    if value.count(":") == 1:  # one colon is a port; IPv6 addresses have several
        fail("write the port as port = N, not in host")
    return value


def _email(value: str) -> str:
    _name, addr = parseaddr(value)
    if not addr or "@" not in addr or addr.startswith("@") or addr.endswith("@"):
        fail(f"{value!r} is not an email address")
    return value


def _log_level(value: int) -> int:
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


def _schedule(value: str) -> str:
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


NonEmpty = Annotated[str, AfterValidator(_nonempty)]
EnvName = Annotated[str, AfterValidator(_env_name)]
StrList = Annotated[list[NonEmpty], BeforeValidator(_str_or_list)]
SyncType = Annotated[str, _one_of(SYNC_TYPES)]
Conflict = Annotated[str, _one_of(CONFLICT_POLICIES)]
HostKeyPolicy = Annotated[str, _one_of(HOST_KEY_POLICIES)]
Port = Annotated[int, Field(ge=1, le=65535)]
Timeout = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Keepalive = Annotated[int, Field(ge=0)]
MaxDelete = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
TrashDays = Annotated[float, Field(ge=0, le=3650, allow_inf_nan=False)]
Host = Annotated[str, AfterValidator(_host)]
JobName = Annotated[str, AfterValidator(_job_name)]
Schedule = Annotated[str, AfterValidator(_schedule)]
Email = Annotated[str, AfterValidator(_email)]
EmailList = Annotated[list[Email], BeforeValidator(_str_or_list)]
LogLevel = Annotated[int, AfterValidator(_log_level)]


# ---------------------------------------------------------------------------
# models.  None always means "not set here": the loader then takes the value from the
# next level down (path > target > job > global > built-in default).


class _Model(BaseModel):
    # strict: TOML already has types, so "yes" for a bool or 1 for a string is a mistake,
    # not something to coerce.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ConnFields(_Model):
    """How to reach a host; allowed in global.toml, a job and a target."""

    user: NonEmpty | None = None
    port: Port | None = None
    key: StrList | None = None  # private key files
    password_env: EnvName | None = None
    passphrase_env: EnvName | None = None
    timeout: Timeout | None = None
    keepalive: Keepalive | None = None
    known_hosts: NonEmpty | None = None
    host_key_policy: HostKeyPolicy | None = None
    ssh_config: NonEmpty | None = None
    use_agent: bool | None = None


class PairFields(_Model):
    """How to sync a path pair; allowed at every level."""

    sync_type: SyncType | None = None
    exclude: list[str] = Field(default_factory=list)  # accumulates across levels
    checksum: bool | None = None
    max_delete: MaxDelete | None = None
    conflict: Conflict | None = None
    trash: bool | None = None  # keep deleted/replaced files in <root>/.srsync-trash
    trash_days: TrashDays | None = None


class NotifyModel(_Model):
    """The ``[notify]`` table: SMTP notifications.  Completeness is checked after merging."""

    smtp_host: NonEmpty | None = None
    smtp_port: Port | None = None
    starttls: bool | None = None
    tls: bool | None = None
    smtp_user: NonEmpty | None = None
    password_env: EnvName | None = None
    from_addr: Email | None = None
    to: EmailList | None = None
    log_level: LogLevel | None = None


class GlobalModel(ConnFields, PairFields):
    """global.toml: defaults for every job that does not set them."""

    state_dir: NonEmpty | None = None
    notify: NotifyModel | None = None


class PathModel(PairFields):
    """One ``[[targets.paths]]`` table: a path pair."""

    mirror: NonEmpty
    target: NonEmpty


class TargetModel(ConnFields, PairFields):
    """One ``[[targets]]`` table: a host (or local) and its path pairs."""

    host: Host | None = None  # absent or "local": local
    mirror_remote: bool = False  # False: the target side is on host (push); True: pull
    enabled: bool = True
    paths: list[PathModel] = Field(min_length=1)


class JobModel(ConnFields, PairFields):
    """A job file."""

    name: JobName | None = None  # None: the file name without .toml
    enabled: bool = True
    schedule: Schedule | None = None
    watch: bool = False
    state_dir: NonEmpty | None = None
    notify: NotifyModel | None = None
    targets: list[TargetModel] = Field(min_length=1)
