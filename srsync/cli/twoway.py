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


@app.command()
def restore(
    job: Annotated[str, typer.Argument(help="The job whose trash to restore from.")],
    paths: Annotated[list[str] | None, typer.Argument(help="Only these paths (a directory means everything below it).")] = None,
    run: Annotated[str | None, typer.Option("--run", help="The run to undo (default: the latest run with trash).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the runs with kept files; restore nothing.")] = False,
    conf_dir: ConfDir = None,
) -> None:
    """Put back files a run deleted or replaced (kept in <root>/.srsync-trash)."""
    from srsync.config import loader
    from srsync.endpoints.base import Endpoint
    from srsync.endpoints.registry import EndpointPool
    from srsync.engine.runner import state_dir_for
    from srsync.engine.state import StateDB
    from srsync.engine.trash import restore_rows

    try:
        jobs = loader.load_conf_dir(loader.resolve_conf_dir(conf_dir), [job], check_roots=False)
    except errors.SrsyncError as exc:
        fail(exc)
    spec = jobs[0]
    sdir = state_dir_for(spec)
    if not (sdir / "state.db").exists():
        typer.echo(f"job {job!r} has nothing in its trash")
        return
    db = StateDB(sdir)
    try:
        rows = db.trash_rows(job=job)
        runs: dict[str, int] = {}
        for r in rows:
            runs[r[3]] = runs.get(r[3], 0) + 1
        if list_ or not rows:
            if not rows:
                typer.echo(f"job {job!r} has nothing in its trash")
            for run_id, count in runs.items():
                typer.echo(f"{run_id}  {count} path(s)")
            return
        chosen_run = run or list(runs)[-1]
        if chosen_run not in runs:
            fail(errors.UsageError(f"job {job!r} has no run {chosen_run!r} in its trash; see --list"))
        wanted = [p.strip("/") for p in paths or []]
        selected = [r for r in rows if r[3] == chosen_run
                    and (not wanted or any(r[5] == w or r[5].startswith(w + "/") for w in wanted))]
        if not selected:
            fail(errors.UsageError(f"nothing matching {', '.join(wanted)} in run {chosen_run}"))
        pairs = {
            f"{spec.name}|{p.mirror}|{p.target}": p for t in spec.targets for p in t.pairs
        }
        with EndpointPool() as pool:
            opened: dict[tuple[str, str], Endpoint] = {}

            def endpoint_for(pair_key: str, side: str) -> Endpoint:
                if (pair_key, side) not in opened:
                    pair = pairs.get(pair_key)
                    if pair is None:
                        raise errors.ConfigError(
                            f"the path pair {pair_key.split('|', 1)[1]} is no longer in job {job!r}")
                    opened[(pair_key, side)] = pool.open(pair.mirror if side == "alpha" else pair.target)
                return opened[(pair_key, side)]

            try:
                results = restore_rows(db, selected, endpoint_for)
            except errors.SrsyncError as exc:
                fail(exc)
    finally:
        db.close()
    failed = 0
    for res in results:
        where = "mirror" if res.side == "alpha" else "target"
        if res.placed_at is None:
            failed += 1
            typer.echo(f"{where}: {res.path}: {res.message}", err=True)
        elif res.placed_at != res.path:
            typer.echo(f"{where}: {res.path}: something is there now; restored beside it as {res.placed_at}")
        else:
            typer.echo(f"{where}: {res.path}: restored")
    if failed:
        raise typer.Exit(errors.EXIT_PARTIAL)
