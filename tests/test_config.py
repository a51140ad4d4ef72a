"""Config loading: precedence, locations, validation messages, conf dir lookup, round trips."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from pathlib import Path

import pytest

from srsync.config import (
    GlobalSettings,
    job_to_toml,
    load_conf_dir,
    load_globals,
    load_job_file,
    manual_job,
    parse_location,
    resolve_conf_dir,
)
from srsync.config.locations import format_location, is_full_location
from srsync.config.models import cron_problem, interval_seconds
from srsync.errors import ConfigError
from srsync.jobspec import ConnSpec, JobSpec, Location, PairSpec

# ---------------------------------------------------------------------------
# helpers


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A config folder with an existing local mirror root ``src`` beside the files."""
    directory = tmp_path / "conf"
    directory.mkdir()
    (directory / "src").mkdir()
    return directory


def job_text(body: str = "", target: str = "", path: str = "", *, head: str = "") -> str:
    """A one-target, one-pair job pushing ``src`` to web1:/srv/site, with extra keys per level."""
    return (
        textwrap.dedent(head)
        + textwrap.dedent(body)
        + '\n[[targets]]\nhost = "web1"\n'
        + textwrap.dedent(target)
        + '\n[[targets.paths]]\nmirror = "src"\ntarget = "/srv/site"\n'
        + textwrap.dedent(path)
    )


def load(conf: Path, text: str, name: str = "job.toml") -> JobSpec:
    return load_job_file(write(conf, name, text))


def errors_of(conf: Path, text: str, name: str = "job.toml") -> list[str]:
    path = write(conf, name, text)
    with pytest.raises(ConfigError) as info:
        load_job_file(path)
    return str(info.value).splitlines()


def only_pair(job: JobSpec) -> PairSpec:
    assert len(job.targets) == 1 and len(job.targets[0].pairs) == 1
    return job.targets[0].pairs[0]


def conn_of(loc: Location) -> ConnSpec:
    assert loc.conn is not None
    return loc.conn


# ---------------------------------------------------------------------------
# defaults and precedence


def test_builtin_defaults(conf: Path) -> None:
    job = load(conf, job_text())
    pair = only_pair(job)
    assert job.name == "job" and job.source == str(conf / "job.toml")
    assert job.enabled and not job.watch and job.schedule is None and job.state_dir is None
    assert job.targets[0].name == "web1" and job.targets[0].enabled
    assert (pair.sync_type, pair.checksum, pair.max_delete, pair.conflict, pair.exclude) == (
        "Zero2One", False, 50.0, "keep-both", ())
    assert conn_of(pair.target) == ConnSpec(host="web1")
    assert job.extra == {}


# (key, TOML literal per level global/job/target/path (None: not set), expected PairSpec value)
PAIR_PRECEDENCE = [
    ("sync_type", ('"One2One"', None, None, None), "One2One"),
    ("sync_type", ('"One2One"', '"Zero2One"', None, None), "Zero2One"),
    ("sync_type", (None, '"Zero2One"', '"One2One"', None), "One2One"),
    ("sync_type", ('"Zero2One"', '"Zero2One"', '"Zero2One"', '"One2One"'), "One2One"),
    ("checksum", ("true", None, None, None), True),
    ("checksum", ("true", "false", None, None), False),
    ("checksum", (None, None, "true", "false"), False),
    ("checksum", (None, None, None, "true"), True),
    ("max_delete", ("10", None, None, None), 10.0),
    ("max_delete", ("10", "20.5", None, None), 20.5),
    ("max_delete", ("10", "20", "30", None), 30.0),
    ("max_delete", ("10", "20", "30", "0"), 0.0),
    ("conflict", ('"newer"', None, None, None), "newer"),
    ("conflict", ('"newer"', '"mirror"', None, None), "mirror"),
    ("conflict", ('"newer"', '"mirror"', '"target"', None), "target"),
    ("conflict", ('"newer"', '"mirror"', '"target"', '"ask"'), "ask"),
]


@pytest.mark.parametrize(("key", "levels", "expected"), PAIR_PRECEDENCE)
def test_pair_setting_precedence(conf: Path, key: str, levels: tuple[str | None, ...], expected: object) -> None:
    g, j, t, p = (f"{key} = {v}\n" if v is not None else "" for v in levels)
    write(conf, "global.toml", g)
    pair = only_pair(load(conf, job_text(j, t, p)))
    assert getattr(pair, key) == expected


# (TOML key, ConnSpec field, literal per level global/job/target, expected)
CONN_PRECEDENCE = [
    ("user", "user", ('"g"', None, None), "g"),
    ("user", "user", ('"g"', '"j"', None), "j"),
    ("user", "user", ('"g"', '"j"', '"t"'), "t"),
    ("port", "port", ("2200", None, None), 2200),
    ("port", "port", ("2200", "2201", "2202"), 2202),
    ("timeout", "timeout", ("3", None, None), 3.0),
    ("timeout", "timeout", ("3", "4.5", None), 4.5),
    ("keepalive", "keepalive", ("0", None, None), 0),
    ("keepalive", "keepalive", ("0", "5", "7"), 7),
    ("host_key_policy", "host_key_policy", ('"accept-new"', None, None), "accept-new"),
    ("host_key_policy", "host_key_policy", ('"accept-new"', None, '"strict"'), "strict"),
    ("use_agent", "use_agent", ("false", None, None), False),
    ("use_agent", "use_agent", ("false", "true", None), True),
    ("password_env", "password_env", ('"G_PW"', '"J_PW"', None), "J_PW"),
    ("passphrase_env", "passphrase_env", (None, None, '"T_PP"'), "T_PP"),
    ("key", "key_files", ('"/k/g"', None, None), ("/k/g",)),
    ("key", "key_files", ('"/k/g"', '["/k/j1", "/k/j2"]', None), ("/k/j1", "/k/j2")),
    ("key", "key_files", ('"/k/g"', '"/k/j"', '"/k/t"'), ("/k/t",)),
    ("known_hosts", "known_hosts", ('"/kh/g"', '"/kh/j"', None), "/kh/j"),
    ("ssh_config", "ssh_config", (None, '"/sc/j"', '"/sc/t"'), "/sc/t"),
]


