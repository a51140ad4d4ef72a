"""Rich rendering of runs: live progress on a terminal, plain lines otherwise, plans and summaries."""

from __future__ import annotations

import io
import sys
import threading
import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape, render

from srsync.engine.reporter import Reporter

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID
    from rich.table import Table

    from srsync.core.entry import Problem
    from srsync.core.reconcile import Conflict
    from srsync.engine.runner import JobResult
    from srsync.engine.session import PairResult
    from srsync.plan import Operation, Plan

_VERB = {"rename": "aside", "remove": "delete", "mkdir": "mkdir", "copy": "copy", "link": "link", "meta": "attrs"}


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def describe_op(op: Operation, two_way: bool = False) -> str:
    text = _describe_op(op)
    if two_way:
        return f"{'-> target' if op.side == 'beta' else '<- mirror'}  {text}"
    return text


def _describe_op(op: Operation) -> str:
    verb = _VERB[op.kind.value]
    if op.kind.value == "rename":
        return f"{'aside':7} {op.path} => {op.new_path}"
    if op.kind.value == "copy":
        verb = "update" if op.is_update else "create"
        size = op.entry.size if op.entry else 0
        return f"{verb:7} {op.path} ({human_bytes(size)})"
    if op.kind.value == "link":
        target = op.entry.target if op.entry else ""
        return f"{'relink' if op.is_update else 'link':7} {op.path} -> {target}"
    if op.kind.value == "remove" and op.is_update:
        verb = "replace"
    if op.kind.value == "meta" and op.expected is None:
        verb = "touch"
    return f"{verb:7} {op.path}"


def make_console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Logs and pipes get lines wide enough for a summary row; terminals keep their width.
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


class ConsoleReporter(Reporter):
    """Progress bars when attached to a terminal; plain log lines when not."""

    def __init__(
        self, console: Console, verbose: int = 0, quiet: bool = False, err: Console | None = None
    ) -> None:
        self.console = console
        self.err = err or make_console(stderr=True)
        self.verbose = verbose
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self._lock = threading.Lock()
        self._out_lock = threading.Lock()  # whole lines, from parallel jobs
        # off a terminal, lines are written as plain text (see _print); asked once, not per line
        self._plain_out = not console.is_terminal
        self._plain_err = not self.err.is_terminal
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        if self.live:
            from rich.progress import (  # only on a terminal: pipes and logs get plain lines
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )

    def __enter__(self) -> ConsoleReporter:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _line(self, text: str) -> None:
        if not self.quiet:
            self._print(self.console, text, self._plain_out)

    def _err_line(self, text: str) -> None:
        self._print(self.err, text, self._plain_err)

    def _print(self, console: Console, text: str, plain: bool) -> None:
        """Print one line of markup: through rich on a terminal; anywhere else as its plain
        text, written at once: names exactly as they are (rich would turn an emoji code
        in a file name into an emoji), and none of the ~3.6 ms a console's first print
        costs in set-up, at the very end of a short run."""
        if not plain:
            console.print(text)
            return
        with self._out_lock:
            console.file.write(render(text, emoji=False).plain + "\n")
            console.file.flush()

    def pair_started(self, job: str, target: str, pair: str) -> None:
        if self.verbose:
            self._line(f"{escape(job)}: {escape(pair)}")

    def scan_done(self, job: str, side: str, entries: int) -> None:
        if self.verbose:
            self._line(f"{escape(job)}: scanned {side}: {entries} entries")

    def plan_ready(self, job: str, pair: str, plan: Plan, dry_run: bool) -> None:
        s = plan.stats
        if dry_run:
            if plan.empty:
                self._line(f"[bold]{escape(job)}[/]: {escape(pair)}: nothing to do")
                return
            self._line(f"[bold]{escape(job)}[/]: plan for {escape(pair)}")
            two_way = any(op.side == "alpha" for op in plan.operations) or bool(plan.conflicts)
            for op in plan.operations:
                self._line(f"  {escape(describe_op(op, two_way))}")
            for c in plan.conflicts:
                what = c.resolution or "left for review"
                self._line(f"  [magenta]conflict {escape(c.path)}[/]: {escape(c.reason)}; {escape(what)}")
            self._line(
                f"  total: {s.created} to create, {s.updated} to update, {s.deleted} to delete, "
                f"{s.meta} attribute changes, {len(plan.conflicts)} conflicts, "
                f"{human_bytes(s.bytes)} to transfer"
            )
            return
        if self._progress is not None and s.bytes:
            with self._lock:
                tid = self._tasks.get(job)
                if tid is None:
                    self._tasks[job] = self._progress.add_task(job, total=s.bytes)
                else:
                    self._progress.update(tid, total=s.bytes, completed=0)

    def op_done(self, job: str, op: Operation) -> None:
        if self.verbose:
            self._line(f"{escape(job)}: {escape(describe_op(op))}")

    def bytes_transferred(self, job: str, n: int) -> None:
        if self._progress is not None:
            tid = self._tasks.get(job)
            if tid is not None:
                self._progress.advance(tid, n)

    def problem(self, job: str, problem: Problem) -> None:
        side = f"{problem.side} " if problem.side else ""
        self._err_line(f"[yellow]{escape(job)}: {side}{escape(problem.path or '/')}: "
                       f"{escape(problem.message)}[/]")

    def conflict(self, job: str, conflict: Conflict) -> None:
        what = conflict.resolution or "left for review (srsync conflicts)"
        self._err_line(f"[magenta]{escape(job)}: conflict at {escape(conflict.path)}: "
                       f"{escape(conflict.reason)}; {escape(what)}[/]")

    def halted(self, job: str, reason: str) -> None:
        self._err_line(f"[red]{escape(job)}: halted: {escape(reason)}[/]")

    def message(self, job: str, text: str) -> None:
        self._err_line(f"{escape(job)}: {escape(text)}")

    def pair_done(self, job: str, result: PairResult) -> None:
        if result.outcome == "failed":
            self._err_line(f"[red]{escape(job)}: {escape(result.error)}[/]")
        elif not self.live and not self.quiet and not result.dry_run:
            a = result.applied
            self._line(
                f"{escape(job)}: {escape(result.pair)}: {result.outcome}: {a.created} created, "
                f"{a.updated} updated, {a.deleted} deleted, {human_bytes(a.bytes)} "
                f"in {result.duration:.1f}s"
            )


