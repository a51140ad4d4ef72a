"""Moving file content between endpoints: verified streams, pipelined batches, delta for big files.

Invariants (the executor's safety contract, kept on every path here):

* A file is installed only if its source was read completely and still
  matches the scan afterwards (size, mtime; links by target): otherwise
  ``SourceChanged`` and nothing is renamed into place.
* Every destructive step is guarded by the state the scan saw, checked by
  the destination right before it acts (``Step.guarded``).
* Per-file trouble is a result (an OSError for that operation), never the
  end of the batch; only ``ConnectError`` ends it.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from threading import Event

from srsync.agent.delta import (
    SHA1,
    Check,
    DeltaOp,
    Guard,
    Signature,
    aligned_blocks,
    aligned_ops,
    aligned_ranges,
    block_size_for,
)
from srsync.core.entry import Entry, Kind
from srsync.endpoints.base import Endpoint, FileRead, Step, StepKind, same_state
from srsync.engine.reporter import Reporter
from srsync.plan import ALPHA, Operation, OpKind

# Files up to this size are read whole, many per round trip, and written as
# one pipelined step each; bigger ones stream (and may use delta).
SMALL_FILE = 1024 * 1024
# A changed file at least this big is sent as a delta against the old copy
# when both sides can read their own copy cheaply (local, or remote helper).
DELTA_MIN = 1024 * 1024
# progress of batched small files is reported after about this many bytes
_REPORT_BYTES = 256 * 1024

_STEP_KINDS = {
    OpKind.MKDIR: StepKind.MKDIR,
    OpKind.COPY: StepKind.WRITE,
    OpKind.LINK: StepKind.LINK,
    OpKind.REMOVE: StepKind.REMOVE,
    OpKind.META: StepKind.META,
}
# enum members read per operation, bound once (see srsync.core.entry)
_COPY, _REMOVE, _WRITE, _FILE = OpKind.COPY, OpKind.REMOVE, StepKind.WRITE, Kind.FILE
# (a tuple: membership by identity; hashing an enum member is a Python-level call)
_BATCHED_KINDS = tuple(_STEP_KINDS)


class SourceChanged(OSError):
    """The source file changed while it was being read; nothing was written."""


def _changed(path: str) -> SourceChanged:
    return SourceChanged(errno.EAGAIN, "changed while being read; will retry next run", path)


def matches(current: Entry | None, expected: Entry | None) -> bool:
    """Whether what is on disk now is what the scan saw (so acting on it is safe)."""
    return same_state(current, expected)


def verified_chunks(
    src: Endpoint, path: str, entry: Entry, job: str, reporter: Reporter
) -> Generator[bytes, None, None]:
    """Stream a source file, failing (before any rename) if it changed meanwhile.

    Reads at most the scanned size: a file that keeps growing (a live log)
    must not keep the transfer going forever.
    """
    total = 0
    blocks = src.read_chunks(path)
    try:
        for block in blocks:
            if total + len(block) > entry.size:
                raise _changed(path)
            total += len(block)
            reporter.bytes_transferred(job, len(block))
            yield block
            if total == entry.size:
                break
    finally:
        blocks.close()  # release the (possibly remote) file handle now, not at GC
    now = src.stat(path)
    if total != entry.size or not matches(now, entry):
        raise _changed(path)


def delta_eligible(src: Endpoint, dest: Endpoint, size: int) -> bool:
    """Delta pays off when the wire is the cost and each side reads its own copy cheaply."""
    caps = (src.capabilities, dest.capabilities)
    if size < DELTA_MIN or not any(c.remote for c in caps):
        return False
    # an SFTP-only side would have to pull its whole copy over the wire to sign or match it
    return all(c.remote_helper or not c.remote for c in caps)


def transfer_file(
    src: Endpoint, dest: Endpoint, path: str, entry: Entry, job: str, reporter: Reporter,
    *, dest_known: bool = False, dest_now: Entry | None = None,
) -> Entry:
    """Install the source's ``path`` at the destination atomically (temp + rename).

    A big file that the destination already holds in an older version goes
    as a delta (only changed regions cross the wire); everything else is
    streamed whole.  ``dest_known``: the caller has just looked, and ``dest_now``
    is what is at ``path`` on the destination (saves a round trip).
    """
    if delta_eligible(src, dest, entry.size):
        current = dest_now if dest_known else dest.stat(path)
        if current is not None and current.kind is _FILE and current.size >= DELTA_MIN:
            return transfer_delta(src, dest, path, entry, current, job, reporter)
    if entry.size <= SMALL_FILE:
        # whole, in one request each way: no per-chunk round trips for small files
        got = next(iter(src.read_files([FileRead(path, entry.size)])))
        if isinstance(got, OSError):
            raise got
        data, after = got
        if len(data) != entry.size or not matches(after, entry):
            raise _changed(path)
        reporter.bytes_transferred(job, len(data))
        step = Step(_WRITE, path, None, entry, guarded=False, data=data)
    else:
        chunks = verified_chunks(src, path, entry, job, reporter)
        step = Step(_WRITE, path, None, entry, guarded=False, chunks=chunks)
    result = next(iter(dest.apply_steps([step])))
    if isinstance(result, OSError):
        raise result
    if result is None:  # a pipelined write reports success only: what it stored is known
        precision = dest.capabilities.mtime_precision_ns
        return Entry(
            Kind.FILE, size=entry.size, mtime_ns=entry.mtime_ns // precision * precision,
            mode=entry.mode & 0o7777,
        )
    return result


def transfer_delta(
    src: Endpoint,
    dest: Endpoint,
    path: str,
    entry: Entry,
    old: Entry,
    job: str,
    reporter: Reporter,
) -> Entry:
    """Rebuild ``path`` at ``dest`` from its old copy ``old`` plus the source's delta.

    When old and new have the same size (edits in place) both sides sign
    their own copy at the same time (they are different machines, or at
    least processes); if few blocks differ at the same offsets, only those
    are read again from the source and sent, and the rest is copied from the
    old file (``srsync.agent.delta.aligned_ops``).  Otherwise the source
    matches its file against the old file's signature (``delta_ops``).
    Either way, when the destination could pin its old file (a basis token,
    see ``srsync.agent.delta.Guard``) the delta is guarded: the receiver
    copies in the kernel instead of checksumming every byte.
    """
    theirs = src.delta_algorithms()
    algo = next((a for a in dest.delta_algorithms() if a in theirs), SHA1)
    block = block_size_for(old.size)
    new_sig: Signature | None
    new_before: Entry | None
    if entry.size != old.size:
        sig, before = dest.block_signature(path, block, algo)
        return _write_delta(src, dest, path, entry, old, sig, before, None, None, job, reporter)
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="srsync-sign") as pool:
            signing = pool.submit(src.block_signature, path, block, algo)
            try:
                # the destination may copy its old file meanwhile, for the rebuild (see Endpoint.block_signature)
                sig, before = dest.block_signature(path, block, algo, stage=True)
            finally:
                try:
                    new_sig, new_before = signing.result()
                except OSError:
                    new_sig = None  # the source's trouble shows again (and is reported) below
        return _write_delta(src, dest, path, entry, old, sig, before, new_sig, new_before, job, reporter)
    finally:
        dest.drop_staged()  # (what write_delta used is no longer there to drop)


def _write_delta(
    src: Endpoint,
    dest: Endpoint,
    path: str,
    entry: Entry,
    old: Entry,
    sig: Signature,
    before: Entry | None,
    new_sig: Signature | None,
    new_before: Entry | None,
    job: str,
    reporter: Reporter,
) -> Entry:
    """The rest of ``transfer_delta``: the destination's signature ``sig`` is in, and the
    source's own ``new_sig`` where both were signed (same size)."""
    if not matches(before, old):
        raise OSError(errno.EAGAIN, "changed since scan; skipped, will retry next run", path)
    if new_sig is not None and sig.basis is not None:
        if not matches(new_before, entry) or new_sig.size != entry.size:
            raise _changed(path)
        differ = aligned_blocks(sig, new_sig)
        if differ is not None:
            aligned = _aligned_delta(src, path, sig, new_sig, differ)
            try:
                return dest.write_delta(
                    path, _checked_delta(aligned, path, entry, job, reporter), entry.mode, entry.mtime_ns, old
                )
            finally:
                aligned.close()  # a refused delta: the source's file is closed now, not at GC
    matched = src.delta_ops(path, entry.size, sig, guarded=sig.basis is not None)
    if sig.basis is not None:
        matched = _guarded(matched, sig.basis)
    ops = _checked_delta(matched, path, entry, job, reporter)
    return dest.write_delta(path, ops, entry.mode, entry.mtime_ns, old)