@pytest.mark.parametrize(("key", "field", "levels", "expected"), CONN_PRECEDENCE)
def test_connection_precedence(
    conf: Path, key: str, field: str, levels: tuple[str | None, ...], expected: object
) -> None:
    g, j, t = (f"{key} = {v}\n" if v is not None else "" for v in levels)
    write(conf, "global.toml", g)
    conn = conn_of(only_pair(load(conf, job_text(j, t))).target)
    assert getattr(conn, field) == expected


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        ((None, None, None, None), ()),
        (('["g"]', None, None, None), ("g",)),
        (('["g"]', '["j"]', '["t"]', '["p"]'), ("g", "j", "t", "p")),
        ((None, '["j1", "j2"]', None, '["p"]'), ("j1", "j2", "p")),
        # a repeated pattern keeps only its last copy: the last matching rule decides anyway
        (('["*.tmp", "a"]', '["b"]', None, '["*.tmp"]'), ("a", "b", "*.tmp")),
    ],
)
def test_excludes_accumulate(conf: Path, levels: tuple[str | None, ...], expected: tuple[str, ...]) -> None:
    g, j, t, p = (f"exclude = {v}\n" if v is not None else "" for v in levels)
    write(conf, "global.toml", g)
    assert only_pair(load(conf, job_text(j, t, p))).exclude == expected


def test_job_level_keys(conf: Path) -> None:
    job = load(conf, job_text('name = "site"\nenabled = false\nschedule = "15m"\nwatch = true\n'))
    assert (job.name, job.enabled, job.schedule, job.watch) == ("site", False, "15m", True)


def test_target_enabled_and_name(conf: Path) -> None:
    text = (
        '[[targets]]\nhost = "web1"\nenabled = false\n[[targets.paths]]\nmirror = "src"\ntarget = "/a"\n'
        '[[targets]]\n[[targets.paths]]\nmirror = "src"\ntarget = "out"\n'
        '[[targets]]\nhost = "local"\n[[targets.paths]]\nmirror = "src"\ntarget = "out2"\n'
    )
    job = load(conf, text)
    assert [(t.name, t.enabled) for t in job.targets] == [("web1", False), ("local", True), ("local", True)]
    assert job.targets[2].pairs[0].target == Location(str(conf / "out2"))


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path, conf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the current directory must not matter
    write(conf, "global.toml", 'state_dir = "gstate"\nknown_hosts = "kh"\n')
    job = load(conf, job_text('key = "keys/id"\nssh_config = "~/sshcfg"\n'))
    pair = only_pair(job)
    assert pair.mirror == Location(str(conf / "src"))
    conn = conn_of(pair.target)
    assert conn.key_files == (str(conf / "keys" / "id"),)
    assert conn.known_hosts == str(conf / "kh")
    assert conn.ssh_config == os.path.expanduser("~/sshcfg")
    assert job.state_dir == str(conf / "gstate")
    assert load(conf, job_text('state_dir = "../jstate"\n')).state_dir == str(tmp_path / "jstate")


def test_global_settings_object(conf: Path) -> None:
    assert load_globals(conf) == GlobalSettings()
    write(conf, "global.toml", 'user = "u"\nport = 2\nexclude = ["x"]\nstate_dir = "st"\n')
    g = load_globals(conf)
    assert (g.user, g.port, g.exclude, g.state_dir, g.source) == (
        "u", 2, ("x",), str(conf / "st"), str(conf / "global.toml"))


def test_globals_passed_explicitly_win_over_the_file_beside(conf: Path) -> None:
    write(conf, "global.toml", 'user = "beside"\n')
    path = write(conf, "job.toml", job_text())
    assert conn_of(only_pair(load_job_file(path)).target).user == "beside"
    explicit = GlobalSettings(user="explicit")
    assert conn_of(only_pair(load_job_file(path, explicit)).target).user == "explicit"


# ---------------------------------------------------------------------------
# notify


def test_notify_merged_with_global_and_completed(conf: Path) -> None:
    write(conf, "global.toml", '[notify]\nsmtp_host = "mail"\nto = ["ops@example.com"]\nstarttls = true\n')
    job = load(conf, job_text(head='[notify]\nlog_level = 20\nto = "me@example.com"\nfrom_addr = "Sync <s@example.com>"\n'))
    assert job.extra["notify"] == {
        "smtp_host": "mail", "smtp_port": 587, "starttls": True, "tls": False, "smtp_user": None,
        "password_env": None, "from_addr": "Sync <s@example.com>", "to": ["me@example.com"],
        "log_level": 20,
    }
    assert type(job.extra["notify"]) is dict


@pytest.mark.parametrize(
    ("notify", "expected"),
    [
        ('to = ["a@b.c"]', "job.toml: notify.smtp_host: required"),
        ('smtp_host = "m"', "job.toml: notify.to: required"),
        ('smtp_host = "m"\nto = ["a@b.c"]\ntls = true\nstarttls = true', "job.toml: notify.tls: cannot be combined with starttls"),
        ('smtp_host = "m"\nto = ["nobody"]', "job.toml: notify.to[0]: 'nobody' is not an email address"),
        ('smtp_host = "m"\nto = ["a@b.c"]\nlog_level = 25', "job.toml: notify.log_level: must be one of 10 (DEBUG)"),
        ('smtp_host = "m"\nto = ["a@b.c"]\nsmtp_port = 0', "job.toml: notify.smtp_port: must be at least 1"),
        ('smtp_host = "m"\nto = ["a@b.c"]\npassword_env = "my secret!"', "job.toml: notify.password_env: must be the NAME of an environment variable"),
        ('smtp_host = "m"\nto = ["a@b.c"]\nsmtp_password = "hunter2"', "job.toml: notify.smtp_password: plaintext secrets are not allowed"),
    ],
)
def test_notify_errors(conf: Path, notify: str, expected: str) -> None:
    lines = errors_of(conf, job_text(head=f"[notify]\n{notify}\n"))
    assert any(line.startswith(str(conf / expected.split(": ", 1)[0]) + ": " + expected.split(": ", 1)[1]) for line in lines), lines
    assert not any("hunter2" in line or "my secret!" in line for line in lines)


