"""Pydantic models of global.toml and job files: the shape and value rules of every key.

The value rules themselves live in ``srsync.config.rules`` (no pydantic); here they become
validators whose RuleError turns into the error type the loader prints verbatim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, NoReturn, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from srsync.config import rules
from srsync.config.rules import (  # noqa: F401 - re-exported: the scheduler and tests import them here
    CRON_FIELDS,
    ERROR_TYPE,
    LOG_LEVELS,
    SECRET_KEYS,
    cron_problem,
    interval_seconds,
    is_secret_key,
)
from srsync.jobspec import CONFLICT_POLICIES, HOST_KEY_POLICIES, SYNC_TYPES

T = TypeVar("T")


def fail(message: str) -> NoReturn:
    """Raise a validation error whose message the loader shows as is."""
    raise PydanticCustomError(ERROR_TYPE, message)


def _rule(check: Callable[[T], T]) -> Callable[[T], T]:
    """A rule of ``srsync.config.rules`` as a pydantic validator function."""

    def run(value: T) -> T:
        try:
            return check(value)
        except rules.RuleError as exc:
            fail(str(exc))

    return run


def _one_of(choices: tuple[str, ...]) -> AfterValidator:
    return AfterValidator(_rule(rules.one_of(choices)))


_str_or_list = _rule(rules.str_or_list)
_nonempty = _rule(rules.nonempty)
_env_name = _rule(rules.env_name)
_job_name = _rule(rules.job_name)
_host = _rule(rules.host)
_email = _rule(rules.email)
_log_level = _rule(rules.log_level)
_schedule = _rule(rules.schedule)


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
