"""The only package that imports typer: the srsync command line."""
