"""The only package that imports pydantic: config models, loading, validation."""

from srsync.config.loader import (
    CONF_DIR_ENV,
    GLOBAL_FILE,
    MANUAL_SOURCE,
    GlobalSettings,
    job_to_toml,
    load_conf_dir,
    load_globals,
    load_job_file,
    manual_job,
    resolve_conf_dir,
)
from srsync.config.locations import is_full_location, parse_location

__all__ = [
    "CONF_DIR_ENV",
    "GLOBAL_FILE",
    "MANUAL_SOURCE",
    "GlobalSettings",
    "is_full_location",
    "job_to_toml",
    "load_conf_dir",
    "load_globals",
    "load_job_file",
    "manual_job",
    "parse_location",
    "resolve_conf_dir",
]
