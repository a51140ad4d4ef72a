"""The remote helper's interpreter is remembered per host and started directly next time."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from helpers import make_tree
from sshd import SSHD

from srsync.core.ignore import IgnoreRules
from srsync.endpoints.agent import AgentEndpoint
from srsync.endpoints.local import LocalEndpoint
from srsync.endpoints.registry import HELPER_CACHE, EndpointPool
from srsync.jobspec import Location


def _open(pool: EndpointPool, loc: Location) -> AgentEndpoint:
    ep = pool.open(loc)
    assert isinstance(ep, AgentEndpoint)
    return ep


def test_interpreter_is_remembered_and_used(sshd: SSHD, tmp_path: Path) -> None:
    make_tree(tmp_path / "root", {"a": b"x"})
    loc = Location(str(tmp_path / "root"), sshd.conn_spec())
    state = tmp_path / "state"
    state.mkdir()
    with EndpointPool(cache_dir=state) as pool:
        first = _open(pool, loc)
        assert first._python == "python3"  # nothing known yet: the plain command
        real = first.helper_info["executable"]
    assert real.startswith("/")
    cache = json.loads((state / HELPER_CACHE).read_text())
    assert list(cache.values()) == [real]
    with EndpointPool(cache_dir=state) as pool:
        second = _open(pool, loc)
        assert second._python == real  # started directly, no wrapper on the way
        assert set(second.scan(IgnoreRules()).entries) == {"a"}


def test_stale_interpreter_falls_back_and_is_replaced(sshd: SSHD, tmp_path: Path) -> None:
    make_tree(tmp_path / "root", {"a": b"x"})
    loc = Location(str(tmp_path / "root"), sshd.conn_spec())
    state = tmp_path / "state"
    state.mkdir()
    with EndpointPool(cache_dir=state) as pool:
        label = pool.connection(sshd.conn_spec()).label
    (state / HELPER_CACHE).write_text(json.dumps({label: "/nonexistent/bin/python3"}))
    with EndpointPool(cache_dir=state) as pool:
        ep = _open(pool, loc)  # the helper still runs: the plain command after the stale one
        assert ep._python == "python3"
        assert set(ep.scan(IgnoreRules()).entries) == {"a"}
    cache = json.loads((state / HELPER_CACHE).read_text())
    assert cache[label] == ep.helper_info["executable"] != "/nonexistent/bin/python3"


def test_remembered_before_the_state_folder_exists(sshd: SSHD, tmp_path: Path) -> None:
    # a helper started ahead can answer before the run has made its state folder
    state = tmp_path / "not-yet" / "state"
    with EndpointPool(cache_dir=state) as pool:
        real = _open(pool, Location(str(tmp_path), sshd.conn_spec())).helper_info["executable"]
    assert list(json.loads((state / HELPER_CACHE).read_text()).values()) == [real]
    assert state.stat().st_mode & 0o777 == 0o700


def test_without_a_cache_folder_nothing_is_written(sshd: SSHD, tmp_path: Path) -> None:
    loc = Location(str(tmp_path), sshd.conn_spec())
    with EndpointPool() as pool:
        assert _open(pool, loc)._python == "python3"
    assert not list(tmp_path.rglob(HELPER_CACHE))


# ---- the helper's code: the client's bytecode when the remote python reads it ----------


def _compile_shipped() -> None:
    """Byte-compile the shipped modules as an install (or a first import) does."""
    import importlib.util
    import py_compile

    import srsync.agent as agent_pkg

    for name in agent_pkg.SHIPPED:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        py_compile.compile(spec.origin, doraise=True)


@pytest.mark.parametrize("variant", ["bytecode", "other-magic", "no-bytecode"])
def test_helper_uses_the_clients_bytecode_only_when_it_fits(
    sshd: SSHD, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    """Same magic number: the modules are not compiled on the server.  Another python
    (other magic) or no bytecode at hand: the sources are, and the helper works alike."""
    import srsync.agent as agent_pkg

    _compile_shipped()
    magic = b"\x00\x01\r\n" if variant == "other-magic" else importlib.util.MAGIC_NUMBER
    if variant == "no-bytecode":
        monkeypatch.setattr(agent_pkg, "_compiled", lambda origin: None)
    # built afresh (the real one is cached per process, maybe before the modules were compiled)
    monkeypatch.setattr(agent_pkg, "_segments", lambda bytecode=True: agent_pkg._build(magic, bytecode))
    program, blob = agent_pkg._segments()
    assert bool(blob) == (variant != "no-bytecode")
    make_tree(tmp_path / "root", {"a": b"x", "d/b": b"y", "d/.srsyncignore": "b\n"})
    with EndpointPool(cache_dir=tmp_path) as pool:
        ep = _open(pool, Location(str(tmp_path / "root"), sshd.conn_spec()))
        assert ep.helper_info["bytecode"] is (variant == "bytecode")
        got = ep.scan(IgnoreRules.from_patterns(["a"]))  # rules travel and are applied there
        assert set(got.entries) == {"d", "d/b", "d/.srsyncignore"}
        local = LocalEndpoint(str(tmp_path / "root")).scan(IgnoreRules.from_patterns(["a"]))
        assert got.ignore_files == local.ignore_files


def test_a_distant_server_gets_the_sources_only(
    sshd: SSHD, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bytecode (~2.5 times the compressed sources) goes only to a server on this
    machine or the local network; a distant one (here: said to be) compiles the sources."""
    import srsync.agent as agent_pkg
    import srsync.ssh.connection as connection

    _compile_shipped()
    monkeypatch.setattr(agent_pkg, "_segments", lambda bytecode=True: agent_pkg._build(
        importlib.util.MAGIC_NUMBER, bytecode))
    assert agent_pkg._segments(False)[1] == b"" and agent_pkg._segments(True)[1] != b""
    make_tree(tmp_path / "root", {"a": b"x"})
    loc = Location(str(tmp_path / "root"), sshd.conn_spec())
    with EndpointPool(cache_dir=tmp_path) as pool:
        ep = _open(pool, loc)
        assert ep.connection.near  # 127.0.0.1
        assert ep.helper_info["bytecode"] is True
    monkeypatch.setattr(connection, "_is_near", lambda transport: False)
    with EndpointPool(cache_dir=tmp_path) as pool:
        ep = _open(pool, loc)
        assert not ep.connection.near
        assert ep.helper_info["bytecode"] is False
        assert set(ep.scan(IgnoreRules()).entries) == {"a"}


