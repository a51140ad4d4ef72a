"""ssh_config resolution: what a ConnSpec's host alias really means (HostName, User, Port, keys, proxies).

Values set explicitly in the ConnSpec win over the ssh config file, as
command-line options win over ``~/.ssh/config`` in OpenSSH; the config file
wins over built-in defaults.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, replace

import paramiko

from srsync.errors import ConfigError
from srsync.jobspec import ConnSpec, ssh_config_file

DEFAULT_PORT = 22
# OpenSSH's default identities, tried only when none is configured anywhere.
DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")


@dataclass(frozen=True, slots=True)
class HostSettings:
    """Everything needed to open and authenticate one SSH connection (no secrets)."""

    alias: str  # the host as the user wrote it
    hostname: str  # what we actually connect to
    port: int
    user: str
    identity_files: tuple[str, ...]  # expanded paths, in the order to try them
    identities_only: bool  # IdentitiesOnly: do not offer agent keys besides these
    proxy_jump: str | None
    proxy_command: str | None
    host_key_alias: str | None

    @property
    def label(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


def load_ssh_config(setting: str | None) -> paramiko.SSHConfig:
    """Parse the file ``setting`` names (see ``ssh_config_file``): None means
    ~/.ssh/config when it exists, else an empty config."""
    path = ssh_config_file(setting)
    if path is None:
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(path)
    except FileNotFoundError as exc:
        raise ConfigError(f"ssh config file {path} does not exist; fix ssh_config") from exc
    except (OSError, ValueError, paramiko.ConfigParseError) as exc:
        raise ConfigError(f"cannot read ssh config file {path}: {exc}") from exc


def _none_is_unset(value: str | None) -> str | None:
    # "none" is OpenSSH's spelling for "disable this option"
    if value is None or value.strip().lower() == "none" or not value.strip():
        return None
    return value.strip()


def resolve(spec: ConnSpec, config: paramiko.SSHConfig) -> HostSettings:
    """Resolve ``spec.host`` through ``config`` into concrete connection settings."""
    options = config.lookup(spec.host)
    hostname = str(options.get("hostname") or spec.host)
    if spec.port:
        port = int(spec.port)
    else:
        raw_port = options.get("port", DEFAULT_PORT)
        try:
            port = int(raw_port)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"ssh config: Port {raw_port!r} for host {spec.host!r} is not a number"
            ) from exc
    user = spec.user or options.get("user") or getpass.getuser()
    configured = [os.path.expanduser(p) for p in spec.key_files]
    configured += [os.path.expanduser(p) for p in options.get("identityfile", [])]
    identities = tuple(dict.fromkeys(configured))  # de-duplicated, order kept
    return HostSettings(
        alias=spec.host,
        hostname=hostname,
        port=port,
        user=str(user),
        identity_files=identities,
        identities_only=str(options.get("identitiesonly", "no")).lower() == "yes",
        proxy_jump=_none_is_unset(options.get("proxyjump")),
        proxy_command=_none_is_unset(options.get("proxycommand")),
        host_key_alias=_none_is_unset(options.get("hostkeyalias")),
    )


def parse_jump(hop: str) -> tuple[str | None, str, int | None]:
    """Split one ProxyJump hop ``[user@]host[:port]`` (or ``ssh://...``) into its parts."""
    text = hop.strip()
    if text.startswith("ssh://"):
        text = text[len("ssh://") :].rstrip("/")
    user: str | None = None
    if "@" in text:
        user, text = text.rsplit("@", 1)
    port: int | None = None
    if text.startswith("["):  # [ipv6]:port
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _jump_port(hop, rest[1:])
    elif text.count(":") == 1:
        host, _, raw = text.partition(":")
        port = _jump_port(hop, raw)
    else:
        host = text
    if not host:
        raise ConfigError(f"ssh config: ProxyJump hop {hop!r} has no host")
    return user or None, host, port


def _jump_port(hop: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"ssh config: ProxyJump hop {hop!r} has a bad port") from exc


def jump_spec(spec: ConnSpec, hop: str) -> ConnSpec:
    """The ConnSpec of a jump host: the hop's own user/port, the target's key settings.

    The target's password is deliberately not passed on: a secret meant for
    one host is never sent to another.
    """
    user, host, port = parse_jump(hop)
    return replace(spec, host=host, user=user, port=port, password_env=None)
