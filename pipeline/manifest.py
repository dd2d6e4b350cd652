"""Write the train/val/test manifests, the dataset card and the counts (DVC metrics).

A pair reaches a manifest only if it is ``paired``, has an ``ok`` chip and no decision drops it.
Before writing, the stage checks that nothing was lost: every photo is in a manifest or has at
least one dropping decision, and every row carries what redistribution needs (owner, licence
name and URL, page URL, overhead licence, attribution and satellite).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from catalogs import find_licence
from filters import REGISTRY
from filters.base import Tables, by_id, column
from filters.funnel import Steps, filter_notes, filter_order, funnel_steps
from pipeline.config import Params
from pipeline.errors import InvariantError
from pipeline.schemas import (
    CHIPS,
    DECISIONS,
    DOWNLOADS,
    MANIFEST,
    PAIRS,
    PHOTOS,
    SPLITS,
    TILES,
    read_table,
    table_from_rows,
    write_table,
)  # fmt: skip
from pipeline.store import write_json, write_text_atomic

log = logging.getLogger(__name__)

ATTRIBUTION = (
    "owner",
    "owner_name",
    "photo_licence",
    "photo_licence_url",
    "page_url",
    "overhead_licence",
    "overhead_licence_url",
    "overhead_attribution",
    "satellite",
)
PHOTO_COLUMNS = ["aoi", "city", "lat", "lon", "owner", "owner_name", "title", "date_taken", "accuracy",
                 "licence_id", "licence", "licence_url", "page_url"]  # fmt: skip
TILE_COLUMNS = {"licence": "overhead_licence", "licence_url": "overhead_licence_url",
                "attribution": "overhead_attribution", "satellite": "satellite"}  # fmt: skip


def chip_geometry(params: Params) -> tuple[float, int, float]:
    """(chip edge in metres, chip side in pixels, ground sample distance in metres) from params."""
    return params.chip.edge_m, int(round(params.chip.edge_m / params.tiles.gsd_m)), params.tiles.gsd_m


def dropped_ids(decisions: pa.Table) -> set[str]:
    """Ids with at least one dropping decision."""
    return set(pc.filter(decisions["id"], pc.invert(decisions["kept"])).to_pylist())


def _photo_fields(photo: dict) -> dict:
    """Manifest columns from a photos row; licence name/URL from the catalog when the row lacks them."""
    known = find_licence(photo["licence_id"]) if photo["licence_id"] is not None else find_licence(photo["licence"])
    out = {k: photo[k] for k in PHOTO_COLUMNS if k not in ("licence_id", "licence", "licence_url")}
    out["owner_name"] = photo["owner_name"] or photo["owner"]  # Flickr credits the name, else the NSID
    out["photo_licence"] = photo["licence"] or (known.name if known else None)
    out["photo_licence_url"] = photo["licence_url"] or (known.url if known else None)
    return out


def manifest_rows(tables: Tables, tiles: pa.Table, decisions: pa.Table, params: Params) -> list[dict]:
    """One MANIFEST row per pair that is paired, has an ok chip and is dropped by no decision."""
    edge_m, chip_px, gsd_m = chip_geometry(params)
    dropped = dropped_ids(decisions)
    photos = by_id(tables.photos, PHOTO_COLUMNS)
    downloads = by_id(tables.downloads, ["uri", "width", "height", "sha256", "status"])
    chips = by_id(tables.chips, ["uri", "status", "nodata_fraction", "width"])
    tile_rows = {r["tile_id"]: r for r in tiles.select(["tile_id", *TILE_COLUMNS]).to_pylist()}
    rows, odd_size = [], 0
    for i, pair in by_id(tables.pairs, ["split", "status", "tile_id", "epsg", "x_m", "y_m"]).items():
        chip, photo, dl = chips.get(i), photos.get(i), downloads.get(i)
        if pair["status"] != "paired" or i in dropped or not chip or chip["status"] != "ok":
            continue
        if photo is None or dl is None or dl["status"] != "ok":
            log.warning("pair %s has no photo or no ok download but no decision drops it", i)
            continue  # the invariant check below names it
        tile = tile_rows.get(pair["tile_id"])
        if tile is None:
            raise InvariantError(
                f"pair {i} names tile {pair['tile_id']!r}, which is not in the tiles table; rerun `crossview pair`"
            )
        odd_size += chip["width"] is not None and chip["width"] != chip_px
        row = {"id": i, **_photo_fields(photo), **{k: pair[k] for k in ("split", "tile_id", "epsg", "x_m", "y_m")}}
        row.update({new: tile[old] for old, new in TILE_COLUMNS.items()})
        row.update(photo_uri=dl["uri"], photo_width=dl["width"], photo_height=dl["height"], photo_sha256=dl["sha256"])
        row.update(
            chip_uri=chip["uri"],
            chip_edge_m=edge_m,
            chip_px=chip_px,
            gsd_m=gsd_m,
            nodata_fraction=chip["nodata_fraction"],
        )
        rows.append(row)
    if odd_size:
        log.warning(
            "%d chips are not %d px wide (chip.edge_m / tiles.gsd_m); rerun `crossview chip`", odd_size, chip_px
        )
    return rows


def _name(ids: list[str], limit: int = 10) -> str:
    return ", ".join(ids[:limit]) + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def _required(column_name: str, row: dict) -> bool:
    """Whether a manifest row must carry ``column_name``: a page URL only where the licence rule asked for one
    (it drops the rows that lack it), an owner only where the licence asks for attribution."""
    if column_name == "page_url":
        return False
    if column_name in ("owner", "owner_name"):
        known = find_licence(row["photo_licence"])
        return known is None or known.attribution
    return True


def check_invariants(photos: pa.Table, rows: list[dict], decisions: pa.Table) -> None:
    """Raise InvariantError if a photo is neither in a manifest nor dropped, or a row lacks attribution."""
    in_manifest = {r["id"] for r in rows}
    lost = sorted(set(column(photos, "id")) - in_manifest - dropped_ids(decisions))
    if lost:
        raise InvariantError(
            f"{len(lost)} photo(s) are in no manifest and have no dropping decision: {_name(lost)}; "
            "rerun `crossview filter` on the current tables"
        )
    for col in ATTRIBUTION:
        bad = sorted(r["id"] for r in rows if not r[col] and _required(col, r))
        if bad:
            raise InvariantError(f"manifest rows without {col}: {_name(bad)}; fix the photos/tiles catalog and rerun")
    bad_split = sorted(r["id"] for r in rows if r["split"] not in SPLITS)
    if bad_split:
        raise InvariantError(f"manifest rows with a split other than {', '.join(SPLITS)}: {_name(bad_split)}")


def split_tables(rows: list[dict]) -> dict[str, pa.Table]:
    """``{split: MANIFEST table}`` for every split, empty ones included."""
    return {s: table_from_rows([r for r in rows if r["split"] == s], MANIFEST) for s in SPLITS}


def funnel(photos: pa.Table, decisions: pa.Table) -> Steps:
    """The funnel of the photos through the registry's filters (as the filter stage's report counts it)."""
    return funnel_steps(column(photos, "id"), decisions, filter_order(REGISTRY, decisions))


def counts(photos: pa.Table, rows: list[dict], decisions: pa.Table) -> dict:
    """The counts report (DVC metrics): rows per split and per city x split, photos found, drops per reason."""
    per_split = Counter(r["split"] for r in rows)
    per_city: dict[str, Counter] = {}
    for r in rows:
        per_city.setdefault(r["city"] or "unknown", Counter())[r["split"]] += 1
    reasons = funnel(photos, decisions).by_reason
    return {
        "photos_found": photos.num_rows,
        "rows": {**{s: per_split[s] for s in SPLITS}, "total": len(rows)},
        "by_city": {c: {s: per_city[c][s] for s in SPLITS} for c in sorted(per_city)},
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


def _funnel_lines(photos: pa.Table, decisions: pa.Table) -> list[str]:
    steps = funnel(photos, decisions)
    body = [["found", "", steps.found]]
    body += [[f"`{name}`", steps.removed[name], steps.remaining[name]] for name in steps.removed]
    notes = filter_notes(decisions, REGISTRY)
    return [
        f"{steps.found} photos were found; each dropped photo is counted once, under the first filter that dropped it.",
        "",
        *_table(["step", "removed", "remaining"], body + [["kept", "", steps.kept]]),
        "",
        *_table(["reason", "photos"], [[f"`{code}`", n] for code, n in steps.by_reason.items()]),
        *(["", "Filters that did not run:", ""] + [f"- `{n}`: {notes[n]}" for n in sorted(notes)] if notes else []),
    ]


def _licence_lines(rows: list[dict]) -> list[str]:
    photo = Counter((r["photo_licence"], r["photo_licence_url"]) for r in rows)
    keys = ("overhead_licence", "overhead_licence_url", "satellite", "overhead_attribution")
    overhead = Counter(tuple(r[k] for k in keys) for r in rows)
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


def render_card(rows: list[dict], photos: pa.Table, decisions: pa.Table, params: Params) -> str:
    """The dataset card (Markdown): what it is, counts, funnel, licences, attribution, params. No timestamps."""
    edge_m, chip_px, gsd_m = chip_geometry(params)
    per_split = Counter(r["split"] for r in rows)
    cities = sorted({r["city"] or "unknown" for r in rows})
    by_city = Counter((r["city"] or "unknown", r["split"]) for r in rows)
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
            ["split", "file", "rows"], [[s, f"`{s}.parquet`", per_split[s]] for s in SPLITS] + [["all", "", len(rows)]]
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
        *_funnel_lines(photos, decisions),
        "",
        "Every photo not in a manifest has at least one recorded reason in the decisions table (`filter` stage).",
        "",
        "## Licences",
        "",
        *_licence_lines(rows),
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


def build(
    tables: Tables, tiles: pa.Table, decisions: pa.Table, params: Params
) -> tuple[dict[str, pa.Table], dict, str]:
    """The pure core: (manifests per split, counts report, dataset card text); raises on a broken invariant."""
    rows = manifest_rows(tables, tiles, decisions, params)
    check_invariants(tables.photos, rows, decisions)
    report = counts(tables.photos, rows, decisions)
    text = render_card(rows, tables.photos, decisions, params)
    return split_tables(rows), report, text


def configure(parser: argparse.ArgumentParser) -> None:
    for name in ("photos", "downloads", "tiles", "pairs", "chips", "decisions"):
        parser.add_argument(f"--{name}", required=True, help=f"{name} table (Parquet)")
    parser.add_argument("--out-dir", required=True, help="folder for train/val/test.parquet")
    parser.add_argument("--card", required=True, help="dataset card to write (Markdown)")
    parser.add_argument("--metrics", required=True, help="counts report to write (DVC metrics JSON)")


def main(params: Params, args: argparse.Namespace) -> int:
    tables = Tables(
        photos=read_table(args.photos, PHOTOS),
        downloads=read_table(args.downloads, DOWNLOADS),
        pairs=read_table(args.pairs, PAIRS),
        chips=read_table(args.chips, CHIPS),
    )
    tiles = read_table(args.tiles, TILES)
    decisions = read_table(args.decisions, DECISIONS)
    manifests, report, text = build(tables, tiles, decisions, params)
    out_dir = Path(args.out_dir)
    for split, table in manifests.items():
        write_table(table, out_dir / f"{split}.parquet", MANIFEST)
    write_text_atomic(text, args.card)
    write_json(report, args.metrics)
    log.info("manifests: %s; dropped %d of %d photos", report["rows"], report["dropped"], report["photos_found"])
    return 0
