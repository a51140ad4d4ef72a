"""Safety guards: small pure predicates evaluated on a complete plan before any write."""

from __future__ import annotations

from dataclasses import dataclass

from srsync.core.entry import Snapshot
from srsync.core.reconcile import Change, Reconciliation


@dataclass(frozen=True, slots=True)
class Halt:
    guard: str
    reason: str


def _deletes(changes: tuple[Change, ...]) -> int:
    return sum(1 for ch in changes if ch.new is None)


def check_guards(
    rec: Reconciliation,
    alpha: Snapshot,
    beta: Snapshot,
    *,
    alpha_root_exists: bool,
    max_delete_percent: float,
    two_way: bool = False,
    ancestor_count: int = 0,
    mirror_label: str = "mirror",
    target_label: str = "target",
    hidden: int = 0,
) -> list[Halt]:
    """Every guard that trips for this reconciliation; empty when it is safe to run.

    An empty or missing root is the classic sign of an unmounted disk or a
    wrong path: propagating it would wipe the other side.  ``hidden`` counts
    entries both sides hold unchanged but the snapshots leave out (quiet
    directories): they count towards each side's size.
    """
    halts: list[Halt] = []
    if not alpha_root_exists:
        halts.append(Halt("mirror-missing", f"the mirror root {mirror_label} does not exist"))
    elif not two_way and not alpha and not hidden and beta:
        halts.append(Halt(
            "mirror-empty",
            f"the mirror root {mirror_label} is empty, so the run would empty "
            f"{target_label} ({len(beta)} entries)",
        ))
    elif two_way and ancestor_count:
        for snap, other_changes, label, other in (
            (alpha, rec.beta_changes, mirror_label, target_label),
            (beta, rec.alpha_changes, target_label, mirror_label),
        ):
            if not snap and not hidden and _deletes(other_changes):
                halts.append(Halt(
                    "root-empty",
                    f"{label} is empty although the last sync saw {ancestor_count} entries, "
                    f"so the run would empty {other}",
                ))
    if halts:
        return halts
    for changes, snap, label in ((rec.beta_changes, beta, target_label),
                                 (rec.alpha_changes, alpha, mirror_label)):
        deletes = _deletes(changes)
        size = len(snap) + hidden
        if size and deletes:
            share = 100.0 * deletes / size
            if share > max_delete_percent:
                halts.append(Halt(
                    "max-delete",
                    f"the run would delete {deletes} of {size} entries ({share:.0f}%) on "
                    f"{label}, above max_delete = {max_delete_percent:g}%",
                ))
    return halts
