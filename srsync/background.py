"""Work started in a daemon thread of its own, its outcome kept in a Future.

For work that overlaps with the caller's (a connection opened early, a helper
started while files are read, summaries worked out while a plan runs): whoever
needs the result waits on the Future and gets the value or the exception
raised there.  Stdlib only, cheap to import (``srsync.early_tcp`` uses it before
the heavy imports).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


def in_background(fn: Callable[..., T], *args: Any, name: str) -> Future[T]:
    """``fn(*args)`` in a daemon thread called ``name``; its result or exception in the Future."""
    done: Future[T] = Future()

    def work() -> None:
        try:
            done.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 (raised again to whoever takes the result)
            done.set_exception(exc)

    threading.Thread(target=work, name=name, daemon=True).start()
    return done
