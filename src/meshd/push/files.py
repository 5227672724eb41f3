"""Reading the certificate files DestinationRules name (standalone: sidecars share meshd's filesystem)."""

from __future__ import annotations


def read_file(path: str) -> bytes | None:
    """The file's bytes, or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None
