"""Run one client command and measure it: wall time, exit code, peak RSS and CPU (wait4)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True)
class Measured:
    """What one run cost on the client side."""

    exit_code: int
    wall_s: float
    maxrss_kib: int  # the largest single process among the client and its reaped children
    rss_source: str  # "time" (GNU time, exact) or "wait4" (includes the harness's fork high-water)
    cpu_s: float  # user + system of the client and its reaped children
    timed_out: bool
    tail: str  # last lines of combined stdout/stderr


GNU_TIME = "/usr/bin/time"


def run_measured(argv: list[str], env: dict[str, str], log: Path, timeout: float) -> Measured:
    """Run ``argv`` to completion with output appended to ``log``.

    Peak RSS and CPU come from GNU time when installed: it forks the client from a
    tiny process and reports that child's ``wait4`` usage (folded with the children
    it reaped, e.g. rsync's ssh).  Linux carries a process's RSS high-water mark
    across fork and exec, so ``wait4`` on a child forked straight from this Python
    harness would report at least the harness's own peak; that is the fallback.
    """
    usage_file = log.with_name(log.name + ".usage")
    usage_file.unlink(missing_ok=True)
    use_time = os.access(GNU_TIME, os.X_OK)
    full = [GNU_TIME, "-f", "%M %U %S", "-o", str(usage_file), *argv] if use_time else argv
    with open(log, "ab") as out:
        out.write(("\n$ " + " ".join(argv) + "\n").encode())
        out.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(
            full, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group of our own child only

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        _pid, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    maxrss, cpu, source = int(usage.ru_maxrss), usage.ru_utime + usage.ru_stime, "wait4"
    if use_time:
        try:
            # GNU time prefixes "Command exited with non-zero status N" lines; the figures come last
            fields = usage_file.read_text().split()[-3:]
            maxrss, cpu, source = int(fields[0]), float(fields[1]) + float(fields[2]), "time"
        except (OSError, ValueError, IndexError):
            pass
    return Measured(
        exit_code=proc.returncode,
        wall_s=wall,
        maxrss_kib=maxrss,
        rss_source=source,
        cpu_s=cpu,
        timed_out=timed_out.is_set(),
        tail=_tail(log),
    )


def _tail(log: Path, lines: int = 6) -> str:
    with open(log, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 4000))
        text = fh.read().decode("utf-8", "replace")
    return "\n".join(text.strip().splitlines()[-lines:])
