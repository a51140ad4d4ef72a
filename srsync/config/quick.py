"""A pydantic-free fast path for plain configs, used by ``srsync manual``.

Importing pydantic and building the config models costs a few hundred milliseconds, more
than a whole no-change run of a small tree.  The inline job of ``srsync manual`` and a
plain global.toml are simple enough to check directly, so this module accepts data that
is *certainly* valid and returns objects with the attributes of the pydantic models
(``srsync.config.models``), holding the values pydantic would produce.

It never reports a problem: for anything it is not sure about (an unknown key, a wrong
type, a value breaking a rule, a ``[notify]`` table) it declines, and the loader lets the
pydantic models validate the same data, so every error message stays theirs.  The value
rules are shared (``srsync.config.rules``); the key tables below mirror the models, and
tests/test_startup.py checks that they agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from srsync.config import rules
from srsync.jobspec import CONFLICT_POLICIES, HOST_KEY_POLICIES, SYNC_TYPES


class Decline(Exception):
    """The fast path is not sure: let pydantic decide."""


Check = Callable[[Any], Any]
_REQUIRED = object()


def _rule(rule: Callable[[Any], Any]) -> Check:
    def check(value: Any) -> Any:
        try:
            return rule(value)
        except rules.RuleError:
            raise Decline from None

    return check


def _str(*more: Callable[[Any], Any]) -> Check:
    checks = [_rule(r) for r in more]

    def check(value: Any) -> Any:
        if type(value) is not str:
            raise Decline
        for c in checks:
            value = c(value)
        return value

    return check


def _int(low: int, high: float = math.inf) -> Check:
    def check(value: Any) -> Any:
        if type(value) is not int or not low <= value <= high:
            raise Decline
        return value

    return check


def _float(*, gt: float | None = None, ge: float | None = None, le: float | None = None) -> Check:
    """A strict, finite float; an int is accepted and becomes a float, as pydantic does."""

    def check(value: Any) -> Any:
        if type(value) is int:
            value = float(value)
        if type(value) is not float or not math.isfinite(value):
            raise Decline
        if (gt is not None and not value > gt) or (ge is not None and not value >= ge) or (
            le is not None and not value <= le
        ):
            raise Decline
        return value

    return check


def _bool(value: Any) -> Any:
    if type(value) is not bool:
        raise Decline
    return value


def _list(item: Check, *, one_str: bool = False) -> Check:
    def check(value: Any) -> Any:
        if one_str and type(value) is str:
            value = [value]
        if type(value) is not list:
            raise Decline
        return [item(v) for v in value]

    return check


def _optional(check: Check) -> Check:
    def optional(value: Any) -> Any:
        return None if value is None else check(value)

    return optional


def _absent(value: Any) -> Any:
    """Keys the fast path leaves to pydantic whenever they are set (``[notify]``)."""
    if value is not None:
        raise Decline
    return None


_NONEMPTY = _str(rules.nonempty)

# key -> (check, default); a default of _REQUIRED makes the key required.  A callable
# default (list) is called for a fresh value.
Spec = dict[str, tuple[Check, Any]]

CONN_FIELDS: Spec = {
    "user": (_optional(_NONEMPTY), None),
    "port": (_optional(_int(1, 65535)), None),
    "key": (_optional(_list(_NONEMPTY, one_str=True)), None),
    "password_env": (_optional(_str(rules.env_name)), None),
    "passphrase_env": (_optional(_str(rules.env_name)), None),
    "timeout": (_optional(_float(gt=0)), None),
    "keepalive": (_optional(_int(0)), None),
    "known_hosts": (_optional(_NONEMPTY), None),
    "host_key_policy": (_optional(_str(rules.one_of(HOST_KEY_POLICIES))), None),
    "ssh_config": (_optional(_NONEMPTY), None),
    "use_agent": (_optional(_bool), None),
}

PAIR_FIELDS: Spec = {
    "sync_type": (_optional(_str(rules.one_of(SYNC_TYPES))), None),
    "exclude": (_list(_str()), list),
    "checksum": (_optional(_bool), None),
    "max_delete": (_optional(_float(ge=0, le=100)), None),
    "conflict": (_optional(_str(rules.one_of(CONFLICT_POLICIES))), None),
    "trash": (_optional(_bool), None),
    "trash_days": (_optional(_float(ge=0, le=3650)), None),
}

GLOBAL_FIELDS: Spec = {
    **PAIR_FIELDS,
    **CONN_FIELDS,
    "state_dir": (_optional(_NONEMPTY), None),
    "notify": (_absent, None),
}


def _model(spec: Spec) -> Check:
    def check(data: Any) -> SimpleNamespace:
        if type(data) is not dict or not data.keys() <= spec.keys():
            raise Decline
        values: dict[str, Any] = {}
        for key, (field_check, default) in spec.items():
            if key in data:
                values[key] = field_check(data[key])
            elif default is _REQUIRED:
                raise Decline
            else:
                values[key] = default() if callable(default) else default
        return SimpleNamespace(**values)

    return check


def _nonempty_list(item: Check) -> Check:
    items = _list(item)

    def check(value: Any) -> Any:
        out = items(value)
        if not out:
            raise Decline
        return out

    return check


PATH_FIELDS: Spec = {
    **PAIR_FIELDS,
    "mirror": (_NONEMPTY, _REQUIRED),
    "target": (_NONEMPTY, _REQUIRED),
}

TARGET_FIELDS: Spec = {
    **PAIR_FIELDS,
    **CONN_FIELDS,
    "host": (_optional(_str(rules.host)), None),
    "mirror_remote": (_bool, False),
    "enabled": (_bool, True),
    "paths": (_nonempty_list(_model(PATH_FIELDS)), _REQUIRED),
}

JOB_FIELDS: Spec = {
    **PAIR_FIELDS,
    **CONN_FIELDS,
    "name": (_optional(_str(rules.job_name)), None),
    "enabled": (_bool, True),
    "schedule": (_optional(_str(rules.schedule)), None),
    "watch": (_bool, False),
    "state_dir": (_optional(_NONEMPTY), None),
    "notify": (_absent, None),
    "targets": (_nonempty_list(_model(TARGET_FIELDS)), _REQUIRED),
}

_GLOBAL = _model(GLOBAL_FIELDS)
_JOB = _model(JOB_FIELDS)


def global_model(data: Any) -> SimpleNamespace | None:
    """global.toml data as a GlobalModel would hold it, or None: ask pydantic."""
    try:
        return _GLOBAL(data)
    except Decline:
        return None


def job_model(data: Any) -> SimpleNamespace | None:
    """Job data as a JobModel would hold it, or None: ask pydantic."""
    try:
        return _JOB(data)
    except Decline:
        return None
