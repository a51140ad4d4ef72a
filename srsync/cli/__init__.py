"""The only package that imports typer: the srsync command line."""

from __future__ import annotations

import sys


def main() -> None:
    """Console-script entry point: a head start on the connection, then the command line.

    (srsync.cli.early reads ``manual``'s arguments and starts connecting before typer
    and the engine load; srsync.cli.main then runs the command as usual.)
    """
    from srsync.cli.early import warm_up_from_argv

    try:
        warm_up_from_argv(sys.argv[1:])
    except KeyboardInterrupt:
        sys.exit(130)  # nothing was started that needs undoing
    from srsync.cli.main import run

    run()
