"""Path validation, symlink escape detection and gitignore-style rules."""

from __future__ import annotations

import pytest

from srsync.core.ignore import IgnoreRules, filter_snapshot_paths
from srsync.core.paths import BadName, check_name, link_escapes, validate_relpath


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\x00b", "/"])
def test_bad_names_refused(name: str) -> None:
    with pytest.raises(BadName):
        check_name(name)


@pytest.mark.parametrize("path", ["../x", "a/../../b", "/etc/passwd", "a//b", "a/./b"])
def test_bad_relpaths_refused(path: str) -> None:
    with pytest.raises(BadName):
        validate_relpath(path)


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
