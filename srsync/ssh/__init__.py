"""The only package that imports paramiko: connections, host keys, SFTP access.

Start-up: ``paramiko.config`` imports ``invoke`` (a task runner, ~100 ms of
imports) only to run ``Match exec`` lines of an ssh_config.  Before paramiko
is first imported, a stand-in module takes its place and loads the real
``invoke`` on first attribute access, so ``Match exec`` keeps working and
every other run skips the cost.

Likewise ``paramiko/__init__`` sets ``__version__`` from
``importlib.metadata.version("paramiko")``: importing ``importlib.metadata``
(email, zipfile, ...) and searching every path entry for distributions cost
~20 ms before the first handshake.  The package imports paramiko here with a
stand-in for ``importlib.metadata`` that answers that one question from the
``paramiko-<version>.dist-info`` folder beside the package; the stand-in is
gone from ``sys.modules`` once paramiko is loaded, and any other use of it
loads the real module.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
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


_METADATA = "importlib.metadata"


class _MetadataStandIn(_DeferredModule):
    """``importlib.metadata`` while paramiko is imported: knows one distribution's version,
    and is replaced by the real module for anything else."""

    def __init__(self, dist: str, version: str) -> None:
        super().__init__(_METADATA)
        self._dist = dist
        self._version = version

    def version(self, distribution_name: str) -> str:
        if distribution_name == self._dist:
            return self._version
        return str(self.__getattr__("version")(distribution_name))


def _installed_version(dist: str) -> str | None:
    """The version in the one ``<dist>-<version>.dist-info`` beside package ``dist``, if exactly one."""
    try:
        spec = importlib.util.find_spec(dist)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.submodule_search_locations:
        return None
    site = os.path.dirname(os.path.dirname(spec.origin))
    try:
        names = os.listdir(site)
    except OSError:
        return None
    prefix, suffix = dist + "-", ".dist-info"
    found = [n[len(prefix) : -len(suffix)] for n in names if n.startswith(prefix) and n.endswith(suffix)]
    return found[0] if len(found) == 1 and found[0] else None


@contextmanager
def _metadata_stand_in(dist: str) -> Iterator[None]:
    """While the block runs, ``importlib.metadata.version(dist)`` costs no metadata import."""
    version = None if _METADATA in sys.modules else _installed_version(dist)
    if version is None:
        yield
        return
    stand_in = _MetadataStandIn(dist, version)
    sys.modules[_METADATA] = stand_in
    importlib.metadata = stand_in
    try:
        yield
    finally:
        if sys.modules.get(_METADATA) is stand_in:
            del sys.modules[_METADATA]
        if getattr(importlib, "metadata", None) is stand_in:
            delattr(importlib, "metadata")


if "paramiko" not in sys.modules:
    with _metadata_stand_in("paramiko"):
        import paramiko  # noqa: F401
