"""One run per job: an flock-held lock file recording the holder's pid."""

from __future__ import annotations

import fcntl
import os
import re
import socket
from pathlib import Path

from srsync.errors import LockedError


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


class JobLock:
    """Held for the duration of one run.

    The kernel drops an flock when its process dies, so a lock left behind by
    a crash is never mistaken for a live one: stale-lock detection is free.
    """

    def __init__(self, state_dir: Path, job: str) -> None:
        self.path = state_dir / "locks" / f"{_safe(job)}.lock"
        self.job = job
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise LockedError(
                f"job {self.job!r} is already running ({holder}); wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