# ---------------------------------------------------------------------------
# locations


def test_parse_location_local(tmp_path: Path) -> None:
    base = tmp_path / "base"
    cases = {
        "/abs/dir": "/abs/dir",
        "/abs/dir/": "/abs/dir",
        "rel/dir": str(base / "rel" / "dir"),
        "./a:b": str(base / "a:b"),
        "../up": str(tmp_path / "up"),
        "/x/y:z": "/x/y:z",
        "~/in-home": os.path.expanduser("~/in-home"),
        "no-colon@here": str(base / "no-colon@here"),
        "with space: x": str(base / "with space: x"),
    }
    for text, expected in cases.items():
        assert parse_location(text, None, base) == Location(expected), text
        assert not is_full_location(text), text


DEFAULT = ConnSpec(host="ignored", user="duser", port=2022, key_files=("/k",), known_hosts="/kh",
                   host_key_policy="accept-new", timeout=3.0, keepalive=0, use_agent=False)

# text, expected (host, user, port, path); user/port None = inherited from DEFAULT
REMOTE_CASES = [
    ("host:/abs/p", ("host", None, None, "/abs/p")),
    ("host:rel/p", ("host", None, None, "rel/p")),
    ("host:", ("host", None, None, ".")),
    ("host:~", ("host", None, None, ".")),
    ("host:~/x", ("host", None, None, "x")),
    ("host:~other/x", ("host", None, None, "~other/x")),
    ("bob@host:/p", ("host", "bob", None, "/p")),
    ("bob@10.0.0.1:/p", ("10.0.0.1", "bob", None, "/p")),
    ("[::1]:/p", ("::1", None, None, "/p")),
    ("bob@[fe80::1]:p", ("fe80::1", "bob", None, "p")),
    ("host:/with:colon", ("host", None, None, "/with:colon")),
    ("sftp://host/abs/p", ("host", None, None, "/abs/p")),
    ("SFTP://host/abs/p", ("host", None, None, "/abs/p")),
    ("sftp://bob@host:2222/abs/p", ("host", "bob", 2222, "/abs/p")),
    ("sftp://host:2222/~/rel", ("host", None, 2222, "rel")),
    ("sftp://host/~", ("host", None, None, ".")),
    ("sftp://host", ("host", None, None, ".")),
    ("sftp://host/", ("host", None, None, "/")),
    ("sftp://host/a%20b/%7E", ("host", None, None, "/a b/~")),
    ("sftp://b%40x@host/p", ("host", "b@x", None, "/p")),
    ("sftp://[::1]:22/p", ("::1", None, 22, "/p")),
]


@pytest.mark.parametrize(("text", "expected"), REMOTE_CASES)
def test_parse_location_remote(tmp_path: Path, text: str, expected: tuple[str, str | None, int | None, str]) -> None:
    host, user, port, path = expected
    assert is_full_location(text)
    loc = parse_location(text, DEFAULT, tmp_path)
    assert loc.path == path
    assert loc.conn == dataclasses.replace(
        DEFAULT, host=host, user=user or DEFAULT.user, port=port or DEFAULT.port
    )
    # without defaults: only what the text says
    bare = parse_location(text, None, tmp_path)
    assert bare.conn == ConnSpec(host=host, user=user, port=port)


