"""Entry point for ``python -m srsync``."""

from srsync.cli.main import run

run()