# ---- the helper's program kept in the state folder (srsync.agent.load_payload) -----------

def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the program this process made, as a new run would not have it."""
    import srsync.agent as agent_pkg

    monkeypatch.setattr(agent_pkg, "_made", {})


def _no_building(monkeypatch: pytest.MonkeyPatch) -> None:
    import srsync.agent as agent_pkg

    def refuse(*args: object) -> bytes:
        raise AssertionError("built, not read from the kept copy")

    monkeypatch.setattr(agent_pkg, "_make_program", refuse)
    monkeypatch.setattr(agent_pkg, "_bytecode", refuse)


def test_the_program_is_kept_and_a_later_run_reads_it(
    sshd: SSHD, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import srsync.agent as agent_pkg

    _compile_shipped()
    _fresh(monkeypatch)
    make_tree(tmp_path / "root", {"a": b"x"})
    loc = Location(str(tmp_path / "root"), sshd.conn_spec())
    state = tmp_path / "state"
    with EndpointPool(cache_dir=state) as pool:
        assert _open(pool, loc).helper_info["bytecode"] is True
    built = agent_pkg.payload()
    assert (state / agent_pkg.PAYLOAD_CACHE).is_file()
    _fresh(monkeypatch)
    _no_building(monkeypatch)
    with EndpointPool(cache_dir=state) as pool:
        ep = _open(pool, loc)
        assert ep.helper_info["bytecode"] is True
        assert set(ep.scan(IgnoreRules()).entries) == {"a"}
    assert agent_pkg.payload() == built


def _shipped_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The shipped modules' sources copied to ``tmp_path``, and the payload built from those."""
    import srsync.agent as agent_pkg

    copies: dict[str, Path] = {}
    for name in agent_pkg.SHIPPED:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        copies[name] = tmp_path / "src" / (name + ".py")
        copies[name].parent.mkdir(exist_ok=True)
        copies[name].write_bytes(Path(spec.origin).read_bytes())
    monkeypatch.setattr(agent_pkg, "_origins", lambda: [(n, str(p)) for n, p in copies.items()])
    return copies


