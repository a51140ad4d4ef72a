"""Running jobs once from the command line, without typer.

The run commands of srsync.cli.main (manual, loadconfig, autorun) call these and turn
the exit code they return into typer's exit.  A plain ``srsync manual ...`` does not
load typer at all: the entry point reads its options with srsync.cli.early's small
parser and, when every value is one typer would take as it is, calls ``run_manual``
here directly (importing typer and building the command costs ~50 ms, more than the
rest of a small no-change run's client work after the imports).  Anything else
(--help, --save, a value typer would convert or refuse) goes through typer as before.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, NoReturn

from srsync import errors
from srsync.cli.early import warm_up_jobs

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from srsync.engine.reporter import Reporter
    from srsync.jobspec import JobSpec

INTERRUPTED = "interrupted; files already written are complete, the rest will follow next run"


def report(exc: errors.SrsyncError) -> int:
    """Print ``exc`` as the one-line error a user sees; its exit code."""
    from srsync.ui.console import print_error

    print_error(str(exc))
    return exc.exit_code


def install_stop_handlers(stop: threading.Event) -> None:
    """First SIGINT/SIGTERM: finish the current file, then stop.  Second SIGINT: abort."""

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def run_manual(
    *, host: str | None, mirror: str, target: str, name: str, user: str | None, port: int | None,
    key: str | None, timeout: float | None, remote: str, sync_type: str, checksum: bool,
    exclude: list[str], max_delete: float | None, save: Path | None, conf_dir: str | None,
    dry_run: bool, force: bool, verbose: int, quiet: bool,
) -> int:
    """``srsync manual``: build the inline job, optionally save it, run it; the exit code."""
    from srsync.config import loader

    if not mirror or not target:
        return report(errors.UsageError("manual needs both -M MIRROR and -T TARGET"))
    try:
        globals_ = loader.load_globals(loader.resolve_conf_dir(conf_dir), fast=True)
        job = loader.manual_job(
            name=name, host=host, mirror=mirror, target=target, user=user, port=port, key=key,
            timeout=timeout, remote_side=remote, sync_type=sync_type,
            checksum=checksum or None, excludes=list(exclude), max_delete=max_delete,
            globals_=globals_,
        )
    except errors.SrsyncError as exc:
        return report(exc)
    if save is not None:
        if save.exists():
            return report(errors.UsageError(f"{save} already exists; choose another file for --save"))
        save.write_text(loader.job_to_toml(job), encoding="utf-8")
        print(f"saved job config to {save}")
    return execute_jobs([job], dry_run=dry_run, force=force, verbose=verbose, quiet=quiet)


def execute_jobs(
    jobs: list[JobSpec], *, dry_run: bool, force: bool, verbose: int, quiet: bool,
    log_file: Path | None = None, json_logs: bool = False,
) -> int:
    """Run jobs once and print the summary; the combined exit code."""
    jobs = [j for j in jobs if j.enabled]
    warm_up_jobs(jobs)
    _quiet_gc()
    from srsync.engine.runner import combine_exit, run_jobs
    from srsync.engine.session import SyncOptions
    from srsync.ui.console import ConsoleReporter, make_console, prepare_summary, print_summary

    console = make_console()
    if not jobs:
        console.print("no enabled jobs to run")
        return errors.EXIT_OK
    if not quiet:
        prepare_summary(dry_run)
    stop = threading.Event()
    install_stop_handlers(stop)
    started = time.time()
    with ConsoleReporter(console, verbose=verbose, quiet=quiet) as reporter:
        run_reporter: Reporter = reporter
        if log_file is not None:
            from srsync.cli.ops import configure_logging
            from srsync.engine.daemon import LogReporter
            from srsync.engine.status import FanoutReporter

            configure_logging(verbose=verbose, quiet=quiet, log_file=log_file,
                              json_logs=json_logs, to_stderr=False)
            run_reporter = FanoutReporter(reporter, LogReporter())
        try:
            results = run_jobs(jobs, run_reporter, SyncOptions(dry_run=dry_run, force=force), stop)
        finally:
            from srsync.endpoints.registry import drop_warm

            drop_warm()
    if not quiet or any(r.exit_code for r in results):
        print_summary(console, results, dry_run, started)
    return combine_exit([r.exit_code for r in results])


def _quiet_gc() -> None:
    """Fewer passes of the cyclic garbage collector in a one-shot run.

    A run builds one small object per path of both trees (100k-path trees, more than
    once), and none of them forms a cycle; at the default threshold the collector
    starts every 700 allocations and keeps re-walking that growing heap (~10 % of a
    scan).  What is loaded so far stays to the end (frozen: never walked again), and
    the collector still runs, 100 times less often.
    """
    import gc

    gc.freeze()
    gc.set_threshold(70_000, 10, 10)


def finish(command: Callable[[], object]) -> NoReturn:
    """Run ``command`` and end the process: user errors become one line and an exit code.

    ``command`` returns an exit code or raises SystemExit (typer's way); an SrsyncError
    that escapes it is reported, and an interrupt ends with 130.
    """
    try:
        code = command()
    except errors.SrsyncError as exc:
        exit_now(report(exc))
    except KeyboardInterrupt:
        from srsync.ui.console import print_error

        print_error(INTERRUPTED)
        sys.exit(130)
    except SystemExit as done:
        exit_now(done.code)
    exit_now(code if isinstance(code, int) else 0)


def exit_now(code: int | str | None) -> NoReturn:
    """End the process with ``code`` without tearing the interpreter down.

    Python's own shutdown clears every module and frees every object one by one: ~0.1 s
    for srsync's imports alone, more after a big tree, and nothing in it matters once
    the run is over (files, databases and connections are closed by then).  Output is
    flushed and atexit handlers (logging's flush among them) still run.  While another
    non-daemon thread is alive, or when the code is a message or the output cannot be
    flushed, the normal exit runs instead.
    """
    if not isinstance(code, int) and code is not None:
        sys.exit(code)
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if any(t.is_alive() for t in others):
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)
    import atexit
    import os

    atexit._run_exitfuncs()
    os._exit(code or 0)
