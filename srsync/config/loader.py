"""Loading config files into JobSpecs: TOML, global defaults, precedence, validation.

Precedence of every setting: path > target > job > global.toml > the built-in defaults of
``srsync.jobspec``.  ``exclude`` lists accumulate instead (global + job + target + path).

Relative local paths in a file (mirror/target roots, ``key``, ``known_hosts``,
``ssh_config``, ``state_dir``) are resolved against the directory containing that file.

Connection settings: a ``[[targets]]`` table with a ``host`` describes that host.  A path
written as a full location (``host:path``, ``sftp://...``) inherits the target's settings
when it names the target's host, else the job's and global.toml's (a target without a host
passes its own settings on as well); the user and port written in the location win.

Every problem becomes one line ``FILE: KEY.PATH: problem`` of a single ConfigError, so a
user sees all of them at once and never a pydantic report or a traceback.
"""

from __future__ import annotations

import dataclasses
import math
import os
import posixpath
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from srsync.config import quick
from srsync.config.locations import (
    conn_for,
    format_location,
    is_full_location,
    local_path,
    remote_path,
    split_remote,
)
from srsync.config.rules import ERROR_TYPE, is_secret_key
from srsync.errors import ConfigError
from srsync.jobspec import ConnSpec, JobSpec, Location, PairSpec, TargetSpec

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

    from srsync.config.models import ConnFields, GlobalModel, JobModel, NotifyModel, PairFields

# pydantic and the models (srsync.config.models) are imported only when data has to be
# validated by them: see _validate.  ``srsync manual`` with a plain global.toml never does.

CONF_DIR_ENV = "SRSYNC_CONF_DIR"
GLOBAL_FILE = "global.toml"
MANUAL_SOURCE = "<manual>"
MANUAL_NAME = "manual"
LOCAL_TARGET = "local"

# ConnSpec fields a layer may set, and PairSpec fields other than exclude.
_CONN_KEYS = (
    "user",
    "port",
    "key_files",
    "password_env",
    "passphrase_env",
    "timeout",
    "keepalive",
    "known_hosts",
    "host_key_policy",
    "ssh_config",
    "use_agent",
)
_PAIR_KEYS = ("sync_type", "checksum", "max_delete", "conflict", "trash", "trash_days")

@dataclasses.dataclass(frozen=True, slots=True)
class GlobalSettings:
    """The validated content of global.toml; None means "not set there".

    Local file paths (key files, known_hosts, ssh_config, state_dir) are already absolute.
    """

    source: str | None = None  # the global.toml read, None when there was none
    user: str | None = None
    port: int | None = None
    key_files: tuple[str, ...] | None = None
    password_env: str | None = None
    passphrase_env: str | None = None
    timeout: float | None = None
    keepalive: int | None = None
    known_hosts: str | None = None
    host_key_policy: str | None = None
    ssh_config: str | None = None
    use_agent: bool | None = None
    state_dir: str | None = None
    exclude: tuple[str, ...] = ()
    checksum: bool | None = None
    max_delete: float | None = None
    conflict: str | None = None
    sync_type: str | None = None
    trash: bool | None = None
    trash_days: float | None = None
    notify: Mapping[str, object] | None = None  # the [notify] keys that were set

    def conn_layer(self) -> dict[str, object]:
        return _set_only({k: getattr(self, k) for k in _CONN_KEYS})

    def pair_layer(self) -> dict[str, object]:
        return _set_only({k: getattr(self, k) for k in _PAIR_KEYS})


# ---------------------------------------------------------------------------
# problems and error messages


class _Problems:
    """Collects ``KEY.PATH: problem`` lines of one source; raised together."""

    def __init__(self, source: str, rename: Callable[[str], str] | None = None) -> None:
        self.source = source
        self.lines: list[str] = []
        self._rename = rename

    def add(self, key: str, message: str) -> None:
        shown = self._rename(key) if self._rename else key
        self.lines.append(f"{self.source}: {shown}: {message}" if shown else f"{self.source}: {message}")

    def __bool__(self) -> bool:
        return bool(self.lines)

    def raise_if_any(self) -> None:
        if self.lines:
            raise ConfigError("\n".join(self.lines))