@pytest.mark.parametrize(
    "text",
    ["", "sftp://", "sftp:///path", "sftp://host:0/p", "sftp://host:99999/p", "sftp://host:x/p",
     "sftp://@host/p", "sftp://[::1/p", "sftp://[::1]x/p"],
)
def test_parse_location_errors(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        parse_location(text, None, tmp_path)


@pytest.mark.parametrize(
    "loc",
    [
        Location("/p", ConnSpec(host="h")),
        Location("rel/p", ConnSpec(host="h", user="u")),
        Location(".", ConnSpec(host="h", port=2)),
        Location("rel", ConnSpec(host="h", user="u", port=2)),
        Location("/a b/%x", ConnSpec(host="::1", port=22)),
        Location("/p", ConnSpec(host="::1")),
        Location("/p", ConnSpec(host="h", user="a@b")),
        Location("/local/only"),
    ],
)
def test_format_location_round_trip(tmp_path: Path, loc: Location) -> None:
    assert parse_location(format_location(loc), None, tmp_path) == loc


# ---------------------------------------------------------------------------
# path pairs: directions


def pair_text(target_keys: str, mirror: str, target: str) -> str:
    return f'[[targets]]\n{target_keys}\n[[targets.paths]]\nmirror = "{mirror}"\ntarget = "{target}"\n'


def test_push_pull_and_local(conf: Path) -> None:
    push = only_pair(load(conf, pair_text('host = "web"\nmirror_remote = false', "src", "/srv")))
    assert push.mirror == Location(str(conf / "src")) and push.target == Location("/srv", ConnSpec(host="web"))

    (conf / "dst").mkdir()
    pull = only_pair(load(conf, pair_text('host = "web"\nmirror_remote = true', "/data", "dst")))
    assert pull.mirror == Location("/data", ConnSpec(host="web")) and pull.target == Location(str(conf / "dst"))

    local = only_pair(load(conf, pair_text("", "src", "/elsewhere/copy")))
    assert local.mirror == Location(str(conf / "src")) and local.target == Location("/elsewhere/copy")


def test_remote_to_remote_full_locations(conf: Path) -> None:
    text = (
        'user = "jobuser"\ntimeout = 9\n'
        + pair_text('host = "web"\nuser = "webuser"\nkey = "/k/web"\nmirror_remote = false',
                    "bob@nas:/export", "/srv")
    )
    pair = only_pair(load(conf, text))
    # the target host gets the target's settings, the other host the job's (plus its own user)
    assert pair.target == Location("/srv", ConnSpec(host="web", user="webuser", key_files=("/k/web",), timeout=9.0))
    assert pair.mirror == Location("/export", ConnSpec(host="nas", user="bob", timeout=9.0))


def test_full_location_on_the_target_host_inherits_the_target(conf: Path) -> None:
    text = pair_text('host = "web"\nport = 2200\nkey = "/k/web"\nmirror_remote = true',
                     "sftp://other@web/abs", "web:/srv")
    pair = only_pair(load(conf, text))
    assert pair.mirror == Location("/abs", ConnSpec(host="web", user="other", port=2200, key_files=("/k/web",)))
    assert pair.target == Location("/srv", ConnSpec(host="web", port=2200, key_files=("/k/web",)))


def test_hostless_target_passes_its_settings_to_full_locations(conf: Path) -> None:
    text = pair_text('user = "u"\nport = 2022', "a:/x", "sftp://b:23/y")
    pair = only_pair(load(conf, text))
    assert pair.mirror == Location("/x", ConnSpec(host="a", user="u", port=2022))
    assert pair.target == Location("/y", ConnSpec(host="b", user="u", port=23))
    assert load(conf, text).targets[0].name == "local"


def test_remote_paths_are_kept_as_written(conf: Path) -> None:
    text = pair_text('host = "web"', "src", "backups/site")
    assert only_pair(load(conf, text)).target.path == "backups/site"
    text = pair_text('host = "web"', "src", "~/backups")
    assert only_pair(load(conf, text)).target.path == "backups"


# ---------------------------------------------------------------------------
# error messages


def rel(conf: Path, line: str) -> str:
    """An error line with the config folder written as ``CONF``."""
    return line.replace(str(conf), "CONF")


ERROR_CASES = [
    # (job text, expected error line with CONF/job.toml as the file)
    ("sync_type = 'Zero2One'\n[[targets]]\n[[targets.paths]]\nmirror = 'src'\n",
     "CONF/job.toml: targets[0].paths[0].target: required"),
    (job_text(target="colour = 'red'\n"), "CONF/job.toml: targets[0].colour: unknown key"),
    (job_text(head="colour = 'red'\n"), "CONF/job.toml: colour: unknown key"),
    (job_text(path="colour = 'red'\n"), "CONF/job.toml: targets[0].paths[0].colour: unknown key"),
    (job_text(path="sync_type = 'one2one'\n"),
     "CONF/job.toml: targets[0].paths[0].sync_type: must be one of Zero2One, One2One (got 'one2one')"),
    (job_text(target="sync_type = 'Mirror'\n"),
     "CONF/job.toml: targets[0].sync_type: must be one of Zero2One, One2One (got 'Mirror')"),
    (job_text(path="conflict = 'theirs'\n"),
     "CONF/job.toml: targets[0].paths[0].conflict: must be one of keep-both, newer, mirror, target, ask (got 'theirs')"),
    (job_text(target="host_key_policy = 'auto-add'\n"),
     "CONF/job.toml: targets[0].host_key_policy: must be one of strict, accept-new (got 'auto-add')"),
    (job_text(target="port = '22'\n"), "CONF/job.toml: targets[0].port: must be a whole number"),
    (job_text(target="port = 70000\n"), "CONF/job.toml: targets[0].port: must be at most 65535"),
    (job_text(target="timeout = 0\n"), "CONF/job.toml: targets[0].timeout: must be greater than 0"),
    (job_text(target="timeout = inf\n"), "CONF/job.toml: targets[0].timeout: must be a finite number"),
    (job_text(target="keepalive = -1\n"), "CONF/job.toml: targets[0].keepalive: must be at least 0"),
    (job_text(path="max_delete = 100.5\n"), "CONF/job.toml: targets[0].paths[0].max_delete: must be at most 100"),
    (job_text(path="max_delete = -1\n"), "CONF/job.toml: targets[0].paths[0].max_delete: must be at least 0"),
    (job_text(path="checksum = 'yes'\n"), "CONF/job.toml: targets[0].paths[0].checksum: must be true or false"),
    (job_text("watch = 1\n"), "CONF/job.toml: watch: must be true or false"),
    (job_text(target="key = 5\n"), "CONF/job.toml: targets[0].key: must be a string or a list of strings"),
    (job_text(target="key = ['a', 5]\n"), "CONF/job.toml: targets[0].key[1]: must be a string"),
    (job_text(path="exclude = '*.tmp'\n"), "CONF/job.toml: targets[0].paths[0].exclude: must be a list"),
    (pair_text("host = ''", "src", "/x"), "CONF/job.toml: targets[0].host: must not be empty"),
    (pair_text("host = 'bob@web'", "src", "/x"), 'CONF/job.toml: targets[0].host: write the user as user = "NAME", not in host'),
    (pair_text("host = 'web:2222'", "src", "/x"), "CONF/job.toml: targets[0].host: write the port as port = N, not in host"),
    (pair_text("host = 'a b'", "src", "/x"), "CONF/job.toml: targets[0].host: 'a b' is not a host name or ~/.ssh/config alias"),
    (job_text("name = 'a/b'\n"), "CONF/job.toml: name: must not contain '/', '\\' or control characters"),
    (job_text(target="password_env = 'hunter 2'\n"),
     "CONF/job.toml: targets[0].password_env: must be the NAME of an environment variable that holds the secret (letters, digits and _), not the secret itself"),
    ("name = 'x'\n", "CONF/job.toml: targets: required: add at least one [[targets]] table"),
    ("targets = []\n", "CONF/job.toml: targets: needs at least one [[targets]] table"),
    ("[targets]\nhost = 'x'\n", "CONF/job.toml: targets: must be an array of tables, written [[targets]]"),
    ("[[targets]]\nhost = 'x'\n", "CONF/job.toml: targets[0].paths: required: add at least one [[targets.paths]] table"),
    ("targets = [1]\n", "CONF/job.toml: targets[0]: must be a table"),
    (pair_text("mirror_remote = true", "src", "/x"),
     "CONF/job.toml: targets[0].mirror_remote: has no effect without host: set host, or write the remote side as host:path"),
    (pair_text('host = "h"', "sftp://h:0/x", "/y"),
     "CONF/job.toml: targets[0].paths[0].mirror: 'sftp://h:0/x': the port must be a number from 1 to 65535"),
]


@pytest.mark.parametrize(("text", "expected"), ERROR_CASES)
def test_error_lines(conf: Path, text: str, expected: str) -> None:
    lines = [rel(conf, line) for line in errors_of(conf, text)]
    assert expected in lines, lines
    for line in lines:  # never pydantic's own wording
        assert "pydantic" not in line and "validation error" not in line.lower()
        assert "Input should" not in line and "Field required" not in line


@pytest.mark.parametrize(
    ("schedule", "problem"),
    [
        ("every 5", "a cron expression has 5 fields (minute hour day month weekday), not 2"),
        ("5x", "'5x' is not an interval like 30s, 15m, 2h, 1d or a 5-field cron expression"),
        ("0s", "an interval must be longer than 0s"),
        ("", "must not be empty (leave the key out for no schedule)"),
        ("61 * * * *", "cron minute field '61': 61 is out of range 0-59"),
        ("* 24 * * *", "cron hour field '24': 24 is out of range 0-23"),
        ("* * 0 * *", "cron day of month field '0': 0 is out of range 1-31"),
        ("* * * 13 *", "cron month field '13': 13 is out of range 1-12"),
        ("* * * * 8", "cron day of week field '8': 8 is out of range 0-7"),
        ("* * * * mon", "cron day of week field 'mon': 'mon' is not a number (use 0-7)"),
        ("*/0 * * * *", "cron minute field '*/0': step '0' must be a positive number"),
        ("5-1 * * * *", "cron minute field '5-1': range 5-1 runs backwards"),
        ("1,,2 * * * *", "cron minute field '1,,2': '' is not a number (use 0-59)"),
    ],
)
def test_bad_schedules(conf: Path, schedule: str, problem: str) -> None:
    lines = [rel(conf, line) for line in errors_of(conf, job_text(f"schedule = {schedule!r}\n"))]
    assert lines == [f"CONF/job.toml: schedule: {problem}"]


@pytest.mark.parametrize(
    "schedule", ["30s", "15m", "2h", "1d", "1h30m", "*/5 * * * *", "0 3 * * 1-5", "0,30 8-18/2 1 1,6 7", " 15m "]
)
def test_good_schedules(conf: Path, schedule: str) -> None:
    assert load(conf, job_text(f"schedule = {schedule!r}\n")).schedule == schedule.strip()


def test_schedule_helpers() -> None:
    assert interval_seconds("1h30m") == 5400 and interval_seconds("1d") == 86400
    assert interval_seconds("* * * * *") is None
    assert cron_problem("0 0 1 1 0") is None


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ('name = "x"\nsync_type = \n', 2, "Invalid value (column 13)"),
        ('name = "x"\n\n[[targets]\nhost = "a"\n', 3, "(column"),
        ('name = "x"\nname = "y"\n', 2, "Cannot overwrite a value"),
        ('name = "unterminated\n', 1, "(column"),
    ],
)
def test_malformed_toml_reports_the_line(conf: Path, text: str, line: int, fragment: str) -> None:
    lines = [rel(conf, ln) for ln in errors_of(conf, text)]
    assert len(lines) == 1
    assert lines[0].startswith(f"CONF/job.toml: line {line}: "), lines
    assert fragment in lines[0]


