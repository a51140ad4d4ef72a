"""The remote helper: stdlib-only code srsync streams to python3 over SSH (program in ``remote``).

``bootstrap_command`` is the whole command line run on the server; the
program itself follows on the channel's stdin (``payload``), so nothing is
installed and nothing is left behind when the channel closes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import marshal
import os
import shlex
import struct
import threading
import zlib
from pathlib import Path

# Modules the helper needs, in import order; all stdlib-only.  They keep their
# real names on the remote side, so the shipped sources are byte-for-byte the
# ones srsync runs locally (one implementation of names, ignore rules, delta).
SHIPPED = (
    "srsync.core.paths", "srsync.core.ignore", "srsync.core.summary", "srsync.agent.delta", "srsync.agent.remote",
)

# Exit status of the loader when the remote python is too old to run the helper.
TOO_OLD = 97

_LOADER = """\
import sys, types
if sys.version_info < (3, 8):
    sys.stderr.write("srsync helper: python %s is too old (3.8+ needed)\\n" % sys.version.split()[0])
    sys.exit(TOO_OLD)
if sys.flags.no_site:
    # started with -S (skips .pth processing, ~50 ms): the plain site-packages
    # directories still count, for the optional xxhash
    try:
        import os, site
        _dirs = site.getsitepackages() + [site.getusersitepackages()]
        # a venv's interpreter: -S also skips reading its pyvenv.cfg, so its own
        # site-packages would be missed (site.getsitepackages() names the base's)
        _venv = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable or ".")))
        if sys.prefix == sys.base_prefix and os.path.isfile(os.path.join(_venv, "pyvenv.cfg")):
            _dirs.insert(0, os.path.join(_venv, "lib", "python%d.%d" % sys.version_info[:2], "site-packages"))
        for _dir in _dirs:
            if _dir not in sys.path and os.path.isdir(_dir):
                sys.path.append(_dir)
    except Exception:
        pass
# after this program on stdin come the same modules compiled by the client's python
# (a length, then magic number and code), used when this python reads that bytecode,
# then their sources (a length, then compressed text, SIZES giving each module's
# share), compiled otherwise: kept out of this program's own text, which the
# interpreter parses whole (sources as string literals there cost ~4 ms)
_read = sys.stdin.buffer.read
_codes = {}
_blob = _read(int.from_bytes(_read(4), "big"))
if _blob:
    import _frozen_importlib_external
    if _blob[:4] == _frozen_importlib_external.MAGIC_NUMBER:
        import marshal, zlib
        _codes = dict(marshal.loads(zlib.decompress(_blob[4:])))
_blob = _read(int.from_bytes(_read(4), "big"))
_text = None
for _name in ("srsync", "srsync.core", "srsync.agent"):
    _pkg = types.ModuleType(_name)
    _pkg.__path__ = []
    sys.modules[_name] = _pkg
_at = 0
for _name, _length in SIZES:
    _mod = types.ModuleType(_name)
    _mod.__file__ = "<srsync-helper>/" + _name
    sys.modules[_name] = _mod
    _code = _codes.get(_name)
    if _code:
        _mod.__cached__ = "<srsync-helper-bytecode>"
        _code = marshal.loads(_code)
    else:
        if _text is None:
            import zlib
            _text = zlib.decompress(_blob)
        _code = compile(_text[_at : _at + _length], _mod.__file__, "exec")
    _at += _length
    exec(_code, _mod.__dict__)
