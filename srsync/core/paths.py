"""Relative POSIX paths as used inside the core: NFC, "/"-separated, "" is the root."""

from __future__ import annotations

import unicodedata

# Shipped to the remote helper, whose start-up should not import ``collections``:
# type-only imports go under this flag, which mypy takes as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

RelPath = str

ROOT: RelPath = ""

# Temporary files srsync writes beside their final names; scans skip them and
# the next run removes leftovers.
TEMP_PREFIX = ".srsync-tmp-"


class BadName(ValueError):
    """A name that must never be accepted from a peer or a config."""


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe single path component, else raise BadName.

    Names arrive from servers we do not trust: anything that could climb out
    of a root, address a second component or confuse C APIs is refused.
    """
    if name in ("", ".", ".."):
        raise BadName(f"invalid name {name!r}")
    if "/" in name or "\x00" in name:
        raise BadName(f"invalid name {name!r}")
    return name


def nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def join(parent: RelPath, name: str) -> RelPath:
    return name if parent == ROOT else f"{parent}/{name}"


def parent(path: RelPath) -> RelPath:
    idx = path.rfind("/")
    return ROOT if idx < 0 else path[:idx]


def basename(path: RelPath) -> str:
    return path[path.rfind("/") + 1 :]


def depth(path: RelPath) -> int:
    return 0 if path == ROOT else path.count("/") + 1


def is_under(path: RelPath, ancestor: RelPath) -> bool:
    """True when ``path`` equals ``ancestor`` or lies inside it."""
    if ancestor == ROOT:
        return True
    return path == ancestor or path.startswith(ancestor + "/")


def under_any(path: RelPath, roots: set[RelPath]) -> bool:
    """True when ``path`` equals or lies inside one of ``roots`` (other than the root)."""
    while path != ROOT:
        if path in roots:
            return True
        path = parent(path)
    return False


def ancestors(path: RelPath) -> list[RelPath]:
    """Proper ancestors of ``path`` (excluding the root), outermost first."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def validate_relpath(path: str) -> RelPath:
    """Validate a whole relative path component by component."""
    if path == ROOT:
        return path
    if path.startswith("/"):
        raise BadName(f"absolute path {path!r}")
    for part in path.split("/"):
        check_name(part)
    return path


# A "." or ".." component between two separators of NUL-joined paths (see below).
_DOT_PARTS = ("/./", "/.\x00", "\x00./", "\x00.\x00", "/../", "/..\x00", "\x00../", "\x00..\x00")


def joined_paths_valid(joined: str, count: int) -> bool:
    """Whether ``count`` relative paths joined by NUL are all non-empty paths that
    validate_relpath accepts: a few searches of the joined text instead of a check per
    path.  False does not say which (or whether one) is bad: check them one by one."""
    if joined.count("\x00") != count - 1 or not joined:  # a NUL inside a path, or none at all
        return False
    if joined[0] in "/\x00" or joined[-1] in "/\x00":  # absolute, or an empty path or component
        return False
    if joined in (".", "..") or joined.startswith(("./", "../", ".\x00", "..\x00")):
        return False
    if joined.endswith(("/.", "/..", "\x00.", "\x00..")):
        return False
    if "//" in joined or "/\x00" in joined or "\x00/" in joined or "\x00\x00" in joined:
        return False
    return not any(part in joined for part in _DOT_PARTS)


def link_escapes(link_path: RelPath, target: str) -> bool:
    """True when a symlink at ``link_path`` pointing at ``target`` leaves the root.

    Resolution is purely lexical: absolute targets always escape, and a
    relative target escapes when its ``..`` components climb above the root.
    """
    if target == "" or target.startswith("/") or "\x00" in target:
        return True
    stack = parent(link_path).split("/") if parent(link_path) else []
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return True
            stack.pop()
        else:
            stack.append(part)
    return False


NAME_MAX = 255  # bytes in one path component on every filesystem we write to


def temp_name(final_name: str, token: str) -> str:
    """The temporary sibling name a write of ``final_name`` goes to, within NAME_MAX bytes.

    ``token`` (random, from the caller: the core has no randomness) keeps
    concurrent writers apart.  The final name is cut on bytes, dropping a
    partial UTF-8 sequence the cut may leave.
    """
    stem = f"{TEMP_PREFIX}{token}-"
    room = NAME_MAX - len(stem.encode("utf-8"))
    return stem + final_name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


def case_collisions(paths: Iterable[RelPath]) -> set[RelPath]:
    """Paths that only differ in letter case from another path of the same set.

    A case-insensitive filesystem can hold just one of them: writing the
    second would silently replace the first.
    """
    groups: dict[str, list[RelPath]] = {}
    for path in paths:
        groups.setdefault(nfc(path).casefold(), []).append(path)
    out: set[RelPath] = set()
    for members in groups.values():
        if len(members) > 1:
            out.update(members)
    return out