def test_not_utf8(conf: Path) -> None:
    (conf / "job.toml").write_bytes(b'name = "x"\n# \xff\n')
    with pytest.raises(ConfigError, match=r"job.toml: line 2: not valid UTF-8 text"):
        load_job_file(conf / "job.toml")


@pytest.mark.parametrize(
    ("where", "expected_key", "env_key"),
    [
        ("head", "password", "password_env"),
        ("head", "passphrase", "passphrase_env"),
        ("target", "targets[0].password", "password_env"),
        ("target", "targets[0].Passphrase", "passphrase_env"),
        ("path", "targets[0].paths[0].password", "password_env"),
        ("notify", "notify.password", "password_env"),
        ("global", "password", "password_env"),
    ],
)
def test_plaintext_secrets_are_refused(conf: Path, where: str, expected_key: str, env_key: str) -> None:
    leaf = expected_key.rsplit(".", 1)[-1]
    secret = f'{leaf} = "hunter2"\n'
    if where == "global":
        write(conf, "global.toml", secret)
        with pytest.raises(ConfigError) as info:
            load_job_file(write(conf, "job.toml", job_text()))
        lines = [rel(conf, line) for line in str(info.value).splitlines()]
        file = "CONF/global.toml"
    else:
        text = {
            "head": job_text(head=secret),
            "target": job_text(target=secret),
            "path": job_text(path=secret),
            "notify": job_text(head=f'[notify]\nsmtp_host = "m"\nto = ["a@b.c"]\n{secret}'),
        }[where]
        lines = [rel(conf, line) for line in errors_of(conf, text)]
        file = "CONF/job.toml"
    assert lines == [
        f"{file}: {expected_key}: plaintext secrets are not allowed in config files: remove it and set "
        f'{env_key} = "NAME" (an environment variable holding it), or leave it out to use the '
        "system keyring or an interactive prompt"
    ]
    assert "hunter2" not in "\n".join(lines)


def test_password_env_in_a_world_readable_file_is_fine(conf: Path) -> None:
    path = write(conf, "job.toml", job_text(target='password_env = "WEB_PW"\n'))
    path.chmod(0o644)
    assert conn_of(only_pair(load_job_file(path)).target).password_env == "WEB_PW"


def test_several_problems_several_lines(conf: Path) -> None:
    text = job_text("sync_type = 'x'\nwatch = 'y'\n", "colour = 1\n", "checksum = 2\n")
    lines = [rel(conf, line) for line in errors_of(conf, text)]
    assert sorted(lines) == sorted([
        "CONF/job.toml: sync_type: must be one of Zero2One, One2One (got 'x')",
        "CONF/job.toml: watch: must be true or false",
        "CONF/job.toml: targets[0].colour: unknown key",
        "CONF/job.toml: targets[0].paths[0].checksum: must be true or false",
    ])


