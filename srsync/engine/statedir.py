"""Where a job keeps its state (a light module: the entry point needs it before it
starts connecting, long before the state database itself; srsync.engine.state
re-exports both)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from srsync.jobspec import JobSpec


def default_state_dir() -> Path:
    env = os.environ.get("SRSYNC_STATE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_state_dir("srsync"))


def state_dir_for(job: JobSpec) -> Path:
    """The folder holding ``job``'s state: its own ``state_dir``, else the default."""
    return Path(job.state_dir) if job.state_dir else default_state_dir()
