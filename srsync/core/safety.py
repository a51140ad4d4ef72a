"""Safety guards: small pure predicates evaluated on a complete plan before any write."""

from __future__ import annotations

from dataclasses import dataclass

from srsync.core.entry import Snapshot
from srsync.core.reconcile import Reconciliation


@dataclass(frozen=True, slots=True)
class Halt:
    guard: str
    reason: str


def check_guards(
    rec: Reconciliation,
    alpha: Snapshot,
    beta: Snapshot,
    *,
    alpha_root_exists: bool,
    max_delete_percent: float,
    mirror_label: str = "mirror",
    target_label: str = "target",
) -> list[Halt]:
    """Every guard that trips for this reconciliation; empty when it is safe to run."""
    halts: list[Halt] = []
    if not alpha_root_exists:
        halts.append(
            Halt("mirror-missing", f"the mirror root {mirror_label} does not exist")
        )
    elif not alpha and beta:
        halts.append(
            Halt(
                "mirror-empty",
                f"the mirror root {mirror_label} is empty, so the run would empty "
                f"{target_label} ({len(beta)} entries)",
            )
        )
    deletes = sum(1 for ch in rec.beta_changes if ch.new is None)
    deletes += sum(1 for ch in rec.alpha_changes if ch.new is None)
    total = len(beta) + (len(alpha) if rec.alpha_changes else 0)
    if total and deletes and not halts:
        share = 100.0 * deletes / total
        if share > max_delete_percent:
            halts.append(
                Halt(
                    "max-delete",
                    f"the run would delete {deletes} of {total} entries ({share:.0f}%) on "
                    f"{target_label}, above max_delete = {max_delete_percent:g}%",
                )
            )
    return halts
