"""Content digests: XXH3-128, hex, streamed."""

from __future__ import annotations

import os
from collections.abc import Iterable

import xxhash

# Files up to this size are hashed from one read; bigger ones are streamed
# through a reused buffer of this size (no per-chunk allocation).
FD_CHUNK = 1 << 20


def new_hasher() -> xxhash.xxh3_128:
    return xxhash.xxh3_128()


def digest_chunks(chunks: Iterable[bytes]) -> str:
    h = xxhash.xxh3_128()
    for block in chunks:
        h.update(block)
    return h.hexdigest()


def digest_bytes(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def digest_fd(fd: int, size: int, buf: bytearray | None = None) -> str:
    """Digest of everything readable from ``fd`` (at its current offset) up to EOF.

    ``size`` is what the caller expects (fstat): a small file is read with one
    ``read`` of ``size + 1`` bytes, and getting exactly ``size`` back is EOF.
    Anything else (a short read, growth, a big file) streams on to the EOF
    through ``buf``.
    """
    if size < FD_CHUNK:
        data = os.read(fd, size + 1)
        if len(data) == size:
            return xxhash.xxh3_128_hexdigest(data)
        h = xxhash.xxh3_128(data)
        if not data:
            return h.hexdigest()
    else:
        h = xxhash.xxh3_128()
    if buf is None:
        buf = bytearray(FD_CHUNK)
    view = memoryview(buf)
    readv = os.readv
    while True:
        n = readv(fd, (buf,))
        if not n:
            return h.hexdigest()
        h.update(view[:n])