def keypath(loc: Iterable[int | str]) -> str:
    """``("targets", 0, "paths", 1, "sync_type")`` -> ``targets[0].paths[1].sync_type``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_TYPE_MESSAGES = {
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "list_type": "must be a list",
    "model_type": "must be a table",
    "dict_type": "must be a table",
    "model_attributes_type": "must be a table",
    "extra_forbidden": "unknown key",
    "missing": "required",
}


def _bound(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def error_message(err: ErrorDetails) -> str:
    """One short sentence for one pydantic error, without pydantic's wording where it matters."""
    kind = err["type"]
    loc = err["loc"]
    last = loc[-1] if loc else ""
    ctx = err.get("ctx") or {}
    if kind == ERROR_TYPE:
        return err["msg"]
    if last in ("targets", "paths"):
        table = "[[targets]]" if last == "targets" else "[[targets.paths]]"
        if kind == "missing":
            return f"required: add at least one {table} table"
        if kind == "too_short":
            return f"needs at least one {table} table"
        if kind == "list_type":
            return f"must be an array of tables, written {table}"
    if kind in _TYPE_MESSAGES:
        return _TYPE_MESSAGES[kind]
    if kind == "greater_than":
        return f"must be greater than {_bound(ctx.get('gt'))}"
    if kind == "greater_than_equal":
        return f"must be at least {_bound(ctx.get('ge'))}"
    if kind == "less_than":
        return f"must be less than {_bound(ctx.get('lt'))}"
    if kind == "less_than_equal":
        return f"must be at most {_bound(ctx.get('le'))}"
    if kind == "too_short":
        return "must not be empty"
    msg = err["msg"].removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]


def _strip_secrets(data: object, loc: tuple[int | str, ...], problems: _Problems) -> Any:
    """A copy of ``data`` without secret keys, each one reported (its value never is)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            if is_secret_key(key):
                env_key = "passphrase_env" if "passphrase" in key.lower() else "password_env"
                problems.add(
                    keypath((*loc, key)),
                    "plaintext secrets are not allowed in config files: remove it and set "
                    f'{env_key} = "NAME" (an environment variable holding it), or leave it '
                    "out to use the system keyring or an interactive prompt",
                )
                continue
            out[key] = _strip_secrets(value, (*loc, key), problems)
        return out
    if isinstance(data, list):
        return [_strip_secrets(v, (*loc, i), problems) for i, v in enumerate(data)]
    return data


def _validate(kind: str, data: dict[str, Any], problems: _Problems, *, fast: bool = False) -> Any:
    """``data`` validated as a GlobalModel (``kind`` "global") or a JobModel ("job"); None
    when ``problems`` got its errors.

    ``fast``: data the pydantic-free checks of ``srsync.config.quick`` are sure about is
    taken without importing pydantic (the models are the slowest part of starting
    ``srsync manual``); everything else, and every error message, comes from the models.
    """
    clean = _strip_secrets(data, (), problems)
    if fast and not problems:
        model = quick.global_model(clean) if kind == "global" else quick.job_model(clean)
        if model is not None:
            return model
    from pydantic import ValidationError

    from srsync.config.models import GlobalModel, JobModel

    try:
        return (GlobalModel if kind == "global" else JobModel).model_validate(clean)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            problems.add(keypath(err["loc"]), error_message(err))
        return None


# ---------------------------------------------------------------------------
# reading TOML

_AT_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\Z")
_AT_END = re.compile(r"\s*\(at end of document\)\Z")


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """Parse TOML; a syntax error becomes ``SOURCE: line N: problem``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        at = _AT_LINE.search(msg)
        if at:
            line = int(at[1])
            msg = f"{msg[: at.start()]} (column {at[2]})"
        else:
            # Python < 3.14 reports some errors only "at end of document".
            line = max(1, len(text.splitlines()))
            end = _AT_END.search(msg)
            if end:
                msg = f"{msg[: end.start()]} (found at the end of the file)"
        raise ConfigError(f"{source}: line {line}: {msg}") from None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not valid UTF-8 text") from None
    return parse_toml(text, str(path))


# ---------------------------------------------------------------------------
# layers


def _set_only(values: Mapping[str, object]) -> dict[str, object]:
    return {k: v for k, v in values.items() if v is not None}


