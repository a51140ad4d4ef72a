"""Guarded and aligned deltas: both sides sign at once, only differing blocks travel, kernel copies.

Real files, the real remote helper over the test sshd; no mocks.  Where a
test must change a file *during* a transfer it wraps an endpoint method so
that the change happens on disk at that moment, then calls the real method.
"""

from __future__ import annotations

import os
import random
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from srsync.agent import delta
from srsync.agent.delta import (
    Check,
    DeltaOp,
    Guard,
    OpDecoder,
    Signature,
    StagedCopy,
    Verified,
    aligned_blocks,
    aligned_ops,
    aligned_ranges,
    apply_ops,
    basis_token,
    block_digest,
    encode_ops,
    match,
    rebuild_into,
    signature,
    signature_fd,
)
from srsync.core.entry import Entry
from srsync.endpoints.agent import AgentEndpoint
from srsync.endpoints.base import Endpoint
from srsync.endpoints.local import LocalEndpoint
from srsync.engine.reporter import Reporter
from srsync.engine.transfer import SourceChanged, transfer_file

AgentFactory = Callable[..., AgentEndpoint]
BLOCK = 16 * 1024  # block_size_for() of the small files here


def _edited(data: bytes, edits: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(edits):
        at = rng.randrange(len(out) - 100)
        out[at : at + 100] = rng.randbytes(100)
    return bytes(out)


def _chunks(data: bytes, size: int = 100_000) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _sig_of(path: Path, block: int = BLOCK) -> object:
    fd = os.open(path, os.O_RDONLY)
    try:
        return signature_fd(fd, block)
    finally:
        os.close(fd)


# ---- pure parts ------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, 5 * BLOCK + 77, 600 * BLOCK])
def test_signature_fd_equals_signature(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    sig = _sig_of(tmp_path / "f")
    ref = signature(_chunks(data), BLOCK)
    assert sig.encode() == ref.encode()  # type: ignore[attr-defined]
    assert sig.basis == basis_token(os.stat(tmp_path / "f"))  # type: ignore[attr-defined]


def test_aligned_ops_rebuild_and_wire(tmp_path: Path) -> None:
    old = os.urandom(40 * BLOCK + 123)
    new = _edited(old, 5, seed=11)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    old_sig, new_sig = _sig_of(tmp_path / "old"), _sig_of(tmp_path / "new")
    differ = aligned_blocks(old_sig, new_sig)  # type: ignore[arg-type]
    assert differ is not None and 1 <= len(differ) <= 10
    ranges = aligned_ranges(new_sig, differ)  # type: ignore[arg-type]
    ops = list(aligned_ops(old_sig, new_sig, differ, [new[o : o + n] for o, n in ranges]))  # type: ignore[arg-type]
    assert isinstance(ops[0], Guard) and ops[-1] == Check(len(new), None)
    wire = b"".join(encode_ops(ops))
    decoder = OpDecoder()
    decoded: list[DeltaOp] = []
    for start in range(0, len(wire), 1000):
        decoded += decoder.feed(wire[start : start + 1000])
    assert decoder.done and decoded == ops
    fd = os.open(tmp_path / "old", os.O_RDONLY)
    try:
        token = lambda: basis_token(os.fstat(fd))  # noqa: E731
        rebuilt = b"".join(apply_ops(decoded, lambda o, n: os.pread(fd, n, o), len(old), token))
        assert rebuilt == new
        # the same ops through the kernel-copy path, into a real file
        out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            assert rebuild_into(decoded, fd, out, len(old)) == len(new)
        finally:
            os.close(out)
        assert (tmp_path / "out").read_bytes() == new
        # and a plain (CRC) delta through the same function
        out = os.open(tmp_path / "out2", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            plain = match(_chunks(new), signature(_chunks(old), BLOCK))
            assert rebuild_into(plain, fd, out, len(old)) == len(new)
        finally:
            os.close(out)
        assert (tmp_path / "out2").read_bytes() == new
    finally:
        os.close(fd)


def test_aligned_blocks_equals_a_block_by_block_comparison() -> None:
    def by_block(old: Signature, new: Signature) -> list[int] | None:
        common = min(old.count, new.count)
        differ = [i for i in range(common) if old.digest(i) != new.digest(i) or old.length(i) != new.length(i)]
        differ += range(common, new.count)
        return None if len(differ) > new.count // 8 else differ

    rng = random.Random(7)
    for _ in range(300):
        old = rng.randbytes(rng.randrange(0, 40_000))
        new = bytearray(old)
        for _ in range(rng.randrange(0, 8)):
            if new:
                new[rng.randrange(len(new))] ^= 0xFF
        roll = rng.random()
        if roll < 0.2:
            del new[len(new) - rng.randrange(0, 300) :]
        elif roll < 0.4:
            new += rng.randbytes(rng.randrange(0, 300))
        old_sig, new_sig = signature([old], 64), signature([bytes(new)], 64)
        assert aligned_blocks(old_sig, new_sig) == by_block(old_sig, new_sig)


def test_staged_copy_then_rebuild_in_place(tmp_path: Path) -> None:
    old = os.urandom(9 * BLOCK + 77)
    (tmp_path / "old").write_bytes(old)
    # a copy from where the output is (kept as staged), then moved data: copies from
    # other offsets than the output is at, literals, and a shorter end
    at = 2 * BLOCK + 5000
    new = old[:at] + b"inserted" + old[at : 7 * BLOCK] + old[8 * BLOCK :]
    basis = os.open(tmp_path / "old", os.O_RDONLY)
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        staged = StagedCopy(basis, out, len(old))
        assert staged.wait()
        assert staged.token == basis_token(os.fstat(basis))
        assert (tmp_path / "out").read_bytes() == old  # the whole old file, before any op
        fd = staged.release()
        staged.close()  # the released descriptor stays open
        plain = list(match(_chunks(new, 3000), signature(_chunks(old), BLOCK)))
        assert plain[0] == (0, 2 * BLOCK) and any(isinstance(op, tuple) and op[0] > 2 * BLOCK for op in plain)
        # guarded, as deltas onto a staged copy are: copies are the kernel's (or skipped)
        ops = [Guard(staged.token), *(Check(op.size, None) if isinstance(op, Check) else op for op in plain)]
        assert rebuild_into(ops, basis, fd, len(old), staged=True) == len(new)
    finally:
        os.close(out)
        os.close(basis)
    assert (tmp_path / "out").read_bytes() == new


def test_staged_copy_of_a_file_that_shrank_is_not_complete(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(os.urandom(3 * BLOCK))
    basis = os.open(tmp_path / "old", os.O_RDONLY)
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        staged = StagedCopy(basis, out, 5 * BLOCK)  # bigger than the file now is
        assert not staged.wait()
        staged.close()
    finally:
        os.close(basis)


def test_aligned_refuses_moved_data(tmp_path: Path) -> None:
    old = os.urandom(64 * BLOCK)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(old[:100] + b"x" * 7 + old[100:-7])  # same size, shifted
    assert aligned_blocks(_sig_of(tmp_path / "old"), _sig_of(tmp_path / "new")) is None  # type: ignore[arg-type]


def test_rebuilder_refuses_unverified_guarded_streams(tmp_path: Path) -> None:
    old = os.urandom(4 * BLOCK)
    (tmp_path / "old").write_bytes(old)
    fd = os.open(tmp_path / "old", os.O_RDONLY)
    try:
        token = basis_token(os.fstat(fd))
        pread = lambda o, n: os.pread(fd, n, o)  # noqa: E731
        good = lambda: basis_token(os.fstat(fd))  # noqa: E731
        block = old[BLOCK : 2 * BLOCK]

        def run(ops: list[DeltaOp], tok: Callable[[], tuple[int, ...]] | None = good) -> bytes:
            return b"".join(apply_ops(ops, pread, len(old), tok))

        assert run([Guard(token), (0, len(old)), Check(len(old), None)]) == old
        with pytest.raises(ValueError, match="changed since it was signed"):
            run([Guard(token[:4] + (token[4] + 1,)), (0, len(old)), Check(len(old), None)])
        with pytest.raises(ValueError, match="changed since it was signed"):
            run([Guard(token), (0, len(old)), Check(len(old), None)], None)  # no way to pin the basis
        with pytest.raises(ValueError, match="differs from the source"):
            run([Guard(token), Verified(block, "sha1", block_digest(old[:BLOCK])), Check(BLOCK, None)])
        with pytest.raises(ValueError, match="CRC check in a guarded"):
            run([Guard(token), (0, BLOCK), Check(BLOCK, 0)])
        with pytest.raises(ValueError, match="does not match"):
            run([(0, BLOCK), Check(BLOCK, None)])  # no guard: a CRC is required
        with pytest.raises(ValueError, match="outside a guarded"):
            run([Verified(block, "sha1", block_digest(block)), Check(BLOCK, 0)])
        with pytest.raises(ValueError, match="after its first op"):
            run([(0, BLOCK), Guard(token), Check(BLOCK, None)])
    finally:
        os.close(fd)


# ---- through the remote helper ---------------------------------------------------


def _pair(
    factory: AgentFactory, tmp_path: Path, direction: str, old: bytes, new: bytes
) -> tuple[Endpoint, Endpoint, Path, Path]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "big").write_bytes(new)
    os.utime(src / "big", ns=(1_700_000_000_123_456_789,) * 2)
    (dst / "big").write_bytes(old)
    remote = factory(str(dst if direction == "push" else src))
    local = LocalEndpoint(str(src if direction == "push" else dst))
    source, dest = (local, remote) if direction == "push" else (remote, local)
    return source, dest, src, dst


def _forbid_match(ep: Endpoint) -> None:
    """The aligned path must not fall back to matching (it would read the whole file again)."""

    def refused(*args: object) -> Iterator[DeltaOp]:
        raise AssertionError("delta_ops called: the aligned path was not taken")

    ep.delta_ops = refused  # type: ignore[method-assign,assignment]


def _count_literals(ep: Endpoint) -> list[int]:
    sent = [0]
    write_delta = ep.write_delta

    def counted(path: str, ops: Iterable[DeltaOp], *args: object) -> Entry:
        def each() -> Iterator[DeltaOp]:
            for op in ops:
                if isinstance(op, (bytes, Verified)):
                    sent[0] += len(op)
                yield op

        return write_delta(path, each(), *args)  # type: ignore[arg-type]

    ep.write_delta = counted  # type: ignore[method-assign,assignment]
    return sent


class _Counting(Reporter):
    def __init__(self) -> None:
        self.bytes = 0

    def bytes_transferred(self, job: str, count: int) -> None:
        self.bytes += count


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_aligned_delta_equals_matched_result(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, direction: str
) -> None:
    old = os.urandom(6 * 1024 * 1024 + 5000)
    new = _edited(old, 16, seed=21)
    # today's path, computed independently: match + CRC-checked rebuild
    expected = b"".join(
        apply_ops(match(_chunks(new), signature(_chunks(old), BLOCK)), lambda o, n: old[o : o + n], len(old))
    )
    assert expected == new
    source, dest, _, dst = _pair(agent_endpoint_factory, tmp_path, direction, old, new)
    _forbid_match(source)
    sent = _count_literals(dest)
    entry = source.stat("big")
    assert entry is not None
    reporter = _Counting()
    got = transfer_file(source, dest, "big", entry, "job", reporter)
    assert (dst / "big").read_bytes() == expected
    assert got.size == len(new) and got.mtime_ns == entry.mtime_ns
    assert 0 < sent[0] <= 32 * BLOCK  # at most two blocks per edit
    assert reporter.bytes == len(new)
    assert sorted(os.listdir(dst)) == ["big"]


@pytest.mark.parametrize("direction", ["push", "pull"])
@pytest.mark.parametrize("change", ["insert", "append", "truncate"])
def test_size_changing_edit_still_works(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, direction: str, change: str
) -> None:
    old = os.urandom(3 * 1024 * 1024 + 333)
    if change == "insert":
        new = old[:7000] + b"inserted bytes" + old[7000:]
    elif change == "append":
        new = old + os.urandom(5000)
    else:
        new = old[: len(old) - 20_000]
    source, dest, _, dst = _pair(agent_endpoint_factory, tmp_path, direction, old, new)
    sent = _count_literals(dest)
    entry = source.stat("big")
    assert entry is not None
    transfer_file(source, dest, "big", entry, "job", Reporter())
    assert (dst / "big").read_bytes() == new
    assert sent[0] <= 2 * BLOCK + 5000
    assert sorted(os.listdir(dst)) == ["big"]


@pytest.mark.parametrize("direction", ["push", "pull"])
@pytest.mark.parametrize("where", ["literal", "elsewhere"])
def test_source_changed_during_transfer_is_not_installed(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, direction: str, where: str
) -> None:
    old = os.urandom(3 * 1024 * 1024)
    new = _edited(old, 3, seed=31)
    source, dest, src, dst = _pair(agent_endpoint_factory, tmp_path, direction, old, new)
    entry = source.stat("big")
    assert entry is not None
    read_ranges = source.read_ranges

    def changing(path: str, ranges: list[tuple[int, int]]) -> Iterator[bytes]:
        # the source changes after it was signed, before its changed blocks are read again
        at = ranges[0][0] if where == "literal" else next(
            o for o in range(0, len(new), BLOCK) if all(o != r[0] for r in ranges)
        )
        with open(src / "big", "r+b") as f:
            f.seek(at + 10)
            f.write(b"changed!")
        if where == "literal":  # even with its mtime put back, the digest tells
            os.utime(src / "big", ns=(entry.mtime_ns, entry.mtime_ns))
        return read_ranges(path, ranges)

    source.read_ranges = changing  # type: ignore[method-assign,assignment]
    with pytest.raises(OSError) as caught:
        transfer_file(source, dest, "big", entry, "job", Reporter())
    if where == "elsewhere":
        assert isinstance(caught.value, SourceChanged)
    assert (dst / "big").read_bytes() == old
    assert sorted(os.listdir(dst)) == ["big"]


@pytest.mark.parametrize("direction", ["push", "pull"])
@pytest.mark.parametrize("path", ["aligned", "matched"])
def test_basis_changed_after_signature_is_not_installed(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, direction: str, path: str
) -> None:
    old = os.urandom(3 * 1024 * 1024)
    new = _edited(old, 3, seed=41) if path == "aligned" else old[:5000] + b"ins" + old[5000:]
    source, dest, _, dst = _pair(agent_endpoint_factory, tmp_path, direction, old, new)
    entry = source.stat("big")
    current = dest.stat("big")
    assert entry is not None and current is not None
    write_delta = dest.write_delta
    # what the old file becomes after it was signed: same size and mtime, other bytes
    tampered = bytearray(old)
    tampered[2 * 1024 * 1024 : 2 * 1024 * 1024 + 8] = b"tampered"

    def after_signing(*args: object) -> Entry:
        (dst / "big").write_bytes(bytes(tampered))  # in place: same inode
        os.utime(dst / "big", ns=(current.mtime_ns, current.mtime_ns))
        return write_delta(*args)  # type: ignore[arg-type]

    dest.write_delta = after_signing  # type: ignore[method-assign,assignment]
    with pytest.raises(OSError):
        transfer_file(source, dest, "big", entry, "job", Reporter())
    assert (dst / "big").read_bytes() == bytes(tampered)  # untouched since
    assert sorted(os.listdir(dst)) == ["big"]


def _listing_at_rebuild(ep: Endpoint, dst: Path) -> list[list[tuple[str, int]]]:
    """What the destination directory holds when write_delta starts (names and sizes)."""
    seen: list[list[tuple[str, int]]] = []
    write_delta = ep.write_delta

    def looked(*args: object) -> Entry:
        seen.append(sorted((p.name, p.stat().st_size) for p in dst.iterdir()))
        return write_delta(*args)  # type: ignore[arg-type]

    ep.write_delta = looked  # type: ignore[method-assign,assignment]
    return seen


@pytest.mark.parametrize("direction", ["push", "pull"])
@pytest.mark.parametrize("change", ["aligned", "moved"])
def test_old_file_is_copied_while_both_sides_sign(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, direction: str, change: str
) -> None:
    old = os.urandom(3 * 1024 * 1024 + 999)
    if change == "aligned":
        new = _edited(old, 4, seed=51)
    else:  # same size, data shifted: the matcher's delta, rebuilt over the staged copy
        new = old[:20_000] + b"shifted by these bytes" + old[20_000:-22]
    source, dest, _, dst = _pair(agent_endpoint_factory, tmp_path, direction, old, new)
    seen = _listing_at_rebuild(dest, dst)
    entry = source.stat("big")
    assert entry is not None
    got = transfer_file(source, dest, "big", entry, "job", Reporter())
    # by the time the delta is applied, a full-size temporary copy of the old file is there
    (names,) = seen
    assert len(names) == 2 and names[1] == ("big", len(old))
    assert names[0][0].startswith(".srsync-tmp-") and names[0][1] == len(old)
    assert (dst / "big").read_bytes() == new
    assert got.size == len(new) and got.mtime_ns == entry.mtime_ns
    assert sorted(os.listdir(dst)) == ["big"]


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_a_copy_staged_for_no_delta_is_removed(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, direction: str
) -> None:
    old = os.urandom(2 * 1024 * 1024)
    source, dest, _, dst = _pair(agent_endpoint_factory, tmp_path, direction, old, _edited(old, 2, seed=61))
    sig, before = dest.block_signature("big", BLOCK, stage=True)
    assert sig.basis is not None and before is not None
    assert len(os.listdir(dst)) == 2  # the old file and its staged copy
    dest.drop_staged()
    assert sorted(os.listdir(dst)) == ["big"]
    # a second signature replaces an earlier staged copy; closing removes the last one
    dest.block_signature("big", BLOCK, stage=True)
    dest.block_signature("big", BLOCK, stage=True)
    assert len(os.listdir(dst)) == 2
    dest.close()
    deadline = time.monotonic() + 10
    while len(os.listdir(dst)) > 1 and time.monotonic() < deadline:
        time.sleep(0.02)  # the helper removes it when its channel ends
    assert sorted(os.listdir(dst)) == ["big"]
    assert (dst / "big").read_bytes() == old


def test_long_copy_runs_are_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delta, "COPY_RUN", 4 * BLOCK)
    old = os.urandom(40 * BLOCK + 99)
    new = old[:1000] + b"inserted" + old[1000:]
    ops = list(match(_chunks(new), signature(_chunks(old), BLOCK)))
    copies = [op for op in ops if isinstance(op, tuple)]
    # one run after the insertion, cut into pieces the receiver can copy one by one
    assert len(copies) >= 9 and all(length <= 5 * BLOCK for _, length in copies)
    assert all(a[0] + a[1] == b[0] for a, b in zip(copies, copies[1:], strict=False))
    assert b"".join(apply_ops(ops, lambda o, n: old[o : o + n], len(old))) == new


@pytest.mark.parametrize("side", ["local", "helper"])
def test_a_guarded_match_computes_no_crc(
    agent_endpoint_factory: AgentFactory, tmp_path: Path, side: str
) -> None:
    old = os.urandom(3 * 1024 * 1024 + 5)
    new = old[:4000] + b"inserted" + old[4000:]
    (tmp_path / "big").write_bytes(new)
    ep: Endpoint = agent_endpoint_factory(str(tmp_path)) if side == "helper" else LocalEndpoint(str(tmp_path))
    sig = signature(_chunks(old), BLOCK)
    plain = list(ep.delta_ops("big", len(new), sig))
    guarded = list(ep.delta_ops("big", len(new), sig, guarded=True))
    assert plain[-1] == Check(len(new), zlib.crc32(new))
    assert guarded[-1] == Check(len(new), None)
    assert plain[:-1] == guarded[:-1]
    assert b"".join(apply_ops(plain, lambda o, n: old[o : o + n], len(old))) == new
