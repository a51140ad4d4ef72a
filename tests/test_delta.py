"""Delta transfer: the pure block matcher, and push/pull of changed big files through the remote helper."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from srsync.agent.delta import (
    Check,
    DeltaOp,
    OpDecoder,
    apply_ops,
    block_size_for,
    encode_ops,
    match,
    signature,
)
from srsync.core.entry import Entry
from srsync.endpoints.agent import AgentEndpoint
from srsync.endpoints.base import Endpoint
from srsync.endpoints.local import LocalEndpoint
from srsync.engine.reporter import Reporter
from srsync.engine.transfer import SourceChanged, transfer_file

AgentFactory = Callable[..., AgentEndpoint]


def _chunks(data: bytes, size: int = 100_000) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _roundtrip(old: bytes, new: bytes, block: int = 4096) -> int:
    """Delta old -> new through the wire format; returns the literal bytes sent."""
    sig = signature(_chunks(old), block)
    ops = list(match(_chunks(new), sig))
    assert isinstance(ops[-1], Check) and sum(isinstance(o, Check) for o in ops) == 1
    wire = b"".join(encode_ops(ops))
    decoder = OpDecoder()
    decoded: list[DeltaOp] = []
    for start in range(0, len(wire), 777):  # arbitrary cuts
        decoded += decoder.feed(wire[start : start + 777])
    assert decoder.done
    rebuilt = b"".join(apply_ops(decoded, lambda off, n: old[off : off + n], len(old)))
    assert rebuilt == new
    return sum(len(o) for o in ops if isinstance(o, bytes))


def test_matcher_edits_insertions_deletions() -> None:
    rng = random.Random(7)
    old = rng.randbytes(400_000)
    assert _roundtrip(old, old) == 0
    edited = bytearray(old)
    for _ in range(5):
        at = rng.randrange(len(old) - 100)
        edited[at : at + 100] = rng.randbytes(100)
    assert _roundtrip(old, bytes(edited)) <= 5 * 4096 * 2
    assert _roundtrip(old, old[:1000] + b"inserted!" + old[1000:]) <= 4096 + 9
    assert _roundtrip(old, old[:1000] + old[60_000:]) <= 4096
    assert _roundtrip(old, old[:1000] + rng.randbytes(50_000) + old[1000:]) <= 50_000 + 2 * 4096
    assert _roundtrip(old, old + b"tail") <= 4096 + 4


@pytest.mark.parametrize(
    ("old", "new"),
    [(b"", b""), (b"", b"abc"), (b"abc", b""), (b"\0" * 50_000, b"\0" * 49_999 + b"x"), (b"ab" * 9000, b"ba" * 9000)],
)
def test_matcher_edge_cases(old: bytes, new: bytes) -> None:
    _roundtrip(old, new, block=1024)


def test_rebuild_refuses_a_wrong_result() -> None:
    old = os.urandom(20_000)
    ops = list(match(_chunks(old), signature(_chunks(old), 4096)))
    basis = bytearray(old)
    basis[5] ^= 1  # the old file changed after it was signed
    with pytest.raises(ValueError, match="does not match"):
        b"".join(apply_ops(ops, lambda off, n: bytes(basis[off : off + n]), len(basis)))
    with pytest.raises(ValueError, match="without its check"):
        b"".join(apply_ops(ops[:-1], lambda off, n: old[off : off + n], len(old)))
    with pytest.raises(ValueError, match="beyond the end"):
        b"".join(apply_ops([(0, len(old) + 1)], lambda off, n: old[off : off + n], len(old)))


def test_block_size_scales() -> None:
    assert block_size_for(0) == 16 * 1024
    assert block_size_for(1 << 30) == 64 * 1024
    assert block_size_for(1 << 40) == 1024 * 1024


# ---- through the remote helper ---------------------------------------------------


class _Counting(Reporter):
    def __init__(self) -> None:
        self.bytes = 0

    def bytes_transferred(self, job: str, count: int) -> None:  # type: ignore[override]
        self.bytes += count


def _literal_counter(ep: Endpoint) -> list[int]:
    """Counts literal bytes the endpoint's write_delta / delta_ops move (what crosses the wire)."""
    sent = [0]
    write_delta, delta_ops = ep.write_delta, ep.delta_ops

    def counted(ops: Iterable[DeltaOp]) -> Iterator[DeltaOp]:
        for op in ops:
            if isinstance(op, bytes):
                sent[0] += len(op)
            yield op

    def write_delta_counted(path: str, ops: Iterable[DeltaOp], *args: object) -> Entry:
        return write_delta(path, counted(ops), *args)  # type: ignore[arg-type]

    def delta_ops_counted(path: str, size: int, sig: object, guarded: bool = False):  # type: ignore[no-untyped-def]
        result = yield from counted_gen(delta_ops(path, size, sig, guarded))  # type: ignore[arg-type]
        return result

    def counted_gen(gen):  # type: ignore[no-untyped-def]
        while True:
            try:
                op = next(gen)
            except StopIteration as stop:
                return stop.value
            if isinstance(op, bytes):
                sent[0] += len(op)
            yield op

    ep.write_delta = write_delta_counted  # type: ignore[method-assign]
    ep.delta_ops = delta_ops_counted  # type: ignore[method-assign]
    return sent


