"""Every (ancestor, mirror, target) combination of six states, in every mode and policy.

The expected outcome comes from the SPEC's rules, stated here independently of
the implementation: a change on one side propagates; a deletion propagates
only if the other side did not change; change versus delete keeps the change;
identical changes are no conflict; a directory beats a file or link (which is
kept as a conflict copy); real conflicts follow the policy.
"""

from __future__ import annotations

import itertools

import pytest

from srsync.core.compare import Comparator
from srsync.core.entry import Entry, Kind, Snapshot
from srsync.core.reconcile import ALPHA, BETA, Mode, Policy, reconcile
from srsync.core.record import next_ancestor
from srsync.plan import OpKind, Plan, make_plan

T = 1_700_000_000 * 10**9
STATES: dict[str, Entry | None] = {
    "absent": None,
    "A": Entry(Kind.FILE, size=1, mtime_ns=T + 1 * 10**9, mode=0o644, digest="a"),
    "B": Entry(Kind.FILE, size=2, mtime_ns=T + 2 * 10**9, mode=0o644, digest="b"),
    "C": Entry(Kind.FILE, size=3, mtime_ns=T + 3 * 10**9, mode=0o644, digest="c"),
    "dir": Entry(Kind.DIR, mode=0o755),
    "link": Entry(Kind.LINK, target="somewhere"),
}
COMBOS = list(itertools.product(STATES, STATES, STATES))
CMP_TWO = Comparator(dir_mtime=False)
STAMP = "20260101-000000"


def snap(state: str) -> Snapshot:
    e = STATES[state]
    return {} if e is None else {"p": e}


def apply(plan: Plan, alpha: Snapshot, beta: Snapshot) -> tuple[Snapshot, Snapshot]:
    """Apply a plan like a perfect pair of endpoints would, checking every precondition."""
    sides = {ALPHA: dict(alpha), BETA: dict(beta)}
    for op in plan.operations:
        tree = sides[op.side]
        other = sides[BETA if op.side == ALPHA else ALPHA]
        if op.kind is OpKind.RENAME:
            assert tree.get(op.path) == op.expected and op.new_path not in tree
            tree[op.new_path] = tree.pop(op.path)  # type: ignore[index]
            continue
        if op.kind is OpKind.REMOVE:
            assert tree.get(op.path) == op.expected
            assert not any(p.startswith(op.path + "/") for p in tree)
            del tree[op.path]
            continue
        assert op.entry is not None
        if op.kind is OpKind.COPY:
            assert other.get(op.path) == op.entry, "copy reads the other side's version"
        if op.kind in (OpKind.COPY, OpKind.LINK, OpKind.MKDIR):
            assert op.expected == tree.get(op.path) or (op.kind is OpKind.MKDIR and tree.get(op.path) is None)
        tree[op.path] = op.entry
    return sides[ALPHA], sides[BETA]


def expected_final(o: str, a: str, b: str, policy: Policy) -> tuple[str | None, str | None, str | None]:
    """(state at p, conflict copy state, side of the copy) per the SPEC, or p None when left for review."""
    if a == b:
        return a, None, None
    if b == o:
        return a, None, None
    if a == o:
        return b, None, None
    if a == "absent":
        return b, None, None
    if b == "absent":
        return a, None, None
    if a == "dir":
        return "dir", b, BETA
    if b == "dir":
        return "dir", a, ALPHA
    if policy is Policy.ASK:
        return None, None, None
    ea, eb = STATES[a], STATES[b]
    assert ea is not None and eb is not None
    alpha_newer = ea.mtime_ns >= eb.mtime_ns
    win = {Policy.MIRROR: ALPHA, Policy.TARGET: BETA}.get(policy, ALPHA if alpha_newer else BETA)
    winner, loser = (a, b) if win == ALPHA else (b, a)
    if policy is Policy.KEEP_BOTH:
        return winner, loser, BETA if win == ALPHA else ALPHA
    return winner, None, None


@pytest.mark.parametrize("policy", list(Policy))
@pytest.mark.parametrize(("o", "a", "b"), COMBOS)
def test_two_way(o: str, a: str, b: str, policy: Policy) -> None:
    anc, alpha, beta = snap(o), snap(a), snap(b)
    rec = reconcile(anc, alpha, beta, Mode.TWO_WAY, CMP_TWO, policy=policy, stamp=STAMP)
    plan = make_plan(rec)
    new_a, new_b = apply(plan, alpha, beta)
    at_p, copy_state, copy_side = expected_final(o, a, b, policy)
    if at_p is None:  # left for review: nothing touched, one open conflict, ancestor kept
        assert plan.operations == () and new_a == alpha and new_b == beta
        assert [c.path for c in rec.conflicts if c.unresolved] == ["p"]
        assert next_ancestor(anc, rec.final, set(), set(rec.unresolved)) == anc
        return
    assert new_a == new_b, "both sides converge"
    assert new_a.get("p") == STATES[at_p]
    copies = {k: v for k, v in new_a.items() if k != "p"}
    if copy_state is None:
        assert copies == {}
    else:
        assert copy_side is not None
        side = "mirror" if copy_side == ALPHA else "target"
        assert copies == {f"p.conflict-{side}-{STAMP}": STATES[copy_state]}
        assert rec.conflicts and rec.conflicts[0].copy_path in copies
    # the new ancestor is what both sides now hold; the next run has nothing to do
    new_anc = next_ancestor(anc, rec.final, set(), set())
    assert new_anc == new_a
    again = reconcile(new_anc, new_a, new_b, Mode.TWO_WAY, CMP_TWO, policy=policy, stamp=STAMP)
    assert make_plan(again).empty
    # never a deletion of something changed since the ancestor
    for op in plan.operations:
        if op.kind is OpKind.REMOVE and not op.is_update:
            assert op.expected == STATES[o], "deletes only what is unchanged since the last sync"


