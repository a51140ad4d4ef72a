"""Counts the fault, hostile-input and secrets tests record, printed at the end of the run."""

from __future__ import annotations

from collections import Counter

COUNTS: Counter[str] = Counter()


def add(key: str, n: int = 1) -> None:
    COUNTS[key] += n


def lines() -> list[str]:
    c = COUNTS
    if not c:
        return []
    return [
        f"fault sweep: {c['cut_runs']} interrupted runs (cut points x modes x directions = "
        f"{c['cut_points']} x {c['cut_modes']} x {c['cut_directions']}; RST {c['cut_rst']}, "
        f"FIN {c['cut_fin']}, blackhole {c['cut_blackhole']}); torn files: {c['torn']}; "
        f"reruns converged: {c['converged']}",
        f"crash sweep: {c['crash_points']} crash points; reruns converged: {c['crash_converged']}",
        f"disk full: {c['disk_full']} runs; permission denied: {c['denied']} runs; "
        f"old versions intact in all",
        f"hostile inputs: {c['hostile_names']} bad names and links; writes outside the root: "
        f"{c['outside_writes']}",
        f"secrets: {c['secret_haystacks']} outputs/files searched; leaks: {c['leaks']}",
    ]
