"""Bad rasters, photo tables and params: each gets a one-line error naming the thing and what to do."""

from __future__ import annotations


def table_rows() -> list[tuple[str, str, str]]:
    return []