def _conn_layer(model: ConnFields, base_dir: Path) -> dict[str, object]:
    """The connection settings ``model`` sets, with local file paths made absolute."""
    layer: dict[str, object] = {
        "user": model.user,
        "port": model.port,
        "password_env": model.password_env,
        "passphrase_env": model.passphrase_env,
        "timeout": model.timeout,
        "keepalive": model.keepalive,
        "host_key_policy": model.host_key_policy,
        "use_agent": model.use_agent,
    }
    if model.key is not None:
        layer["key_files"] = tuple(local_path(k, base_dir) for k in model.key)
    if model.known_hosts is not None:
        layer["known_hosts"] = local_path(model.known_hosts, base_dir)
    if model.ssh_config is not None:
        layer["ssh_config"] = local_path(model.ssh_config, base_dir)
    return _set_only(layer)


def _pair_layer(model: PairFields) -> dict[str, object]:
    return _set_only({k: getattr(model, k) for k in _PAIR_KEYS})


def _conn(host: str, *layers: Mapping[str, object]) -> ConnSpec:
    """A ConnSpec from layers, lowest precedence first."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return ConnSpec(host=host, **merged)


def _merge_excludes(*lists: Iterable[str]) -> tuple[str, ...]:
    """Concatenate in order, keeping only the LAST copy of a repeated pattern.

    With gitignore semantics the last matching rule decides, so an earlier copy of a
    pattern that appears again later can never decide: dropping it changes nothing.  It
    keeps a saved job (whose pairs list the global patterns too) equal when reloaded.
    """
    flat = [p for lst in lists for p in lst]
    seen: set[str] = set()
    kept: list[str] = []
    for pattern in reversed(flat):
        if pattern not in seen:
            seen.add(pattern)
            kept.append(pattern)
    return tuple(reversed(kept))


def _globals_from_model(model: GlobalModel, source: str, base_dir: Path) -> GlobalSettings:
    conn = _conn_layer(model, base_dir)
    notify = model.notify.model_dump(exclude_none=True) if model.notify else None
    return GlobalSettings(
        source=source,
        state_dir=local_path(model.state_dir, base_dir) if model.state_dir else None,
        exclude=tuple(model.exclude),
        notify=notify or None,
        **_pair_layer(model),  # type: ignore[arg-type]
        **conn,  # type: ignore[arg-type]
    )


def _merge_notify(
    base: Mapping[str, object] | None, own: NotifyModel | None, problems: _Problems
) -> dict[str, object] | None:
    """The job's notification settings (global keys overridden by the job's), completed."""
    merged: dict[str, Any] = dict(base or {})
    if own is not None:
        merged.update(own.model_dump(exclude_none=True))
    if not merged:
        return None
    if "smtp_host" not in merged:
        problems.add("notify.smtp_host", "required (set it in [notify] here or in global.toml)")
    if not merged.get("to"):
        problems.add("notify.to", "required: the addresses to mail (here or in global.toml)")
    tls = bool(merged.get("tls", False))
    starttls = bool(merged.get("starttls", False))
    if tls and starttls:
        problems.add("notify.tls", "cannot be combined with starttls: choose one")
    default_port = 465 if tls else 587 if starttls else 25
    return {
        "smtp_host": merged.get("smtp_host"),
        "smtp_port": merged.get("smtp_port", default_port),
        "starttls": starttls,
        "tls": tls,
        "smtp_user": merged.get("smtp_user"),
        "password_env": merged.get("password_env"),
        "from_addr": merged.get("from_addr"),
        "to": list(merged.get("to") or []),
        "log_level": merged.get("log_level", 40),
    }


# ---------------------------------------------------------------------------
# building a JobSpec


def _side(
    text: str,
    key: str,
    *,
    on_host: bool,
    host_conn: ConnSpec | None,
    other_default: ConnSpec,
    base_dir: Path,
    problems: _Problems,
) -> Location | None:
    """One side of a pair.  ``on_host``: the side that mirror_remote puts on the target's host."""
    try:
        parts = split_remote(text)
        if parts is not None:
            same_host = host_conn is not None and parts.host == host_conn.host
            return Location(parts.path, conn_for(parts, host_conn if same_host else other_default))
        if on_host and host_conn is not None:
            return Location(remote_path(text), host_conn)
        return Location(local_path(text, base_dir))
    except ConfigError as exc:
        problems.add(key, str(exc))
        return None


