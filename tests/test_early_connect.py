"""``srsync manual`` read without typer: the same values typer would give the command,
typer's turn for anything unusual, and the head start on the connection that the command
then carries on with."""

from __future__ import annotations

from pathlib import Path

import pytest
from sshd import SSHD

from srsync.cli import early
from srsync.cli.main import app_for
from srsync.config import loader
from srsync.endpoints import registry
from srsync.endpoints.registry import drop_warm


def test_parse_manual_reads_what_typer_reads() -> None:
    got = early.parse_manual(["-H", "h", "-M", "/a", "--target=/b", "-x", "*.o", "--exclude", "*.tmp",
                              "-P", "2222", "-c", "-n", "-v", "--remote", "target"])
    assert got == {"host": "h", "mirror": "/a", "target": "/b", "exclude": ["*.o", "*.tmp"],
                   "port": "2222", "checksum": True, "dry_run": True, "verbose": 1, "remote": "target"}


@pytest.mark.parametrize("args", [
    ["-M", "/a", "-T", "/b", "--help"],  # help: typer's business
    ["-M", "/a", "-T", "/b", "--save", "job.toml"],  # writes a file first: not worth guessing
    ["-M", "/a", "-T"],  # a value missing
    ["-M", "/a", "-T", "/b", "-vv"],  # combined short flags
    ["-M", "/a", "-M", "/c", "-T", "/b"],  # given twice
    ["-M", "/a", "-T", "/b", "--checksum=yes"],  # a flag with a value
    ["-M", "/a", "-T", "/b", "extra"],  # a stray argument
])
def test_parse_manual_gives_up_on_anything_unusual(args: list[str]) -> None:
    assert early.parse_manual(args) is None


def test_every_manual_option_is_known_or_deliberately_left_out() -> None:
    """A new option of ``manual`` must be taught to the early parser (else runs using it
    lose the head start silently) or listed here as one it leaves to typer."""
    command = app_for(["manual"]).registered_commands[0]
    import typer.main

    click_command = typer.main.get_command_from_info(
        command, pretty_exceptions_short=False, rich_markup_mode=None)
    names = {opt for param in click_command.params for opt in param.opts + param.secondary_opts}
    assert names - set(early._MANUAL) == {"--save"}
    assert set(early._MANUAL) <= names


def _conf(tmp_path: Path, sshd: SSHD) -> Path:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "global.toml").write_text(
        f'known_hosts = "{sshd.known_hosts}"\nssh_config = "{sshd.ssh_config}"\nuse_agent = false\n'
        f'key = "{sshd.key_path}"\nuser = "{sshd.user}"\nport = {sshd.port}\n')
    return conf


