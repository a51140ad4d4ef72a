"""Start connecting before the command line framework is even loaded.

A remote run's largest fixed cost is on the server: the SSH handshake, then a shell
and an interpreter for the helper.  ``srsync manual`` names everything the
connection needs in its arguments, so the entry point reads them here, with a small
parser that knows the command's options, and begins the handshake (see
``srsync.endpoints.registry.warm_up``); typer and the engine load meanwhile.

This is only a head start: typer still parses the same arguments and reports every
error.  Whatever this parser does not fully understand (an unknown option, --help,
--save, a bad value) starts nothing, and a job built here that differs from the one
the command builds is never used for it (pools are taken by job and target, and
connections by their full spec).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from srsync.jobspec import JobSpec

# manual's options: name -> (keyword, takes a value); aliases share a keyword
_MANUAL: dict[str, tuple[str, bool]] = {}
for _names, _key, _value in (
    (("-H", "--host"), "host", True),
    (("-M", "--mirror"), "mirror", True),
    (("-T", "--target"), "target", True),
    (("-N", "--name"), "name", True),
    (("-u", "--user"), "user", True),
    (("-P", "--port"), "port", True),
    (("-k", "--key"), "key", True),
    (("-t", "--timeout"), "timeout", True),
    (("--remote",), "remote", True),
    (("--sync-type",), "sync_type", True),
    (("-x", "--exclude"), "exclude", True),
    (("--max-delete",), "max_delete", True),
    (("--conf-dir",), "conf_dir", True),
    (("-c", "--checksum"), "checksum", False),
    (("-n", "--dry-run"), "", False),
    (("--force",), "", False),
    (("-v", "--verbose"), "", False),
    (("-q", "--quiet"), "", False),
):
    for _name in _names:
        _MANUAL[_name] = (_key, _value)


def parse_manual(args: Sequence[str]) -> dict[str, object] | None:
    """The options of ``manual ARGS`` as keywords, or None when anything is unusual."""
    found: dict[str, object] = {"exclude": []}
    i = 0
    while i < len(args):
        arg = args[i]
        value: str | None = None
        if arg.startswith("--") and "=" in arg:
            arg, value = arg.split("=", 1)
        known = _MANUAL.get(arg)
        if known is None:
            return None  # --help, --save, a positional, combined flags: leave it all to typer
        key, takes = known
        if takes:
            if value is None:
                i += 1
                if i >= len(args):
                    return None
                value = args[i]
            if key == "exclude":
                excludes = found["exclude"]
                assert isinstance(excludes, list)
                excludes.append(value)
            elif key in found:
                return None  # given twice: typer decides which one counts
            else:
                found[key] = value
        elif value is not None:
            return None
        elif key:
            found[key] = True
        i += 1
    return found


def warm_up_from_argv(argv: Sequence[str]) -> None:
    """Begin connecting for ``srsync manual ...`` run as ``argv``; never fails, never prints."""
    if len(argv) < 2 or argv[0] != "manual":
        return
    opts = parse_manual(argv[1:])
    if opts is None or not opts.get("mirror") or not opts.get("target"):
        return
    with contextlib.suppress(Exception):
        from srsync import errors
        from srsync.config import loader

        port, timeout, max_delete = opts.get("port"), opts.get("timeout"), opts.get("max_delete")
        try:
            job = loader.manual_job(
                name=str(opts.get("name", "manual")),
                host=_str(opts.get("host")),
                mirror=str(opts["mirror"]),
                target=str(opts["target"]),
                user=_str(opts.get("user")),
                port=int(str(port)) if port is not None else None,
                key=_str(opts.get("key")),
                timeout=float(str(timeout)) if timeout is not None else None,
                remote_side=str(opts.get("remote", "mirror")),
                sync_type=str(opts.get("sync_type", "Zero2One")),
                checksum=True if opts.get("checksum") else None,
                excludes=[str(x) for x in opts["exclude"]],  # type: ignore[attr-defined]
                max_delete=float(str(max_delete)) if max_delete is not None else None,
                globals_=loader.load_globals(loader.resolve_conf_dir(_str(opts.get("conf_dir"))), fast=True),
            )
        except (errors.SrsyncError, ValueError):
            return  # the command reports it
        if job.enabled:
            warm_up_jobs([job])


def warm_up_jobs(jobs: Sequence[JobSpec]) -> None:
    """Start connecting each job's first target before the engine is even imported.

    Loading the engine, the state database and the local scan then overlap the SSH
    handshake and the remote helper's start (a shell and an interpreter on the server:
    the largest fixed cost of a run).
    """
    todo = []
    for job in jobs:
        target = next((t for t in job.targets if t.enabled), None)
        if target is not None:
            specs = [loc.conn for pair in target.pairs for loc in (pair.mirror, pair.target) if loc.conn is not None]
            if specs:
                todo.append((job, target.name, specs))
    if not todo:
        return
    import srsync.ssh.connection  # noqa: F401  (CPU-bound: first, before anything competes)
    from srsync.endpoints.registry import warm_up
    from srsync.engine.statedir import state_dir_for

    for job, target_name, specs in todo:
        warm_up(job.name, target_name, state_dir_for(job), specs)


def _str(value: object) -> str | None:
    return None if value is None else str(value)