@pytest.mark.parametrize(
    ("mirror", "target", "expected"),
    [
        ("src", "src/copy", "targets[0].paths[0].target: {c}/src/copy is inside its own mirror {c}/src"),
        ("src", ".", "targets[0].paths[0].target: {c} contains its own mirror {c}/src"),
        ("src", "./src/", "targets[0].paths[0].target: {c}/src is the same directory as its mirror"),
        ("src", "srcx", None),  # a sibling with a common prefix is no overlap
    ],
)
def test_target_inside_its_mirror(conf: Path, mirror: str, target: str, expected: str | None) -> None:
    text = pair_text("", mirror, target)
    if expected is None:
        load(conf, text)
        return
    lines = errors_of(conf, text)
    assert lines == [f"{conf / 'job.toml'}: " + expected.format(c=conf)]


def test_remote_target_inside_remote_mirror_on_the_same_host(conf: Path) -> None:
    lines = errors_of(conf, pair_text('host = "h"', "h:/data", "/data/copy"))
    assert lines == [f"{conf / 'job.toml'}: targets[0].paths[0].target: h:/data/copy is inside its own mirror h:/data"]
    load(conf, pair_text('host = "h"', "other:/data", "/data/copy"))  # different hosts


def test_missing_local_mirror_root(conf: Path) -> None:
    lines = errors_of(conf, pair_text('host = "h"', "nope", "/t"))
    assert lines == [
        f"{conf / 'job.toml'}: targets[0].paths[0].mirror: the local mirror root {conf / 'nope'} "
        "does not exist: create it or fix the path"
    ]
    (conf / "afile").write_text("x")
    lines = errors_of(conf, pair_text('host = "h"', "afile", "/t"))
    assert lines == [f"{conf / 'job.toml'}: targets[0].paths[0].mirror: the local mirror root {conf / 'afile'} is not a directory"]


def test_missing_mirror_root_is_ignored_when_disabled_or_unchecked(conf: Path) -> None:
    load(conf, "enabled = false\n" + pair_text('host = "h"', "nope", "/t"))
    load(conf, pair_text('host = "h"\nenabled = false', "nope", "/t"))
    path = write(conf, "job.toml", pair_text('host = "h"', "nope", "/t"))
    assert only_pair(load_job_file(path, check_roots=False)).mirror.path == str(conf / "nope")
    # a remote mirror is not checked here (that needs a connection)
    load(conf, pair_text('host = "h"\nmirror_remote = true', "nope", "/t"))


def two_pairs(first: str, second: str, host1: str = "web", host2: str = "web") -> str:
    return (
        f'[[targets]]\nhost = "{host1}"\n[[targets.paths]]\nmirror = "src"\ntarget = "{first}"\n'
        f'[[targets]]\nhost = "{host2}"\n[[targets.paths]]\nmirror = "src"\ntarget = "{second}"\n'
    )


@pytest.mark.parametrize(
    ("text", "overlaps"),
    [
        (two_pairs("/srv/site", "/srv/site"), True),
        (two_pairs("/srv/site", "/srv/site/sub"), True),
        (two_pairs("/srv/site/sub", "/srv"), True),
        (two_pairs("/srv/site", "/srv//site/./"), True),
        (two_pairs("/srv/site", "/srv/site2"), False),
        (two_pairs("/srv/site", "/srv/site", "web1", "web2"), False),
        (two_pairs("/srv/site", "/srv/site", "WEB", "web"), True),
        (two_pairs("site", "site"), True),  # same login directory
        (two_pairs("site", "/site"), False),
        (two_pairs("site", "bob@web:site"), False),  # another user's home
        (two_pairs("/srv/site", "/srv/site").replace('host = "web"\n', 'host = "web"\nenabled = false\n', 1), False),
    ],
)
def test_overlapping_targets_in_one_job(conf: Path, text: str, overlaps: bool) -> None:
    if not overlaps:
        load(conf, text)
        return
    lines = errors_of(conf, text)
    assert len(lines) == 1
    assert lines[0].startswith(f"{conf / 'job.toml'}: targets[1].paths[0].target: ")
    assert "overlaps the target" in lines[0] and "of targets[0].paths[0]" in lines[0]


def test_overlapping_local_targets_in_one_target(conf: Path) -> None:
    text = '[[targets]]\n[[targets.paths]]\nmirror = "src"\ntarget = "out"\n[[targets.paths]]\nmirror = "src"\ntarget = "out/x"\n'
    lines = errors_of(conf, text)
    assert lines == [
        f"{conf / 'job.toml'}: targets[0].paths[1].target: {conf / 'out/x'} overlaps the target "
        f"{conf / 'out'} of targets[0].paths[0]: two pairs must not write the same tree"
    ]


def test_same_mirror_for_two_targets_is_fine(conf: Path) -> None:
    job = load(conf, two_pairs("/srv/site", "/srv/site", "web1", "web2"))
    assert [t.name for t in job.targets] == ["web1", "web2"]


# ---------------------------------------------------------------------------
# config folders


def test_load_conf_dir_sorted_and_skipping_global(conf: Path) -> None:
    write(conf, "global.toml", 'user = "g"\n')
    write(conf, "b.toml", job_text('name = "alpha"\n'))
    write(conf, "a.toml", pair_text('host = "other"', "src", "/srv/site"))
    write(conf, ".hidden.toml", "garbage = ")
    (conf / "notes.txt").write_text("not a job")
    jobs = load_conf_dir(conf)
    assert [(j.name, Path(j.source).name) for j in jobs] == [("a", "a.toml"), ("alpha", "b.toml")]
    assert all(conn_of(only_pair(j).target).user == "g" for j in jobs)


def test_load_conf_dir_selects_names(conf: Path) -> None:
    write(conf, "one.toml", pair_text('host = "h1"', "src", "/a"))
    write(conf, "two.toml", 'name = "deux"\n' + pair_text('host = "h2"', "src", "/a"))
    write(conf, "broken.toml", "this is = not toml")
    assert [j.name for j in load_conf_dir(conf, ["deux"])] == ["deux"]
    assert [j.name for j in load_conf_dir(conf, ["two", "one"])] == ["deux", "one"]
    with pytest.raises(ConfigError) as info:
        load_conf_dir(conf, ["three"])
    assert str(info.value) == f"{conf}: no job named 'three'; available: broken, deux, one"


