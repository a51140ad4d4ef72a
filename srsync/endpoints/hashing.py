"""Content digests: XXH3-128, hex, streamed."""

from __future__ import annotations

from collections.abc import Iterable

import xxhash


def new_hasher() -> xxhash.xxh3_128:
    return xxhash.xxh3_128()


def digest_chunks(chunks: Iterable[bytes]) -> str:
    h = xxhash.xxh3_128()
    for block in chunks:
        h.update(block)
    return h.hexdigest()


def digest_bytes(data: bytes) -> str:
    return xxhash.xxh3_128(data).hexdigest()
