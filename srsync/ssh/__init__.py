"""The only package that imports paramiko: connections, host keys, SFTP access.

Start-up: ``paramiko.config`` imports ``invoke`` (a task runner, ~100 ms of
imports) only to run ``Match exec`` lines of an ssh_config.  Before paramiko
is first imported, a stand-in module takes its place and loads the real
``invoke`` on first attribute access, so ``Match exec`` keeps working and
every other run skips the cost.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


class _DeferredModule(types.ModuleType):
    """Stands in for a module until one of its attributes is used."""

    def __getattr__(self, attr: str) -> Any:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        sys.modules[name] = real
        return getattr(real, attr)


def _defer(name: str) -> None:
    if name in sys.modules or "paramiko" in sys.modules:
        return
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        found = False
    if found:  # when it is missing, paramiko's own "not installed" handling stays as it is
        sys.modules[name] = _DeferredModule(name)


_defer("invoke")
