"""Delta transfer of big files: block signatures, matching and the op wire format (pure, stdlib only).

This module runs on both sides: locally, and shipped verbatim to the remote
helper, so it imports nothing but the standard library (Python >= 3.8).

The scheme (rsync's idea, shaped for pure Python where a per-byte rolling
checksum would be far too slow):

* The side holding the OLD file cuts it into fixed blocks and sends, per
  block, a strong digest (SHA-1, hardware accelerated nearly everywhere,
  truncated to 16 bytes) and the block's first 16 bytes ("anchor").
* The side holding the NEW file walks it: where the next expected old block
  matches in place it emits a copy; otherwise it finds where the data shifted
  to by searching for the anchors of nearby old blocks with ``bytes.find``
  (C speed), verifies a candidate with the strong digest, and sends the bytes
  in between as literals.  Edits in place, insertions and deletions of any
  length therefore cost about one block each plus the changed bytes.
* The receiver rebuilds the file from its old copy plus literals into a
  temporary file and checks length and CRC-32 of the result against what the
  sender read, so a basis that changed meanwhile is never installed.

The aligned ("guarded") variant, for edits in place: both sides sign their
own copy at the same time, the blocks whose digests differ are the only ones
read again and sent (each with the digest the source computed when it
signed), and the rest is copied by the kernel (``copy_file_range``) from the
old file, which is never read by Python.  See ``Guard`` for why that is as
safe as the CRC it replaces.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib

# Shipped to the remote helper, whose start-up should import neither ``typing`` (~5 ms)
# nor ``collections``: type-only imports go under this flag, which mypy takes as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

_xxhash: Any
try:  # optional: much faster block digests when both sides have it
    import xxhash as _xxhash
except ImportError:  # pragma: no cover - the remote python may lack it
    _xxhash = None

DIGEST = 16  # bytes of SHA-1 kept per block
ANCHOR = 16  # leading bytes of each block kept to find it again after a shift
MIN_BLOCK = 16 * 1024
MAX_BLOCK = 1024 * 1024
TARGET_BLOCKS = 16384  # signature stays ~512 KiB however big the file
READ_AHEAD = 8 * 1024 * 1024  # bytes of new file buffered beyond the current position
LITERAL_FLUSH = 1024 * 1024  # literal runs are sent in pieces of at most this size
NEAR = 4  # old blocks tried right after the expected one when resynchronising
MAX_VERIFY = 8  # anchor hits verified per candidate block (bounds work on repetitive data)

SHA1 = "sha1"
XXH128 = "xxh128"
# block digest algorithms this python can compute, preferred first
ALGORITHMS = (XXH128, SHA1) if _xxhash is not None else (SHA1,)
_ALGO_IDS = {SHA1: 0, XXH128: 1}
_HEADER = struct.Struct(">IQB")  # block size, file size, algorithm id

_COPY = struct.Struct(">cQI")  # b"C", old offset, length
_LIT = struct.Struct(">cI")  # b"L", length; then the bytes
_END = struct.Struct(">cQI")  # b"E", new size, CRC-32 of the new content
_GUARD = struct.Struct(">cQQQqq")  # b"G", basis dev, ino, size, mtime_ns, ctime_ns (first op only)
_VLIT = struct.Struct(">cB16sI")  # b"V", digest algorithm id, digest, length; then the bytes
_FINAL = struct.Struct(">cQ")  # b"F", new size: the end of a guarded delta (no CRC)
COPY_PIECE = 64 * 1024 * 1024  # bytes per kernel copy call (the helper shows life in between)
# A run of merged copies is emitted once it is this long: the receiver copies it
# while the rest of the file is still being matched.
COPY_RUN = 64 * 1024 * 1024
# At most this share of the blocks may differ for the aligned delta (else: match).
ALIGNED_MAX_SHARE = 8  # 1/8


class Check:
    """The last delta op: size and CRC-32 of the complete new content.

    ``crc`` is None only at the end of a guarded delta (one that began with
    a ``Guard``): its content is then vouched for by the Guard instead.
    """

    __slots__ = ("size", "crc")

    def __init__(self, size: int, crc: int | None) -> None:
        self.size = size
        self.crc = crc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Check) and (other.size, other.crc) == (self.size, self.crc)

    def __repr__(self) -> str:
        crc = "None" if self.crc is None else f"{self.crc:#010x}"
        return f"Check(size={self.size}, crc={crc})"


def basis_token(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What a Guard pins of a file: same device and inode, size, mtime and ctime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Guard:
    """First op of a guarded delta: the old file must still be exactly what was signed.

    Safety argument (why a guarded delta needs no CRC of the whole content):

    * The destination signs its old file through one descriptor and takes
      ``basis_token`` (device, inode, size, mtime, ctime) by fstat before and
      after reading; if the two differ the signature carries no token and
      no guarded delta can be built from it.  ctime cannot be set by any
      user: every write, truncate, utime or chmod of the file moves it
      (kernels >= 6.13 give it fine-grained resolution once it was read, so
      even a change in the same clock tick shows), so an equal token means
      the content is the one that was signed.
    * The receiver compares the token with the fstat of the descriptor it
      copies from *before the first copy* (this op) and again *after the
      last one* (the final check, right before the rename, next to the
      size/mtime guards that already exist): every byte copied was
      therefore read while the file held the signed content.
    * A copy is only emitted for a block whose digest in the source's view
      equals the signed digest of the same old block (same length too), so
      copied regions equal what the source held (up to a 128-bit digest
      collision, the same assumption the matcher makes to emit a copy).
    * Literal bytes re-read from the source after it was signed travel as
      ``Verified`` ops: the receiver hashes them and refuses them unless the
      digest is the one the source computed when it signed, so a source
      changed between its signature and the re-read is never installed; a
      source changed at any other time is caught, as before, by the
      size/mtime stat taken after all reads (the final Check is withheld
      until it passed: without it nothing is installed).

    A plain ``Check`` with a CRC is refused in a guarded delta and a CRC-less
    one outside it, so a stream can never skip both verifications.
    """

    __slots__ = ("token",)

    def __init__(self, token: tuple[int, ...]) -> None:
        self.token = tuple(token)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Guard) and other.token == self.token

    def __repr__(self) -> str:
        return f"Guard{self.token!r}"


class Verified:
    """Literal new content with the block digest the source computed when it signed it."""

    __slots__ = ("data", "algo", "digest")

    def __init__(self, data: bytes, algo: str, digest: bytes) -> None:
        self.data = data
        self.algo = algo
        self.digest = digest

    def __len__(self) -> int:
        return len(self.data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Verified) and (other.data, other.algo, other.digest) == (
            self.data, self.algo, self.digest
        )

    def __repr__(self) -> str:
        return f"Verified({len(self.data)} bytes, {self.algo})"


# A delta is a sequence of: (old_offset, length) to copy from the old file,
# bytes to insert as they are, and finally exactly one Check.
# (Only for type checkers: the remote python may predate "X | Y" at runtime,
# and annotations are never evaluated there.)
# A guarded delta starts with one Guard and may carry Verified literals.
if TYPE_CHECKING:
    DeltaOp = tuple[int, int] | bytes | Check | Guard | Verified
else:
    DeltaOp = object


class Signature:
    """Block digests and anchors of an old file."""

    __slots__ = ("block", "size", "digests", "anchors", "algo", "basis")

    def __init__(self, block: int, size: int, digests: bytes, anchors: bytes, algo: str = SHA1) -> None:
        self.block = block
        self.size = size
        self.digests = digests
        self.anchors = anchors
        self.algo = algo
        # basis_token of the file signed, when it held still while it was read (not encoded:
        # it travels separately, to whoever builds a guarded delta for that file's owner)
        self.basis: tuple[int, ...] | None = None

    @property
    def count(self) -> int:
        return len(self.digests) // DIGEST

    def digest(self, index: int) -> bytes:
        return self.digests[index * DIGEST : (index + 1) * DIGEST]

    def anchor(self, index: int) -> bytes:
        return self.anchors[index * ANCHOR : (index + 1) * ANCHOR]

    def length(self, index: int) -> int:
        return min(self.block, self.size - index * self.block)

    def encode(self) -> bytes:
        return _HEADER.pack(self.block, self.size, _ALGO_IDS[self.algo]) + self.digests + self.anchors

    @classmethod
    def decode(cls, data: bytes) -> Signature:
        block, size, algo_id = _HEADER.unpack_from(data)
        algo = {v: k for k, v in _ALGO_IDS.items()}.get(algo_id)
        if block <= 0 or algo is None:
            raise ValueError("bad signature header")
        count = (size + block - 1) // block
        start = _HEADER.size
        if len(data) != start + count * (DIGEST + ANCHOR):
            raise ValueError("signature length does not match its header")
        split = start + count * DIGEST
        return cls(block, size, bytes(data[start:split]), bytes(data[split:]), algo)


def block_size_for(size: int) -> int:
    """Block size for a file of ``size`` bytes: a power of two, ~TARGET_BLOCKS blocks."""
    block = MIN_BLOCK
    while block < MAX_BLOCK and block * TARGET_BLOCKS < size:
        block *= 2
    return block


def digest_function(algo: str) -> Callable[[bytes | memoryview], bytes]:
    """The block digest for ``algo`` (16 bytes); ValueError when this python cannot compute it."""
    if algo == XXH128:
        if _xxhash is None:
            raise ValueError("xxhash is not available here")
        digest: Callable[[bytes | memoryview], bytes] = _xxhash.xxh3_128_digest
        return digest
    if algo == SHA1:
        return _sha1()
    raise ValueError(f"unknown block digest {algo!r}")


def _sha1() -> Callable[[bytes | memoryview], bytes]:
    """The SHA-1 block digest, hashlib bound once (an import per block costs ~12%)."""
    import hashlib  # here, not at the top: the helper's start-up skips it (~4 ms)

    new = hashlib.sha1

    def sha1(data: bytes | memoryview) -> bytes:
        return new(data).digest()[:DIGEST]

    return sha1


def block_digest(data: bytes | memoryview) -> bytes:
    return _sha1()(data)


def signature(chunks: Iterable[bytes], block: int, algo: str = SHA1) -> Signature:
    """The Signature of the content ``chunks`` yields, in blocks of ``block`` bytes."""
    digest = digest_function(algo)
    digests: list[bytes] = []
    anchors: list[bytes] = []
    pending = b""
    size = 0
    for chunk in chunks:
        size += len(chunk)
        data = pending + chunk if pending else chunk
        view = memoryview(data)
        start = 0
        while len(data) - start >= block:
            digests.append(digest(view[start : start + block]))
            anchors.append(bytes(view[start : start + ANCHOR]))
            start += block
        view.release()
        pending = data[start:]
    if pending:
        digests.append(digest(pending))
        anchors.append(pending[:ANCHOR].ljust(ANCHOR, b"\0"))
    return Signature(block, size, b"".join(digests), b"".join(anchors), algo)


def signature_fd(fd: int, block: int, algo: str = SHA1, limit: int = 1 << 62, beat: Callable[[], None] | None = None) -> Signature:
    """The Signature of at most ``limit`` bytes read from ``fd`` (from its position), with its basis token.

    Reads into one reused buffer (no per-chunk allocation).  ``basis`` is
    set when fstat before and after reading agree (the file held still).
    """
    digest = digest_function(algo)
    before = basis_token(os.fstat(fd))
    step = max(1, (READ_AHEAD // 2) // block) * block
    buf = bytearray(step)
    view = memoryview(buf)
    digests: list[bytes] = []
    anchors: list[bytes] = []
    size = 0
    have = 0  # bytes of a partly filled buffer (a short read: the file's end, or a pipe)
    try:
        while size + have < limit:
            want = min(step - have, limit - size - have)
            got = os.readv(fd, [view[have : have + want]])
            if got <= 0:
                break
            have += got
            if have < step:
                continue
            for start in range(0, step, block):
                digests.append(digest(view[start : start + block]))
                anchors.append(bytes(view[start : start + ANCHOR]))
            size += step
            have = 0
            if beat is not None:
                beat()
        for start in range(0, have, block):
            end = min(have, start + block)
            digests.append(digest(view[start:end]))
            anchors.append(bytes(view[start : min(end, start + ANCHOR)]).ljust(ANCHOR, b"\0"))
        size += have
    finally:
        view.release()
    sig = Signature(block, size, b"".join(digests), b"".join(anchors), algo)
    if basis_token(os.fstat(fd)) == before and before[2] == size:
        sig.basis = before
    return sig


_RUN = 256 * DIGEST  # digests compared as one slice by aligned_blocks


def aligned_blocks(old: Signature, new: Signature) -> list[int] | None:
    """Blocks of the new file that differ from the old one at the same offset, or None.

    None when the two cannot be compared block by block (other block size or
    digest) or when more than 1/ALIGNED_MAX_SHARE of the new blocks differ:
    then data probably moved and ``match`` finds it.
    """
    if old.block != new.block or old.algo != new.algo:
        return None
    count, common = new.count, min(old.count, new.count)
    limit = count // ALIGNED_MAX_SHARE
    differ: list[int] = []
    a, b = old.digests, new.digests
    span = common * DIGEST
    # runs of blocks compared at once (C speed); only a run that differs is looked into
    for start in range(0, span, _RUN):
        end = min(start + _RUN, span)
        if a[start:end] == b[start:end]:
            continue
        for at in range(start, end, DIGEST):
            if a[at : at + DIGEST] != b[at : at + DIGEST]:
                differ.append(at // DIGEST)
                if len(differ) > limit:
                    return None
    # only the last common block can differ in length (every other one is a whole block)
    if common and old.length(common - 1) != new.length(common - 1) and (not differ or differ[-1] != common - 1):
        differ.append(common - 1)
    differ.extend(range(common, count))  # new blocks beyond the old end
    if len(differ) > limit:
        return None
    return differ


def aligned_ranges(new: Signature, differ: list[int]) -> list[tuple[int, int]]:
    """(offset, length) in the new file of each block in ``differ``."""
    return [(i * new.block, new.length(i)) for i in differ]


def aligned_ops(old: Signature, new: Signature, differ: list[int], pieces: Iterable[bytes]) -> Iterator[DeltaOp]:
    """The guarded delta turning the old file into the new one when only blocks ``differ``.

    ``pieces`` holds the new file's bytes at each of ``aligned_ranges(new,
    differ)``, in order.  Starts with the Guard of ``old.basis``; ends with
    a CRC-less Check.  Literals are Verified against the new signature.
    """
    if old.basis is None:
        raise ValueError("the old file's signature has no basis token")
    yield Guard(old.basis)
    pieces = iter(pieces)
    pos = 0  # next new offset to produce
    for i in differ:
        off, length = i * new.block, new.length(i)
        if off > pos:
            yield (pos, off - pos)  # copy from the same offset of the old file
        data = next(pieces, None)
        if data is None or len(data) != length:
            raise ValueError("the new file shrank while it was read")
        yield Verified(data, new.algo, new.digest(i))
        pos = off + length
    if new.size > pos:
        yield (pos, new.size - pos)
    yield Check(new.size, None)


def _candidates(expect: int, count: int) -> list[int]:
    """Old blocks to look for after a mismatch: the next few, then further ahead."""
    out = [j for j in range(expect, min(expect + NEAR, count))]
    step = 2 * NEAR
    while expect + step < count:
        out.append(expect + step)
        step *= 2
    return out


def match(chunks: Iterable[bytes], sig: Signature, crc32: bool = True) -> Iterator[DeltaOp]:
    """Delta ops that turn the old file described by ``sig`` into the content of ``chunks``.

    Consecutive copies are merged into runs of up to about COPY_RUN bytes.
    The last op is the Check of the new content (its CRC is None without
    ``crc32``: for a guarded delta, whose receiver checks no CRC).
    """
    block = sig.block
    count = sig.count
    block_digest = digest_function(sig.algo)
    window = 2 * block + ANCHOR
    source = iter(chunks)
    buf = b""
    base = 0  # file offset of buf[0]
    eof = False
    pos = 0  # current offset in the new file
    lit = 0  # start of the literal run not yet emitted
    expect = 0  # index of the old block expected at pos
    crc = 0
    size = 0
    copy_off = copy_len = 0  # a copy run being merged
    misses = 0  # consecutive failed resynchronisations (bounds the work on unrelated data)

    def need(upto: int) -> None:
        nonlocal buf, base, eof, crc, size
        if eof or base + len(buf) >= upto:
            return
        parts = [buf[min(lit, pos) - base :]]
        have = base + len(buf)
        new_base = min(lit, pos)
        while have < upto + READ_AHEAD:
            chunk = next(source, None)
            if chunk is None:
                eof = True
                break
            if chunk:
                if crc32:
                    crc = zlib.crc32(chunk, crc)
                size += len(chunk)
                parts.append(chunk)
                have += len(chunk)
        buf = b"".join(parts)
        base = new_base

    def literal(upto: int) -> bytes:
        return buf[lit - base : upto - base]

    while True:
        need(pos + window + block)
        end = base + len(buf)
        if pos >= end:
            break
        found = -1
        if expect < count:
            length = sig.length(expect)
            if pos + length <= end and block_digest(
                memoryview(buf)[pos - base : pos - base + length]
            ) == sig.digest(expect):
                found = expect
        # on unrelated data stop searching at every block (the cost is ~10 finds each)
        if found < 0 and (misses < 64 or misses % 16 == 0):
            # resynchronise: where does one of the next old blocks start?
            best_q, best_j = -1, -1
            limit = min(end, pos + window)
            for j in _candidates(expect, count):
                anchor = sig.anchor(j)
                length = sig.length(j)
                if length < ANCHOR:
                    anchor = anchor[:length]
                start = pos
                for _ in range(MAX_VERIFY):
                    q = buf.find(anchor, start - base, limit - base)
                    if q < 0:
                        break
                    q += base
                    if best_q >= 0 and q >= best_q:
                        break
                    if q + length <= end and block_digest(
                        memoryview(buf)[q - base : q - base + length]
                    ) == sig.digest(j):
                        best_q, best_j = q, j
                        break
                    start = q + 1
            if best_q >= 0:
                # a far candidate hit: the blocks just before it may be there too
                while (
                    best_j > expect
                    and best_q - block >= max(lit, base)
                    and block_digest(memoryview(buf)[best_q - block - base : best_q - base])
                    == sig.digest(best_j - 1)
                ):
                    best_q -= block
                    best_j -= 1
                pos = best_q  # may step back into the pending literal run: fine
                found = best_j
        if found < 0:
            misses += 1
            # no old block here: these bytes are new; the old block may still come later
            pos = min(end, pos + block)
            if pos - lit >= LITERAL_FLUSH:
                if copy_len:
                    yield (copy_off, copy_len)
                    copy_len = 0
                yield literal(pos)
                lit = pos
            continue
        if pos > lit:
            if copy_len:
                yield (copy_off, copy_len)
                copy_len = 0
            yield literal(pos)
        misses = 0
        length = sig.length(found)
        off = found * block
        if copy_len and copy_off + copy_len == off and copy_len < COPY_RUN:
            copy_len += length
        else:
            if copy_len:
                yield (copy_off, copy_len)
            copy_off, copy_len = off, length
        pos += length
        lit = pos
        expect = found + 1
    end = base + len(buf)
    if end > lit:
        if copy_len:
            yield (copy_off, copy_len)
            copy_len = 0
        yield literal(end)
    if copy_len:
        yield (copy_off, copy_len)
    yield Check(size, crc if crc32 else None)


def encode_ops(ops: Iterable[DeltaOp]) -> Iterator[bytes]:
    """The wire form of delta ops, as a stream of byte strings."""
    for op in ops:
        if isinstance(op, tuple):
            yield _COPY.pack(b"C", op[0], op[1])
        elif isinstance(op, Verified):
            yield _VLIT.pack(b"V", _ALGO_IDS[op.algo], op.digest, len(op.data))
            yield op.data
        elif isinstance(op, Check):
            if op.crc is None:
                yield _FINAL.pack(b"F", op.size)
            else:
                yield _END.pack(b"E", op.size, op.crc)
        elif isinstance(op, Guard):
            yield _GUARD.pack(b"G", *op.token)
        else:
            yield _LIT.pack(b"L", len(op))
            yield op


def delta_blocks(ops: Iterable[DeltaOp], size: int) -> Iterator[bytes]:
    """``encode_ops`` joined into blocks of at least ``size`` bytes, but cut after every
    copy: the receiver copies that run while the rest of the file is still being matched
    (the sender passes each block on at once)."""
    pending: list[bytes] = []
    have = 0
    for op in ops:
        for piece in encode_ops((op,)):
            pending.append(piece)
            have += len(piece)
        if have >= size or isinstance(op, tuple):
            yield b"".join(pending)
            pending, have = [], 0
    if pending:
        yield b"".join(pending)


_ALGO_NAMES = {v: k for k, v in _ALGO_IDS.items()}


class OpDecoder:
    """Incremental decoder for ``encode_ops`` output arriving in arbitrary pieces."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.done = False

    def feed(self, data: bytes) -> list[DeltaOp]:
        if self.done and data:
            raise ValueError("data after the end of a delta")
        self._buf += data
        out: list[DeltaOp] = []
        buf = self._buf
        at = 0
        while at < len(buf) and not self.done:
            tag = buf[at : at + 1]
            if tag == b"C":
                if len(buf) - at < _COPY.size:
                    break
                _, off, length = _COPY.unpack_from(buf, at)
                out.append((off, length))
                at += _COPY.size
            elif tag == b"L" or tag == b"V":
                head = _LIT if tag == b"L" else _VLIT
                if len(buf) - at < head.size:
                    break
                fields = head.unpack_from(buf, at)
                length = fields[-1]
                if len(buf) - at - head.size < length:
                    break
                start = at + head.size
                data = bytes(buf[start : start + length])
                if tag == b"L":
                    out.append(data)
                else:
                    algo = _ALGO_NAMES.get(fields[1])
                    if algo is None:
                        raise ValueError("corrupt delta stream (unknown digest)")
                    out.append(Verified(data, algo, fields[2]))
                at = start + length
            elif tag == b"E":
                if len(buf) - at < _END.size:
                    break
                _, size, crc = _END.unpack_from(buf, at)
                out.append(Check(size, crc))
                at += _END.size
                self.done = True
            elif tag == b"F":
                if len(buf) - at < _FINAL.size:
                    break
                _, size = _FINAL.unpack_from(buf, at)
                out.append(Check(size, None))
                at += _FINAL.size
                self.done = True
            elif tag == b"G":
                if len(buf) - at < _GUARD.size:
                    break
                out.append(Guard(_GUARD.unpack_from(buf, at)[1:]))
                at += _GUARD.size
            else:
                raise ValueError("corrupt delta stream")
        del buf[:at]
        if self.done and buf:
            raise ValueError("data after the end of a delta")
        return out


