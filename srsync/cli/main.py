"""The srsync command line: typer app, error-to-exit-code mapping, run commands.

Start-up time matters (``srsync manual`` is benchmarked against rsync): heavy modules are
imported inside the commands that need them, a run builds only the command it names
(app_for), and option values are converted without pydantic (srsync.cli.coerce).
``app`` holds the commands of this module; full_app() adds those of srsync.cli.ops and
srsync.cli.twoway.
"""

from __future__ import annotations

import sys
import threading
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from srsync import errors
from srsync.cli.coerce import SrsyncCommand, SrsyncGroup
from srsync.cli.execute import execute_jobs, finish, install_stop_handlers, report, run_manual

if TYPE_CHECKING:
    from srsync.engine.daemon import JobSource


class _App(typer.Typer):
    """A typer app whose commands convert plain option values without pydantic (see
    srsync.cli.coerce)."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", SrsyncCommand)
        return super().command(*args, **kwargs)


_APP_SETTINGS: dict[str, Any] = {
    "name": "srsync",
    "help": "Mirror and sync directory trees over SSH: safe by default, fast, clear.",
    "no_args_is_help": True,
    "add_completion": False,
    "pretty_exceptions_enable": False,
    "cls": SrsyncGroup,
    "context_settings": {"help_option_names": ["-h", "--help"]},
}

app = _App(**_APP_SETTINGS)


class RemoteSide(StrEnum):
    mirror = "mirror"
    target = "target"


class SyncType(StrEnum):
    Zero2One = "Zero2One"
    One2One = "One2One"


def fail(exc: errors.SrsyncError) -> NoReturn:
    raise typer.Exit(report(exc))


def run_daemon(
    source: JobSource, *, dry_run: bool, force: bool, verbose: int, quiet: bool,
    log_file: Path | None, json_logs: bool, retry_max: float, rescan: float,
) -> NoReturn:
    """Keep running every job on its schedule / on changes until SIGINT or SIGTERM."""
    from srsync.cli.ops import configure_logging
    from srsync.engine.daemon import Daemon, DaemonOptions, LogReporter

    configure_logging(verbose=verbose, quiet=quiet, log_file=log_file, json_logs=json_logs,
                      to_stderr=True)
    stop = threading.Event()
    install_stop_handlers(stop)
    options = DaemonOptions(dry_run=dry_run, force=force, retry_base=min(2.0, retry_max),
                            retry_max=retry_max, rescan=rescan)
    raise typer.Exit(Daemon(source, LogReporter(), options, stop).run())


DryRun = Annotated[bool, typer.Option("--dry-run", "-n", help="Show the full plan; change nothing.")]
Force = Annotated[
    bool, typer.Option("--force", help="Run even when a safety guard (mass deletion, empty mirror) trips.")
]
Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="Log every file operation.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only print problems and errors.")]
Daemon = Annotated[bool, typer.Option(
    "--daemon", "-d", help="Keep running: each job on its schedule and/or live on local changes.")]
LogFile = Annotated[Path | None, typer.Option("--log-file", help="Also append log lines to this file.")]
JsonLogs = Annotated[bool, typer.Option("--json-logs", help="Log lines as JSON objects (one per line).")]
RetryMax = Annotated[float, typer.Option(
    "--retry-max", min=0.1, help="Daemon: cap of the retry backoff after a failed run, seconds.")]
Rescan = Annotated[float, typer.Option(
    "--rescan", min=1.0, help="Daemon: watched jobs without schedule rescan fully this often, seconds.")]


@app.command()
def manual(
    host: Annotated[str | None, typer.Option("-H", "--host", help="SSH host (alias or name).")] = None,
    mirror: Annotated[str, typer.Option("-M", "--mirror", help="Mirror path or location (host:path).")] = "",
    target: Annotated[str, typer.Option("-T", "--target", help="Target path or location (host:path).")] = "",
    name: Annotated[str, typer.Option("-N", "--name", help="Job name (for state, history, locks).")] = "manual",
    user: Annotated[str | None, typer.Option("-u", "--user", help="SSH user.")] = None,
    port: Annotated[int | None, typer.Option("-P", "--port", help="SSH port.")] = None,
    key: Annotated[str | None, typer.Option("-k", "--key", help="Private key file.")] = None,
    timeout: Annotated[float | None, typer.Option("-t", "--timeout", help="Connect/auth timeout, seconds.")] = None,
    remote: Annotated[
        RemoteSide, typer.Option("--remote", help="Which side lives on -H: mirror (pull) or target (push).")
    ] = RemoteSide.mirror,
    sync_type: Annotated[SyncType, typer.Option("--sync-type", help="Zero2One (mirror) or One2One.")] = SyncType.Zero2One,
    checksum: Annotated[bool, typer.Option("--checksum", "-c", help="Compare content hashes, not size+mtime.")] = False,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", "-x", help="gitignore-style pattern; repeatable.")
    ] = None,
    max_delete: Annotated[
        float | None, typer.Option("--max-delete", help="Halt when a run would delete more than this % of the target.")
    ] = None,
    save: Annotated[Path | None, typer.Option("--save", help="Write the equivalent job config to this file.")] = None,
    conf_dir: Annotated[str | None, typer.Option("--conf-dir", help="Config folder (for global.toml defaults).")] = None,
    dry_run: DryRun = False,
    force: Force = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Run one inline job.  -H names the SSH host; --remote says which side lives on it."""
    raise typer.Exit(run_manual(
        host=host, mirror=mirror, target=target, name=name, user=user, port=port, key=key,
        timeout=timeout, remote=remote.value, sync_type=sync_type.value, checksum=checksum,
        exclude=list(exclude or []), max_delete=max_delete, save=save, conf_dir=conf_dir,
        dry_run=dry_run, force=force, verbose=verbose, quiet=quiet,
    ))