def test_head_start_is_the_pool_the_command_keeps(sshd: SSHD, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRSYNC_STATE_DIR", str(tmp_path / "state"))
    conf = _conf(tmp_path, sshd)
    (tmp_path / "m").mkdir()
    args = ["--conf-dir", str(conf), "-H", sshd.host, "--remote", "target",
            "-M", str(tmp_path / "m"), "-T", "/srv/t", "-N", "early"]
    options = early.manual_options(["manual", *args])
    assert options is not None and options["port"] is None and options["conf_dir"] == str(conf)
    # what run_manual builds from those options
    job = loader.manual_job(name="early", host=sshd.host, mirror=str(tmp_path / "m"), target="/srv/t",
                            remote_side="target", globals_=loader.load_globals(conf, fast=True))
    try:
        early.warm_up_jobs([job])
        (key,) = registry._warm
        assert key[0] == "early"
        pool = registry._warm[key]
        (spec,) = pool._connecting
        assert spec.host == sshd.host and spec.port == sshd.port
        assert pool._connecting[spec].result(timeout=20).transport_alive()
        # execute_jobs warms the same job up again: the pool under way stays
        early.warm_up_jobs([job])
        assert registry._warm[key] is pool
        assert not pool._closed
    finally:
        drop_warm()


@pytest.mark.parametrize("argv", [
    ["status"],
    ["manual", "--help"],
    ["manual", "-H", "127.0.0.1", "-M", "/a"],  # no target
    ["manual", "-H", "127.0.0.1", "-M", "/a", "-T", "/b", "-P", "not-a-port"],
    ["manual", "-H", "127.0.0.1", "-M", "/a", "-T", "/b", "-P", " 22"],  # typer converts this one
    ["manual", "-H", "127.0.0.1", "-M", "/a", "-T", "/b", "-t", "inf"],
    ["manual", "-H", "127.0.0.1", "-M", "/a", "-T", "/b", "--remote", "sideways"],
    ["manual", "-H", "127.0.0.1", "-M", "/a", "-T", "/b", "--sync-type", "one2one"],
    ["manual", "-M", "", "-T", "/b"],
])
def test_typer_reads_what_the_small_parser_does_not_take(argv: list[str]) -> None:
    assert early.manual_options(argv) is None


MANUAL_ARGVS = [
    ["-M", "/a", "-T", "/b"],
    ["-H", "h", "-M", "/a", "--target=/b", "-x", "*.o", "--exclude", "*.tmp", "-P", "2222", "-c", "-n",
     "-v", "-v", "--remote", "target", "-N", "job", "-u", "me", "-k", "/k", "-t", "2.5",
     "--max-delete", "30", "--sync-type", "One2One", "--conf-dir", "/c", "--force", "-q"],
    ["--host=h", "--mirror", "h2:/a", "-T", "-x", "--remote=mirror", "--timeout", "-1", "--port=0"],
    ["-M", "/a", "-T", "/b", "--quiet", "--quiet", "--verbose", "--max-delete", "-0"],
]


@pytest.mark.parametrize("args", MANUAL_ARGVS)
def test_manual_gets_the_same_values_without_typer(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``manual_options`` hands ``run_manual`` is exactly what typer's ``manual``
    command hands it for the same command line."""
    from srsync.cli import main as cli_main

    seen: list[dict[str, object]] = []

    def capture(**kwargs: object) -> int:
        seen.append(kwargs)
        return 0

    monkeypatch.setattr(cli_main, "run_manual", capture)
    with pytest.raises(SystemExit) as done:
        app_for(["manual", *args])(["manual", *args], prog_name="srsync")
    assert done.value.code == 0
    (through_typer,) = seen
    assert early.manual_options(["manual", *args]) == through_typer



# ---- the TCP connection begun before paramiko loads (srsync.early_tcp) ---------------

@pytest.mark.parametrize(("text", "keeps"), [
    ("", True),
    ("# HostName elsewhere\n\nHost *\n  ServerAliveInterval 30\n  User bob\n  IdentityFile ~/.ssh/k\n", True),
    ("Host db\n  HostName 10.0.0.5\n", False),
    ("Host *\n  port=2222\n", False),
    ("PORT = 2222\n", False),
    ("Host jump\n  ProxyJump bastion\n", False),
    ("ProxyCommand nc %h %p\n", False),
    ("Include ~/.ssh/more\n", False),
    ("Match host db\n  User x\n", False),
    ("CanonicalizeHostname yes\n", False),
])
def test_only_a_config_that_keeps_every_address_gets_an_early_connection(
    tmp_path: Path, text: str, keeps: bool
) -> None:
    from srsync import early_tcp

    config = tmp_path / "ssh_config"
    config.write_text(text)
    assert early_tcp.config_keeps_address(str(config)) is keeps
    assert early_tcp.config_keeps_address(str(tmp_path)) is False  # unreadable: unsure
    try:
        early_tcp.begin("127.0.0.1", 9, 5.0, str(config))
        assert (("127.0.0.1", 9) in early_tcp._early) is keeps
    finally:
        early_tcp.close_unused()


def test_the_handshake_goes_over_the_connection_begun_early(sshd: SSHD) -> None:
    from srsync import early_tcp
    from srsync.ssh.connection import connect

    spec = sshd.conn_spec()
    early_tcp.begin(spec.host, spec.port, spec.timeout, spec.ssh_config)
    begun = early_tcp._early[(spec.host, sshd.port)].result(timeout=10)
    mine = begun.getsockname()
    conn = connect(spec)
    try:
        assert conn._transport.sock.getsockname() == mine  # that very TCP connection
        assert not early_tcp._early
        assert conn.exec_command("echo ok").stdout.read().strip() == b"ok"
    finally:
        conn.close()


def test_an_early_connection_that_fails_is_reported_once_like_any(tmp_path: Path) -> None:
    """Refused early: the connect reports it as it always does, without a second try."""
    import socket

    from srsync import early_tcp
    from srsync.errors import ConnectError
    from srsync.jobspec import ConnSpec
    from srsync.ssh.connection import connect

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "ssh_config"
    config.write_text("")
    spec = ConnSpec(host="127.0.0.1", port=port, timeout=5.0, ssh_config=str(config), use_agent=False,
                    known_hosts=str(tmp_path / "known_hosts"))
    early_tcp.begin(spec.host, spec.port, spec.timeout, spec.ssh_config)
    tries: list[object] = []
    real = socket.create_connection
    try:
        def spy(address: tuple[str, int], *a: object, **k: object) -> socket.socket:
            if address[1] == port:  # (another test's thread may connect elsewhere meanwhile)
                tries.append(address)
            return real(address, *a, **k)  # type: ignore[arg-type]

        socket.create_connection = spy  # type: ignore[assignment]
        with pytest.raises(ConnectError, match="refused"):
            connect(spec)
    finally:
        socket.create_connection = real  # type: ignore[assignment]
    assert tries == []  # the early attempt's answer was the answer


def test_a_connection_begun_and_never_taken_is_closed(sshd: SSHD) -> None:
    from srsync import early_tcp

    early_tcp.begin(sshd.host, sshd.port, 5.0, sshd.ssh_config)
    begun = early_tcp._early[(sshd.host, sshd.port)].result(timeout=10)
    drop_warm()  # the end of a run
    assert begun.fileno() == -1 and not early_tcp._early
