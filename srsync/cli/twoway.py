"""`srsync conflicts` and `srsync resolve`: two-way conflicts kept for review."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from srsync import errors
from srsync.cli.main import app, fail


class Keep(StrEnum):
    mirror = "mirror"
    target = "target"
    both = "both"


_POLICY = {Keep.mirror: "mirror", Keep.target: "target", Keep.both: "keep-both"}

ConfDir = Annotated[
    str | None, typer.Option("--conf-dir", help="Config folder (default: $SRSYNC_CONF_DIR, ./conf, user config).")
]


def _state_dirs(conf_dir: str | None, job: str | None) -> list[tuple[str, Path]]:
    """(job name, state folder) for the jobs named, found the way autorun finds them."""
    from srsync.config import loader
    from srsync.engine.runner import state_dir_for

    jobs = loader.load_conf_dir(loader.resolve_conf_dir(conf_dir), [job] if job else None,
                                check_roots=False)
    return [(j.name, state_dir_for(j)) for j in jobs]


def _open_conflicts(conf_dir: str | None, job: str | None) -> list[tuple[str, str, str, str, str, str, float]]:
    from srsync.engine.state import StateDB

    rows: list[tuple[str, str, str, str, str, str, float]] = []
    for name, sdir in _state_dirs(conf_dir, job):
        if not (sdir / "state.db").exists():
            continue  # never ran: nothing to list, and nothing created by looking
        db = StateDB(sdir)
        try:
            rows.extend(db.conflicts(name))
        finally:
            db.close()
    return rows


@app.command()
def conflicts(
    job: Annotated[str | None, typer.Argument(help="Only this job.")] = None,
    conf_dir: ConfDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List two-way conflicts left for review (conflict = "ask")."""
    try:
        rows = _open_conflicts(conf_dir, job)
    except errors.SrsyncError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps([
            {"job": r[0], "pair": r[1], "path": r[2], "reason": r[3], "mirror": r[4], "target": r[5],
             "detected": r[6]} for r in rows
        ], indent=2))
        return
    from srsync.ui.console import conflicts_table, make_console

    console = make_console()
    if not rows:
        console.print("no conflicts left for review")
        return
    console.print(conflicts_table(rows))
    console.print("settle one with: srsync resolve JOB PATH --keep mirror|target|both")


@app.command()
def resolve(
    job: Annotated[str, typer.Argument(help="The job the conflict belongs to.")],
    paths: Annotated[list[str] | None, typer.Argument(help="Conflicting paths, as listed by `srsync conflicts`.")] = None,
    keep: Annotated[Keep, typer.Option("--keep", help="mirror, target, or both (the other version is kept as a conflict copy).")] = Keep.both,
    all_: Annotated[bool, typer.Option("--all", help="Resolve every open conflict of the job this way.")] = False,
    conf_dir: ConfDir = None,
) -> None:
    """Settle conflicts; the choice is applied by the job's next sync."""
    from srsync.engine.state import StateDB

    if not paths and not all_:
        fail(errors.UsageError("name the conflicting PATHs to resolve, or use --all"))
    try:
        dirs = dict(_state_dirs(conf_dir, job))
        rows = _open_conflicts(conf_dir, job)
    except errors.SrsyncError as exc:
        fail(exc)
    wanted = set(paths or [])
    chosen = [r for r in rows if all_ or r[2] in wanted]
    missing = wanted - {r[2] for r in chosen}
    if missing:
        fail(errors.UsageError(
            f"no open conflict of job {job!r} at {', '.join(sorted(missing))}; see `srsync conflicts {job}`"))
    if not chosen:
        typer.echo(f"job {job!r} has no conflicts left for review")
        return
    db = StateDB(dirs[job])
    try:
        for r in chosen:
            db.decide(r[1], job, r[2], _POLICY[keep])
    finally:
        db.close()
    for r in chosen:
        typer.echo(f"{r[2]}: keep {keep.value}")
    typer.echo(f"recorded; the next sync of {job!r} applies it (srsync autorun --job {job})")