def _tree_key(loc: Location) -> tuple[str | None, str]:
    """Where a tree lives, comparable between locations: (host or None, normalised path)."""
    if loc.conn is None:
        return None, os.path.realpath(loc.path)
    if loc.path.startswith("/"):
        # "//x" is "/x" on a POSIX server; posixpath.normpath keeps a leading "//"
        path = "/" + posixpath.normpath(loc.path).lstrip("/")
    else:
        # relative to the login directory, which depends on the user
        rel = posixpath.normpath(loc.path)
        home = f"~{loc.conn.user or ''}"
        path = home if rel == "." else f"{home}/{rel}"
    return loc.conn.host.lower(), path


def _inside(inner: str, outer: str) -> bool:
    """Whether path ``inner`` is ``outer`` or below it."""
    if inner == outer:
        return True
    prefix = outer if outer.endswith("/") else outer + "/"
    return inner.startswith(prefix)


def _check_pair(
    pair: PairSpec, key: str, check_root: bool, problems: _Problems
) -> None:
    mkey, tkey = _tree_key(pair.mirror), _tree_key(pair.target)
    if mkey[0] == tkey[0]:
        if mkey[1] == tkey[1]:
            problems.add(f"{key}.target", f"{pair.target} is the same directory as its mirror")
        elif _inside(tkey[1], mkey[1]):
            problems.add(f"{key}.target", f"{pair.target} is inside its own mirror {pair.mirror}")
        elif _inside(mkey[1], tkey[1]):
            problems.add(f"{key}.target", f"{pair.target} contains its own mirror {pair.mirror}")
    if check_root and pair.mirror.conn is None:
        if not os.path.exists(pair.mirror.path):
            problems.add(
                f"{key}.mirror",
                f"the local mirror root {pair.mirror.path} does not exist: create it or fix the path",
            )
        elif not os.path.isdir(pair.mirror.path):
            problems.add(f"{key}.mirror", f"the local mirror root {pair.mirror.path} is not a directory")


def _build_job(
    model: JobModel,
    *,
    source: str,
    default_name: str,
    base_dir: Path,
    globals_: GlobalSettings,
    problems: _Problems,
    check_roots: bool,
) -> JobSpec | None:
    """Apply precedence and build the JobSpec; None when ``problems`` got any."""
    g_conn, g_pair = globals_.conn_layer(), globals_.pair_layer()
    j_conn, j_pair = _conn_layer(model, base_dir), _pair_layer(model)
    # Defaults for a full location on a host other than its target's: the levels that do
    # not name a host.  Its host is a placeholder; conn_for replaces it.
    job_template = _conn("", g_conn, j_conn)
    targets: list[TargetSpec] = []
    for ti, tmodel in enumerate(model.targets):
        tkey = f"targets[{ti}]"
        host = None if tmodel.host in (None, LOCAL_TARGET) else tmodel.host
        t_conn, t_pair = _conn_layer(tmodel, base_dir), _pair_layer(tmodel)
        if host is None:
            if tmodel.mirror_remote:
                problems.add(
                    f"{tkey}.mirror_remote",
                    "has no effect without host: set host, or write the remote side as host:path",
                )
            host_conn = None
            other_default = _conn("", g_conn, j_conn, t_conn)
        else:
            host_conn = _conn(host, g_conn, j_conn, t_conn)
            other_default = job_template
        pairs: list[PairSpec] = []
        for pi, pmodel in enumerate(tmodel.paths):
            pkey = f"{tkey}.paths[{pi}]"
            mirror, target = (
                _side(
                    text,
                    f"{pkey}.{side}",
                    on_host=on_host,
                    host_conn=host_conn,
                    other_default=other_default,
                    base_dir=base_dir,
                    problems=problems,
                )
                for side, text, on_host in (
                    ("mirror", pmodel.mirror, tmodel.mirror_remote),
                    ("target", pmodel.target, not tmodel.mirror_remote),
                )
            )
            if mirror is None or target is None:
                continue
            settings: dict[str, Any] = {**g_pair, **j_pair, **t_pair, **_pair_layer(pmodel)}
            pair = PairSpec(
                mirror=mirror,
                target=target,
                exclude=_merge_excludes(globals_.exclude, model.exclude, tmodel.exclude, pmodel.exclude),
                **settings,
            )
            # Roots of disabled jobs and targets are not checked: they do not run, and an
            # unplugged disk must not stop the other jobs.
            _check_pair(pair, pkey, check_roots and model.enabled and tmodel.enabled, problems)
            pairs.append(pair)
        targets.append(TargetSpec(name=host or LOCAL_TARGET, pairs=tuple(pairs), enabled=tmodel.enabled))
    notify = _merge_notify(globals_.notify, model.notify, problems)
    if problems:
        return None
    state_dir = local_path(model.state_dir, base_dir) if model.state_dir else globals_.state_dir
    extra: dict[str, object] = {"notify": notify} if notify is not None else {}
    return JobSpec(
        name=model.name or default_name,
        source=source,
        targets=tuple(targets),
        enabled=model.enabled,
        schedule=model.schedule,
        watch=model.watch,
        state_dir=state_dir,
        extra=extra,
    )


