"""Path validation, symlink escape detection and gitignore-style rules."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srsync.core.ignore import (
    IgnoreRules,
    LiteralMatch,
    filter_snapshot_paths,
    literal_match,
    parse_rule,
)
from srsync.core.paths import (
    BadName,
    check_name,
    joined_paths_valid,
    link_escapes,
    validate_relpath,
)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\x00b", "/"])
def test_bad_names_refused(name: str) -> None:
    with pytest.raises(BadName):
        check_name(name)


@pytest.mark.parametrize("path", ["../x", "a/../../b", "/etc/passwd", "a//b", "a/./b"])
def test_bad_relpaths_refused(path: str) -> None:
    with pytest.raises(BadName):
        validate_relpath(path)


def _valid(path: str) -> bool:
    try:
        validate_relpath(path)
    except BadName:
        return False
    return path != "" and "\x00" not in path


@settings(max_examples=3000)
@given(st.lists(st.text(alphabet="a./\x00é", max_size=7), max_size=5))
def test_joined_paths_are_valid_exactly_when_each_one_is(paths: list[str]) -> None:
    """The batch check (a few searches of the NUL-joined text) says yes exactly where
    every path is a non-empty one validate_relpath accepts: never yes for a bad one, and
    the one-by-one checks are needed only where one is bad."""
    assert joined_paths_valid("\x00".join(paths), len(paths)) == (bool(paths) and all(map(_valid, paths)))


@pytest.mark.parametrize(
    "paths, valid",
    [
        (["a", "b/c", ".hidden/..x/...", "é/.d."], True),
        (["a", ""], False),
        (["a", "b/."], False),
        (["./a"], False),
        (["a/../b"], False),
        (["a\x00b"], False),
        (["/a"], False),
        (["a/"], False),
        ([".."], False),
        ([], False),
    ],
)
def test_joined_paths_examples(paths: list[str], valid: bool) -> None:
    assert joined_paths_valid("\x00".join(paths), len(paths)) is valid


@pytest.mark.parametrize(("link", "target", "escapes"), [
    ("a", "b", False), ("d/a", "../b", False), ("d/a", "../../b", True), ("a", "/etc", True),
    ("d/e/a", "../../x/./y", False), ("a", "..", True), ("d/a", "..", False), ("a", "", True),
])
def test_link_escapes(link: str, target: str, escapes: bool) -> None:
    assert link_escapes(link, target) is escapes


RULES = ["*.tmp", ".cache/", "/top.txt", "a/**/z", "!keep.tmp", "doc/*.md", "build", "\\#hash", "x?y", "[ab].c"]


@pytest.mark.parametrize(("path", "is_dir", "excluded"), [
    ("x.tmp", False, True), ("deep/er/x.tmp", False, True), ("keep.tmp", False, False),
    (".cache", True, True), (".cache", False, False), ("q/.cache", True, True),
    ("top.txt", False, True), ("s/top.txt", False, False), ("a/z", False, True),
    ("a/b/c/z", False, True), ("doc/x.md", False, True), ("doc/s/x.md", False, False),
    ("build", True, True), ("src/build", False, True), ("#hash", False, True),
    ("xzy", False, True), ("x/y", False, False), ("a.c", False, True), ("c.c", False, False),
    ("plain.txt", False, False),
])
def test_gitignore_semantics(path: str, is_dir: bool, excluded: bool) -> None:
    assert IgnoreRules.from_patterns(RULES).is_excluded(path, is_dir) is excluded


def test_ignore_file_rules_are_scoped_to_their_directory() -> None:
    rules = IgnoreRules.from_patterns([]).with_file("sub", "*.log\n# comment\n\n/only-here\n")
    assert rules.is_excluded("sub/a.log", False)
    assert rules.is_excluded("sub/deep/a.log", False)
    assert not rules.is_excluded("a.log", False)
    assert rules.is_excluded("sub/only-here", False)
    assert not rules.is_excluded("sub/x/only-here", False)


def test_filter_excludes_children_of_excluded_dirs() -> None:
    rules = IgnoreRules.from_patterns(["node_modules/", "!node_modules/keep"])
    paths = {"node_modules": True, "node_modules/keep": False, "src": True, "src/a": False}
    assert filter_snapshot_paths(paths, rules) == {"node_modules", "node_modules/keep"}


def test_rules_say_whether_they_can_exclude_files() -> None:
    """Scans skip the per-file question when only directory rules are given."""
    assert not IgnoreRules().may_exclude_files()
    assert not IgnoreRules.from_patterns(["cache/", ".srsync-trash/"]).may_exclude_files()
    assert IgnoreRules.from_patterns(["cache/", "*.o"]).may_exclude_files()
    assert IgnoreRules.from_patterns(["cache/", "!keep"]).may_exclude_files()
    only_dirs = IgnoreRules.from_patterns(["cache/"])
    assert not only_dirs.is_excluded("cache", False) and only_dirs.is_excluded("cache", True)


# names as a rule may spell them without wildcards: regex-special characters included
_LITERAL_CHARS = st.sampled_from(list("ab.-+^$(){}|&~# \t\u00e9\u00df\u4e2d") + ["x", "y"])
_NAMES = st.text(_LITERAL_CHARS, min_size=1, max_size=6).filter(lambda t: not t.startswith(("#", "!")))


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(_NAMES, min_size=1, max_size=3),
    anchored=st.booleans(),
    dir_only=st.booleans(),
    paths=st.lists(st.lists(_NAMES, min_size=1, max_size=4).map("/".join), max_size=8),
)
def test_a_rule_without_wildcards_matches_without_re_as_its_regex_does(
    parts: list[str], anchored: bool, dir_only: bool, paths: list[str]
) -> None:
    """The helper matches such rules by comparing strings (no ``re`` import at its start);
    the answers must be those of the regex the client compiled."""
    text = "/".join(parts).strip()
    pattern = ("/" if anchored else "") + text + ("/" if dir_only else "")
    rule = parse_rule(pattern)
    if rule is None or not text or text != "/".join(parts):
        return  # (trailing spaces are dropped by the rule syntax)
    literal = literal_match(rule.regex.pattern, rule.regex.flags)
    assert isinstance(literal, LiteralMatch)
    regex = rule.regex
    for path in [*paths, "/".join(parts), "q/" + "/".join(parts), "/".join(parts) + "/q"]:
        assert bool(literal.match(path)) is bool(regex.match(path)), (pattern, path)


@pytest.mark.parametrize("pattern", ["*.tmp", "a?c", "[ab].c", "a/**/z", "doc/*.md"])
def test_a_rule_with_wildcards_is_left_to_re(pattern: str) -> None:
    rule = parse_rule(pattern)
    assert rule is not None
    assert literal_match(rule.regex.pattern, rule.regex.flags) is None


def test_an_escaped_wildcard_is_a_character() -> None:
    rule = parse_rule("x\\*y")
    assert rule is not None
    found = literal_match(rule.regex.pattern, rule.regex.flags)
    assert found is not None and found.match("x*y") and not found.match("xzy")


def test_only_the_regexes_parse_rule_makes_count_as_literal() -> None:
    for regex, flags in [
        ("abc\\Z", re.IGNORECASE | re.DOTALL),  # another meaning of equal
        ("abc", re.DOTALL),  # no end anchor
        ("ab\\dc\\Z", re.DOTALL),  # a class, not a character
        ("abc\\\\Z", re.DOTALL),  # an escaped backslash and a Z: no end anchor
        ("\\Z", re.DOTALL),  # nothing to match
    ]:
        assert literal_match(regex, flags) is None, regex
    found = literal_match("(?:.*/)?a\\.b\\\\\\Z", re.DOTALL)
    assert found is not None and found.text == "a.b\\" and found.anywhere