def test_load_conf_dir_reports_every_file(conf: Path) -> None:
    write(conf, "global.toml", "port = 'x'\n")
    write(conf, "a.toml", job_text(target="colour = 1\n"))
    write(conf, "b.toml", "x = \n")
    write(conf, "c.toml", job_text())
    with pytest.raises(ConfigError) as info:
        load_conf_dir(conf)
    assert [rel(conf, line) for line in str(info.value).splitlines()] == [
        "CONF/global.toml: port: must be a whole number",
        "CONF/a.toml: targets[0].colour: unknown key",
        "CONF/b.toml: line 1: Invalid value (column 5)",
    ]


def test_overlapping_targets_across_jobs(conf: Path) -> None:
    write(conf, "a.toml", pair_text('host = "web"', "src", "/srv/site"))
    write(conf, "b.toml", pair_text('host = "web"', "src", "/srv/site/blog"))
    with pytest.raises(ConfigError) as info:
        load_conf_dir(conf)
    assert str(info.value) == (
        f"{conf / 'b.toml'}: targets[0].paths[0].target: web:/srv/site/blog overlaps the target "
        f'web:/srv/site of job "a" ({conf / "a.toml"}) targets[0].paths[0]: two pairs must not '
        "write the same tree"
    )
    write(conf, "b.toml", "enabled = false\n" + pair_text('host = "web"', "src", "/srv/site/blog"))
    assert len(load_conf_dir(conf)) == 2
    # loaded alone, each job is fine
    write(conf, "b.toml", pair_text('host = "web"', "src", "/srv/site/blog"))
    assert [j.name for j in load_conf_dir(conf, ["b"])] == ["b"]


def test_duplicate_job_names(conf: Path) -> None:
    write(conf, "a.toml", 'name = "same"\n' + pair_text('host = "h1"', "src", "/a"))
    write(conf, "b.toml", 'name = "same"\n' + pair_text('host = "h2"', "src", "/a"))
    with pytest.raises(ConfigError, match=r'b.toml: name: job name "same" is already used by .*a.toml'):
        load_conf_dir(conf)


def test_missing_conf_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the config folder does not exist"):
        load_conf_dir(tmp_path / "nope")


def test_global_toml_is_not_a_job(conf: Path) -> None:
    with pytest.raises(ConfigError, match="not a job"):
        load_job_file(write(conf, "global.toml", ""))


def test_global_toml_rejects_job_keys(conf: Path) -> None:
    write(conf, "global.toml", "targets = []\nname = 'x'\n")
    with pytest.raises(ConfigError) as info:
        load_globals(conf)
    assert [rel(conf, line) for line in str(info.value).splitlines()] == [
        "CONF/global.toml: targets: unknown key",
        "CONF/global.toml: name: unknown key",
    ]


def test_resolve_conf_dir_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("SRSYNC_CONF_DIR", raising=False)
    fallback = resolve_conf_dir(None)
    assert fallback.name == "srsync" and fallback != Path("conf")
    (tmp_path / "conf").mkdir()
    assert resolve_conf_dir(None) == Path("conf")
    monkeypatch.setenv("SRSYNC_CONF_DIR", "/from/env")
    assert resolve_conf_dir(None) == Path("/from/env")
    assert resolve_conf_dir("/explicit") == Path("/explicit")
    assert resolve_conf_dir("~/c") == Path(os.path.expanduser("~/c"))
    monkeypatch.setenv("SRSYNC_CONF_DIR", "")
    assert resolve_conf_dir(None) == Path("conf")


def test_resolve_conf_dir_uses_platformdirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SRSYNC_CONF_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    if os.name == "posix" and os.uname().sysname == "Linux":
        assert resolve_conf_dir(None) == tmp_path / "xdg" / "srsync"


# ---------------------------------------------------------------------------
# manual jobs


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_manual_pull_is_the_default(cwd: Path) -> None:
    job = manual_job(None, "web", "/var/www", "here", user="u", port=2200, key="~/.ssh/id", timeout=5)
    assert (job.name, job.source, job.targets[0].name) == ("manual", "<manual>", "web")
    pair = only_pair(job)
    conn = ConnSpec(host="web", user="u", port=2200, key_files=(os.path.expanduser("~/.ssh/id"),), timeout=5.0)
    assert pair.mirror == Location("/var/www", conn)
    assert pair.target == Location(str(cwd / "here"))


def test_manual_host_with_user(cwd: Path) -> None:
    assert conn_of(only_pair(manual_job(None, "bob@web", "/x", "here")).mirror) == ConnSpec(host="web", user="bob")
    assert conn_of(only_pair(manual_job(None, "bob@web", "/x", "here", user="u")).mirror).user == "u"


def test_manual_push(cwd: Path) -> None:
    job = manual_job("deploy", "web", "here", "/var/www", remote_side="target",
                     sync_type="One2One", checksum=True, excludes=["*.tmp", ".git/"], max_delete=10)
    pair = only_pair(job)
    assert job.name == "deploy"
    assert pair.mirror == Location(str(cwd / "here"))
    assert pair.target == Location("/var/www", ConnSpec(host="web"))
    assert (pair.sync_type, pair.checksum, pair.exclude, pair.max_delete) == ("One2One", True, ("*.tmp", ".git/"), 10.0)


def test_manual_remote_to_remote(cwd: Path) -> None:
    job = manual_job(None, "web", "nas:/export", "/var/www", remote_side="target", user="u", key=["/k1", "/k2"])
    pair = only_pair(job)
    assert pair.mirror == Location("/export", ConnSpec(host="nas", user="u", key_files=("/k1", "/k2")))
    assert pair.target == Location("/var/www", ConnSpec(host="web", user="u", key_files=("/k1", "/k2")))
    # without -H, both full locations
    job = manual_job(None, None, "sftp://a:23/x", "bob@b:y", user="u")
    pair = only_pair(job)
    assert pair.mirror == Location("/x", ConnSpec(host="a", user="u", port=23))
    assert pair.target == Location("y", ConnSpec(host="b", user="bob"))


def test_manual_local_to_local(cwd: Path) -> None:
    job = manual_job(None, None, ".", "../elsewhere/copy", base_dir=cwd / "here")
    pair = only_pair(job)
    assert job.targets[0].name == "local"
    assert pair.mirror == Location(str(cwd / "here")) and pair.target == Location(str(cwd / "elsewhere" / "copy"))


