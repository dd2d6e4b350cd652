"""Rules on the overhead chip: it was cut, it is not partly blank, it is not featureless."""

from __future__ import annotations

import pyarrow as pa

from filters.base import Tables, by_id, decisions_table
from pipeline.config import FilterParams


def _ok_chips(tables: Tables, columns: list[str]) -> list[tuple[str, dict]]:
    return [(i, r) for i, r in by_id(tables.chips, ["status", *columns]).items() if r["status"] == "ok"]


def chip_error(tables: Tables, params: FilterParams) -> pa.Table:
    """Drop photos whose chip could not be cut, or that were paired but have no chip row."""
    chips = by_id(tables.chips, ["status", "error"])
    pairs = by_id(tables.pairs, ["status"])
    out = []
    for i in sorted(set(chips) | {i for i, r in pairs.items() if r["status"] == "paired"}):
        r = chips.get(i)
        if r is None:
            out.append((i, False, "chip_error: paired but no row in the chips table (rerun `crossview chip`)", None))
        elif r["status"] == "ok":
            out.append((i, True, "", None))
        else:
            out.append((i, False, f"chip_error: {r['error'] or r['status']}", None))
    return decisions_table("chip_error", out)


def chip_nodata(tables: Tables, params: FilterParams) -> pa.Table:
    """Drop photos whose chip has more than ``max_nodata_fraction`` nodata pixels (WITW: 5 %)."""
    out = []
    for i, r in _ok_chips(tables, ["nodata_fraction"]):
        frac = r["nodata_fraction"]
        if frac is None:
            continue
        if frac > params.max_nodata_fraction:
            out.append((i, False, f"chip_nodata: {frac:.1%} nodata > {params.max_nodata_fraction:.1%}", frac))
        else:
            out.append((i, True, "", frac))
    return decisions_table("chip_nodata", out)


def chip_uniform(tables: Tables, params: FilterParams) -> pa.Table:
    """Drop photos whose chip is nearly uniform (blank, cloud, open water): std below ``min_chip_std``."""
    out = []
    for i, r in _ok_chips(tables, ["std"]):
        std = r["std"]
        if std is None:
            continue
        if std < params.min_chip_std:
            out.append((i, False, f"chip_uniform: pixel std {std:.2f} < {params.min_chip_std:g}", std))
        else:
            out.append((i, True, "", std))
    return decisions_table("chip_uniform", out)