_STYLE = {"ok": "green", "unchanged": "green", "partial": "yellow", "halted": "red",
          "failed": "red", "conflicts": "magenta"}


_SUMMARY_COLUMNS = ("job", "target", "pair", "result", "created", "updated", "deleted", "conflicts", "bytes", "time")
_LEFT_COLUMNS = 4  # text columns first, then the numbers (right-aligned)


def _summary_title(dry_run: bool) -> str:
    return "srsync dry run (nothing changed)" if dry_run else "srsync summary"


def _summary_rows(results: list[JobResult], dry_run: bool) -> list[tuple[list[str], str]]:
    """One row of plain cells per pair (or failed job), with the result's style."""
    rows: list[tuple[list[str], str]] = []
    for jr in results:
        if not jr.pairs:
            rows.append(([jr.job, "", "", "failed", "", "", "", "", "", ""], "red"))
            continue
        for pr in jr.pairs:
            stats = pr.plan.stats if (dry_run and pr.plan) else pr.applied
            outcome = "would change" if dry_run and pr.outcome == "ok" else pr.outcome
            rows.append((
                [pr.job, pr.target, pr.pair, outcome, str(stats.created), str(stats.updated),
                 str(stats.deleted), str(stats.conflicts), human_bytes(stats.bytes), f"{pr.duration:.1f}s"],
                _STYLE.get(pr.outcome, ""),
            ))
    return rows


def summary_table(results: list[JobResult], dry_run: bool) -> Table:
    from rich.table import Table

    table = Table(title=_summary_title(dry_run), title_justify="left")
    for i, col in enumerate(_SUMMARY_COLUMNS):
        table.add_column(col, justify="left" if i < _LEFT_COLUMNS else "right")
    for cells, style in _summary_rows(results, dry_run):
        shown = [escape(c) for c in cells]
        shown[3] = f"[{style}]{shown[3]}[/]" if style else shown[3]
        table.add_row(*shown)
    return table


def summary_text(results: list[JobResult], dry_run: bool) -> str:
    """The summary as plain aligned columns, for logs and pipes: no box drawing, no
    wrapping, one line per pair (and far cheaper to draw than the table)."""
    rows = [list(_SUMMARY_COLUMNS)] + [cells for cells, _ in _summary_rows(results, dry_run)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_SUMMARY_COLUMNS))]
    lines = [_summary_title(dry_run)]
    for row in rows:
        cells = [
            cell.ljust(width) if i < _LEFT_COLUMNS else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def conflicts_table(rows: list[tuple[str, str, str, str, str, str, float]]) -> Table:
    from rich.table import Table

    table = Table(title="conflicts left for review", title_justify="left")
    for col in ("job", "path", "reason", "mirror", "target", "detected"):
        table.add_column(col)
    for job, _pair, path, reason, mirror, target, detected in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(detected))
        table.add_row(escape(job), escape(path), escape(reason), escape(mirror), escape(target), when)
    return table


def prepare_summary(dry_run: bool) -> None:
    """Draw an empty summary into nothing, in a daemon thread: rich imports the modules a
    table needs on its first use (~15 ms), and a run waiting for its server has time.
    (Output that is not a terminal gets ``summary_text``, which needs none of them.)"""
    if not is_terminal():
        return

    def draw() -> None:
        Console(file=io.StringIO(), width=100).print(summary_table([], dry_run))

    threading.Thread(target=draw, name="summary-prep", daemon=True).start()


def print_summary(console: Console, results: list[JobResult], dry_run: bool, started: float) -> None:
    """The table on a terminal; plain columns anywhere else (see ``summary_text``)."""
    done = f"done in {time.time() - started:.1f}s"
    if console.is_terminal:
        console.print(summary_table(results, dry_run))
        console.print(done)
        return
    console.file.write(f"{summary_text(results, dry_run)}\n{done}\n")


def print_error(message: str) -> None:
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[red]srsync: error:[/] {escape(message)}"
    )


def is_terminal() -> bool:
    return sys.stdout.isatty()
