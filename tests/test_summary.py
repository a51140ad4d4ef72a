"""Directory summaries (srsync.core.summary): what makes two directories summarise alike."""

from __future__ import annotations

import os
from pathlib import Path

from srsync.core.entry import Entry, Kind
from srsync.core.quiet import snapshot_summaries, summary_of
from srsync.core.summary import TAG, summarize, summarize_files

T = 1_700_000_000_123_456_789


def test_order_of_files_and_links_does_not_matter() -> None:
    a = summarize(["b", "a", "c"], [2, 1, 3], [T + 2, T + 1, T + 3], [0o644, 0o600, 0o755], [("y", "t2"), ("x", "t1")])
    b = summarize(["c", "a", "b"], [3, 1, 2], [T + 3, T + 1, T + 2], [0o755, 0o600, 0o644], [("x", "t1"), ("y", "t2")])
    assert a == b and a.startswith(TAG) and len(a) == len(TAG) + 32


def test_every_field_counts() -> None:
    base = summarize(["a", "b"], [1, 2], [T, T], [0o644, 0o644], [("l", "a")])
    assert len({
        base,
        summarize(["a", "b"], [1, 3], [T, T], [0o644, 0o644], [("l", "a")]),  # a size
        summarize(["a", "b"], [1, 2], [T, T + 1], [0o644, 0o644], [("l", "a")]),  # an mtime
        summarize(["a", "b"], [1, 2], [T, T], [0o644, 0o640], [("l", "a")]),  # a mode
        summarize(["a", "c"], [1, 2], [T, T], [0o644, 0o644], [("l", "a")]),  # a name
        summarize(["a", "b"], [1, 2], [T, T], [0o644, 0o644], [("l", "b")]),  # a link's target
        summarize(["a", "b"], [1, 2], [T, T], [0o644, 0o644], [("m", "a")]),  # a link's name
        summarize(["a", "b"], [1, 2], [T, T], [0o644, 0o644], []),  # a link less
        summarize(["b", "a"], [1, 2], [T, T], [0o644, 0o644], [("l", "a")]),  # sizes swapped between names
    }) == 9


def test_files_and_links_cannot_pass_for_each_other() -> None:
    # the same strings, split differently between names and targets, or between kinds
    assert summarize(["a"], [0], [0], [0], [("b", "c")]) != summarize(["a", "b"], [0, 0], [0, 0], [0, 0], [])
    assert summarize([], [], [], [], [("a", "b\0c")]) != summarize([], [], [], [], [("a", "b"), ("c", "")])
    assert summarize(["a\x01b"], [1], [T], [0o644], []) != summarize(["a"], [1], [T], [0o644], [("b", "")])
    assert summarize([], [], [], [], []) != summarize([], [], [], [], [("", "")])


def test_numbers_beyond_64_bits_are_summarised_as_text() -> None:
    far = 2**64 + 5  # an mtime in ns no 64-bit field holds
    a = summarize(["f"], [1], [far], [0o644], [])
    assert a == summarize(["f"], [1], [far], [0o644], [])
    assert a != summarize(["f"], [1], [far + 1], [0o644], [])
    assert a != summarize(["f"], [1], [5], [0o644], [])
    assert summarize(["f"], [1], [-(10**19)], [0o644], []) != summarize(["f"], [1], [-(10**19) - 1], [0o644], [])


def test_snapshot_summaries_agree_with_summary_of_each_directory() -> None:
    snap = {
        "d": Entry(Kind.DIR, 0, T, 0o755, None, None, 1),
        "d/f": Entry(Kind.FILE, 5, T, 0o644, None, None, 2),
        "d/l": Entry(Kind.LINK, 0, 0, 0, "f", None, 3),
        "d/e": Entry(Kind.DIR, 0, T, 0o700, None, None, 4),
        "top": Entry(Kind.FILE, 1, T + 1, 0o600, None, None, 5),
    }
    sums = snapshot_summaries(snap)
    assert sums == {
        "": summary_of([("top", snap["top"]), ("d", snap["d"])]),
        "d": summary_of([("f", snap["d/f"]), ("l", snap["d/l"]), ("e", snap["d/e"])]),
        "d/e": summary_of([]),
    }
    assert sums["d"] == summarize(["f"], [5], [T], [0o644], [("l", "f")])
    assert snapshot_summaries(snap, skip=["d"]).keys() == {"", "d/e"}


def test_summarize_files_summarises_a_directory_of_plain_files_as_summarize_does(tmp_path: Path) -> None:
    modes = {"a": 0o644, "b": 0o600, "c": 0o4755, "d": 0o2700, "e": 0o1777, "none": 0o000, "x": 0o755}
    for i, (name, mode) in enumerate(modes.items()):
        (tmp_path / name).write_bytes(b"x" * i)
        os.chmod(tmp_path / name, mode)
        os.utime(tmp_path / name, ns=(T, T + i))
    names = sorted(os.listdir(tmp_path), reverse=True)  # (any order)
    stats = [os.lstat(tmp_path / n) for n in names]
    expected = summarize(names, [s.st_size for s in stats], [s.st_mtime_ns for s in stats], list(modes.values())[::-1], [])
    assert summarize_files(names, stats) == expected
    assert summarize_files([], []) == summarize([], [], [], [], [])


def test_summarize_files_declines_anything_but_regular_files(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"f")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to("f")
    os.mkfifo(tmp_path / "pipe")
    for other in ("sub", "link", "pipe"):
        names = ["f", other]
        assert summarize_files(names, [os.lstat(tmp_path / n) for n in names]) is None