def test_manual_uses_globals(cwd: Path) -> None:
    g = GlobalSettings(user="g", exclude=("*.bak",), checksum=True, sync_type="One2One")
    pair = only_pair(manual_job(None, "web", "/x", "here", excludes=["*.tmp"], globals_=g))
    assert conn_of(pair.mirror).user == "g"
    assert (pair.exclude, pair.checksum, pair.sync_type) == (("*.bak", "*.tmp"), True, "One2One")
    pair = only_pair(manual_job(None, "web", "/x", "here", checksum=False, globals_=g))
    assert pair.checksum is False


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"remote_side": "both"}, "manual: --remote: must be one of mirror, target (got 'both')"),
        ({"sync_type": "two-way"}, "manual: --sync-type: must be one of Zero2One, One2One (got 'two-way')"),
        ({"port": 0}, "manual: -P/--port: must be at least 1"),
        ({"timeout": -1.0}, "manual: -t/--timeout: must be greater than 0"),
        ({"name": "a/b"}, "manual: -N/--name: must not contain '/', '\\' or control characters"),
        ({"host": ""}, "manual: -H/--host: must not be empty"),
        ({"target": ""}, "manual: -T/--target: must not be empty"),
        ({"mirror": "missing", "remote_side": "target"},
         "manual: -M/--mirror: the local mirror root {cwd}/missing does not exist: create it or fix the path"),
        ({"target": "here/sub", "mirror": "here", "remote_side": "target", "host": None},
         "manual: -T/--target: {cwd}/here/sub is inside its own mirror {cwd}/here"),
        ({"excludes": ["ok", 5]}, "manual: --exclude: must be a string"),
    ],
)
def test_manual_errors(cwd: Path, kwargs: dict[str, object], expected: str) -> None:
    args: dict[str, object] = {"name": None, "host": "web", "mirror": "/x", "target": "here"}
    args.update(kwargs)
    with pytest.raises(ConfigError) as info:
        manual_job(**args)  # type: ignore[arg-type]
    assert expected.format(cwd=cwd) in str(info.value).splitlines()


# ---------------------------------------------------------------------------
# job_to_toml


def reload(tmp_path: Path, job: JobSpec, name: str = "saved.toml") -> JobSpec:
    path = tmp_path / "saved" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(job_to_toml(job), encoding="utf-8")
    return load_job_file(path, GlobalSettings(), check_roots=False)


def same(a: JobSpec, b: JobSpec) -> bool:
    return dataclasses.replace(a, source="") == dataclasses.replace(b, source="")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"host": "web", "mirror": "/var/www", "target": "here"},
        {"host": "web", "mirror": "here", "target": "/var/www", "remote_side": "target",
         "user": "u", "port": 2200, "key": ["/k1", "/k2"], "timeout": 2.5},
        {"host": "web", "mirror": "nas:/export", "target": "/srv", "remote_side": "target", "user": "u"},
        {"host": None, "mirror": "sftp://bob@a:23/~/x", "target": "b:/y", "key": "/k"},
        {"host": None, "mirror": "here", "target": "out"},
        {"host": "web", "mirror": "relative/dir", "target": "here", "sync_type": "One2One",
         "checksum": True, "excludes": ['we"ird\\pat', "tab\there", "ünï"], "max_delete": 12.5},
        {"host": "::1", "mirror": "/x", "target": "here"},
        {"host": "web", "mirror": "odd:name", "target": "here"},  # a remote path that looks like host:path
    ],
)
def test_manual_job_round_trip(cwd: Path, kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"name": "saved-job"}
    args.update(kwargs)
    job = manual_job(**args)  # type: ignore[arg-type]
    assert same(reload(cwd, job), job)


def test_file_job_round_trip_with_globals(conf: Path) -> None:
    write(conf, "global.toml", 'exclude = ["*.bak"]\nuser = "g"\nstate_dir = "st"\n'
                               '[notify]\nsmtp_host = "m"\nto = ["a@b.c"]\n')
    text = (
        'schedule = "*/5 * * * *"\nwatch = true\nexclude = ["*.tmp"]\n'
        '[[targets]]\nhost = "web1"\nport = 2222\nknown_hosts = "kh"\n'
        '[[targets.paths]]\nmirror = "src"\ntarget = "/srv/a"\nconflict = "newer"\nsync_type = "One2One"\n'
        '[[targets.paths]]\nmirror = "src"\ntarget = "/srv/b"\nexclude = ["!keep.tmp"]\n'
        '[[targets]]\nhost = "web2"\nmirror_remote = true\nenabled = false\n'
        '[[targets.paths]]\nmirror = "/data"\ntarget = "src/../pulled"\n'
        '[[targets]]\n[[targets.paths]]\nmirror = "src"\ntarget = "local-copy"\n'
    )
    job = load(conf, text, "site.toml")
    saved = job_to_toml(job)
    path = write(conf, "site-copy.toml", saved)
    again = load_job_file(path)  # with the same global.toml beside it
    assert same(again, job)
    assert again.extra == job.extra
    assert job.state_dir == str(conf / "st")


def test_job_to_toml_refuses_what_a_file_cannot_express(tmp_path: Path) -> None:
    a = ConnSpec(host="a", key_files=("/ka",))
    b = ConnSpec(host="b", key_files=("/kb",))
    c = ConnSpec(host="c", key_files=("/kc",))
    pair = PairSpec(Location("/x", b), Location("/y", a))
    pair2 = PairSpec(Location("/x", c), Location("/z", a))
    from srsync.jobspec import TargetSpec

    job = JobSpec(name="j", source="<test>", targets=(TargetSpec("a", (pair, pair2)),))
    with pytest.raises(ConfigError, match="cannot be written as one config file"):
        job_to_toml(job)


def test_job_to_toml_quotes_strings(cwd: Path) -> None:
    job = manual_job('q"uote', None, "here", 'out/"x"\\y\n')
    text = job_to_toml(job)
    assert 'name = "q\\"uote"' in text
    assert "\\n" in text
    assert same(reload(cwd, job), job)