def _edited(data: bytes, edits: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(edits):
        at = rng.randrange(len(out) - 100)
        out[at : at + 100] = rng.randbytes(100)
    return bytes(out)


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_delta_sends_only_changed_regions(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, direction: str
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    old = os.urandom(8 * 1024 * 1024)
    new = _edited(old, 8, seed=1)
    new = new[:5000] + b"an insertion near the start" + new[5000:]
    (src / "big").write_bytes(new)
    os.utime(src / "big", ns=(1_700_000_000_123_456_789,) * 2)
    (dst / "big").write_bytes(old)
    remote = agent_endpoint_factory(str(dst if direction == "push" else src))
    local = LocalEndpoint(str(src if direction == "push" else dst))
    source, dest = (local, remote) if direction == "push" else (remote, local)
    sent = _literal_counter(dest if direction == "push" else source)
    entry = source.stat("big")
    assert entry is not None
    reporter = _Counting()
    got = transfer_file(source, dest, "big", entry, "job", reporter)
    assert (dst / "big").read_bytes() == new
    assert got.mtime_ns == entry.mtime_ns and got.size == len(new)
    assert 0 < sent[0] <= 10 * 16 * 1024  # ~one block per edit, not the 8 MiB
    assert reporter.bytes == len(new)  # progress covers the whole file
    assert sorted(os.listdir(dst)) == ["big"]


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_delta_refuses_a_source_that_changed(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, direction: str
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    old = os.urandom(3 * 1024 * 1024)
    (src / "big").write_bytes(_edited(old, 2, seed=2))
    (dst / "big").write_bytes(old)
    remote = agent_endpoint_factory(str(dst if direction == "push" else src))
    local = LocalEndpoint(str(src if direction == "push" else dst))
    source, dest = (local, remote) if direction == "push" else (remote, local)
    entry = source.stat("big")
    assert entry is not None
    # the scan saw another version than what is there now
    stale = Entry(entry.kind, size=entry.size, mtime_ns=entry.mtime_ns - 10**9, mode=entry.mode)
    with pytest.raises(SourceChanged):
        transfer_file(source, dest, "big", stale, "job", Reporter())
    assert (dst / "big").read_bytes() == old
    assert sorted(os.listdir(dst)) == ["big"]


def test_delta_refuses_a_basis_that_changed(agent_endpoint_factory: AgentFactory, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    old = os.urandom(2 * 1024 * 1024)
    (src / "big").write_bytes(_edited(old, 1, seed=3))
    (dst / "big").write_bytes(old)
    remote = agent_endpoint_factory(str(dst))
    local = LocalEndpoint(str(src))
    entry = local.stat("big")
    current = remote.stat("big")
    assert entry is not None and current is not None
    ops = list(match(_chunks((src / "big").read_bytes()), remote.block_signature("big", 16384)[0]))
    (dst / "big").write_bytes(os.urandom(len(old)))  # replaced after signing
    os.utime(dst / "big", ns=(current.mtime_ns,) * 2)
    with pytest.raises(OSError):
        remote.write_delta("big", ops, 0o644, entry.mtime_ns, current)
    assert sorted(os.listdir(dst)) == ["big"]
