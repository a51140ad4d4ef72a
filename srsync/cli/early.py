"""``srsync manual`` without typer, and connecting before anything else loads.

A remote run's largest fixed cost is on the server: the SSH handshake, then a shell
and an interpreter for the helper; on the client it is imports.  ``srsync manual``
names everything the connection needs in its arguments, so the entry point reads them
here, with a small parser that knows the command's options (``manual_options``).
When every value is one typer would take unchanged, the command runs from that
(``srsync.cli.execute.run_manual``, the same function typer's command calls) and typer
is never imported; ``warm_up_jobs`` begins the handshake (see
``srsync.endpoints.registry.warm_up``) before the engine loads.

Whatever this parser does not fully understand (an unknown option, --help, --save, a
value typer would convert or refuse, an option given twice) is left to typer, which
parses, helps and fails as usual.  tests/test_early_connect.py checks that both
readings give the command the same values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from srsync.jobspec import ConnSpec, JobSpec

# Numbers typer's own conversion takes exactly as Python reads them (srsync.cli.coerce
# uses the same patterns; tests/test_startup.py compares it with typer)
PLAIN_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})\Z")
PLAIN_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,17})?\Z")

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
    (("-n", "--dry-run"), "dry_run", False),
    (("--force",), "force", False),
    (("-v", "--verbose"), "verbose", False),  # counted
    (("-q", "--quiet"), "quiet", False),
):
    for _name in _names:
        _MANUAL[_name] = (_key, _value)


def parse_manual(args: Sequence[str]) -> dict[str, Any] | None:
    """The options of ``manual ARGS`` as keywords, or None when anything is unusual."""
    found: dict[str, Any] = {"exclude": []}
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
        elif key == "verbose":
            found[key] = found.get(key, 0) + 1
        else:
            found[key] = True
        i += 1
    return found


_REMOTE_SIDES = ("mirror", "target")
_SYNC_TYPES = ("Zero2One", "One2One")


def manual_options(argv: Sequence[str]) -> dict[str, Any] | None:
    """The keywords ``run_manual`` gets for ``srsync ARGV``, when typer would give it exactly
    these (``manual``, both -M and -T, every value plain); otherwise None: typer's turn."""
    if len(argv) < 2 or argv[0] != "manual":
        return None
    opts = parse_manual(argv[1:])
    if opts is None or not opts.get("mirror") or not opts.get("target"):
        return None
    port, timeout, max_delete = opts.get("port"), opts.get("timeout"), opts.get("max_delete")
    remote, sync_type = opts.get("remote", "mirror"), opts.get("sync_type", "Zero2One")
    if remote not in _REMOTE_SIDES or sync_type not in _SYNC_TYPES:
        return None
    numbers: dict[str, int | float | None] = {"port": None, "timeout": None, "max_delete": None}
    if port is not None:
        if not PLAIN_INT.match(str(port)):
            return None
        numbers["port"] = int(str(port))
    for key, value in (("timeout", timeout), ("max_delete", max_delete)):
        if value is not None:
            if not PLAIN_FLOAT.match(str(value)) or not math.isfinite(float(str(value))):
                return None
            numbers[key] = float(str(value))
    return {
        "host": opts.get("host"), "mirror": opts["mirror"], "target": opts["target"],
        "name": opts.get("name", "manual"), "user": opts.get("user"), **numbers,
        "key": opts.get("key"), "remote": remote, "sync_type": sync_type,
        "checksum": bool(opts.get("checksum")), "exclude": list(opts["exclude"]),
        "save": None, "conf_dir": opts.get("conf_dir"), "dry_run": bool(opts.get("dry_run")),
        "force": bool(opts.get("force")), "verbose": int(opts.get("verbose", 0)),
        "quiet": bool(opts.get("quiet")),
    }


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
            # each host, with the first path on it: its helper is asked to serve that at once
            roots: dict[ConnSpec, str] = {}
            for pair in target.pairs:
                for loc in (pair.mirror, pair.target):
                    if loc.conn is not None:
                        roots.setdefault(loc.conn, loc.path)
            if roots:
                todo.append((job, target.name, list(roots), roots))
    if not todo:
        return
    from srsync import early_tcp

    for _job, _target, specs, _roots in todo:
        for spec in specs:  # the server starts its side while paramiko loads
            early_tcp.begin(spec.host, spec.port, spec.timeout, spec.ssh_config)
    import srsync.ssh.connection  # noqa: F401  (CPU-bound: first, before anything competes)
    from srsync.endpoints.registry import warm_up
    from srsync.engine.statedir import state_dir_for

    for job, target_name, specs, roots in todo:
        warm_up(job.name, target_name, state_dir_for(job), specs, roots)
