"""gitignore-style exclude rules, from the config and from .srsyncignore files."""

from __future__ import annotations

from operator import itemgetter

from srsync.core.paths import ROOT, RelPath, is_under

# Shipped to the remote helper, whose start-up should import neither ``typing`` (~5 ms),
# ``collections`` nor, without rules, ``re`` (~7 ms): type-only imports go under this
# flag, which mypy takes as true, and ``re`` is imported where a rule is compiled.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple, Protocol

    class Matcher(Protocol):
        """What a rule matches paths with: a compiled regex, or a LiteralMatch."""

        @property
        def pattern(self) -> str: ...

        @property
        def flags(self) -> int: ...

        def match(self, string: str, /) -> object: ...

IGNORE_FILE = ".srsyncignore"


# (No dataclasses here: this module is shipped to the remote helper, where importing
# dataclasses, which pulls in inspect, would cost ~30 ms of every helper start.)


if TYPE_CHECKING:

    class Rule(NamedTuple):
        base: RelPath  # directory the rule is relative to ("" for config rules)
        pattern: str
        regex: Matcher
        negate: bool
        dir_only: bool

else:

    class Rule(tuple):
        """The same five fields as a tuple, without ``collections.namedtuple``."""

        __slots__ = ()

        def __new__(cls, base, pattern, regex, negate, dir_only):  # noqa: ANN001, ANN204
            return tuple.__new__(cls, (base, pattern, regex, negate, dir_only))

        def __repr__(self) -> str:
            base, pattern, regex, negate, dir_only = self
            return f"Rule({base=!r}, {pattern=!r}, {regex=!r}, {negate=!r}, {dir_only=!r})"

        base = property(itemgetter(0))
        pattern = property(itemgetter(1))
        regex = property(itemgetter(2))
        negate = property(itemgetter(3))
        dir_only = property(itemgetter(4))


