"""Small in-place edits of job files (``enabled`` switches) that keep comments and layout."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from srsync.errors import ConfigError

_HEADER = re.compile(r"\s*\[")
_TARGETS_HEADER = re.compile(r"\s*\[\[\s*targets\s*\]\]\s*(#.*)?$")
_ENABLED = re.compile(r"(?P<lead>\s*enabled\s*=\s*)(?P<value>true|false)(?P<rest>\s*(#.*)?)$")


def _is_header(line: str) -> bool:
    # a table header starts with "["; a key line never does
    return bool(_HEADER.match(line)) and not line.lstrip().startswith("#")


def _set_in_region(lines: list[str], start: int, end: int, value: bool, insert_at: int) -> None:
    """Set ``enabled`` among the key lines ``start..end`` (exclusive), or insert it."""
    text = "true" if value else "false"
    for i in range(start, end):
        m = _ENABLED.match(lines[i].rstrip("\n"))
        if m:
            newline = "\n" if lines[i].endswith("\n") else ""
            lines[i] = f"{m['lead']}{text}{m['rest']}{newline}"
            return
    lines.insert(insert_at, f"enabled = {text}\n")


def _top_insert_point(lines: list[str], first_header: int) -> int:
    """Before the first table header, above the comment block that introduces it."""
    i = first_header
    while i > 0 and (not lines[i - 1].strip() or lines[i - 1].lstrip().startswith("#")):
        i -= 1
    if i == 0:  # only comments above: put it right before the header
        return first_header
    return i


def _expected(data: dict[str, Any], target: int | None, value: bool) -> dict[str, Any]:
    want = {**data}
    if target is None:
        want["enabled"] = value
    else:
        targets = [dict(t) for t in want["targets"]]
        targets[target]["enabled"] = value
        want["targets"] = targets
    return want


def edited_text(path: Path, text: str, target: int | None, value: bool) -> str:
    """``text`` with ``enabled = value`` set at the top level or in ``[[targets]]`` number
    ``target`` (0-based).  Everything else, comments included, stays as it was; the result
    is checked to parse to exactly the old data with that one key changed."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    headers = [i for i, line in enumerate(lines) if _is_header(line)]
    first_header = headers[0] if headers else len(lines)
    if target is None:
        insert = _top_insert_point(lines, first_header) if headers else len(lines)
        _set_in_region(lines, 0, first_header, value, insert)
    else:
        starts = [i for i in headers if _TARGETS_HEADER.match(lines[i].rstrip("\n"))]
        if target >= len(starts):
            raise ConfigError(
                f"{path}: cannot find [[targets]] table number {target} in the file; "
                "set enabled by hand"
            )
        start = starts[target]
        end = next((i for i in headers if i > start), len(lines))
        _set_in_region(lines, start + 1, end, value, start + 1)
    out = "".join(lines)
    try:
        again = tomllib.loads(out)
    except tomllib.TOMLDecodeError:
        again = None
    if again != _expected(data, target, value):
        raise ConfigError(f"{path}: cannot switch enabled without rewriting the file; edit it by hand")
    return out


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` via a temporary sibling, keeping its permission bits."""
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