def _aligned_delta(
    src: Endpoint, path: str, old: Signature, new: Signature, differ: list[int]
) -> Generator[DeltaOp, None, Entry | None]:
    """The guarded delta of an edit in place: the differing blocks re-read from the source.

    Returns (as the generator's value) the source's lstat taken after the
    last read, like ``Endpoint.delta_ops``.
    """
    pieces = src.read_ranges(path, aligned_ranges(new, differ))
    try:
        yield from aligned_ops(old, new, differ, pieces)
    except ValueError:
        raise _changed(path) from None  # shorter than signed: it changed
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
    return src.stat(path)


def _guarded(
    ops: Generator[DeltaOp, None, Entry | None], token: tuple[int, ...]
) -> Generator[DeltaOp, None, Entry | None]:
    """The matcher's delta as a guarded one: Guard first, and its final Check without CRC.

    The CRC only proved that copies came from the signed old file; the Guard
    proves that more cheaply (the receiver can copy in the kernel).  The
    literals are the bytes the source read while matching.
    """
    yield Guard(token)
    while True:
        try:
            op = next(ops)
        except StopIteration as stop:
            return stop.value
        yield Check(op.size, None) if isinstance(op, Check) else op


def _checked_delta(
    ops: Generator[DeltaOp, None, Entry | None],
    path: str,
    entry: Entry,
    job: str,
    reporter: Reporter,
) -> Iterator[DeltaOp]:
    """The source's delta, its final Check held back until the source proved unchanged.

    Without that Check the destination installs nothing, so a source that
    changed while it was read never reaches its final name.
    """
    check: Check | None = None
    while True:
        try:
            op = next(ops)
        except StopIteration as stop:
            after: Entry | None = stop.value
            break
        if isinstance(op, Check):
            check = op
            continue
        if not isinstance(op, Guard):
            reporter.bytes_transferred(job, op[1] if isinstance(op, tuple) else len(op))
        yield op
    if check is None or check.size != entry.size or not matches(after, entry):
        raise _changed(path)
    yield check


