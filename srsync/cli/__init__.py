"""The only package that imports typer: the srsync command line."""

from __future__ import annotations

import sys


def main() -> None:
    """Console-script entry point.

    A plain ``srsync manual ...`` runs without loading typer (srsync.cli.early reads its
    options, srsync.cli.execute runs it); every other command line goes to typer
    (srsync.cli.main).
    """
    from srsync.cli.early import manual_options

    options = manual_options(sys.argv[1:])
    if options is not None:
        from srsync.cli.execute import finish, run_manual

        finish(lambda: run_manual(**options))
    from srsync.cli.main import run

    run()