sys.modules["srsync.agent.remote"].main()
"""


def _compiled(origin: str) -> bytes | None:
    """The marshalled module code of the source file ``origin`` from its up-to-date
    ``__pycache__`` entry (written at install or first import), or None."""
    try:
        cached = importlib.util.cache_from_source(origin)
        st = os.stat(origin)
        with open(cached, "rb") as f:
            data = f.read()
    except (OSError, NotImplementedError, ValueError):
        return None
    # header: magic, flags (0: checked by source mtime and size), mtime, size
    if len(data) < 16 or data[:4] != importlib.util.MAGIC_NUMBER or data[4:8] != bytes(4):
        return None
    if data[8:16] != struct.pack("<II", int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF):
        return None
    return data[16:]


def _origins() -> list[tuple[str, str]]:
    """(module name, source file) of each shipped module; read, never imported here."""
    out = []
    for name in SHIPPED:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        out.append((name, spec.origin))
    return out


def _make_program() -> tuple[bytes, bytes]:
    """(the compressed program: the loader, the same for every server; the compressed
    sources of the shipped modules, which the loader compiles without fitting bytecode)."""
    sources = [(name, Path(origin).read_bytes()) for name, origin in _origins()]
    sizes = [(name, len(text)) for name, text in sources]
    program = f"SIZES = {sizes!r}\nTOO_OLD = {TOO_OLD}\n" + _LOADER
    # level 6: a few KiB more than 9 on the wire, a fifth of the time
    return zlib.compress(program.encode("utf-8"), 6), zlib.compress(b"".join(t for _, t in sources), 6)


def _bytecode(magic: bytes) -> bytes:
    """``magic`` and the compressed bytecode of the shipped modules, or b"" without it at hand."""
    codes = [(name, code) for name, origin in _origins() if (code := _compiled(origin)) is not None]
    return magic + zlib.compress(marshal.dumps(codes), 6) if codes else b""


# This process's program and bytecode, built (or read, see load_payload) once, by
# whichever thread asks first; another thread asking meanwhile waits for that one.
_made: dict[str, bytes] = {}
_made_lock = threading.Lock()


def _program_parts() -> tuple[bytes, bytes]:
    """(program, sources): always made together (the program gives each source's size)."""
    with _made_lock:
        if "program" not in _made or "sources" not in _made:
            _made["program"], _made["sources"] = _make_program()
        return _made["program"], _made["sources"]


def _program() -> bytes:
    return _program_parts()[0]


def _sources() -> bytes:
    return _program_parts()[1]


def _local_bytecode() -> bytes:
    with _made_lock:
        if "bytecode" not in _made:
            _made["bytecode"] = _bytecode(importlib.util.MAGIC_NUMBER)
        return _made["bytecode"]


# ---- the payload kept between runs ----------------------------------------------
# Building the payload (reading the sources, compressing them and their bytecode)
# costs ~16 ms of CPU at every start, while the handshake needs the same CPU; a copy
# kept in the job's state folder is read in a fraction of a millisecond.

PAYLOAD_CACHE = "helper-payload.bin"
_CACHE_TAG = b"srsync helper payload 2\n"
_DIGEST = 16
_KEPT = ("program", "sources", "bytecode")  # the parts, in the file's order


def _fingerprint() -> bytes:
    """A digest of everything the payload is built from: every shipped source file and
    its compiled copy (path, size, mtime, ctime, inode), this module's own file (the
    loader and the format) and the python's magic number.  Any edit, reinstall or
    recompilation changes it."""
    parts = [importlib.util.MAGIC_NUMBER.hex(), __file__]
    files = [__file__]
    for name, origin in _origins():
        parts.append(name)
        files += [origin, importlib.util.cache_from_source(origin)]
    for path in files:
        try:
            st = os.stat(path)
        except OSError:
            parts.append(f"{path}:-")
            continue
        parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}")
    return hashlib.blake2b("\0".join(parts).encode("utf-8", "surrogateescape"), digest_size=_DIGEST).digest()