def test_a_kept_program_of_other_files_is_built_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zlib

    import srsync.agent as agent_pkg

    copies = _shipped_copies(tmp_path, monkeypatch)
    _fresh(monkeypatch)
    agent_pkg.load_payload(tmp_path)
    first = agent_pkg.payload()
    # a source edited (a reinstall, an upgrade): the kept copy no longer counts
    remote = copies["srsync.agent.remote"]
    remote.write_text(remote.read_text() + "\n# edited\n")
    _fresh(monkeypatch)
    agent_pkg.load_payload(tmp_path)
    second = agent_pkg.payload()
    assert second != first
    assert b"# edited" in zlib.decompress(agent_pkg._sources())
    # and that new build is what the next run reads
    _fresh(monkeypatch)
    with monkeypatch.context() as m:
        _no_building(m)
        agent_pkg.load_payload(tmp_path)
        assert agent_pkg.payload() == second


def test_a_damaged_or_unwritable_copy_only_means_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import srsync.agent as agent_pkg

    _shipped_copies(tmp_path, monkeypatch)
    _fresh(monkeypatch)
    agent_pkg.load_payload(tmp_path)
    good = agent_pkg.payload()
    kept = tmp_path / agent_pkg.PAYLOAD_CACHE
    data = bytearray(kept.read_bytes())
    data[-10] ^= 0xFF  # one bit of the program flipped on disk
    kept.write_bytes(bytes(data))
    _fresh(monkeypatch)
    agent_pkg.load_payload(tmp_path)
    assert agent_pkg.payload() == good  # built again, not the damaged bytes
    kept.write_bytes(b"srsync helper payload 1\n")  # torn short
    _fresh(monkeypatch)
    agent_pkg.load_payload(tmp_path)
    assert agent_pkg.payload() == good
    # a state folder that cannot hold it (here: a file in the way) changes nothing
    blocked = tmp_path / "blocked"
    blocked.write_text("not a folder")
    _fresh(monkeypatch)
    agent_pkg.load_payload(blocked)
    assert agent_pkg.payload() == good
    assert blocked.read_text() == "not a folder"


# ---- a venv's interpreter: its own site-packages, though started with -S -----------------


def _venv_with_xxhash(tmp_path: Path) -> Path:
    """A venv of this interpreter (no pip) whose own site-packages holds xxhash (linked)."""
    import subprocess
    import sys

    import xxhash

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site_dir = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    assert site_dir.is_dir()
    (site_dir / "xxhash").symlink_to(Path(xxhash.__file__).parent, target_is_directory=True)
    return venv


def test_loader_adds_the_venvs_site_packages(tmp_path: Path) -> None:
    """-S skips the venv's pyvenv.cfg, so ``site`` names only the base's directories;
    the loader adds the venv's own, where its packages (xxhash) are."""
    import subprocess

    import srsync.agent as agent_pkg

    venv = _venv_with_xxhash(tmp_path)
    head = agent_pkg._LOADER.split("# after this program")[0]
    code = f"TOO_OLD = {agent_pkg.TOO_OLD}\n{head}\nimport xxhash\nprint(xxhash.__file__)\nprint(sys.path)\n"
    out = subprocess.run([str(venv / "bin" / "python3"), "-S", "-c", code], check=True,
                         capture_output=True, text=True).stdout.splitlines()
    site_dir = str(next(venv.glob("lib/python*/site-packages")))
    assert out[0].startswith(site_dir)  # found in the venv, before any other copy
    assert site_dir in eval(out[1])  # noqa: S307  (our own print of a list of str)


def test_helper_under_a_venvs_python_finds_its_packages(sshd: SSHD, tmp_path: Path) -> None:
    venv = _venv_with_xxhash(tmp_path)
    data = b"hash me" * 1000
    make_tree(tmp_path / "root", {"f": data})
    python = str(venv / "bin" / "python3")
    with EndpointPool(helper=python) as pool:
        ep = _open(pool, Location(str(tmp_path / "root"), sshd.conn_spec()))
        assert ep.helper_info["executable"] == python
        assert ep.helper_info["xxhash"] is True
        from srsync.endpoints.hashing import digest_bytes

        assert ep.hash_file("f") == digest_bytes(data)
