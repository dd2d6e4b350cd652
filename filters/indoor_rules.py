"""The WITW indoor rule: drop photos whose scene classifier's top-k vote says indoor (``scores`` table).

The vote itself runs in the classify stage (``pipeline.scene.vote``); this filter turns each
downloaded photo's score row into a decision. A downloaded photo without a usable score row (the
classifier could not read it, or ``scores`` is older than ``downloads``) is dropped with the reason
``not_classified``, so nothing passes the indoor rule unexamined.
"""

from __future__ import annotations

import pyarrow as pa

from filters.base import Tables, by_id, column, decisions_table
from pipeline.config import FilterParams

NAME = "indoor"
TOP_IN_REASON = 3


def _reason(row: dict) -> str:
    top = ", ".join((row["top_categories"] or "").split(", ")[:TOP_IN_REASON])
    return (
        f"indoor: vote {row['indoor_score']:.2f} (indoor mass {row['indoor_mass']:.2f}, "
        f"outdoor {row['outdoor_mass']:.2f}; {row['model']}: {top})"
    )


def indoor(tables: Tables, params: FilterParams) -> pa.Table:
    """Drop indoor photos; the score is the indoor share of the top-k vote (0 outdoor … 1 indoor)."""
    scores = tables.scores
    if scores is None:
        return decisions_table(NAME, [])
    wanted = [
        "sha256",
        "status",
        "error",
        "model",
        "indoor_score",
        "indoor_mass",
        "outdoor_mass",
        "is_indoor",
        "top_categories",
    ]
    rows = by_id(scores, wanted)
    downloads = by_id(tables.downloads, ["status", "sha256"])
    out = []
    for i in sorted(set(column(tables.photos, "id"))):
        d = downloads.get(i)
        if d is None or d["status"] != "ok":
            continue  # the download filter has already dropped it
        row = rows.get(i)
        if row is None or row["sha256"] != d["sha256"]:
            out.append((i, False, "not_classified: no score for this download (rerun `crossview classify`)", None))
        elif row["status"] != "ok":
            out.append((i, False, f"not_classified: {row['error']}", None))
        elif row["is_indoor"]:
            out.append((i, False, _reason(row), row["indoor_score"]))
        else:
            out.append((i, True, "", row["indoor_score"]))
    return decisions_table(NAME, out)