# ---- batches ------------------------------------------------------------------

Outcome = OSError | None  # the operation's failure, or None: applied


def apply_operations(
    ops: Sequence[Operation],
    alpha: Endpoint,
    beta: Endpoint,
    job: str,
    reporter: Reporter,
    stop: Event,
    fallback: Callable[[Operation], object],
    batchable: Callable[[Operation], bool] | None = None,
) -> Iterator[tuple[Operation, Outcome]]:
    """Apply a plan's operations in order; yields each operation with its outcome.

    Runs of mkdir, small-file copy, link, remove and metadata operations on
    one side go to the destination as guarded Steps, which an endpoint with
    a remote helper keeps in flight many at a time; small source files are
    read many per round trip.  Runs of big files new at the destination go
    as streamed guarded Steps too (a remote helper overlaps them on a slow
    link).  Anything else (renames, big files that replace an old copy, which
    may go as deltas, and whatever ``batchable`` refuses, e.g. operations that
    must first keep the old version in a trash folder) is applied by ``fallback`` (the executor's own per-op
    path; it raises OSError for a failure) in its place in the order.  ``batchable``
    is asked only about operations that expect something at their path (that replace
    or remove it); one that expects nothing there has nothing to keep first.
    Stops early, between operations, when ``stop`` is set: operations not
    yielded were not attempted.  ``ConnectError`` (an unusable endpoint)
    propagates; operations yielded before it are done.
    """
    run: list[Operation] = []
    run_big = False  # the run is of new big files (streamed), not of small steps
    run_side = ""
    add = run.append
    stopped = stop.is_set
    # the hot loop of a big plan: every operation of a run passes here before the
    # first one is applied (attributes read once, the usual small file settled soonest)
    for op in ops:
        if stopped():
            break
        kind = op.kind
        expected = op.expected
        step_ok = kind in _BATCHED_KINDS and (expected is None or batchable is None or batchable(op))
        # a big file that is new where it goes has no old copy to delta against:
        # it streams as a guarded step, and back-to-back ones overlap (striped uploads)
        big_new = False
        if step_ok and kind is _COPY and (entry := op.entry) is not None and entry.size > SMALL_FILE:
            big_new = expected is None
            step_ok = big_new  # a big file replacing another: the fallback (a delta, maybe)
        if step_ok and (not run or (run_side == op.side and run_big == big_new)):
            add(op)
            run_big = big_new
            run_side = op.side
            continue
        if run:
            yield from (_apply_big_run if run_big else _apply_run)(run, alpha, beta, job, reporter, stop)
            run = []
            add = run.append
            if stop.is_set():
                break
        if step_ok:
            add(op)
            run_big = big_new
            run_side = op.side
            continue
        reporter.op_started(job, op)
        try:
            fallback(op)
        except OSError as exc:
            yield op, exc
        else:
            yield op, None
    if run and not stop.is_set():
        yield from (_apply_big_run if run_big else _apply_run)(run, alpha, beta, job, reporter, stop)