def copy_range(
    src_fd: int, dst_fd: int, offset: int, length: int, beat: Callable[[], None] | None = None
) -> None:
    """Append ``length`` bytes of ``src_fd`` from ``offset`` at ``dst_fd``'s position, in the kernel.

    ``copy_file_range`` where it works (no Python buffers; reflinks on file
    systems that share extents), ``pread``/``write`` where it does not.
    ValueError when the source ends early (it shrank).
    """
    kernel = getattr(os, "copy_file_range", None)
    while length > 0:
        if kernel is not None:
            try:
                done = kernel(src_fd, dst_fd, min(length, COPY_PIECE), offset)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP,
                                     errno.EBADF, errno.EPERM, errno.ETXTBSY):
                    raise
                kernel = None  # unsupported here: plain reads and writes
                continue
        else:
            data = os.pread(src_fd, min(length, MAX_BLOCK * 4), offset)
            done = len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(dst_fd, view) :]
        if done <= 0:
            raise ValueError("old file shrank while it was being used")
        offset += done
        length -= done
        if beat is not None:
            beat()


STAGE_PIECE = 64 * 1024 * 1024  # bytes per kernel copy call of a staged copy (it can stop in between)


class StagedCopy:
    """The old content of a file copied into a new temporary file by a thread, while it is signed.

    For an edit in place the destination starts this when it is asked for
    the old file's signature: the kernel copy of the old file, which the
    rebuild needs anyway, then runs beside the two signatures instead of
    after them, and the delta only overwrites what changed
    (``rebuild_into(..., staged=True)``).  ``basis_fd`` is duplicated (the
    caller keeps its own); ``out_fd`` (at position 0, empty) is this
    object's until ``release``.  The copy is only used when ``wait`` says
    it is complete and the old file still has ``token`` (its basis token
    when the copy began): then every byte of it is the old file's.
    """

    def __init__(self, basis_fd: int, out_fd: int, size: int) -> None:
        import threading  # only where a copy is staged (the helper's start-up skips it)

        self.token = basis_token(os.fstat(basis_fd))
        self.size = size
        self.out_fd = out_fd
        self._basis_fd = os.dup(basis_fd)
        self._copied = 0
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._copy, name="srsync-stage", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        try:
            while self._copied < self.size and not self._stop:
                piece = min(STAGE_PIECE, self.size - self._copied)
                copy_range(self._basis_fd, self.out_fd, self._copied, piece)
                self._copied += piece
        except BaseException as exc:  # reported by wait (a full disk, a file that shrank)
            self._error = exc

    def wait(self, beat: Callable[[], None] | None = None) -> bool:
        """Wait for the copy (calling ``beat`` now and then); True when all of it is there."""
        while self._thread.is_alive():
            self._thread.join(0.5)
            if beat is not None:
                beat()
        return self._error is None and self._copied == self.size

    def release(self) -> int:
        """The output fd at its start, now the caller's (after a successful ``wait``)."""
        fd, self.out_fd = self.out_fd, -1
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def take(self, token: tuple[int, ...], beat: Callable[[], None] | None = None) -> int:
        """For a rebuild over the old file whose basis token is now ``token``: the output fd
        (``release``, this copy closed) when the copy is complete and the file kept the
        token it had when the copy began; else -1 (the caller then drops the copy)."""
        if tuple(token) != self.token or not self.wait(beat):
            return -1
        fd = self.release()
        self.close()
        return fd

    def close(self) -> None:
        """Stop the copy (after its current piece) and close both descriptors; idempotent."""
        self._stop = True
        self._thread.join()
        for fd in (self._basis_fd, self.out_fd):
            if fd >= 0:
                try:  # noqa: SIM105  (contextlib: one more import for the helper)
                    os.close(fd)
                except OSError:
                    pass
        self._basis_fd = self.out_fd = -1


