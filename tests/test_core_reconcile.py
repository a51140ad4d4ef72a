"""Table-driven tests of one-way reconcile, the planner and the safety guards."""

from __future__ import annotations

import itertools

import pytest

from srsync.core.compare import Comparator, Diff
from srsync.core.entry import Entry, Kind
from srsync.core.reconcile import Mode, reconcile
from srsync.core.safety import check_guards
from srsync.plan import OpKind, make_plan

F1 = Entry(Kind.FILE, size=1, mtime_ns=10**18, mode=0o644)
F2 = Entry(Kind.FILE, size=2, mtime_ns=10**18, mode=0o644)
F1_CHMOD = Entry(Kind.FILE, size=1, mtime_ns=10**18, mode=0o600)
F1_LATER = Entry(Kind.FILE, size=1, mtime_ns=10**18 + 5 * 10**9, mode=0o644)
D = Entry(Kind.DIR, mode=0o755, mtime_ns=10**18)
L1 = Entry(Kind.LINK, target="x")
L2 = Entry(Kind.LINK, target="y")
STATES: dict[str, Entry | None] = {"absent": None, "F1": F1, "F2": F2, "D": D, "L1": L1, "L2": L2}
CMP = Comparator()


def one_way(alpha: dict[str, Entry], beta: dict[str, Entry]):  # type: ignore[no-untyped-def]
    rec = reconcile({}, alpha, beta, Mode.ONE_WAY_REPLICA, CMP)
    return rec, make_plan(rec)


def _apply(beta: dict[str, Entry], plan) -> dict[str, Entry]:  # type: ignore[no-untyped-def]
    """Apply a plan to a snapshot the way a perfect endpoint would."""
    out = dict(beta)
    for op in plan.operations:
        if op.kind is OpKind.REMOVE:
            assert op.path in out and out[op.path] == op.expected
            assert not any(p.startswith(op.path + "/") for p in out), "removed a non-empty dir"
            del out[op.path]
        elif op.kind in (OpKind.MKDIR, OpKind.COPY, OpKind.LINK, OpKind.META):
            if op.kind is not OpKind.META:
                parent = op.path.rpartition("/")[0]
                assert parent == "" or (parent in out and out[parent].kind is Kind.DIR), op
            out[op.path] = op.entry
    return out


@pytest.mark.parametrize(("a_name", "b_name"), list(itertools.product(STATES, STATES)))
def test_every_pair_of_states_converges(a_name: str, b_name: str) -> None:
    """For each (mirror, target) state at one path, plus a child under dirs, the plan makes target == mirror."""
    alpha: dict[str, Entry] = {}
    beta: dict[str, Entry] = {}
    if STATES[a_name] is not None:
        alpha["p"] = STATES[a_name]  # type: ignore[assignment]
        if a_name == "D":
            alpha["p/child"] = F1
    if STATES[b_name] is not None:
        beta["p"] = STATES[b_name]  # type: ignore[assignment]
        if b_name == "D":
            beta["p/child"] = F2
    rec, plan = one_way(alpha, beta)
    assert _apply(beta, plan) == alpha
    # idempotence: nothing left to do afterwards
    assert one_way(alpha, alpha)[1].empty
    assert not rec.alpha_changes, "the mirror is never written"
    if a_name == b_name and a_name != "D":
        assert plan.empty