def _apply_big_run(
    run: list[Operation],
    alpha: Endpoint,
    beta: Endpoint,
    job: str,
    reporter: Reporter,
    stop: Event,
) -> Iterator[tuple[Operation, Outcome]]:
    """New big files on one side: each a guarded step (nothing may be at its name)
    streaming its verified source; the destination may keep several in flight."""
    dest, src = (alpha, beta) if run[0].side == ALPHA else (beta, alpha)
    started: deque[Operation] = deque()

    def steps() -> Iterator[Step]:
        for op in run:
            if stop.is_set():
                return
            entry = op.entry
            assert entry is not None
            reporter.op_started(job, op)
            started.append(op)
            chunks = verified_chunks(src, op.path, entry, job, reporter)
            yield Step(_WRITE, op.path, None, entry, True, chunks=chunks)

    for result in dest.apply_steps(steps()):
        yield started.popleft(), result if isinstance(result, OSError) else None


def _apply_run(
    run: list[Operation],
    alpha: Endpoint,
    beta: Endpoint,
    job: str,
    reporter: Reporter,
    stop: Event,
) -> Iterator[tuple[Operation, Outcome]]:
    dest, src = (alpha, beta) if run[0].side == ALPHA else (beta, alpha)
    dest.expect_writes(sum(op.kind is _COPY for op in run))
    # taken as the source reads them: its first batch is asked for at once, not after
    # a FileRead is made for every file of the run
    contents = src.read_files(
        FileRead(op.path, op.entry.size) for op in run if op.kind is _COPY and op.entry is not None
    )
    # In plan order: an operation whose step went to the destination, or the
    # operation and its error where it failed before it had a step.
    queue: deque[Operation | tuple[Operation, OSError]] = deque()
    # bytes read are reported in batches: one hook call per file costs more than the copy
    unreported = 0
    started = reporter.op_started
    stopped = stop.is_set
    file_kind = Kind.FILE

    def steps() -> Iterator[Step]:
        nonlocal unreported
        push = queue.append
        for op in run:
            if stopped():
                return
            started(job, op)
            if op.kind is _COPY:
                entry = op.entry
                assert entry is not None
                got = next(contents)
                if isinstance(got, OSError):
                    push((op, got))
                    continue
                data, after = got
                size = len(data)
                # same_state(after, entry), inlined: entry is the source's file as scanned
                if (
                    after is None
                    or after.kind is not file_kind
                    or size != entry.size
                    or after.size != size
                    or after.mtime_ns != entry.mtime_ns
                ):
                    push((op, _changed(op.path)))
                    continue
                push(op)
                unreported += size
                if unreported >= _REPORT_BYTES:
                    reporter.bytes_transferred(job, unreported)
                    unreported = 0
                yield Step(_WRITE, op.path, op.expected, entry, True, data)
            else:
                push(op)
                entry = op.entry if op.kind is not _REMOVE else None
                yield Step(_STEP_KINDS[op.kind], op.path, op.expected, entry)

    try:
        for result in dest.apply_steps(steps()):
            item = queue.popleft()
            while isinstance(item, tuple):  # failed before its step: in its place
                yield item
                item = queue.popleft()
            yield item, result if isinstance(result, OSError) else None
        while queue:
            item = queue.popleft()
            assert isinstance(item, tuple), "a step without its result"
            yield item
    finally:
        if unreported:
            reporter.bytes_transferred(job, unreported)
