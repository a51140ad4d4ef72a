"""Plain, validated job descriptions: what the config layer produces and the engine runs.

Config models (pydantic, in ``srsync.config``) convert into these once, at the
edge; nothing below the CLI sees a pydantic object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

ZERO2ONE = "Zero2One"
ONE2ONE = "One2One"
SYNC_TYPES = (ZERO2ONE, ONE2ONE)
CONFLICT_POLICIES = ("keep-both", "newer", "mirror", "target", "ask")
HOST_KEY_POLICIES = ("strict", "accept-new")


@dataclass(frozen=True, slots=True)
class ConnSpec:
    """How to reach one SSH host.  Secrets are never stored here, only where to get them."""

    host: str  # ~/.ssh/config alias or hostname, as the user wrote it
    user: str | None = None
    port: int | None = None
    key_files: tuple[str, ...] = ()
    password_env: str | None = None  # name of an environment variable holding the password
    passphrase_env: str | None = None  # name of an env variable holding the key passphrase
    known_hosts: str | None = None  # known_hosts file; None: ~/.ssh/known_hosts
    host_key_policy: str = "strict"
    timeout: float = 15.0  # connect, banner, auth and channel timeout in seconds
    keepalive: int = 15  # seconds between keepalives; 0 disables
    ssh_config: str | None = None  # None: ~/.ssh/config when it exists
    use_agent: bool = True

    @property
    def label(self) -> str:
        who = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{who}{self.host}{port}"


def ssh_config_file(setting: str | None) -> str | None:
    """The ssh config file a ConnSpec's ``ssh_config`` names: that path, or for None
    ~/.ssh/config when it exists; None when there is no file to read."""
    if setting is not None:
        return os.path.expanduser(setting)
    default = os.path.join(os.path.expanduser("~"), ".ssh", "config")
    return default if os.path.isfile(default) else None


@dataclass(frozen=True, slots=True)
class Location:
    """A root directory: local when ``conn`` is None, else on that SSH host."""

    path: str
    conn: ConnSpec | None = None

    @property
    def is_remote(self) -> bool:
        return self.conn is not None

    def __str__(self) -> str:
        return f"{self.conn.label}:{self.path}" if self.conn else self.path


@dataclass(frozen=True, slots=True)
class PairSpec:
    mirror: Location
    target: Location
    sync_type: str = ZERO2ONE
    exclude: tuple[str, ...] = ()
    checksum: bool = False
    max_delete: float = 50.0  # percent of the target's entries one run may delete
    conflict: str = "keep-both"
    trash: bool = True  # keep deleted and replaced files in <root>/.srsync-trash
    trash_days: float = 7.0  # retention of trash runs

    @property
    def label(self) -> str:
        return f"{self.mirror} -> {self.target}"


@dataclass(frozen=True, slots=True)
class TargetSpec:
    name: str  # the host as written, or "local"
    pairs: tuple[PairSpec, ...]
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class JobSpec:
    name: str
    source: str  # the config file it came from, or "<manual>"
    targets: tuple[TargetSpec, ...]
    enabled: bool = True
    schedule: str | None = None
    watch: bool = False
    state_dir: str | None = None  # None: the user state folder
    extra: dict[str, object] = field(default_factory=dict, compare=False)
