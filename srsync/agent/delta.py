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
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

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


class Check:
    """The last delta op: size and CRC-32 of the complete new content."""

    __slots__ = ("size", "crc")

    def __init__(self, size: int, crc: int) -> None:
        self.size = size
        self.crc = crc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Check) and (other.size, other.crc) == (self.size, self.crc)

    def __repr__(self) -> str:
        return f"Check(size={self.size}, crc={self.crc:#010x})"


# A delta is a sequence of: (old_offset, length) to copy from the old file,
# bytes to insert as they are, and finally exactly one Check.
# (Only for type checkers: the remote python may predate "X | Y" at runtime,
# and annotations are never evaluated there.)
if TYPE_CHECKING:
    DeltaOp = tuple[int, int] | bytes | Check
else:
    DeltaOp = object


class Signature:
    """Block digests and anchors of an old file."""

    __slots__ = ("block", "size", "digests", "anchors", "algo")

    def __init__(self, block: int, size: int, digests: bytes, anchors: bytes, algo: str = SHA1) -> None:
        self.block = block
        self.size = size
        self.digests = digests
        self.anchors = anchors
        self.algo = algo

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
        return cast("Callable[[bytes | memoryview], bytes]", _xxhash.xxh3_128_digest)
    if algo == SHA1:
        return _sha1
    raise ValueError(f"unknown block digest {algo!r}")


def _sha1(data: bytes | memoryview) -> bytes:
    return hashlib.sha1(data).digest()[:DIGEST]


def block_digest(data: bytes | memoryview) -> bytes:
    return _sha1(data)


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


def _candidates(expect: int, count: int) -> list[int]:
    """Old blocks to look for after a mismatch: the next few, then further ahead."""
    out = [j for j in range(expect, min(expect + NEAR, count))]
    step = 2 * NEAR
    while expect + step < count:
        out.append(expect + step)
        step *= 2
    return out


def match(chunks: Iterable[bytes], sig: Signature) -> Iterator[DeltaOp]:
    """Delta ops that turn the old file described by ``sig`` into the content of ``chunks``.

    Consecutive copies are merged.  The last op is the Check of the new content.
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
        if copy_len and copy_off + copy_len == off:
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
    yield Check(size, crc)


def encode_ops(ops: Iterable[DeltaOp]) -> Iterator[bytes]:
    """The wire form of delta ops, as a stream of byte strings."""
    for op in ops:
        if isinstance(op, Check):
            yield _END.pack(b"E", op.size, op.crc)
        elif isinstance(op, tuple):
            yield _COPY.pack(b"C", op[0], op[1])
        else:
            yield _LIT.pack(b"L", len(op))
            yield op


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
            elif tag == b"L":
                if len(buf) - at < _LIT.size:
                    break
                (_, length) = _LIT.unpack_from(buf, at)
                if len(buf) - at - _LIT.size < length:
                    break
                start = at + _LIT.size
                out.append(bytes(buf[start : start + length]))
                at = start + length
            elif tag == b"E":
                if len(buf) - at < _END.size:
                    break
                _, size, crc = _END.unpack_from(buf, at)
                out.append(Check(size, crc))
                at += _END.size
                self.done = True
            else:
                raise ValueError("corrupt delta stream")
        del buf[:at]
        if self.done and buf:
            raise ValueError("data after the end of a delta")
        return out


class Rebuilder:
    """Rebuilds new content from delta ops fed one at a time; ``pread(offset, length)`` reads the old file.

    ``add`` returns the bytes of the new content each op contributes;
    ValueError means the ops are corrupt, point outside the old file, or the
    result differs in size or CRC-32 from the final Check: nothing built
    from them may be installed.
    """

    def __init__(self, pread: Callable[[int, int], bytes], basis_size: int) -> None:
        self._pread = pread
        self._basis_size = basis_size
        self._crc = 0
        self.size = 0
        self.checked = False

    def add(self, op: DeltaOp) -> Iterator[bytes]:
        if self.checked:
            raise ValueError("delta ops after the final check")
        if isinstance(op, Check):
            if op.size != self.size or op.crc != self._crc:
                raise ValueError("rebuilt content does not match the source (changed meanwhile?)")
            self.checked = True
            return
        if isinstance(op, tuple):
            off, length = op
            if off < 0 or length < 0 or off + length > self._basis_size:
                raise ValueError("delta copies beyond the end of the old file")
            while length:
                piece = min(length, MAX_BLOCK * 4)
                data = self._pread(off, piece)
                if len(data) != piece:
                    raise ValueError("old file shrank while it was being used")
                self._crc = zlib.crc32(data, self._crc)
                self.size += piece
                yield data
                off += piece
                length -= piece
        else:
            self._crc = zlib.crc32(op, self._crc)
            self.size += len(op)
            yield op

    def finish(self) -> None:
        if not self.checked:
            raise ValueError("delta ended without its check")


def apply_ops(
    ops: Iterable[DeltaOp], pread: Callable[[int, int], bytes], basis_size: int
) -> Iterator[bytes]:
    """The new content rebuilt from a whole sequence of ops (see Rebuilder)."""
    rebuilder = Rebuilder(pread, basis_size)
    for op in ops:
        yield from rebuilder.add(op)
    rebuilder.finish()
