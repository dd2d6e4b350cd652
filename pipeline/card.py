"""What a manifest run adds up to, counted a part at a time: the counts report (DVC metrics) and the dataset card.

The manifest stage reads its tables in parts (pipeline/tablestream.py); :class:`Summary` counts each
part's manifest rows, photos and decisions, and the report and card are written from the totals.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from filters import REGISTRY
from filters.base import column
from filters.funnel import NotesTally, Steps, add_steps, filter_order, funnel_steps, no_steps, reorder_steps
from pipeline.config import Params
from pipeline.schemas import SPLITS

PHOTO_KEYS = ("photo_licence", "photo_licence_url")
OVERHEAD_KEYS = ("overhead_licence", "overhead_licence_url", "satellite", "overhead_attribution")


def chip_geometry(params: Params) -> tuple[float, int, float]:
    """(chip edge in metres, chip side in pixels, ground sample distance in metres) from params."""
    return params.chip.edge_m, int(round(params.chip.edge_m / params.tiles.gsd_m)), params.tiles.gsd_m


@dataclass
class Summary:
    """Totals over the parts: manifest rows by split, city and licence; photos found; the funnel."""

    rows: int = 0
    photos_found: int = 0
    per_split: Counter = field(default_factory=Counter)
    by_city: Counter = field(default_factory=Counter)  # (city, split) -> rows
    photo_licences: Counter = field(default_factory=Counter)  # (name, URL) -> rows
    overhead: Counter = field(default_factory=Counter)  # OVERHEAD_KEYS values -> rows
    steps: Steps = field(default_factory=lambda: no_steps(filter_order(REGISTRY)))
    extra_filters: set = field(default_factory=set)  # decisions of filters the registry does not have
    notes: NotesTally = field(default_factory=NotesTally)

    def add(self, rows: list[dict], photos: pa.Table, decisions: pa.Table) -> None:
        """Count one part: its manifest rows, its photos and their decisions."""
        self.rows += len(rows)
        self.photos_found += photos.num_rows
        for r in rows:
            self.per_split[r["split"]] += 1
            self.by_city[(r["city"] or "unknown", r["split"])] += 1
            self.photo_licences[tuple(r[k] for k in PHOTO_KEYS)] += 1
            self.overhead[tuple(r[k] for k in OVERHEAD_KEYS)] += 1
        order = filter_order(REGISTRY, decisions)
        self.extra_filters |= set(order[len(REGISTRY):])
        self.steps = add_steps(self.steps, funnel_steps(column(photos, "id"), decisions, order))
        self.notes.add(decisions)

    def funnel(self) -> Steps:
        """The funnel of the photos through the registry's filters (as the filter stage's report counts it)."""
        return reorder_steps(self.steps, [f.name for f in REGISTRY] + sorted(self.extra_filters))


def counts(summary: Summary) -> dict:
    """The counts report (DVC metrics): rows per split and per city x split, photos found, drops per reason."""
    cities = sorted({c for c, _ in summary.by_city})
    reasons = summary.funnel().by_reason
    return {
        "photos_found": summary.photos_found,
        "rows": {**{s: summary.per_split[s] for s in SPLITS}, "total": summary.rows},
        "by_city": {c: {s: summary.by_city[(c, s)] for s in SPLITS} for c in cities},
        "dropped": sum(reasons.values()),
        "dropped_by_reason": reasons,
    }


WITW = (
    'D. Hogan, L. Tindall, R. Ashley, M. Gogia, A. Van Etten, "Where in the World" (WITW), IQT Labs, 2022: '
    "<https://github.com/IQTLabs/WITW>, "
    "<https://www.iqt.org/where-in-the-world-part-1-a-new-dataset-for-cross-view-image-geolocalization/>"
)


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], body: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in body]


def _funnel_lines(summary: Summary) -> list[str]:
    steps, notes = summary.funnel(), summary.notes.notes(REGISTRY)
    body = [["found", "", steps.found]]
    body += [[f"`{name}`", steps.removed[name], steps.remaining[name]] for name in steps.removed]
    return [
        f"{steps.found} photos were found; each dropped photo is counted once, under the first filter that dropped it.",
        "",
        *_table(["step", "removed", "remaining"], body + [["kept", "", steps.kept]]),
        "",
        *_table(["reason", "photos"], [[f"`{code}`", n] for code, n in steps.by_reason.items()]),
        *(["", "Filters that did not run:", ""] + [f"- `{n}`: {notes[n]}" for n in sorted(notes)] if notes else []),
    ]


def _licence_lines(summary: Summary) -> list[str]:
    photo, overhead = summary.photo_licences, summary.overhead
    return [
        "### Photos",
        "",
        *_table(["licence", "URL", "rows"], [[n, u, photo[(n, u)]] for n, u in sorted(photo)]),
        "",
        "### Overhead imagery",
        "",
        *_table(["licence", "URL", "satellite", "attribution", "rows"], [[*k, overhead[k]] for k in sorted(overhead)]),
    ]


def _params_lines(params: Params) -> list[str]:
    edge_m, chip_px, gsd_m = chip_geometry(params)
    data = {
        "chip": {"edge_m": edge_m, "px": chip_px, "gsd_m": gsd_m, "format": params.chip.format},
        "filter": params.filter.model_dump(),
        "split": params.split.model_dump(),
        "source": params.source,
    }
    return ["```json", json.dumps(data, indent=2, sort_keys=True), "```"]


def render_card(summary: Summary, params: Params) -> str:
    """The dataset card (Markdown): what it is, counts, funnel, licences, attribution, params. No timestamps."""
    edge_m, chip_px, gsd_m = chip_geometry(params)
    per_split, by_city, rows = summary.per_split, summary.by_city, summary.rows
    cities = sorted({c for c, _ in by_city})
    city_body = [[c, *(by_city[(c, s)] for s in SPLITS), sum(by_city[(c, s)] for s in SPLITS)] for c in cities]
    lines = [
        "# crossview dataset card",
        "",
        "Training data for cross-view image geolocalization: each row pairs a geotagged ground-level photo with a",
        f"square of overhead satellite imagery centred on its geotag, {edge_m:g} m on a side ({chip_px} x {chip_px} px",
        f"at {gsd_m:g} m per pixel, north up, UTM). Built by the crossview pipeline (source: `{params.source}`), a",
        "rebuild of the IQT Labs Where in the World (WITW) dataset: Flickr photos paired with SpaceNet imagery.",
        "",
        "## Splits",
        "",
        *_table(
            ["split", "file", "rows"], [[s, f"`{s}.parquet`", per_split[s]] for s in SPLITS] + [["all", "", rows]]
        ),
        "",
        *_table(["city", *SPLITS, "total"], city_body),
        "",
        "Columns: the `MANIFEST` schema (`pipeline/schemas.py`); `photo_uri` and `chip_uri` are image store URIs.",
        "",
        "## Filtering (the funnel)",
        "",
        "![the funnel](../reports/funnel.png)",
        "",
        *_funnel_lines(summary),
        "",
        "Every photo not in a manifest has at least one recorded reason in the decisions table (`filter` stage).",
        "",
        "## Licences",
        "",
        *_licence_lines(summary),
        "",
        "## How to attribute and cite",
        "",
        "- Photos: each photo keeps its own licence. Credit it per row: `owner_name` (`owner`), a link to `page_url`,",
        "  and the licence `photo_licence` (`photo_licence_url`). Its terms (NonCommercial, NoDerivatives, ShareAlike)",
        "  apply to that photo.",
        "- Overhead imagery: chips are derived from the imagery credited in `overhead_attribution` under",
        "  `overhead_licence` (`overhead_licence_url`); for SpaceNet that is SpaceNet (CosmiQ Works, IQT) and Maxar",
        "  (DigitalGlobe) under CC BY-SA 4.0, so redistributed chips are shared alike.",
        f"- The study this dataset rebuilds: {WITW}.",
        "",
        "## Parameters",
        "",
        *_params_lines(params),
        "",
    ]
    return "\n".join(lines)


