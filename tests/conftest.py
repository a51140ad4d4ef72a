"""Shared pytest fixtures: a real OpenSSH sshd on 127.0.0.1 and SFTP endpoints connected to it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sshd import SSHD, find_sshd

if TYPE_CHECKING:
    from srsync.endpoints.agent import AgentEndpoint
    from srsync.endpoints.sftp import SFTPEndpoint


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHD]:
    """A throwaway sshd for the whole session; skipped (or failed on CI) when none is installed."""
    binary = find_sshd()
    if binary is None:
        reason = "OpenSSH sshd not found (/usr/sbin/sshd): SSH/SFTP integration tests NOT RUN"
        if os.environ.get("CI"):
            pytest.fail(reason + "; install openssh-server on the CI image")
        pytest.skip(reason)
    server = SSHD(workdir=tmp_path_factory.mktemp("sshd"), sshd_bin=binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sftp_endpoint_factory(sshd: SSHD) -> Iterator[Callable[[str], SFTPEndpoint]]:
    """``make(root)`` opens an SFTPEndpoint on the test sshd; all are closed at teardown."""
    from srsync.endpoints.sftp import open_sftp_endpoint

    opened: list[SFTPEndpoint] = []

    def make(root: str) -> SFTPEndpoint:
        if not sshd.running:
            sshd.start()
        endpoint = open_sftp_endpoint(sshd.conn_spec(), root)
        opened.append(endpoint)
        return endpoint

    yield make
    for endpoint in opened:
        endpoint.close()


@pytest.fixture
def agent_endpoint_factory(sshd: SSHD) -> Iterator[Callable[..., AgentEndpoint]]:
    """``make(root, **options)`` opens an AgentEndpoint (remote helper) on the test sshd."""
    from srsync.endpoints.agent import open_agent_endpoint

    opened: list[AgentEndpoint] = []

    def make(root: str, **options: object) -> AgentEndpoint:
        if not sshd.running:
            sshd.start()
        endpoint = open_agent_endpoint(sshd.conn_spec(), root, **options)  # type: ignore[arg-type]
        opened.append(endpoint)
        return endpoint

    yield make
    for endpoint in opened:
        endpoint.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem (tmpfs), mounted for the test and unmounted after."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a small tmpfs for the disk-full test: {proc.stderr.strip()}")
        pytest.skip(f"SKIPPED LOUDLY: cannot mount a tmpfs here ({proc.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def immutable() -> Iterator[Callable[[Path], None]]:
    """Marks paths immutable (chattr +i: refuses writes, renames and deletes even to root),
    undone at the end; fails in CI where chattr is missing, skips loudly elsewhere."""
    made: list[Path] = []

    def make(path: Path) -> None:
        proc = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            if os.environ.get("CI"):
                pytest.fail(f"chattr +i failed: {proc.stderr.strip()}")
            pytest.skip(f"SKIPPED LOUDLY: chattr +i is not available here ({proc.stderr.strip()})")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the reliability counts (fault sweep, hostile inputs, secrets) in every run."""
    from reliability_report import lines

    out = lines()
    if out:
        terminalreporter.section("reliability")
        for line in out:
            terminalreporter.write_line(line)
