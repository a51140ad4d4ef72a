"""The remote helper: stdlib-only code srsync streams to python3 over SSH (program in ``remote``).

``bootstrap_command`` is the whole command line run on the server; the
program itself follows on the channel's stdin (``payload``), so nothing is
installed and nothing is left behind when the channel closes.
"""

from __future__ import annotations

import functools
import importlib.util
import shlex
import zlib
from pathlib import Path

# Modules the helper needs, in import order; all stdlib-only.  They keep their
# real names on the remote side, so the shipped sources are byte-for-byte the
# ones srsync runs locally (one implementation of names, ignore rules, delta).
SHIPPED = ("srsync.core.paths", "srsync.core.ignore", "srsync.agent.delta", "srsync.agent.remote")

# Exit status of the loader when the remote python is too old to run the helper.
TOO_OLD = 97

_LOADER = """\
import sys, types
if sys.version_info < (3, 8):
    sys.stderr.write("srsync helper: python %s is too old (3.8+ needed)\\n" % sys.version.split()[0])
    sys.exit(TOO_OLD)
if sys.version_info < (3, 10):
    # the shipped sources use dataclass(slots=True) (3.10+); slots only save memory
    import dataclasses
    _dataclass = dataclasses.dataclass
    def _compat(*args, **kwargs):
        kwargs.pop("slots", None)
        return _dataclass(*args, **kwargs)
    dataclasses.dataclass = _compat
if sys.flags.no_site:
    # started with -S (skips .pth processing, ~50 ms): the plain site-packages
    # directories still count, for the optional xxhash
    try:
        import site
        for _dir in site.getsitepackages() + [site.getusersitepackages()]:
            if _dir not in sys.path:
                sys.path.append(_dir)
    except Exception:
        pass
for _name in ("srsync", "srsync.core", "srsync.agent"):
    _pkg = types.ModuleType(_name)
    _pkg.__path__ = []
    sys.modules[_name] = _pkg
for _name, _source in SOURCES:
    _mod = types.ModuleType(_name)
    _mod.__file__ = "<srsync-helper>/" + _name
    sys.modules[_name] = _mod
    exec(compile(_source, _mod.__file__, "exec"), _mod.__dict__)
sys.modules["srsync.agent.remote"].main()
"""


@functools.lru_cache(maxsize=1)
def payload() -> bytes:
    """The compressed program the bootstrap reads from stdin and runs."""
    sources = []
    for name in SHIPPED:
        # the sources are read, not imported: the helper's own module is never run here
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        sources.append((name, Path(spec.origin).read_text(encoding="utf-8")))
    text = f"SOURCES = {sources!r}\nTOO_OLD = {TOO_OLD}\n" + _LOADER
    # level 6: a few KiB more than 9 on the wire, a fifth of the time on the critical path
    return zlib.compress(text.encode("utf-8"), 6)


def bootstrap_command(python: str = "python3") -> str:
    """The remote command: ``python`` reads exactly the payload from stdin and runs it.

    One line in double quotes without ``$`` or backquotes, so sh, bash, zsh,
    csh and fish all pass it through unchanged.
    """
    size = len(payload())
    code = f"import sys,zlib;exec(zlib.decompress(sys.stdin.buffer.read({size})))"
    # -S: no site initialisation (.pth files); the loader adds site-packages itself
    return f'{shlex.quote(python)} -S -c "{code}"'