EXPECTED_OPS = [
    # (mirror, target, expected operation kinds in order)
    ({"a": F1}, {}, [OpKind.COPY]),
    ({}, {"a": F1}, [OpKind.REMOVE]),
    ({"a": F2}, {"a": F1}, [OpKind.COPY]),
    ({"a": F1_CHMOD}, {"a": F1}, [OpKind.META]),
    ({"a": F1_LATER}, {"a": F1}, [OpKind.COPY]),  # size+mtime: a changed mtime means re-send
    ({"d": D, "d/x": F1}, {}, [OpKind.MKDIR, OpKind.COPY, OpKind.META]),
    ({"d": F1}, {"d": D, "d/x": F1}, [OpKind.REMOVE, OpKind.REMOVE, OpKind.COPY]),
    ({"d": D, "d/x": F1}, {"d": F1}, [OpKind.REMOVE, OpKind.MKDIR, OpKind.COPY, OpKind.META]),
    ({"a": L1}, {"a": F1}, [OpKind.LINK]),
    ({"a": F1}, {"a": L1}, [OpKind.COPY]),
    ({"a": L2}, {"a": L1}, [OpKind.LINK]),
    ({"e": D}, {}, [OpKind.MKDIR, OpKind.META]),
]


@pytest.mark.parametrize(("alpha", "beta", "kinds"), EXPECTED_OPS)
def test_expected_operations(alpha, beta, kinds) -> None:  # type: ignore[no-untyped-def]
    _, plan = one_way(alpha, beta)
    assert [op.kind for op in plan.operations] == kinds
    assert _apply(beta, plan) == alpha


def test_plan_orders_parents_first_and_deletes_children_first() -> None:
    alpha = {"a": D, "a/b": D, "a/b/c": D, "a/b/c/f": F1}
    beta = {"z": D, "z/y": D, "z/y/x": F1}
    _, plan = one_way(alpha, beta)
    removes = [op.path for op in plan.operations if op.kind is OpKind.REMOVE]
    mkdirs = [op.path for op in plan.operations if op.kind is OpKind.MKDIR]
    assert removes == ["z/y/x", "z/y", "z"]
    assert mkdirs == ["a", "a/b", "a/b/c"]
    metas = [op.path for op in plan.operations if op.kind is OpKind.META]
    assert metas == ["a/b/c", "a/b", "a"], "directory attributes deepest first, after children"
    assert plan.stats.created == 4 and plan.stats.deleted == 3 and plan.stats.bytes == 1


def test_mtime_precision_whole_seconds_is_not_a_change() -> None:
    ns = Entry(Kind.FILE, size=3, mtime_ns=1_700_000_000_123_456_789, mode=0o644)
    sec = Entry(Kind.FILE, size=3, mtime_ns=1_700_000_000_000_000_000, mode=0o644)
    assert Comparator(precision_ns=10**9).diff(ns, sec) is Diff.SAME
    assert Comparator(precision_ns=1).diff(ns, sec) is Diff.META or Comparator().diff(ns, sec) is Diff.CONTENT


def test_digest_decides_when_both_sides_have_one() -> None:
    a = Entry(Kind.FILE, size=3, mtime_ns=1, mode=0o644, digest="aa")
    b = Entry(Kind.FILE, size=3, mtime_ns=2, mode=0o644, digest="aa")
    c = Entry(Kind.FILE, size=3, mtime_ns=1, mode=0o644, digest="bb")
    assert CMP.diff(a, b) is Diff.META  # same content: only the mtime is set
    assert CMP.diff(a, c) is Diff.CONTENT  # same size and mtime, different content


def test_guard_mirror_missing_and_empty() -> None:
    beta = {"a": F1}
    rec, _ = one_way({}, beta)
    halts = check_guards(rec, {}, beta, alpha_root_exists=False, max_delete_percent=50)
    assert [h.guard for h in halts] == ["mirror-missing"]
    halts = check_guards(rec, {}, beta, alpha_root_exists=True, max_delete_percent=100)
    assert [h.guard for h in halts] == ["mirror-empty"]
    # an empty mirror onto an empty target is fine
    rec, _ = one_way({}, {})
    assert check_guards(rec, {}, {}, alpha_root_exists=True, max_delete_percent=50) == []


