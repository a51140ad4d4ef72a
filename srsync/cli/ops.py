"""Operations commands: status, history, overview, enable, disable, setup, check; logging setup."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from srsync import errors
from srsync.cli.main import app, fail

if TYPE_CHECKING:
    from srsync.jobspec import ConnSpec, JobSpec, Location

ConfDir = Annotated[
    str | None,
    typer.Option("--conf-dir", help="Config folder (default: $SRSYNC_CONF_DIR, ./conf, user config)."),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

_TIME_FIELDS = ("run_started", "last_started", "last_finished", "next_run", "updated_at")


# ---------------------------------------------------------------------------
# logging


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's job fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
            + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "srsync", None)  # the engine's structured fields
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(*, verbose: int, quiet: bool, log_file: Path | None, json_logs: bool,
                      to_stderr: bool) -> None:
    """Handlers for the ``srsync`` loggers: stderr (daemons) and/or a log file."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    fmt: logging.Formatter = (
        JsonFormatter() if json_logs
        else logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    root = logging.getLogger("srsync")
    root.setLevel(level)
    root.propagate = False
    for h in list(root.handlers):
        root.removeHandler(h)
    if to_stderr:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(fmt)
        root.addHandler(handler)
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            fail(errors.UsageError(f"cannot open the log file {log_file}: {exc.strerror or exc}"))
        fh.setFormatter(fmt)
        root.addHandler(fh)
    if not root.handlers:
        root.addHandler(logging.NullHandler())


# ---------------------------------------------------------------------------
# finding jobs


def load_jobs(conf_dir: str | None, job: str | None = None) -> list[JobSpec]:
    """Jobs exactly as autorun finds them (roots are not checked: display only)."""
    from srsync.config import loader

    try:
        return loader.load_conf_dir(loader.resolve_conf_dir(conf_dir), [job] if job else None,
                                    check_roots=False)
    except errors.SrsyncError as exc:
        fail(exc)


def status_rows(jobs: list[JobSpec]) -> list[dict[str, Any]]:
    """One row per job and target, in config order: stored status merged with the config
    (a disabled job or target always shows as disabled)."""
    from srsync.engine.runner import state_dir_for
    from srsync.engine.status import DISABLED, StatusRow, StatusStore, pid_alive, target_keys

    stores: dict[Path, dict[tuple[str, str], StatusRow]] = {}
    out: list[dict[str, Any]] = []
    for job in jobs:
        sdir = state_dir_for(job)
        if sdir not in stores:
            rows: dict[tuple[str, str], StatusRow] = {}
            if (sdir / "state.db").exists():
                try:
                    with StatusStore(sdir) as store:
                        rows = {(r.job, r.target): r for r in store.rows()}
                except Exception as exc:  # noqa: BLE001 - a broken db must not hide the rest
                    logging.getLogger("srsync").warning("cannot read %s: %s", sdir, exc)
            stores[sdir] = rows
        for target, key in zip(job.targets, target_keys(job), strict=True):
            row = stores[sdir].get((job.name, key)) or StatusRow(job.name, key)
            row = dataclasses.replace(row)
            if not job.enabled or not target.enabled:
                row.state = DISABLED
                row.next_run = 0.0
            elif row.next_run and not pid_alive(row.pid):
                row.next_run = 0.0  # the daemon that scheduled it is gone
            d = row.as_dict()
            d["enabled"] = job.enabled and target.enabled
            out.append(d)
    return out


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in _TIME_FIELDS:
        if key in out and not out[key]:
            out[key] = None
    out.pop("pid", None)
    return out


# ---------------------------------------------------------------------------
# status / history / overview


@app.command()
def status(
    job: Annotated[str | None, typer.Argument(help="Only this job.")] = None,
    conf_dir: ConfDir = None,
    as_json: JsonOut = False,
) -> None:
    """Show every job and target once: state, last sync and result, counts, next run."""
    rows = status_rows(load_jobs(conf_dir, job))
    if as_json:
        typer.echo(json.dumps([_jsonable(r) for r in rows], indent=2))
        return
    from srsync.ui.console import make_console
    from srsync.ui.overview import print_status

    print_status(make_console(), rows)