@app.command()
def loadconfig(
    path: Annotated[Path, typer.Option("-p", "--path", help="A job config file.")],
    dry_run: DryRun = False,
    force: Force = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
    daemon: Daemon = False,
    log_file: LogFile = None,
    json_logs: JsonLogs = False,
    retry_max: RetryMax = 300.0,
    rescan: Rescan = 3600.0,
) -> None:
    """Run the job in one config file, anywhere on disk."""
    from srsync.config import loader

    try:
        job = loader.load_job_file(path)
    except errors.SrsyncError as exc:
        fail(exc)
    if daemon:
        from srsync.engine.daemon import file_source

        run_daemon(file_source(path), dry_run=dry_run, force=force, verbose=verbose, quiet=quiet,
                   log_file=log_file, json_logs=json_logs, retry_max=retry_max, rescan=rescan)
    raise typer.Exit(execute_jobs([job], dry_run=dry_run, force=force, verbose=verbose, quiet=quiet,
                                  log_file=log_file, json_logs=json_logs))


@app.command()
def autorun(
    conf_dir: Annotated[str | None, typer.Option("--conf-dir", help="Config folder (default: $SRSYNC_CONF_DIR, ./conf, user config).")] = None,
    job: Annotated[list[str] | None, typer.Option("--job", "-j", help="Only this job; repeatable.")] = None,
    dry_run: DryRun = False,
    force: Force = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
    daemon: Daemon = False,
    log_file: LogFile = None,
    json_logs: JsonLogs = False,
    retry_max: RetryMax = 300.0,
    rescan: Rescan = 3600.0,
) -> None:
    """Run every enabled job in the config folder once, or keep running with --daemon.

    Once: jobs in parallel, each job's targets in order, then a summary.  With --daemon:
    each job on its schedule and/or live on local changes until SIGINT/SIGTERM."""
    from srsync.config import loader

    folder = loader.resolve_conf_dir(conf_dir)
    names = list(job) if job else None
    try:
        jobs = loader.load_conf_dir(folder, names)
    except errors.SrsyncError as exc:
        fail(exc)
    if daemon:
        from srsync.engine.daemon import conf_dir_source

        run_daemon(conf_dir_source(folder, names), dry_run=dry_run, force=force, verbose=verbose,
                   quiet=quiet, log_file=log_file, json_logs=json_logs, retry_max=retry_max,
                   rescan=rescan)
    raise typer.Exit(execute_jobs(jobs, dry_run=dry_run, force=force, verbose=verbose, quiet=quiet,
                                  log_file=log_file, json_logs=json_logs))


def _register_command_modules() -> None:
    """Command groups living in their own modules register themselves on ``app`` when
    imported.  Done on demand (see full_app), so ``srsync manual`` does not load them."""
    import importlib

    for name in ("srsync.cli.ops", "srsync.cli.twoway"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def full_app() -> typer.Typer:
    """``app`` with every command: this module's and those of the command-group modules."""
    _register_command_modules()
    return app


def _command_name(info: Any) -> str:
    return str(info.name or info.callback.__name__.lower().replace("_", "-"))  # typer's rule


def _noop() -> None:
    pass


def app_for(args: list[str]) -> typer.Typer:
    """The app to run for ``args``: when they name a command, an app holding only that one.

    Typer builds the options of every registered command before parsing anything (~40 ms
    for all of them); the command a run uses is enough, and it parses, helps and fails
    exactly the same way.  No command, an unknown one, or a global option first: the
    whole app, so the listing and suggestions stay complete.
    """
    if not args or args[0].startswith("-"):
        return full_app()
    chosen = [info for info in app.registered_commands if _command_name(info) == args[0]]
    if not chosen:
        chosen = [info for info in full_app().registered_commands if _command_name(info) == args[0]]
    if len(chosen) != 1:
        return full_app()
    one = _App(**_APP_SETTINGS)
    one.registered_commands = chosen
    one.callback()(_noop)  # keeps a one-command app a group: `srsync CMD ...` as before
    return one


def run() -> None:
    """Console-script entry point: user errors become one line and an exit code."""
    finish(lambda: app_for(sys.argv[1:])())
