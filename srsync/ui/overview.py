"""Status, history and the live overview dashboard, rendered with rich from plain row dicts."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from srsync.ui.console import human_bytes

Row = Mapping[str, Any]

_STATE_STYLE = {
    "idle": "green", "scanning": "cyan", "transferring": "bold cyan", "error": "bold red",
    "disabled": "dim", "halted": "red", "conflicts": "magenta", "waiting": "yellow",
    "interrupted": "yellow",
}
_RESULT_STYLE = {"ok": "green", "unchanged": "green", "partial": "yellow", "halted": "red",
                 "failed": "red", "conflicts": "magenta"}


def ago(ts: float | None, now: float) -> str:
    if not ts:
        return "never"
    d = max(0.0, now - ts)
    if d < 60:
        return f"{d:.0f}s ago"
    if d < 3600:
        return f"{d / 60:.0f}m ago"
    if d < 86400:
        return f"{d / 3600:.1f}h ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def until(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    d = ts - now
    if d <= 0:
        return "now"
    if d < 60:
        return f"in {d:.0f}s"
    if d < 3600:
        return f"in {d / 60:.0f}m"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _state_cell(r: Row) -> str:
    state = str(r.get("state", ""))
    style = _STATE_STYLE.get(state, "")
    text = f"[{style}]{state}[/]" if style else state
    if state == "transferring" and r.get("bytes_total"):
        pct = 100.0 * float(r.get("bytes_done", 0)) / max(1.0, float(r["bytes_total"]))
        text += f" {pct:.0f}% ({r.get('files_done', 0)}/{r.get('files_total', 0)})"
    return text


def status_table(rows: Sequence[Row], now: float | None = None, title: str = "srsync status") -> Table:
    now = time.time() if now is None else now
    table = Table(title=title, title_justify="left", expand=False)
    for col in ("job", "target", "state", "last sync", "result"):
        table.add_column(col)
    for col in ("created", "updated", "deleted", "bytes", "rate", "time"):
        table.add_column(col, justify="right")
    table.add_column("next run")
    table.add_column("last error", overflow="fold", max_width=60)
    for r in rows:
        result = str(r.get("last_result") or "")
        rstyle = _RESULT_STYLE.get(result, "")
        rate = float(r.get("rate") or 0)
        table.add_row(
            escape(str(r["job"])), escape(str(r["target"])), _state_cell(r),
            ago(r.get("last_finished"), now),
            f"[{rstyle}]{result}[/]" if rstyle else (result or "-"),
            str(r.get("created", 0)), str(r.get("updated", 0)), str(r.get("deleted", 0)),
            human_bytes(float(r.get("bytes") or 0)),
            f"{human_bytes(rate)}/s" if rate else "-",
            f"{float(r.get('duration') or 0):.1f}s",
            until(r.get("next_run"), now),
            escape(str(r.get("last_error") or "")),
        )
    return table


def history_table(rows: Sequence[Row]) -> Table:
    table = Table(title="srsync history (newest first)", title_justify="left")
    for col in ("finished", "job", "target", "pair", "result"):
        table.add_column(col)
    for col in ("created", "updated", "deleted", "bytes", "time"):
        table.add_column(col, justify="right")
    table.add_column("error", overflow="fold", max_width=60)
    for r in rows:
        result = str(r["outcome"])
        style = _RESULT_STYLE.get(result, "")
        if r.get("dry_run"):
            result += " (dry run)"
        table.add_row(
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(r["finished"]))),
            escape(str(r["job"])), escape(str(r["target"])), escape(str(r["pair"])),
            f"[{style}]{escape(result)}[/]" if style else escape(result),
            str(r["created"]), str(r["updated"]), str(r["deleted"]),
            human_bytes(float(r["bytes"])), f"{float(r['duration']):.1f}s",
            escape(str(r.get("error") or "")),
        )
    return table


def overview_frame(rows: Sequence[Row], now: float | None = None) -> Group:
    now = time.time() if now is None else now
    active = sum(1 for r in rows if r.get("state") in ("scanning", "transferring"))
    errors = sum(1 for r in rows if r.get("state") in ("error", "halted", "interrupted"))
    head = Text.from_markup(
        f"[bold]srsync overview[/]  {time.strftime('%H:%M:%S', time.localtime(now))}  "
        f"{len(rows)} targets, {active} active, "
        + (f"[red]{errors} need attention[/]" if errors else "[green]all fine[/]")
    )
    return Group(head, status_table(rows, now, title=""))


def print_status(console: Console, rows: Sequence[Row]) -> None:
    console.print(status_table(rows))


def print_history(console: Console, rows: Sequence[Row]) -> None:
    console.print(history_table(rows))


def run_overview(console: Console, load: Callable[[], Sequence[Row]], *, once: bool,
                 interval: float) -> None:
    """Render the dashboard once, or refresh it every ``interval`` seconds until Ctrl-C."""
    if once:
        console.print(overview_frame(load()))
        return
    with Live(overview_frame(load()), console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(overview_frame(load()))
        except KeyboardInterrupt:
            return


def make_plain_console(width: int | None = None) -> Console:
    return Console(highlight=False, soft_wrap=False, width=width)
