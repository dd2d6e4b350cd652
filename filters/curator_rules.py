"""Curator verdicts (``review/verdicts.csv``): the latest verdict per photo keeps or drops it, and a
``keep`` overrides drops by model-kind filters (indoor, relevance); rule drops are never overridden."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from filters.base import Filter, Tables, column, decisions_table
from pipeline.config import FilterParams
from pipeline.verdicts import KEEP, latest_verdicts

log = logging.getLogger(__name__)

CURATOR = "curator"
OVERRIDE = "overridden by curator keep"  # the reason a model drop gets when a curator kept the photo


def curator(tables: Tables, params: FilterParams) -> pa.Table:
    """Apply curator verdicts: ``keep`` is recorded (it overrides model drops), ``drop_*`` drops."""
    verdicts = tables.verdicts if tables.verdicts is not None else latest_verdicts(params.verdicts)
    out = []
    for i in sorted(i for i in set(column(tables.photos, "id")) if i in verdicts):  # the part's photos, not every verdict
        v = verdicts[i]
        if v.verdict == KEEP:
            out.append((i, True, "curator: keep", None))
        else:
            out.append((i, False, f"{v.verdict}: {v.note}" if v.note else v.verdict, None))
    return decisions_table(CURATOR, out)


def warn_unknown_verdicts(path: str, unknown: Collection[str]) -> None:
    """Warn once a run about verdicts for ids that are not in the photos table (they are ignored)."""
    if unknown:
        names = sorted(unknown)
        log.warning("%s: %d verdict(s) for ids not in the photos table (ignored): %s", path, len(names),
                    ", ".join(names[:10]) + (", ..." if len(names) > 10 else ""))  # fmt: skip


def apply_curator_override(decisions: pa.Table, registry: Sequence[Filter]) -> tuple[pa.Table, int]:
    """Turn model-kind drops of photos with a curator ``keep`` into kept rows; return them and the count.

    The row keeps its filter and gets the reason ``overridden by curator keep (was: <reason>)``, so
    the override is on record.
    """
    models = pa.array(sorted({f.name for f in registry if f.kind == "model"}), pa.string())
    if not len(models) or not decisions.num_rows:
        return decisions, 0
    keep_ids = pc.filter(decisions["id"], pc.and_(pc.equal(decisions["filter"], CURATOR), decisions["kept"]))
    mask = pc.and_(
        pc.and_(pc.is_in(decisions["filter"], value_set=models), pc.invert(decisions["kept"])),
        pc.is_in(decisions["id"], value_set=keep_ids.combine_chunks()),
    )
    count = pc.sum(mask).as_py() or 0
    if count:
        was = pc.binary_join_element_wise(f"{OVERRIDE} (was: ", decisions["reason"].fill_null(""), ")", "")
        decisions = decisions.set_column(2, "kept", pc.or_(decisions["kept"], mask))
        decisions = decisions.set_column(3, "reason", pc.if_else(mask, was, decisions["reason"]))
    return decisions, count
