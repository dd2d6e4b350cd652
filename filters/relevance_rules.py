"""The relevance rule: drop outdoor photos useless for geolocation (close-ups, portraits, pets, food, text).

Reads the ``relevance`` table written by ``crossview relevance`` (a head trained on curator verdicts).
When the head was skipped (too few labels) every photo is kept with the note saying so, so the
decisions and the funnel show that the rule did not run rather than that it passed everything.
"""

from __future__ import annotations

import pyarrow as pa

from filters.base import Tables, by_id, column, decisions_table
from pipeline.config import FilterParams

NAME = "relevance"


def relevance(tables: Tables, params: FilterParams) -> pa.Table:
    """Drop photos the relevance head scores below its threshold; the score is P(relevant)."""
    table = tables.relevance
    if table is None:
        return decisions_table(NAME, [])
    rows = by_id(table, ["model_version", "status", "relevance_score", "is_relevant", "threshold", "note"])
    photo_ids = set(column(tables.photos, "id"))
    out = []
    for i in sorted(set(rows) & photo_ids):
        r = rows[i]
        if r["status"] != "scored":
            out.append((i, True, f"relevance: {r['note'] or r['status']}", None))
        elif r["is_relevant"]:
            out.append((i, True, "", r["relevance_score"]))
        else:
            detail = f"score {r['relevance_score']:.2f} < {r['threshold']:.2f} (head {r['model_version']})"
            out.append((i, False, f"irrelevant: {detail}", r["relevance_score"]))
    return decisions_table(NAME, out)