@pytest.mark.parametrize(("deleted", "total", "limit", "trips"), [
    (5, 10, 50, False), (6, 10, 50, True), (1, 10, 0, True), (10, 11, 100, False),
])
def test_guard_max_delete(deleted: int, total: int, limit: float, trips: bool) -> None:
    beta = {f"f{i}": F1 for i in range(total)}
    alpha = {f"f{i}": F1 for i in range(deleted, total)}
    rec, _ = one_way(alpha, beta)
    halts = check_guards(rec, alpha, beta, alpha_root_exists=True, max_delete_percent=limit)
    assert bool(halts) is trips
    if trips:
        assert halts[0].guard == "max-delete" and f"{deleted} of {total}" in halts[0].reason


# ---- the cheap first test of the hot loops agrees with the comparator ---------------

_values = {
    "kind": list(Kind),
    "size": [0, 5],
    "mtime_ns": [10**18, 10**18 + 1, 10**18 + 10**9],
    "mode": [0o644, 0o600],
    "target": [None, "t"],
    "digest": [None, "d1", "d2"],
}


def test_identical_entries_are_same_for_every_comparator() -> None:
    """``_identical`` (inlined in the quiet-path loop) never says yes where ``diff``, with
    any precision and options, says anything but SAME."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from srsync.core.reconcile import _identical

    entry = st.builds(Entry, **{k: st.sampled_from(v) for k, v in _values.items()})
    comparators = [Comparator(precision_ns=p, dir_mtime=d, compare_mode=m)
                   for p in (1, 10**9) for d in (True, False) for m in (True, False)]

    @settings(max_examples=400, deadline=None)
    @given(o=entry, a=entry)
    def check(o: Entry, a: Entry) -> None:
        if _identical(o, a):
            for cmp in comparators:
                assert cmp.diff(o, a) is Diff.SAME, (o, a, cmp)

    check()


def test_new_tree_plan_is_reconcile_and_make_plan_against_an_empty_target() -> None:
    """NewTreePlan, fed a snapshot in any pieces and any order, gives exactly the
    reconciliation and plan of ``reconcile({}, snap, {}, ONE_WAY)`` + ``make_plan``:
    the same changes, operations, order and counts, under any comparator."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from srsync.plan import NewTreePlan

    # names chosen so that path order and listing order disagree ("a-b" < "a/b" < "a0")
    names = st.sampled_from(["a", "a-b", "a0", "b", "B", "é", "x y", ".h"])
    paths = st.lists(names, min_size=1, max_size=4).map("/".join)
    entry = st.one_of(
        st.builds(Entry, st.just(Kind.FILE), st.integers(0, 2**40), st.integers(-(2**63), 2**70),
                  st.integers(0, 0o7777), st.none(), st.sampled_from([None, "d1"]), st.integers(0, 9)),
        st.builds(Entry, st.just(Kind.DIR), st.just(0), st.integers(0, 2**62), st.integers(0, 0o7777)),
        st.builds(Entry, st.just(Kind.LINK), target=st.sampled_from(["x", "../y", "/abs"])),
    )
    comparators = st.builds(Comparator, st.sampled_from([1, 10**9]), st.booleans(), st.booleans())

    @given(snap=st.dictionaries(paths, entry, max_size=40), cut=st.lists(st.integers(0, 40)),
           shuffle=st.randoms(use_true_random=False), cmp=comparators)
    @settings(max_examples=300, deadline=None)
    def check(snap: dict[str, Entry], cut: list[int], shuffle, cmp: Comparator) -> None:  # type: ignore[no-untyped-def]
        rec = reconcile({}, snap, {}, Mode.ONE_WAY_REPLICA, cmp)
        plan = make_plan(rec)
        items = list(snap.items())
        shuffle.shuffle(items)
        built = NewTreePlan()
        at = 0
        for n in sorted(cut):
            built.add(items[at:n])
            at = max(at, n)
        built.add(items[at:])
        assert built.count == len(snap)
        rec2, plan2 = built.finish(snap)
        assert rec2 == rec
        assert plan2.operations == plan.operations
        assert plan2.stats == plan.stats
        assert plan2.conflicts == plan.conflicts == ()

    check()