def _job_from_data(
    data: dict[str, Any],
    problems: _Problems,
    *,
    source: str,
    default_name: str,
    base_dir: Path,
    globals_: GlobalSettings,
    check_roots: bool,
    fast: bool = False,
) -> JobSpec:
    """Validate raw (TOML-shaped) data into a JobSpec, raising every problem at once.

    ``fast``: see _validate."""
    model = _validate("job", data, problems, fast=fast)
    job = None
    if model is not None:
        job = _build_job(
            model,
            source=source,
            default_name=default_name,
            base_dir=base_dir,
            globals_=globals_,
            problems=problems,
            check_roots=check_roots,
        )
    problems.raise_if_any()
    assert job is not None  # no problems means the build succeeded
    for _job, key, message in overlap_problems([job]):
        problems.add(key, message)
    problems.raise_if_any()
    return job


def overlap_problems(
    jobs: Sequence[JobSpec], *, across_jobs_only: bool = False
) -> list[tuple[JobSpec, str, str]]:
    """(job, key, message) for every enabled pair whose target tree overlaps an earlier one's.

    Two pairs writing the same tree, or one inside the other, on the same host would undo
    each other's work.  Reading the same mirror is fine.  Disabled jobs and targets are
    skipped: they write nothing.
    """
    seen: list[tuple[JobSpec, str, tuple[str | None, str], Location]] = []
    found: list[tuple[JobSpec, str, str]] = []
    for job in jobs:
        if not job.enabled:
            continue
        for ti, target in enumerate(job.targets):
            if not target.enabled:
                continue
            for pi, pair in enumerate(target.pairs):
                key = f"targets[{ti}].paths[{pi}]"
                tree = _tree_key(pair.target)
                for other_job, other_key, other_tree, other_loc in seen:
                    if across_jobs_only and other_job is job:
                        continue
                    if tree[0] != other_tree[0]:
                        continue
                    if not (_inside(tree[1], other_tree[1]) or _inside(other_tree[1], tree[1])):
                        continue
                    where = (
                        other_key
                        if other_job is job
                        else f'job "{other_job.name}" ({other_job.source}) {other_key}'
                    )
                    found.append(
                        (
                            job,
                            f"{key}.target",
                            f"{pair.target} overlaps the target {other_loc} of {where}: "
                            "two pairs must not write the same tree",
                        )
                    )
                    break
                seen.append((job, key, tree, pair.target))
    return found


# ---------------------------------------------------------------------------
# public API