@app.command()
def history(
    job: Annotated[str | None, typer.Argument(help="Only this job.")] = None,
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many results.")] = 20,
    conf_dir: ConfDir = None,
    as_json: JsonOut = False,
) -> None:
    """The last sync results, newest first (one line per job, target and path pair)."""
    from srsync.engine.runner import state_dir_for
    from srsync.engine.state import StateDB

    jobs = load_jobs(conf_dir, job)
    dirs = list(dict.fromkeys(state_dir_for(j) for j in jobs))
    if not dirs:
        from srsync.engine.state import default_state_dir

        dirs = [default_state_dir()]
    rows: list[dict[str, Any]] = []
    for sdir in dirs:
        if not (sdir / "state.db").exists():
            continue
        db = StateDB(sdir)
        try:
            for r in db.history(job, count):
                d = dataclasses.asdict(r)
                d["duration"] = round(r.finished - r.started, 3)
                rows.append(d)
        finally:
            db.close()
    rows.sort(key=lambda d: (d["finished"], d["id"]), reverse=True)
    rows = rows[:count]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from srsync.ui.console import make_console
    from srsync.ui.overview import print_history

    print_history(make_console(), rows)


@app.command()
def overview(
    conf_dir: ConfDir = None,
    once: Annotated[bool, typer.Option("--once", help="Render one frame and exit.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.2, help="Refresh period, seconds.")] = 1.0,
) -> None:
    """Live dashboard of all jobs and targets (works beside a running autorun --daemon)."""
    from srsync.ui.console import make_console
    from srsync.ui.overview import run_overview

    conf = conf_dir

    def load() -> list[dict[str, Any]]:
        return status_rows(load_jobs(conf))  # re-read: enable/disable and new jobs show up

    run_overview(make_console(), load, once=once, interval=interval)


# ---------------------------------------------------------------------------
# enable / disable


def _switch(spec: str, conf_dir: str | None, value: bool) -> None:
    from srsync.config import loader
    from srsync.config.edit import edited_text, write_atomic

    name, _, target_sel = spec.partition("/")
    if not name:
        fail(errors.UsageError("name a job: JOB or JOB/TARGET"))
    job = load_jobs(conf_dir, name)[0]
    path = Path(job.source)
    index: int | None = None
    if target_sel:
        if target_sel.isdigit():
            index = int(target_sel)
            if index >= len(job.targets):
                fail(errors.UsageError(
                    f"job {job.name!r} has {len(job.targets)} targets (0-{len(job.targets) - 1}); "
                    f"there is no target {index}"))
        else:
            hits = [i for i, t in enumerate(job.targets) if t.name == target_sel]
            if not hits:
                names = ", ".join(f"{i}: {t.name}" for i, t in enumerate(job.targets))
                fail(errors.UsageError(f"job {job.name!r} has no target {target_sel!r}; targets: {names}"))
            if len(hits) > 1:
                fail(errors.UsageError(
                    f"job {job.name!r} has several targets named {target_sel!r} (numbers "
                    f"{', '.join(map(str, hits))}); name one by number, e.g. {job.name}/{hits[0]}"))
            index = hits[0]
    try:
        text = path.read_text(encoding="utf-8")
        new_text = edited_text(path, text, index, value)
        new_job = loader.load_job_text(path, new_text, check_roots=value)
        if value:
            others = [j for j in _other_jobs(conf_dir, path) if j.name != new_job.name]
            for j, key, message in loader.overlap_problems([*others, new_job], across_jobs_only=True):
                if j is new_job:
                    raise errors.ConfigError(f"{path}: {key}: {message}")
    except OSError as exc:
        fail(errors.ConfigError(f"{path}: cannot read the file: {exc.strerror or exc}"))
    except errors.SrsyncError as exc:
        fail(exc)
    what = job.name if index is None else f"{job.name}/{index} ({job.targets[index].name})"
    word = "enabled" if value else "disabled"
    if new_text == text:
        typer.echo(f"{what} is already {word}")
        return
    write_atomic(path, new_text)
    typer.echo(f"{what} {word} ({path}); a running daemon picks this up before its next run")


def _other_jobs(conf_dir: str | None, path: Path) -> list[JobSpec]:
    from srsync.config import loader

    try:
        return loader.load_conf_dir(path.parent, check_roots=False)
    except errors.ConfigError:
        return []


JobTarget = Annotated[str, typer.Argument(help="JOB, or JOB/TARGET (target host name or number from 0).")]


@app.command()
def enable(spec: JobTarget, conf_dir: ConfDir = None) -> None:
    """Switch a job or one of its targets on (edits enabled in its file, keeping the rest)."""
    _switch(spec, conf_dir, True)


@app.command()
def disable(spec: JobTarget, conf_dir: ConfDir = None) -> None:
    """Switch a job or one of its targets off (edits enabled in its file, keeping the rest)."""
    _switch(spec, conf_dir, False)


# ---------------------------------------------------------------------------
# check


@dataclasses.dataclass(slots=True)
class _Findings:
    config: list[str] = dataclasses.field(default_factory=list)
    connect: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


def _check_location(pool: Any, loc: Location, side: str, where: str, f: _Findings,
                    accept_new: bool) -> None:
    try:
        ep = pool.open(loc)
        exists = ep.root_exists()
    except errors.HostKeyError as exc:
        if accept_new and "is unknown" in str(exc):
            f.notes.append(f"{where}: the host key is not known yet; it will be recorded on the "
                           "first run (host_key_policy = accept-new)")
        else:
            f.connect.append(f"{where}: {exc}")
        return
    except errors.SrsyncError as exc:
        f.connect.append(f"{where}: {exc}")
        return
    except OSError as exc:
        f.connect.append(f"{where}: {loc}: {exc.strerror or exc}")
        return
    if not exists:
        if side == "mirror":
            f.connect.append(f"{where}: the mirror root {loc} does not exist")
        else:
            f.notes.append(f"{where}: the target root {loc} does not exist yet; the first run creates it")


@app.command()
def check(
    job: Annotated[str | None, typer.Argument(help="Only this job.")] = None,
    conf_dir: ConfDir = None,
    offline: Annotated[bool, typer.Option("--offline", help="Only validate files; do not connect.")] = False,
) -> None:
    """Validate config files, connectivity and roots; list every problem; change nothing.

    Exit code 2 for config problems, 1 when a host or root cannot be reached, else 0."""
    from srsync.config import loader
    from srsync.endpoints.registry import EndpointPool
    from srsync.jobspec import Location

    folder = loader.resolve_conf_dir(conf_dir)
    f = _Findings()
    jobs: list[JobSpec] = []
    if not folder.is_dir():
        fail(errors.ConfigError(f"{folder}: the config folder does not exist"))
    try:
        globals_ = loader.load_globals(folder)
    except errors.ConfigError as exc:
        f.config.extend(str(exc).splitlines())
        globals_ = loader.GlobalSettings()
    files = loader.job_files(folder)
    for path in files:
        try:
            spec = loader.load_job_file(path, globals_)
        except errors.ConfigError as exc:
            if job is None or job in (path.stem, loader._declared_name(path)):
                f.config.extend(str(exc).splitlines())
            continue
        if job is None or job in (spec.name, path.stem):
            jobs.append(spec)
    if job is not None and not jobs and not f.config:
        fail(errors.ConfigError(f"{folder}: no job named {job!r}"))
    for j, key, message in loader.overlap_problems(jobs, across_jobs_only=True):
        f.config.append(f"{j.source}: {key}: {message}")
    if not offline:
        for spec in jobs:
            if not spec.enabled:
                f.notes.append(f"{spec.name}: disabled; not checked")
                continue
            for ti, target in enumerate(spec.targets):
                if not target.enabled:
                    f.notes.append(f"{spec.name}/{ti} ({target.name}): disabled; not checked")
                    continue
                with EndpointPool() as pool:
                    for pi, pair in enumerate(target.pairs):
                        where = f"{spec.name}: targets[{ti}].paths[{pi}]"
                        for side, loc in (("mirror", pair.mirror), ("target", pair.target)):
                            accept_new = loc.conn is not None and loc.conn.host_key_policy == "accept-new"
                            if loc.conn is not None:
                                # check never writes known_hosts: an unknown key stays unknown
                                loc = Location(loc.path, dataclasses.replace(loc.conn, host_key_policy="strict"))
                            _check_location(pool, loc, side, f"{where}.{side}", f, accept_new)
    for line in f.config:
        typer.echo(f"config: {line}", err=True)
    for line in f.connect:
        typer.echo(f"problem: {line}", err=True)
    for line in f.notes:
        typer.echo(f"note: {line}")
    total = len(f.config) + len(f.connect)
    checked = ", ".join(j.name for j in jobs) or "none"
    if total:
        typer.echo(f"{total} problem{'s' if total != 1 else ''} found (jobs checked: {checked})", err=True)
        raise typer.Exit(errors.EXIT_USAGE if f.config else errors.EXIT_FAILURE)
    typer.echo(f"all good: {len(jobs)} job{'s' if len(jobs) != 1 else ''} checked ({checked})")


# ---------------------------------------------------------------------------
# setup


def _ask(value: str | None, prompt: str, interactive: bool, default: str | None = None,
         required: bool = True) -> str | None:
    if value is not None:
        return value
    if interactive:
        answer = typer.prompt(prompt, default=default if default is not None else ("" if not required else None),
                              show_default=default is not None)
        return str(answer).strip() or (None if not required else str(answer))
    if default is not None or not required:
        return default
    fail(errors.UsageError(f"setup needs {prompt.lower()} (pass it as an option, or run setup on a terminal)"))


def _job_text(name: str, values: dict[str, Any]) -> str:
    from srsync.config.loader import toml_value

    lines = [f"# srsync job {name!r}, written by `srsync setup`", f"sync_type = {toml_value(values['sync_type'])}"]
    if values.get("schedule"):
        lines.append(f"schedule = {toml_value(values['schedule'])}")
    lines.append(f"watch = {toml_value(bool(values.get('watch')))}")
    lines += ["", "[[targets]]"]
    if values.get("host"):
        lines.append(f"host = {toml_value(values['host'])}")
        for key in ("user", "port", "key", "password_env"):
            if values.get(key) not in (None, ""):
                lines.append(f"{key} = {toml_value(values[key])}")
        lines.append(f"mirror_remote = {toml_value(bool(values['mirror_remote']))}")
    lines += ["  [[targets.paths]]", f"  mirror = {toml_value(values['mirror'])}",
              f"  target = {toml_value(values['target'])}"]
    return "\n".join(lines) + "\n"


def _probe_host_key(conn: ConnSpec, *, yes: bool, fingerprint: str | None, interactive: bool) -> None:
    """Connect once without offering a password to learn the host key; show its fingerprint
    and record it in known_hosts only after the user (or --yes/--fingerprint) confirmed."""
    from srsync.ssh import hostkeys
    from srsync.ssh.connection import connect

    real = os.path.expanduser(conn.known_hosts or hostkeys.default_known_hosts())
    with tempfile.TemporaryDirectory(prefix="srsync-setup-") as tmp:
        probe_kh = os.path.join(tmp, "known_hosts")
        before = hostkeys.read_known_hosts(real)
        if os.path.exists(real):
            shutil.copyfile(real, probe_kh)
        probe = dataclasses.replace(conn, known_hosts=probe_kh, host_key_policy="accept-new",
                                    password_env=None, use_agent=False)
        with contextlib.suppress(errors.AuthError):  # the key is recorded before auth
            connect(probe).close()
        new = hostkeys.read_known_hosts(probe_kh)[len(before):]
    if not new:
        typer.echo(f"host key of {conn.label}: already known in {real}")
        return
    line = new[-1]
    fpr = hostkeys.fingerprint_sha256(line.blob)
    typer.echo(f"host key of {conn.label}: {line.keytype} {fpr}")
    if fingerprint is not None:
        if fingerprint.strip() != fpr:
            raise errors.HostKeyError(
                f"the host key of {conn.label} is {fpr}, not the expected {fingerprint}; nothing written")
    elif not yes:
        if not interactive:
            raise errors.HostKeyError(
                f"the host key of {conn.label} ({fpr}) is unknown: confirm it with "
                f"--fingerprint {fpr} or --yes")
        if not typer.confirm("Is this the right fingerprint (compare it with the server's)?", default=False):
            raise errors.HostKeyError(f"host key of {conn.label} not confirmed; nothing written")
    hostkeys.add_known_host(real, line.patterns, line.keytype, line.blob)
    typer.echo(f"recorded the host key in {real}")


def _check_side(pool: Any, loc: Location, side: str) -> list[str]:
    """Problems with one root: the mirror must be a readable directory, the target a
    writable directory (or a missing one whose parent is writable)."""
    import posixpath

    from srsync.core.entry import Kind
    from srsync.core.paths import TEMP_PREFIX
    from srsync.jobspec import Location as Loc

    problems: list[str] = []
    try:
        ep = pool.open(loc)
        if side == "mirror":
            if not ep.root_exists():
                return [f"the mirror {loc} does not exist or is not a directory"]
            if loc.conn is None and not os.access(loc.path, os.R_OK | os.X_OK):
                return [f"the mirror {loc} is not readable"]
            ep.stat("")
            return []
        probe_ep = ep
        if not ep.root_exists():
            parent = (posixpath if loc.conn else os.path).dirname(loc.path.rstrip("/")) or "."
            probe_ep = pool.open(Loc(parent, loc.conn))
            if not probe_ep.root_exists():
                return [f"neither the target {loc} nor its parent directory exists"]
        name = f"{TEMP_PREFIX}setup-probe"
        probe_ep.write_file(name, iter([b""]), 0o600, time.time_ns())
        probe_ep.remove(name, Kind.FILE)
    except PermissionError:
        problems.append(f"the {side} {loc} is not {'readable' if side == 'mirror' else 'writable'}")
    except OSError as exc:
        problems.append(f"the {side} {loc}: {exc.strerror or exc}")
    return problems


@app.command()
def setup(
    name: Annotated[str | None, typer.Argument(help="Job name (the file is CONF_DIR/NAME.toml).")] = None,
    conf_dir: ConfDir = None,
    host: Annotated[str | None, typer.Option("--host", "-H", help="SSH host; empty for local->local.")] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="SSH user.")] = None,
    port: Annotated[int | None, typer.Option("--port", "-P", help="SSH port.")] = None,
    key: Annotated[str | None, typer.Option("--key", "-k", help="Private key file.")] = None,
    password_env: Annotated[str | None, typer.Option(
        "--password-env", help="NAME of an environment variable holding the password.")] = None,
    direction: Annotated[str | None, typer.Option(
        "--direction", help="push (local mirror -> remote target) or pull (remote mirror -> local).")] = None,
    mirror: Annotated[str | None, typer.Option("--mirror", "-M", help="Mirror path.")] = None,
    target: Annotated[str | None, typer.Option("--target", "-T", help="Target path.")] = None,
    sync_type: Annotated[str | None, typer.Option("--sync-type", help="Zero2One or One2One.")] = None,
    schedule: Annotated[str | None, typer.Option("--schedule", help='Interval ("15m") or cron; "" for none.')] = None,
    watch: Annotated[bool | None, typer.Option("--watch/--no-watch", help="Sync live on local changes.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask: accept the host key shown.")] = False,
    fingerprint: Annotated[str | None, typer.Option(
        "--fingerprint", help="Accept the host key only if its SHA256 fingerprint is this.")] = None,
) -> None:
    """Create a job file step by step (or non-interactively with options).

    Asks host, user, auth, paths, sync type and schedule; connects, confirms the host key
    fingerprint, checks both paths; writes only values the config loader accepts."""
    from srsync.config import loader
    from srsync.config.edit import write_atomic
    from srsync.endpoints.registry import EndpointPool

    interactive = sys.stdin.isatty() and not yes
    folder = loader.resolve_conf_dir(conf_dir)
    name = _ask(name, "Job name", interactive)
    assert name is not None
    path = folder / f"{name}.toml"
    if path.exists():
        fail(errors.UsageError(f"{path} already exists; choose another name or edit it by hand"))
    host = _ask(host, "SSH host (empty for local -> local)", interactive, default="" if interactive else None,
                required=False) or None
    values: dict[str, Any] = {"host": host}
    if host:
        values["user"] = _ask(user, "SSH user (empty: from ~/.ssh/config or current user)", interactive,
                              default="", required=False) or None
        if port is None and interactive:
            port_text = _ask(None, "SSH port (empty: 22 or ~/.ssh/config)", interactive, default="", required=False)
            port = int(port_text) if port_text and port_text.isdigit() else None
        values["port"] = port
        values["key"] = _ask(key, "Private key file (empty: ssh-agent / default keys)", interactive,
                             default="", required=False) or None
        values["password_env"] = _ask(password_env, "Password environment variable (empty: none)",
                                      interactive, default="", required=False) or None
        d = _ask(direction, "Direction: push (local -> remote) or pull (remote -> local)", interactive,
                 default="push")
        if d not in ("push", "pull"):
            fail(errors.UsageError(f"--direction must be push or pull, not {d!r}"))
        values["mirror_remote"] = d == "pull"
    values["mirror"] = _ask(mirror, "Mirror path (the source)", interactive)
    values["target"] = _ask(target, "Target path (the replica)", interactive)
    values["sync_type"] = _ask(sync_type, "Sync type (Zero2One or One2One)", interactive, default="Zero2One")
    values["schedule"] = _ask(schedule, 'Schedule (interval like "15m", cron, or empty)', interactive,
                              default="", required=False) or None
    if watch is None:
        watch = typer.confirm("Sync live when local files change?", default=False) if interactive else False
    values["watch"] = watch
    text = _job_text(name, values)
    try:
        job = loader.load_job_text(path, text, check_roots=False)
    except errors.ConfigError as exc:
        fail(exc)
    pair = job.targets[0].pairs[0]
    problems: list[str] = []
    try:
        conn = pair.mirror.conn or pair.target.conn
        if conn is not None:
            _probe_host_key(conn, yes=yes, fingerprint=fingerprint, interactive=interactive)
        with EndpointPool() as pool:
            problems += _check_side(pool, pair.mirror, "mirror")
            problems += _check_side(pool, pair.target, "target")
    except errors.SrsyncError as exc:
        fail(exc)
    if problems:
        for p in problems:
            typer.echo(f"problem: {p}", err=True)
        fail(errors.PathError(f"{len(problems)} problem(s) with the paths; nothing written"))
    try:
        loader.load_job_text(path, text)  # the final gate: exactly what autorun will accept
    except errors.ConfigError as exc:
        fail(exc)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)
    typer.echo(f"wrote {path}; run it with `srsync autorun --job {name}` or check it with `srsync check {name}`")
