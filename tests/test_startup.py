"""Start-up cost: what a command imports, and that the pydantic-free fast paths agree with
the pydantic ones they stand in for (srsync.config.quick, srsync.cli.coerce)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from srsync.config import models, quick

REPO = str(Path(__file__).resolve().parent.parent)

# Never needed to start a command, parse its options or run a local manual job.
HEAVY = ("pydantic", "pydantic_core", "paramiko", "cryptography", "invoke", "typer._adapters",
         "typer.rich_utils", "rich.markdown", "srsync.config.models", "smtplib")


def imported_by(code: str, cwd: Path, env_extra: dict[str, str] | None = None) -> set[str]:
    """The modules loaded after running ``code`` in a fresh interpreter."""
    env = dict(os.environ)
    env.pop("SRSYNC_CONF_DIR", None)
    env["HOME"] = str(cwd)
    env["SRSYNC_STATE_DIR"] = str(cwd / ".state")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    script = textwrap.dedent(code) + textwrap.dedent("""
        import json, sys
        print("\\nMODULES " + json.dumps(sorted(sys.modules)))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MODULES ")][-1]
    return set(json.loads(line.removeprefix("MODULES ")))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


RUN_CLI = """
    import sys
    from srsync.cli.main import app_for
    sys.argv = ["srsync", *{args!r}]
    try:
        app_for(sys.argv[1:])()
    except SystemExit as exc:
        assert exc.code == {code}, exc.code
"""


def test_importing_the_cli_is_light(tmp_path: Path) -> None:
    mods = imported_by("import srsync.cli.main", tmp_path)
    assert heavy(mods) == []
    assert not any(m == "rich" or m.startswith("rich.") for m in mods)
    assert "srsync.engine.runner" not in mods