def resolve_conf_dir(explicit: str | None) -> Path:
    """The config folder: ``explicit`` (--conf-dir), else $SRSYNC_CONF_DIR, else ./conf when
    it exists, else the user config folder (e.g. ~/.config/srsync)."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(CONF_DIR_ENV)
    if env:
        return Path(env).expanduser()
    local = Path("conf")
    if local.is_dir():
        return local
    import platformdirs

    return platformdirs.user_config_path("srsync", appauthor=False)


def load_globals(conf_dir: Path, *, fast: bool = False) -> GlobalSettings:
    """global.toml of ``conf_dir``; empty settings when the file does not exist.

    ``fast``: a plain file is checked without pydantic when possible (see _validate);
    the result and any error messages are the same."""
    path = conf_dir / GLOBAL_FILE
    if not path.exists():
        return GlobalSettings()
    problems = _Problems(str(path))
    model = _validate("global", read_toml(path), problems, fast=fast)
    problems.raise_if_any()
    assert model is not None
    return _globals_from_model(model, str(path), path.parent)


def load_job_file(
    path: Path, globals_: GlobalSettings | None = None, *, check_roots: bool = True
) -> JobSpec:
    """One job file.  Without ``globals_``, global.toml beside the file is used (if any).

    ``check_roots=False`` skips the filesystem check of local mirror roots (for commands
    that only display jobs).
    """
    if path.name == GLOBAL_FILE:
        raise ConfigError(f"{path}: {GLOBAL_FILE} holds defaults for all jobs, it is not a job")
    if globals_ is None:
        globals_ = load_globals(path.parent)
    data = read_toml(path)
    return _job_from_data(
        data,
        _Problems(str(path)),
        source=str(path),
        default_name=path.stem,
        base_dir=path.parent,
        globals_=globals_,
        check_roots=check_roots,
    )


def load_job_text(
    path: Path, text: str, globals_: GlobalSettings | None = None, *, check_roots: bool = True
) -> JobSpec:
    """The job ``text`` would be if it were the content of ``path`` (to validate an edit or
    a new file before writing it)."""
    if globals_ is None:
        globals_ = load_globals(path.parent)
    return _job_from_data(
        parse_toml(text, str(path)),
        _Problems(str(path)),
        source=str(path),
        default_name=path.stem,
        base_dir=path.parent,
        globals_=globals_,
        check_roots=check_roots,
    )


def job_files(conf_dir: Path) -> list[Path]:
    """Every job file of ``conf_dir``: ``*.toml`` except global.toml and hidden files."""
    return [
        p
        for p in sorted(conf_dir.glob("*.toml"))
        if p.name != GLOBAL_FILE and not p.name.startswith(".") and p.is_file()
    ]


def _declared_name(path: Path) -> str:
    """The job name a file declares, without validating it (for --job selection)."""
    try:
        name = tomllib.loads(path.read_text(encoding="utf-8")).get("name")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        name = None
    return name if isinstance(name, str) and name else path.stem


def load_conf_dir(
    conf_dir: Path, names: list[str] | None = None, *, check_roots: bool = True
) -> list[JobSpec]:
    """The jobs of a config folder, sorted by name; ``names`` selects jobs by name (or file
    name).  Every problem of every file is reported in one ConfigError."""
    if not conf_dir.is_dir():
        raise ConfigError(
            f"{conf_dir}: the config folder does not exist: create it, or pass --conf-dir "
            f"or set {CONF_DIR_ENV}"
        )
    errors: list[str] = []
    try:
        globals_ = load_globals(conf_dir)
    except ConfigError as exc:
        errors.append(str(exc))
        globals_ = GlobalSettings()
    files = job_files(conf_dir)
    if names:
        declared = {p: _declared_name(p) for p in files}
        wanted = set(names)
        unknown = [n for n in names if n not in set(declared.values()) | {p.stem for p in files}]
        if unknown:
            available = ", ".join(sorted(set(declared.values()))) or "none"
            raise ConfigError(
                f"{conf_dir}: no job named {', '.join(map(repr, unknown))}; available: {available}"
            )
        files = [p for p in files if declared[p] in wanted or p.stem in wanted]
    jobs: list[JobSpec] = []
    for path in files:
        try:
            jobs.append(load_job_file(path, globals_, check_roots=check_roots))
        except ConfigError as exc:
            errors.append(str(exc))
    by_name: dict[str, JobSpec] = {}
    for job in jobs:
        first = by_name.setdefault(job.name, job)
        if first is not job:
            errors.append(f'{job.source}: name: job name "{job.name}" is already used by {first.source}')
    for job, key, message in overlap_problems(jobs, across_jobs_only=True):
        errors.append(f"{job.source}: {key}: {message}")
    if errors:
        raise ConfigError("\n".join(errors))
    return sorted(jobs, key=lambda j: j.name)


_MANUAL_OPTIONS = {
    "name": "-N/--name",
    "host": "-H/--host",
    "mirror": "-M/--mirror",
    "target": "-T/--target",
    "user": "-u/--user",
    "port": "-P/--port",
    "key": "-k/--key",
    "timeout": "-t/--timeout",
    "remote": "--remote",
    "mirror_remote": "--remote",
    "sync_type": "--sync-type",
    "checksum": "--checksum",
    "exclude": "--exclude",
}


def _manual_option(key: str) -> str:
    """Name a manual job's problem by its command-line option rather than its config key."""
    leaf = re.sub(r"^(targets\[0\]\.)?(paths\[0\]\.)?", "", key)
    leaf = re.sub(r"\[\d+\]$", "", leaf)
    return _MANUAL_OPTIONS.get(leaf, key)