def place_staged(basis_fd: int, out_fd: int) -> Callable[[int, int], None]:
    """The ``copy`` of a rebuild into a staged copy of the old file (see StagedCopy).

    A copy from the offset the output is at is already there: skipped.
    Any other is copied from the old file over what the staged copy holds.
    """

    def place(offset: int, length: int) -> None:
        if os.lseek(out_fd, 0, os.SEEK_CUR) == offset:
            os.lseek(out_fd, length, os.SEEK_CUR)
        else:
            copy_range(basis_fd, out_fd, offset, length)

    return place


class Rebuilder:
    """Rebuilds new content from delta ops fed one at a time; ``pread(offset, length)`` reads the old file.

    ``add`` returns the bytes of the new content each op contributes;
    ValueError means the ops are corrupt, point outside the old file, or the
    result differs in size or CRC-32 from the final Check: nothing built
    from them may be installed.

    A guarded delta (first op a Guard, see there) needs ``token()``, the
    basis_token of the descriptor the old file is read through, and is
    refused without it; there ``copy(offset, length)``, when given, writes a
    copy run to the output itself (the kernel copies, nothing is yielded
    for it), and nothing is checksummed: the Guard is compared with
    ``token()`` before the first copy and at the final Check, and every
    Verified literal with its digest.
    """

    def __init__(
        self,
        pread: Callable[[int, int], bytes],
        basis_size: int,
        copy: Callable[[int, int], None] | None = None,
        token: Callable[[], tuple[int, ...]] | None = None,
    ) -> None:
        self._pread = pread
        self._basis_size = basis_size
        self._copy = copy
        self._token = token
        self._crc = 0
        self.size = 0
        self.checked = False
        self.guard: Guard | None = None
        self._started = False

    def _check_guard(self) -> None:
        assert self.guard is not None
        if self._token is None or tuple(self._token()) != self.guard.token:
            raise ValueError("the old file changed since it was signed")

    def add(self, op: DeltaOp) -> Iterator[bytes]:
        if self.checked:
            raise ValueError("delta ops after the final check")
        first, self._started = not self._started, True
        if isinstance(op, Guard):
            if not first:
                raise ValueError("a delta guard after its first op")
            self.guard = op
            self._check_guard()
            return
        guarded = self.guard is not None
        if isinstance(op, Check):
            if op.size != self.size:
                raise ValueError("rebuilt content does not match the source (changed meanwhile?)")
            if guarded:
                if op.crc is not None:
                    raise ValueError("a CRC check in a guarded delta")
                self._check_guard()  # after the last copy: every copied byte was the signed content
            elif op.crc is None or op.crc != self._crc:
                raise ValueError("rebuilt content does not match the source (changed meanwhile?)")
            self.checked = True
            return
        if isinstance(op, tuple):
            off, length = op
            if off < 0 or length < 0 or off + length > self._basis_size:
                raise ValueError("delta copies beyond the end of the old file")
            if guarded and self._copy is not None:
                self._copy(off, length)
                self.size += length
                return
            while length:
                piece = min(length, MAX_BLOCK * 4)
                data = self._pread(off, piece)
                if len(data) != piece:
                    raise ValueError("old file shrank while it was being used")
                if not guarded:
                    self._crc = zlib.crc32(data, self._crc)
                self.size += piece
                yield data
                off += piece
                length -= piece
            return
        if isinstance(op, Verified):
            if not guarded:
                raise ValueError("a verified literal outside a guarded delta")
            if digest_function(op.algo)(op.data) != op.digest:
                raise ValueError("literal differs from the source's signature (source changed meanwhile?)")
            op = op.data
        if not guarded:
            self._crc = zlib.crc32(op, self._crc)
        self.size += len(op)
        yield op

    def finish(self) -> None:
        if not self.checked:
            raise ValueError("delta ended without its check")