def test_local_manual_run_needs_no_pydantic_paramiko_or_rich_help(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("x")
    conf = tmp_path / "conf"
    conf.mkdir()
    # a plain global.toml, like the benchmark's, still takes the fast path
    (conf / "global.toml").write_text(
        'timeout = 30\nmax_delete = 40.0\nuse_agent = false\nhost_key_policy = "strict"\n'
        'key = "k"\nuser = "me"\nport = 2222\nexclude = ["*.tmp"]\nknown_hosts = "kh"\n'
    )
    args = ["manual", "-M", "a", "-T", "b", "--conf-dir", "conf", "-x", "*.o", "-t", "5",
            "--max-delete", "30", "--sync-type", "Zero2One", "-v"]
    mods = imported_by(RUN_CLI.format(args=args, code=0), tmp_path)
    assert (tmp_path / "b" / "f").read_text() == "x"
    assert heavy(mods) == []
    assert "rich.progress" not in mods  # no terminal: plain lines, no progress bars


ENTRY = """
    import atexit, json, sys
    atexit.register(lambda: print("\\nMODULES " + json.dumps(sorted(sys.modules))))
    sys.argv = ["srsync", *{args!r}]
    from srsync.cli{module} import {entry}
    {entry}()
"""


def _entry(tmp_path: Path, args: list[str], entry: str) -> tuple[int, str, str, set[str]]:
    """Run ``srsync ARGS`` through ``srsync.cli.main()`` (the console script) or straight
    through typer (``srsync.cli.main.run``): exit code, output, errors, modules loaded."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HOME=str(tmp_path), SRSYNC_STATE_DIR=str(tmp_path / ".state"))
    env.pop("SRSYNC_CONF_DIR", None)
    code = ENTRY.format(args=args, module="" if entry == "main" else ".main", entry=entry)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    out, _, mods = proc.stdout.rpartition("\nMODULES ")
    return proc.returncode, out, proc.stderr, set(json.loads(mods)) if mods else set()


def test_plain_manual_run_never_imports_typer(tmp_path: Path) -> None:
    """The console script runs a plain ``srsync manual`` without typer (or click), and
    prints and exits exactly as the same command line does through typer."""
    import re

    for name, args in (
        ("ok", ["manual", "-M", "a", "-T", "b", "--conf-dir", "conf", "-N", "j1", "-x", "*.o", "-v"]),
        ("dry", ["manual", "-M", "a", "-T", "c", "--conf-dir", "conf", "-N", "j2", "-n"]),
        ("missing", ["manual", "-M", "nowhere", "-T", "b", "--conf-dir", "conf", "-N", "j3"]),
        ("bad host", ["manual", "-H", "", "-M", "a", "-T", "b", "--remote", "target", "--conf-dir", "conf"]),
    ):
        seen = []
        base = tmp_path / name.replace(" ", "-")
        for entry in ("main", "run"):
            shutil.rmtree(base, ignore_errors=True)  # the same fresh tree and paths for both
            (base / "a" / "d").mkdir(parents=True)
            (base / "a" / "d" / "f").write_text("x")
            (base / "conf").mkdir()
            code, out, err, mods = _entry(base, args, entry)
            assert mods, (name, entry, err[-800:])
            assert "Traceback" not in err, (name, entry, err[-800:])
            uses_typer = any(m == "typer" or m.startswith(("typer.", "click")) for m in mods)
            assert uses_typer == (entry == "run"), (name, entry)
            text = [" ".join(re.sub(r"\d+\.\d+ ?s\b", "T", x).split()) for x in (out, err)]
            # both sides are scanned at once: their "scanned" lines come in either order
            scans = sorted(re.findall(r"\S+: scanned \w+: \d+ entries", text[0]))
            text[0] = re.sub(r"\S+: scanned \w+: \d+ entries ?", "", text[0])
            seen.append((code, *text, scans))
            if name == "ok":
                assert (base / "b" / "d" / "f").read_text() == "x"
                assert scans == ["j1: scanned mirror: 2 entries", "j1: scanned target: 0 entries"]
            if name == "dry":
                assert not (base / "c").exists()
        assert seen[0] == seen[1], name


def test_option_help_needs_no_pydantic(tmp_path: Path) -> None:
    mods = imported_by(RUN_CLI.format(args=["manual", "--help"], code=0), tmp_path)
    assert "pydantic" not in mods and "typer._adapters" not in mods


def test_bad_option_value_still_uses_typers_message(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=REPO, HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "srsync", "manual", "-P", "abc", "-M", "a", "-T", "b"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Invalid value for '-P' / '--port'" in proc.stderr
    assert "Traceback" not in proc.stderr



def test_paramiko_loads_without_importlib_metadata_and_reports_its_real_version(tmp_path: Path) -> None:
    code = """
        import sys
        import srsync.ssh, paramiko
        assert "importlib.metadata" not in sys.modules, "the stand-in outlived paramiko's import"
        import importlib.metadata
        assert type(sys.modules["importlib.metadata"]).__name__ == "module"
        assert importlib.metadata.distributions  # the real module, whole
        assert paramiko.__version__ == importlib.metadata.version("paramiko"), paramiko.__version__
    """
    mods = imported_by(code, tmp_path)
    assert "paramiko" in mods


def test_metadata_stand_in_answers_one_name_and_hands_everything_else_to_the_real_module(tmp_path: Path) -> None:
    code = """
        import sys, importlib
        from srsync.ssh import _metadata_stand_in
        with _metadata_stand_in("pytest"):
            import importlib.metadata as md
            assert type(md).__name__ == "_MetadataStandIn"
            answer = md.version("pytest")
            assert "importlib.metadata" in sys.modules and type(sys.modules["importlib.metadata"]).__name__ == "_MetadataStandIn"
            other = md.version("paramiko")  # not the one it knows: the real module takes over
            assert type(sys.modules["importlib.metadata"]).__name__ == "module"
        import importlib.metadata as real
        assert answer == real.version("pytest") and other == real.version("paramiko")
        assert md.PackageNotFoundError is real.PackageNotFoundError
        # already imported: no stand-in at all
        with _metadata_stand_in("pytest"):
            assert sys.modules["importlib.metadata"] is real
    """
    imported_by(code, tmp_path)


# ---------------------------------------------------------------------------
# srsync.config.quick against the pydantic models


QUICK_SPECS: list[tuple[dict[str, Any], type[BaseModel]]] = [
    (quick.GLOBAL_FIELDS, models.GlobalModel),
    (quick.JOB_FIELDS, models.JobModel),
    (quick.TARGET_FIELDS, models.TargetModel),
    (quick.PATH_FIELDS, models.PathModel),
]


@pytest.mark.parametrize(("spec", "model"), QUICK_SPECS, ids=lambda x: getattr(x, "__name__", ""))
def test_quick_tables_mirror_the_models(spec: dict[str, Any], model: type[BaseModel]) -> None:
    assert set(spec) == set(model.model_fields)
    for key, field in model.model_fields.items():
        default = spec[key][1]
        if field.is_required():
            assert default is quick._REQUIRED, key
        elif field.default_factory is not None:
            assert default() == field.default_factory(), key  # type: ignore[call-arg]
        else:
            assert default == field.default, key
    assert not any(models.is_secret_key(k) for k in spec)


def _plain(value: Any) -> Any:
    """A comparable form keeping types: 30 and 30.0 differ (and nan equals nan)."""
    if isinstance(value, BaseModel):
        value = {k: getattr(value, k) for k in type(value).model_fields}
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        value = vars(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return ["list", *(_plain(v) for v in value)]
    return (type(value).__name__, repr(value))


VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 22, 65535, 65536, 0.0, 0.5, 30, 30.0, 100, 100.5, 3650.0, 4000,
    math.inf, math.nan, "", "x", " x", "a b", "a/b", "h:1", "u@h", "::1", "Zero2One", "One2One",
    "zero2one", "strict", "accept-new", "keep-both", "newer", "15m", "0s", "* * * * *",
    "61 * * * *", "hourly", "ENV_NAME", "1abc", [], ["x"], [""], [1], ["a", "b"], {}, {"x": 1},
]

BASE_JOB: dict[str, Any] = {
    "name": "manual",
    "targets": [{"host": "h", "mirror_remote": True, "paths": [{"mirror": "/a", "target": "b"}]}],
}
BASE_GLOBAL: dict[str, Any] = {"timeout": 15.0, "host_key_policy": "strict", "max_delete": 50.0}


def _variants() -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = [("job", BASE_JOB), ("global", BASE_GLOBAL), ("global", {})]
    for value in VALUES:
        for key in quick.JOB_FIELDS:
            out.append(("job", {**BASE_JOB, key: value}))
        for key in quick.GLOBAL_FIELDS:
            out.append(("global", {**BASE_GLOBAL, key: value}))
        for key in quick.TARGET_FIELDS:
            target = {**BASE_JOB["targets"][0], key: value}
            out.append(("job", {**BASE_JOB, "targets": [target]}))
        for key in quick.PATH_FIELDS:
            path = {**BASE_JOB["targets"][0]["paths"][0], key: value}
            out.append(("job", {**BASE_JOB, "targets": [{**BASE_JOB["targets"][0], "paths": [path]}]}))
    out.append(("job", {**BASE_JOB, "unknown": 1}))
    out.append(("job", {"targets": [{"paths": [{"mirror": "a"}]}]}))
    out.append(("job", {"targets": [{"paths": []}]}))
    out.append(("global", {"notify": {"smtp_host": "m", "to": ["a@b.c"]}}))
    out.append(("global", {"password": "secret"}))
    return out


def test_quick_accepts_only_what_pydantic_accepts_and_gives_the_same_values() -> None:
    accepted = 0
    for kind, data in _variants():
        model = models.GlobalModel if kind == "global" else models.JobModel
        fast = quick.global_model(data) if kind == "global" else quick.job_model(data)
        try:
            slow: BaseModel | None = model.model_validate(data)
        except ValidationError:
            slow = None
        if fast is None:
            continue
        accepted += 1
        assert slow is not None, (kind, data)
        assert _plain(fast) == _plain(slow), (kind, data)
    assert accepted > 200  # the fast path is really used
    assert quick.job_model(BASE_JOB) is not None and quick.global_model(BASE_GLOBAL) is not None


# ---------------------------------------------------------------------------
# srsync.cli.coerce against typer's own conversion


OPTION_VALUES: list[Any] = [
    None, "0", "1", "-1", "-0", "007", " 7", "7 ", "+7", "1_000", "1e3", "1.0", "1.5", "-2.25", ".5",
    "5.", "0.1", "0.2", "inf", "nan", "0x10", "99999999999999999999", "\u0663", "abc", "", " ",
    "mirror", "target", "MIRROR", "mirror ", "Zero2One", "One2One", "one2one", "x/y", 0, 1, 2, 1.0,
    300.0, True, False, ("a", "b"), (), ["a"],
]


def _outcome(call: Any) -> tuple[str, Any]:
    from typer import BadParameter

    try:
        value = call()
    except BadParameter as exc:
        return ("error", exc.format_message())
    return ("ok", _plain(value) if not isinstance(value, tuple) else ("tuple", value))


@pytest.mark.parametrize("command", ["manual", "autorun", "history", "overview", "resolve"])
def test_fast_option_conversion_matches_typer(command: str) -> None:
    from typer._coercion import build_runtime_param
    from typer.main import get_command

    from srsync.cli import coerce
    from srsync.cli.main import app_for

    group = get_command(app_for([command]))
    cmd = group.commands[command]  # type: ignore[attr-defined]
    ctx = cmd.make_context(command, [], resilient_parsing=True)
    checked = 0
    for param in cmd.params:
        convert = coerce._converter(param)
        if convert is None:
            continue
        fast = coerce._Coercion(convert)
        real = build_runtime_param(param.type_descriptor)
        for value in OPTION_VALUES:
            got = _outcome(lambda value=value: fast.coerce(value, param, ctx))  # noqa: B023
            want = _outcome(lambda value=value: real.coerce(value, param=param, ctx=ctx))  # noqa: B023
            assert got == want, (param.name, value)
            if value is not None and got[0] == "ok" and not (param.multiple or param.nargs == -1):
                try:
                    convert(value, ctx)
                    checked += 1  # converted without typer's help
                except coerce._Unsure:
                    pass
    assert checked >= 5


def test_the_helper_starts_without_typing_or_openssl() -> None:
    """The shipped program (as the server runs it, minus serving) imports neither
    ``typing`` nor hashlib's OpenSSL module, nor ``dataclasses``/``inspect``, nor ``json``
    and what it brings (``re``, ``enum``, ``functools``, ``collections``), nor
    ``contextlib`` or ``array``: each costs milliseconds of every helper start."""
    import zlib

    from srsync.agent import _program, _sources

    text = zlib.decompress(_program()).decode("utf-8").rstrip()
    serve = 'sys.modules["srsync.agent.remote"].main()'
    assert text.endswith(serve)
    heavy = ("typing", "hashlib", "_hashlib", "dataclasses", "inspect", "json", "re", "enum",
             "functools", "collections", "contextlib", "array")
    text = text[: -len(serve)] + f"print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    program = zlib.compress(text.encode("utf-8"))
    # started as the server starts it: the program on stdin (it is longer than one argument
    # may be); the loader then reads the bytecode that may follow (none here: a length of
    # 0), then the sources, and compiles them
    start = f"import sys,zlib;exec(zlib.decompress(sys.stdin.buffer.read({len(program)})))"
    sources = _sources()
    stdin = program + bytes(4) + len(sources).to_bytes(4, "big") + sources
    out = subprocess.run([sys.executable, "-S", "-c", start], input=stdin, capture_output=True, check=True)
    assert out.stdout.decode().split() == [], out.stderr.decode()[-500:]