def manual_job(
    name: str | None,
    host: str | None,
    mirror: str,
    target: str,
    user: str | None = None,
    port: int | None = None,
    key: str | Sequence[str] | None = None,
    timeout: float | None = None,
    remote_side: str = "mirror",
    sync_type: str | None = None,
    checksum: bool | None = None,
    excludes: Sequence[str] = (),
    max_delete: float | None = None,
    globals_: GlobalSettings | None = None,
    *,
    base_dir: Path | None = None,
    check_roots: bool = True,
) -> JobSpec:
    """The inline job of ``srsync manual``, validated exactly like a job file.

    ``host`` (-H) is the SSH host; ``remote_side`` says which side lives on it ("mirror",
    the default: pull; "target": push).  ``mirror``/``target`` may be full locations, which
    allows remote->remote; without any host the job is local->local.  user, port, key and
    timeout apply to every host of the job (a location's own ``user@``/``:port`` win);
    ``host`` may be ``user@host``.
    None (and ``checksum=None``) means "not given": global.toml or the default applies.
    Relative local paths resolve against ``base_dir`` (default: the current directory).
    """
    problems = _Problems("manual", rename=_manual_option)
    if host and "@" in host:  # -H user@host, as ssh accepts it; an explicit -u wins
        host_user, _, host = host.rpartition("@")
        user = user if user is not None else host_user
    if remote_side not in ("mirror", "target"):
        problems.add("remote", f"must be one of mirror, target (got {remote_side!r})")
    data: dict[str, Any] = {"name": name if name is not None else MANUAL_NAME}
    keys: list[str] | None = [key] if isinstance(key, str) else (list(key) if key is not None else None)
    for field, value in (("user", user), ("port", port), ("key", keys), ("timeout", timeout)):
        if value is not None:
            data[field] = value
    path: dict[str, Any] = {"mirror": mirror, "target": target}
    for field, value in (("sync_type", sync_type), ("checksum", checksum), ("max_delete", max_delete)):
        if value is not None:
            path[field] = value
    if excludes:
        path["exclude"] = list(excludes)
    tdata: dict[str, Any] = {"paths": [path]}
    if host is not None:
        tdata["host"] = host
        tdata["mirror_remote"] = remote_side == "mirror"
    data["targets"] = [tdata]
    return _job_from_data(
        data,
        problems,
        source=MANUAL_SOURCE,
        default_name=MANUAL_NAME,
        base_dir=base_dir if base_dir is not None else Path.cwd(),
        globals_=globals_ if globals_ is not None else GlobalSettings(),
        check_roots=check_roots,
        fast=True,
    )


