"""Entry point for ``python -m srsync``."""

from srsync.cli import main

main()