def rebuild_into(
    ops: Iterable[DeltaOp], basis_fd: int, out_fd: int, basis_size: int, staged: bool = False
) -> int:
    """Rebuild from ``ops`` and the old file open as ``basis_fd`` into ``out_fd`` (at its position).

    Guarded deltas copy in the kernel (``copy_range``) and pin the old file
    by the fstat of ``basis_fd``; others go through ``pread`` and the CRC.
    ``staged``: ``out_fd`` holds a complete copy of the old file (StagedCopy),
    is at its start, is written over and cut to the new size at the end.
    Returns the size written; ValueError as for Rebuilder (install nothing).
    """

    def pread(offset: int, length: int) -> bytes:
        return os.pread(basis_fd, length, offset)

    if staged:
        copy = place_staged(basis_fd, out_fd)
    else:
        def copy(offset: int, length: int) -> None:
            copy_range(basis_fd, out_fd, offset, length)

    rebuilder = Rebuilder(pread, basis_size, copy=copy, token=lambda: basis_token(os.fstat(basis_fd)))
    for op in ops:
        for piece in rebuilder.add(op):
            view = memoryview(piece)
            while view:
                view = view[os.write(out_fd, view) :]
    rebuilder.finish()
    if staged:
        os.ftruncate(out_fd, rebuilder.size)
    return rebuilder.size


def apply_ops(
    ops: Iterable[DeltaOp],
    pread: Callable[[int, int], bytes],
    basis_size: int,
    token: Callable[[], tuple[int, ...]] | None = None,
) -> Iterator[bytes]:
    """The new content rebuilt from a whole sequence of ops (see Rebuilder)."""
    rebuilder = Rebuilder(pread, basis_size, token=token)
    for op in ops:
        yield from rebuilder.add(op)
    rebuilder.finish()