# ---------------------------------------------------------------------------
# writing TOML

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_value(value: object) -> str:
    """A TOML literal for a str, bool, int, float or list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{value!r} cannot be written in a config file")
        return repr(value)
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            code = ord(ch)
            if ch in _ESCAPES:
                out.append(_ESCAPES[ch])
            elif 0xD800 <= code <= 0xDFFF:
                # a file name that is not valid Unicode: TOML cannot carry it
                raise ConfigError(f"{value!r} is not valid Unicode and cannot be written in TOML")
            elif code < 0x20 or code == 0x7F:
                out.append(f"\\u{code:04X}")
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _conn_lines(conn: ConnSpec, *, user_port: bool) -> list[str]:
    """Every setting of ``conn`` that TOML can state (None cannot be written: left out)."""
    values: dict[str, object] = {
        "user": conn.user if user_port else None,
        "port": conn.port if user_port else None,
        "key": list(conn.key_files),
        "password_env": conn.password_env,
        "passphrase_env": conn.passphrase_env,
        "timeout": conn.timeout,
        "keepalive": conn.keepalive,
        "known_hosts": conn.known_hosts,
        "host_key_policy": conn.host_key_policy,
        "ssh_config": conn.ssh_config,
        "use_agent": conn.use_agent,
    }
    return [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]


def _sides(target: TargetSpec) -> list[Location]:
    return [loc for pair in target.pairs for loc in (pair.mirror, pair.target)]


def _side_text(loc: Location, on_host: bool, host_conn: ConnSpec | None) -> str:
    """How to write one side so it loads back as ``loc`` (see _side)."""
    if loc.conn is None:
        return loc.path  # absolute: never mistaken for host:path
    if on_host and loc.conn == host_conn and not is_full_location(loc.path):
        return loc.path
    return format_location(loc)


def job_to_toml(job: JobSpec) -> str:
    """A job file that loads back to a JobSpec equal to ``job`` (apart from ``source``).

    Every setting is written out at the target and path level, so global.toml cannot
    change the result, except for keys left unset (None) there.  Raises ConfigError when
    the job cannot be expressed as one file (e.g. two hosts of one job with different keys).
    """
    lines = [f"# srsync job {job.name!r}", f"name = {toml_value(job.name)}"]
    lines.append(f"enabled = {toml_value(job.enabled)}")
    if job.schedule is not None:
        lines.append(f"schedule = {toml_value(job.schedule)}")
    lines.append(f"watch = {toml_value(job.watch)}")
    if job.state_dir is not None:
        lines.append(f"state_dir = {toml_value(job.state_dir)}")
    # Job-level settings reach full locations on hosts other than their target's.
    others = [
        loc.conn
        for t in job.targets
        if t.name != LOCAL_TARGET
        for loc in _sides(t)
        if loc.conn is not None and loc.conn.host != t.name
    ]
    if others:
        lines.extend(_conn_lines(others[0], user_port=False))
    notify = job.extra.get("notify")
    if isinstance(notify, Mapping):
        lines.append("")
        lines.append("[notify]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in notify.items() if v is not None)
    for target in job.targets:
        lines += ["", "[[targets]]"]
        named = target.name != LOCAL_TARGET
        host_conn: ConnSpec | None = None
        mirror_remote = False
        if named:
            on_host = [loc.conn for loc in _sides(target) if loc.conn and loc.conn.host == target.name]
            host_conn = on_host[0] if on_host else None
            first = target.pairs[0] if target.pairs else None
            if first is not None:
                if first.target.conn is None:
                    mirror_remote = True
                elif first.mirror.conn is not None:
                    mirror_remote = first.mirror.conn == host_conn and first.target.conn != host_conn
            lines.append(f"host = {toml_value(target.name)}")
            lines.append(f"mirror_remote = {toml_value(mirror_remote)}")
            if host_conn is not None:
                lines.extend(_conn_lines(host_conn, user_port=True))
        else:
            remote = [loc.conn for loc in _sides(target) if loc.conn is not None]
            if remote:
                lines.extend(_conn_lines(remote[0], user_port=False))
        lines.append(f"enabled = {toml_value(target.enabled)}")
        for pair in target.pairs:
            lines += ["", "  [[targets.paths]]"]
            mirror = _side_text(pair.mirror, named and mirror_remote, host_conn)
            tgt = _side_text(pair.target, named and not mirror_remote, host_conn)
            lines.append(f"  mirror = {toml_value(mirror)}")
            lines.append(f"  target = {toml_value(tgt)}")
            lines.append(f"  sync_type = {toml_value(pair.sync_type)}")
            lines.append(f"  exclude = {toml_value(list(pair.exclude))}")
            lines.append(f"  checksum = {toml_value(pair.checksum)}")
            lines.append(f"  max_delete = {toml_value(pair.max_delete)}")
            lines.append(f"  conflict = {toml_value(pair.conflict)}")
            lines.append(f"  trash = {toml_value(pair.trash)}")
            lines.append(f"  trash_days = {toml_value(pair.trash_days)}")
    text = "\n".join(lines) + "\n"
    _verify_round_trip(job, text)
    return text


def _verify_round_trip(job: JobSpec, text: str) -> None:
    """Refuse to hand out a file that would load as a different job."""
    try:
        again = _job_from_data(
            parse_toml(text, job.source),
            _Problems(job.source),
            source=job.source,
            default_name=job.name,
            base_dir=Path("/"),
            globals_=GlobalSettings(),
            check_roots=False,
        )
    except ConfigError as exc:
        raise ConfigError(f"{job.source}: job {job.name!r} cannot be written as a config file: {exc}") from None
    if again != job:
        raise ConfigError(
            f"{job.source}: job {job.name!r} cannot be written as one config file "
            "(its hosts need settings a file cannot express)"
        )
