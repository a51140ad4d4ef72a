"""Cheap conversion of plain command-line values, so a run does not import pydantic.

Typer converts every parameter value through a pydantic TypeAdapter built on first use:
importing pydantic and building the adapters of one command costs more than a small
no-change sync.  ``SrsyncCommand`` and ``SrsyncGroup`` give their parameters a converter
for the plain cases (``None``, a ``str``, a decimal ``int`` or ``float`` within its
bounds, an exact enum value, a list of those).  Anything else (a bad number, a path, a
value out of range) is handed to typer's own conversion, which then gives exactly its
usual result or error message.  tests/test_startup.py compares the two.

This relies on typer's ``_TyperParameter`` keeping its converter in ``_runtime_param``
(built lazily by ``get_runtime_param()``); a typer without it is simply left alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import Enum
from typing import Any, get_args, get_origin

from typer.core import TyperCommand, TyperGroup

from srsync.cli.early import PLAIN_FLOAT, PLAIN_INT


class _Unsure(Exception):
    """Leave this value to typer."""


Convert = Callable[[Any, Any], Any]  # (value, click context) -> converted value


def _str(value: Any, _ctx: Any) -> Any:
    if type(value) is not str:
        raise _Unsure
    return value


def _bool(value: Any, _ctx: Any) -> Any:
    if type(value) is not bool:
        raise _Unsure
    return value


def _bounded(value: Any, low: float | None, high: float | None) -> Any:
    if (low is not None and value < low) or (high is not None and value > high):
        raise _Unsure
    return value


def _int(low: float | None, high: float | None) -> Convert:
    def convert(value: Any, _ctx: Any) -> Any:
        if type(value) is str and PLAIN_INT.match(value):
            value = int(value)
        if type(value) is not int:
            raise _Unsure
        return _bounded(value, low, high)

    return convert


def _float(low: float | None, high: float | None) -> Convert:
    def convert(value: Any, _ctx: Any) -> Any:
        if type(value) is str and PLAIN_FLOAT.match(value):
            value = float(value)
        if type(value) is not float or not math.isfinite(value):
            raise _Unsure
        return _bounded(value, low, high)

    return convert


def _enum(cls: type[Enum]) -> Convert:
    members = {str(m.value): m for m in cls}

    def convert(value: Any, ctx: Any) -> Any:
        if isinstance(value, cls):
            return value
        if type(value) is not str or value not in members:
            raise _Unsure
        if ctx is not None and getattr(ctx, "token_normalize_func", None) is not None:
            raise _Unsure
        return members[value]

    return convert


def _none_only(value: Any, _ctx: Any) -> Any:
    raise _Unsure  # only None (absent) is handled here: paths are checked by typer


def _converter(param: Any) -> Convert | None:
    """The cheap converter of a typer parameter, or None to leave it all to typer."""
    desc = getattr(param, "type_descriptor", None)
    info = getattr(desc, "parameter_info", None)
    if desc is None or info is None or getattr(info, "parser", None) is not None:
        return None
    if getattr(desc, "file_annotation", None) is not None:
        return None
    annotation = desc.annotation
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation)
    low, high = getattr(info, "min", None), getattr(info, "max", None)
    if annotation is str:
        return _str
    if annotation is bool:
        return _bool
    if annotation is int or annotation is float:
        if getattr(info, "clamp", False):
            return None
        return _int(low, high) if annotation is int else _float(low, high)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return _enum(annotation) if getattr(info, "case_sensitive", False) else None
    return _none_only


class _Coercion:
    """Stands in for typer's runtime conversion of one parameter (``get_runtime_param()``)."""

    __slots__ = ("_convert",)

    def __init__(self, convert: Convert) -> None:
        self._convert = convert

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        multi = param.multiple or param.nargs == -1
        if value is None:
            return () if multi else None
        try:
            if not multi:
                return self._convert(value, ctx)
            if not isinstance(value, list | tuple):
                raise _Unsure
            return [self._convert(v, ctx) for v in value]
        except _Unsure:
            param._runtime_param = None  # typer builds its own on the next line
            return param.get_runtime_param().coerce(value, param=param, ctx=ctx)


def install(params: list[Any]) -> None:
    for param in params:
        if getattr(param, "_runtime_param", False) is not None or not hasattr(param, "get_runtime_param"):
            continue  # not a typer parameter, or one already converted: leave it alone
        convert = _converter(param)
        if convert is not None:
            param._runtime_param = _Coercion(convert)


class SrsyncCommand(TyperCommand):
    """A typer command whose parameters convert plain values without pydantic."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # with the help option, made on first use
        install(params)
        return params


class SrsyncGroup(TyperGroup):
    """The command group: its own (help) option too."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        install(params)
        return params