def _read_kept(path: Path, fingerprint: bytes) -> dict[str, bytes] | None:
    """The parts (``_KEPT``) of the copy at ``path`` when it was built from the files
    ``fingerprint`` describes and is intact; else None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    head = len(_CACHE_TAG) + 2 * _DIGEST + 4 * len(_KEPT)
    if len(data) < head or not data.startswith(_CACHE_TAG):
        return None
    at = len(_CACHE_TAG)
    if data[at : at + _DIGEST] != fingerprint:
        return None
    if hashlib.blake2b(data[head:], digest_size=_DIGEST).digest() != data[at + _DIGEST : at + 2 * _DIGEST]:
        return None  # damaged: built again
    at += 2 * _DIGEST
    sizes = [int.from_bytes(data[at + 4 * i : at + 4 * i + 4], "big") for i in range(len(_KEPT))]
    if head + sum(sizes) != len(data):
        return None
    parts, at = {}, head
    for key, size in zip(_KEPT, sizes, strict=True):
        parts[key] = data[at : at + size]
        at += size
    return parts


def _keep(path: Path, fingerprint: bytes, parts: dict[str, bytes]) -> None:
    """Save the payload's parts at ``path`` (whole or not at all); never fails the run."""
    body = b"".join(parts[key] for key in _KEPT)
    data = b"".join([
        _CACHE_TAG, fingerprint, hashlib.blake2b(body, digest_size=_DIGEST).digest(),
        *(len(parts[key]).to_bytes(4, "big") for key in _KEPT), body,
    ])
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def load_payload(cache_dir: Path | None) -> None:
    """Have ``payload`` ready: read from ``cache_dir`` when the copy kept there was built
    from these very files, else built (and kept there for the next run).

    A missing, stale, damaged or unwritable copy only means building, as without one.
    """
    with _made_lock:
        if all(key in _made for key in _KEPT):
            return
    if cache_dir is None:
        _program()
        _local_bytecode()
        return
    path = cache_dir / PAYLOAD_CACHE
    before = _fingerprint()
    kept = _read_kept(path, before)
    if kept is not None:
        with _made_lock:
            if "program" not in _made:  # (the program and its sources go together)
                _made["program"], _made["sources"] = kept["program"], kept["sources"]
            _made.setdefault("bytecode", kept["bytecode"])
        return
    parts = {"program": _program(), "sources": _sources(), "bytecode": _local_bytecode()}
    if _fingerprint() == before:  # (not a copy of files that changed while being read)
        _keep(path, before, parts)


def _segments(bytecode: bool = True) -> tuple[bytes, bytes]:
    """(the compressed program, the bytecode segment or b""): see ``payload``."""
    return _program(), _local_bytecode() if bytecode else b""


def _build(magic: bytes, bytecode: bool = True) -> tuple[bytes, bytes]:
    """``_segments``, the bytecode said to be for the python whose magic number is ``magic``."""
    return _program(), _bytecode(magic) if bytecode else b""


def payload(bytecode: bool = True) -> bytes:
    """What the bootstrap reads from stdin: the compressed program (the loader), then the
    bytecode it may use, then the compressed sources it compiles otherwise.

    The bytecode (~80 KiB, about 2.5 times the compressed sources) saves the server
    ~33 ms of compiling where the link is fast (a server on this machine or the local
    network) and would cost more than that on a slow one; ``bytecode=False`` sends
    the sources alone.  All are made once per process (``registry.warm_up`` has them
    ready while the handshake waits, from the copy ``load_payload`` keeps).
    """
    program, blob = _segments(bytecode)
    sources = _sources()
    return b"".join([program, len(blob).to_bytes(4, "big"), blob, len(sources).to_bytes(4, "big"), sources])


def bootstrap_command(python: str = "python3") -> str:
    """The remote command: ``python`` reads exactly the payload from stdin and runs it.

    One line in double quotes without ``$`` or backquotes, so sh, bash, zsh,
    csh and fish all pass it through unchanged.
    """
    size = len(_program())
    code = f"import sys,zlib;exec(zlib.decompress(sys.stdin.buffer.read({size})))"
    # -S: no site initialisation (.pth files); the loader adds site-packages itself
    return f'{shlex.quote(python)} -S -c "{code}"'
