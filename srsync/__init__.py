"""srsync: file mirroring and two-way sync over SSH."""

__version__ = "0.1.0"