@pytest.mark.parametrize(("o", "a", "b"), COMBOS)
def test_one_way(o: str, a: str, b: str) -> None:
    anc, alpha, beta = snap(o), snap(a), snap(b)
    rec = reconcile(anc, alpha, beta, Mode.ONE_WAY_REPLICA, Comparator())
    new_a, new_b = apply(make_plan(rec), alpha, beta)
    assert new_a == alpha, "the mirror is never written"
    assert new_b == alpha
    assert rec.final == alpha and not rec.conflicts and not rec.alpha_changes


def _tree(**kw: str) -> Snapshot:
    return {p.replace("__", "/"): STATES[s] for p, s in kw.items()}  # type: ignore[misc]


def test_delete_dir_on_one_side_keeps_a_child_changed_on_the_other() -> None:
    anc = _tree(d="dir", d__x="A", d__y="A")
    alpha: Snapshot = {}
    beta = _tree(d="dir", d__x="B", d__y="A")
    rec = reconcile(anc, alpha, beta, Mode.TWO_WAY, CMP_TWO, stamp=STAMP)
    new_a, new_b = apply(make_plan(rec), alpha, beta)
    assert new_a == new_b == _tree(d="dir", d__x="B")


def test_file_replacing_dir_while_child_changed_keeps_both() -> None:
    anc = _tree(d="dir", d__x="A")
    alpha = _tree(d="C")
    beta = _tree(d="dir", d__x="B")
    rec = reconcile(anc, alpha, beta, Mode.TWO_WAY, CMP_TWO, stamp=STAMP)
    new_a, new_b = apply(make_plan(rec), alpha, beta)
    assert new_a == new_b
    assert new_a["d"].is_dir and new_a["d/x"] == STATES["B"]
    assert new_a[f"d.conflict-mirror-{STAMP}"] == STATES["C"]


def test_conflict_copy_names_never_collide() -> None:
    taken = f"p.conflict-target-{STAMP}"
    anc = _tree(p="A")
    alpha = {**_tree(p="C"), taken: STATES["A"]}
    beta = {**_tree(p="B"), taken: STATES["A"]}
    rec = reconcile(anc, alpha, beta, Mode.TWO_WAY, CMP_TWO, stamp=STAMP)  # type: ignore[arg-type]
    assert rec.conflicts[0].copy_path == f"p.conflict-target-{STAMP}-1"


def test_extension_is_kept_on_conflict_copies() -> None:
    anc = _tree(docs="dir", docs__r__pdf="A")
    rec = reconcile({k.replace("__pdf", ".pdf"): v for k, v in anc.items()},
                    {"docs": STATES["dir"], "docs/r.pdf": STATES["C"]},  # type: ignore[dict-item]
                    {"docs": STATES["dir"], "docs/r.pdf": STATES["B"]},  # type: ignore[dict-item]
                    Mode.TWO_WAY, CMP_TWO, stamp=STAMP)
    assert rec.conflicts[0].copy_path == f"docs/r.conflict-target-{STAMP}.pdf"


def test_missing_state_means_both_were_empty() -> None:
    alpha = _tree(same="A", differs="B", only_a="A")
    beta = _tree(same="A", differs="C", only_b="C")
    rec = reconcile({}, alpha, beta, Mode.TWO_WAY, CMP_TWO, stamp=STAMP)
    new_a, new_b = apply(make_plan(rec), alpha, beta)
    assert new_a == new_b
    assert {c.path for c in rec.conflicts} == {"differs"}
    assert all(op.kind is not OpKind.REMOVE for op in make_plan(rec).operations), "nothing is deleted"


def test_user_decision_overrides_ask() -> None:
    anc, alpha, beta = _tree(p="A"), _tree(p="B"), _tree(p="C")
    rec = reconcile(anc, alpha, beta, Mode.TWO_WAY, CMP_TWO, policy=Policy.ASK,
                    decisions={"p": Policy.MIRROR}, stamp=STAMP)
    new_a, new_b = apply(make_plan(rec), alpha, beta)
    assert new_a == new_b == _tree(p="B")