def _translate(glob: str) -> str:
    """Translate one gitignore glob (no leading "/" or "!") into a regex body."""
    import re
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            if glob.startswith("**", i):
                before_ok = i == 0 or glob[i - 1] == "/"
                after = glob[i + 2 : i + 3]
                if before_ok and after == "/":
                    out.append("(?:.*/)?")  # "**/" : zero or more directories
                    i += 3
                    continue
                if before_ok and i + 2 == n:
                    out.append(".*")  # trailing "/**": everything inside
                    i += 2
                    continue
                out.append("[^/]*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and glob[j] in "!^":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
            else:
                body = glob[i + 1 : j]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(glob[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def parse_rule(line: str, base: RelPath = ROOT) -> Rule | None:
    """Parse one gitignore line; None for blanks and comments."""
    import re
    text = line.rstrip("\n\r")
    # trailing spaces are ignored unless escaped
    while text.endswith(" ") and not text.endswith("\\ "):
        text = text[:-1]
    if not text or text.startswith("#"):
        return None
    negate = text.startswith("!")
    if negate:
        text = text[1:]
    if text.startswith("\\#") or text.startswith("\\!"):
        text = text[1:]
    dir_only = text.endswith("/")
    text = text.rstrip("/")
    if not text:
        return None
    anchored = "/" in text
    text = text.lstrip("/")
    body = _translate(text)
    regex = re.compile(("" if anchored else "(?:.*/)?") + body + r"\Z", re.DOTALL)
    return Rule(base=base, pattern=line.strip(), regex=regex, negate=negate, dir_only=dir_only)


# A rule's regex, as ``parse_rule`` makes it: "(?:.*/)?" first unless the pattern is
# anchored, "\\Z" last; in between every character of a pattern without wildcards
# is itself or, when special, escaped (``re.escape``).
_ANY_DIRS = "(?:.*/)?"
_SPECIAL = frozenset(".^$*+?{}[]|()")
# flags that leave a literal's meaning alone: DOTALL and UNICODE (re.S, re.U)
_LITERAL_FLAGS = 16 | 32


class LiteralMatch:
    """A rule without wildcards, matched by comparing strings: the same answers as its
    regex ``pattern``, without the ``re`` module (importing it costs the helper's start
    ~8 ms, and the usual rules, like the trash folder's, are plain names)."""

    __slots__ = ("pattern", "flags", "text", "suffix", "anywhere")

    def __init__(self, pattern: str, flags: int, text: str, anywhere: bool) -> None:
        self.pattern = pattern  # the regex it stands for, and its flags
        self.flags = flags
        self.text = text
        self.suffix = "/" + text
        self.anywhere = anywhere  # also below any directory (an unanchored pattern)

    def match(self, string: str, /) -> bool:
        return string == self.text or (self.anywhere and string.endswith(self.suffix))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LiteralMatch) and (self.pattern, self.flags) == (other.pattern, other.flags)

    def __hash__(self) -> int:
        return hash((self.pattern, self.flags))

    def __repr__(self) -> str:
        return f"LiteralMatch({self.pattern!r}, {self.flags!r})"


def literal_match(regex: str, flags: int) -> LiteralMatch | None:
    """The LiteralMatch for a regex ``parse_rule`` made from a pattern without
    wildcards; None for any other (it needs ``re``)."""
    if flags & ~_LITERAL_FLAGS:
        return None
    anywhere = regex.startswith(_ANY_DIRS)
    body = regex[len(_ANY_DIRS) :] if anywhere else regex
    if not body.endswith("\\Z"):
        return None
    body = body[:-2]
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == "\\":
            if i + 1 >= n:
                return None  # (then the "\Z" taken as the end was an escaped backslash and a Z)
            nxt = body[i + 1]
            if nxt.isalnum() or nxt == "_":
                return None  # a class or anchor (\d, \b, ...), not a character
            out.append(nxt)
            i += 2
            continue
        if c in _SPECIAL:
            return None
        out.append(c)
        i += 1
    return LiteralMatch(regex, flags, "".join(out), anywhere) if out else None


class IgnoreRules:
    """An ordered rule list; the last rule that matches a path decides."""

    __slots__ = ("rules",)

    def __init__(self, rules: tuple[Rule, ...] = ()) -> None:
        self.rules = rules

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IgnoreRules) and self.rules == other.rules

    def __hash__(self) -> int:
        return hash(self.rules)

    def __repr__(self) -> str:
        return f"IgnoreRules(rules={self.rules!r})"

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(self, "rules"):
            raise AttributeError("IgnoreRules is immutable")
        object.__setattr__(self, name, value)

    @classmethod
    def from_patterns(cls, patterns: list[str] | tuple[str, ...], base: RelPath = ROOT) -> IgnoreRules:
        parsed = (parse_rule(p, base) for p in patterns)
        return cls(tuple(r for r in parsed if r is not None))

    def with_file(self, directory: RelPath, content: str) -> IgnoreRules:
        """Rules extended by an ignore file found in ``directory``."""
        extra = IgnoreRules.from_patterns(content.splitlines(), directory)
        return IgnoreRules(self.rules + extra.rules) if extra.rules else self

    @property
    def patterns(self) -> list[tuple[RelPath, str]]:
        return [(r.base, r.pattern) for r in self.rules]

    def may_exclude_files(self) -> bool:
        """Whether any rule can match a file or link (a rule set of directory rules
        only, like the trash folder's, never does: scans then skip asking per file)."""
        return any(not rule.dir_only for rule in self.rules)

    def is_excluded(self, path: RelPath, is_dir: bool) -> bool:
        """Whether ``path`` itself is excluded (its parents are not consulted)."""
        if path == ROOT:
            return False
        excluded = False
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.base:
                if not is_under(path, rule.base) or path == rule.base:
                    continue
                rel = path[len(rule.base) + 1 :]
            else:
                rel = path
            if rule.regex.match(rel):
                excluded = not rule.negate
        return excluded

    def __bool__(self) -> bool:
        return bool(self.rules)


def filter_snapshot_paths(
    paths: dict[RelPath, bool], rules: IgnoreRules
) -> set[RelPath]:
    """Paths (mapped to is_dir) that ``rules`` exclude, directly or via a parent."""
    out: set[RelPath] = set()
    for path in sorted(paths, key=lambda p: (p.count("/"), p)):
        par = path.rsplit("/", 1)[0] if "/" in path else ROOT
        if par != ROOT and par in out or rules.is_excluded(path, paths[path]):
            out.add(path)
    return out
