"""Big uploads striped over several helper channels, one file after another without a pause.

One channel of an OpenSSH server moves at most its 2 MiB window per round
trip, so a big file on a slow link goes out in stripes over several helper
processes (each on its own channel of the same connection), all writing into
one temporary file that is then renamed into place (``pw_open``,
``pw_range``, ``pw_commit`` in srsync.agent.remote).

Files queued back to back share the pumps: while the last stripes of one file
are still on their way, and its commit round trip is pending, the first
stripes of the next one already go out.  Results come back in order.

Invariants:

* A file is committed only when every stripe of it was confirmed and its
  source gave exactly the scanned size; otherwise its temporary file is
  dropped (``pw_abort``) and the old file stays.
* A failure of one file (its source, or the helper refusing a stripe, e.g.
  a full disk) is that file's result; only a lost connection ends the run.
* Memory is bounded: at most ``streams`` stripes wait in the queue, and each
  pump holds at most two (one unconfirmed while the next goes out).
"""

from __future__ import annotations

import contextlib
import errno
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from srsync.agent.client import AgentClient, Call
from srsync.errors import ConnectError

_POLL = 0.05  # how often a waiting thread looks for a failure elsewhere


def stripes(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Re-cut a chunk stream into pieces of exactly ``size`` bytes (the last may be shorter)."""
    pending: list[bytes] = []
    have = 0
    for chunk in chunks:
        pending.append(chunk)
        have += len(chunk)
        while have >= size:
            data = b"".join(pending)
            yield data[:size]
            rest = data[size:]
            pending = [rest] if rest else []
            have = len(rest)
    if have:
        yield b"".join(pending)


class StripedFile:
    """One file of the run: its temporary name, stripes still unconfirmed, and its fate."""

    __slots__ = ("rel", "label", "size", "commit_args", "opening", "tmp", "pending", "fed", "error", "done",
                 "commit")

    def __init__(self, rel: str, label: str, size: int, commit_args: list[Any]) -> None:
        self.rel = rel
        self.label = label  # the path as the user knows it, for messages
        self.size = size
        self.commit_args = commit_args  # pw_commit's [mode, mtime_ns, guard]
        self.opening: Call | None = None  # pw_open, sent ahead; None again once its answer is taken
        self.tmp: str | None = None
        self.pending = 0
        self.fed = False
        self.error: OSError | None = None
        self.done = threading.Event()  # fed, and every stripe confirmed
        self.commit: Call | None = None  # pw_commit, once sent


class StripedUploads:
    """Pumps, one per helper channel, taking stripes of queued files from one bounded queue.

    ``open`` asks for a file's temporary copy, ``feed`` queues its stripes
    (blocking while the queue is full); ``send_commits`` asks for the install of files whose
    stripes are all confirmed; ``finish_oldest`` waits for the oldest file,
    commits it if not yet asked, and returns the helper's answer or its OSError.  ``close`` stops the pumps and drops every file not finished.
    Helpers missing for ``streams`` channels are started alongside by
    ``start_extra`` and join when they are up.
    """

    def __init__(
        self,
        main: AgentClient,
        helpers: list[AgentClient],
        missing: int,
        start_extra: Callable[[], AgentClient | None],
        streams: int,
        stripe: int,
    ) -> None:
        self._main = main
        self._start_extra = start_extra
        self._stripe = stripe
        self._work: queue.Queue[tuple[StripedFile, int, bytes]] = queue.Queue(maxsize=streams)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._fatal: list[BaseException] = []
        self.parts: deque[StripedFile] = deque()
        self._pool = ThreadPoolExecutor(
            max_workers=len(helpers) + 2 * missing, thread_name_prefix="agent-up"
        )
        for helper in helpers:
            self._pool.submit(self._pump, helper)
        for _ in range(missing):
            self._pool.submit(self._join_when_up)

    # ---- pumps ------------------------------------------------------------
    def _join_when_up(self) -> None:
        helper = self._start_extra()
        if helper is None or self._closing.is_set() or self._fatal:
            return
        with contextlib.suppress(RuntimeError):  # the run ended meanwhile: the helper waits for the next
            self._pool.submit(self._pump, helper)

    def _pump(self, helper: AgentClient) -> None:
        sent: deque[tuple[StripedFile, Call]] = deque()
        try:
            while not self._fatal:
                try:
                    part, offset, data = self._work.get_nowait()
                except queue.Empty:
                    # nothing to send: confirm what is out, so its file can be committed
                    while sent:
                        self._confirm(helper, *sent.popleft())
                    try:
                        part, offset, data = self._work.get(timeout=_POLL)
                    except queue.Empty:
                        if self._closing.is_set():
                            break
                        continue
                if part.error is not None:  # the file failed already: its other stripes are moot
                    self._stripe_done(part)
                    continue
                call = helper.call("pw_range", [part.rel, part.tmp, offset])
                helper.data(call, data)
                helper.end(call)
                sent.append((part, call))
                while len(sent) > 1:  # one stripe unconfirmed while the next goes out
                    self._confirm(helper, *sent.popleft())
            while sent:
                self._confirm(helper, *sent.popleft())
        except BaseException as exc:  # the channel is gone: the whole run stops
            self._fatal.append(exc)

    def _confirm(self, helper: AgentClient, part: StripedFile, call: Call) -> None:
        try:
            helper.result(call)
        except OSError as exc:  # the helper refused this stripe: that file fails, not the run
            if part.error is None:
                part.error = exc
        self._stripe_done(part)

    def _stripe_done(self, part: StripedFile) -> None:
        with self._lock:
            part.pending -= 1
            if part.fed and part.pending == 0:
                part.done.set()

    def _check(self) -> None:
        if self._fatal:
            raise self._fatal[0]

    # ---- files --------------------------------------------------------------
    def open(self, rel: str, label: str, size: int, commit_args: list[Any]) -> StripedFile:
        """Queue a file: its temporary copy is asked for now, its stripes come with ``feed``.

        Opening the next file before feeding the current one hides that round trip.
        """
        self._check()
        part = StripedFile(rel, label, size, commit_args)
        part.opening = self._main.call("pw_open", [rel, size])
        self.parts.append(part)
        return part

    def feed(self, part: StripedFile, chunks: Iterable[bytes]) -> None:
        """Queue every stripe of ``part``, reading its source here, in order."""
        if part.fed:
            return
        main = self._main
        offset = 0
        try:
            opening, part.opening = part.opening, None  # an answer is taken once, even a refusal
            assert opening is not None
            part.tmp = main.result(opening).meta["tmp"]
            for data in stripes(chunks, self._stripe):
                if offset + len(data) > part.size:
                    raise OSError(errno.EAGAIN, "changed while being read; will retry next run", part.label)
                with self._lock:
                    part.pending += 1
                self._put((part, offset, data))
                offset += len(data)
                if part.error is not None:
                    break
            else:
                if offset != part.size:
                    raise OSError(errno.EAGAIN, "changed while being read; will retry next run", part.label)
        except OSError as exc:  # the source failed, or pw_open was refused: this file only
            if part.error is None:
                part.error = exc
        finally:
            with self._lock:
                part.fed = True
                if part.pending == 0:
                    part.done.set()

    def _put(self, item: tuple[StripedFile, int, bytes]) -> None:
        while True:
            self._check()
            try:
                self._work.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def send_commits(self) -> None:
        """Ask for the install of every file whose stripes are all confirmed (answers read later).

        Sent without waiting: the answer comes behind the stripes already on the
        main channel, and the pumps must not run dry meanwhile.
        """
        for part in self.parts:
            if part.commit is None and part.error is None and part.done.is_set():
                part.commit = self._main.call("pw_commit", [part.rel, part.tmp, part.size, *part.commit_args])

    def finish_oldest(self) -> dict[str, Any] | OSError:
        """Wait for the oldest file's stripes, then install it: the helper's answer, or its error."""
        part = self.parts[0]
        while not part.done.wait(_POLL):
            self._check()
        self.parts.popleft()
        if part.error is not None:
            self._abort(part)
            return part.error
        main = self._main
        if part.commit is None:
            part.commit = main.call("pw_commit", [part.rel, part.tmp, part.size, *part.commit_args])
        try:
            reply = main.result(part.commit)
        except OSError as exc:  # the helper dropped the temporary file itself
            return exc
        meta: dict[str, Any] = reply.meta
        return meta

    def _abort(self, part: StripedFile) -> None:
        with contextlib.suppress(OSError, ConnectError):
            if part.tmp is None and part.opening is not None:  # opened, never fed
                opening, part.opening = part.opening, None
                part.tmp = self._main.result(opening).meta["tmp"]
            if part.tmp is not None:
                self._main.result(self._main.call("pw_abort", [part.rel, part.tmp]))

    def close(self) -> None:
        """Stop the pumps; files not finished are dropped on the server."""
        cancelled = OSError(errno.ECANCELED, "upload cancelled")
        for part in self.parts:
            if part.error is None:
                part.error = cancelled
        self._closing.set()
        self._pool.shutdown(wait=True)
        if not self._fatal:
            while self.parts:
                self._abort(self.parts.popleft())
        self.parts.clear()
