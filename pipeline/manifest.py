"""Write the train/val/test manifests, the dataset card and the counts (DVC metrics).

A pair reaches a manifest only if it is ``paired``, has an ``ok`` chip and no decision drops it.
The stage checks that nothing was lost: every photo is in a manifest or has at least one dropping
decision, and every row carries what redistribution needs (owner, licence name and URL, page URL,
overhead licence, attribution and satellite); a broken check leaves no manifest written. It reads
its tables a range of ids at a time (pipeline/tablestream.py), so its memory does not grow with them.
"""

from __future__ import annotations

import argparse
import logging
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from catalogs import find_licence
from filters.base import Tables, by_id, column
from pipeline.card import Summary, chip_geometry, counts, render_card
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
)  # fmt: skip
from pipeline.store import write_json, write_text_atomic
from pipeline.tablestream import Cursor, TableWriter, id_chunks

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


def _name(ids: list[str], count: int, limit: int = 10) -> str:
    """The first ``limit`` of ``ids`` (``count`` in all)."""
    return ", ".join(ids[:limit]) + (f", ... ({count} in all)" if count > limit else "")


def _required(column_name: str, row: dict) -> bool:
    """Whether a manifest row must carry ``column_name``: a page URL only where the licence rule asked for one
    (it drops the rows that lack it), an owner only where the licence asks for attribution."""
    if column_name == "page_url":
        return False
    if column_name in ("owner", "owner_name"):
        known = find_licence(row["photo_licence"])
        return known is None or known.attribution
    return True


class Invariants:
    """Checks that nothing was lost, a part at a time: every photo is in a manifest or dropped, and every row
    carries its attribution. :meth:`raise_if_broken` names the first ids (in id order) and how many."""

    def __init__(self) -> None:
        self.lost: tuple[list[str], int] = ([], 0)  # (first ids, count)
        self.bad: dict[str, tuple[list[str], int]] = {}  # column -> (first ids, count)
        self.bad_split: tuple[list[str], int] = ([], 0)

    @staticmethod
    def _more(seen: tuple[list[str], int], ids: list[str]) -> tuple[list[str], int]:
        return (seen[0] + ids[: max(0, 10 - len(seen[0]))], seen[1] + len(ids))

    def add(self, photos: pa.Table, rows: list[dict], decisions: pa.Table) -> None:
        in_manifest = {r["id"] for r in rows}
        lost = sorted(set(column(photos, "id")) - in_manifest - dropped_ids(decisions))
        self.lost = self._more(self.lost, lost)
        for col in ATTRIBUTION:
            bad = sorted(r["id"] for r in rows if not r[col] and _required(col, r))
            if bad:
                self.bad[col] = self._more(self.bad.get(col, ([], 0)), bad)
        self.bad_split = self._more(self.bad_split, sorted(r["id"] for r in rows if r["split"] not in SPLITS))

    def raise_if_broken(self) -> None:
        if self.lost[1]:
            raise InvariantError(
                f"{self.lost[1]} photo(s) are in no manifest and have no dropping decision: "
                f"{_name(*self.lost)}; rerun `crossview filter` on the current tables"
            )
        for col in ATTRIBUTION:
            if col in self.bad:
                raise InvariantError(
                    f"manifest rows without {col}: {_name(*self.bad[col])}; fix the photos/tiles catalog and rerun"
                )
        if self.bad_split[1]:
            raise InvariantError(f"manifest rows with a split other than {', '.join(SPLITS)}: {_name(*self.bad_split)}")


def check_invariants(photos: pa.Table, rows: list[dict], decisions: pa.Table) -> None:
    """Raise InvariantError if a photo is neither in a manifest nor dropped, or a row lacks attribution."""
    check = Invariants()
    check.add(photos, rows, decisions)
    check.raise_if_broken()


def split_tables(rows: list[dict]) -> dict[str, pa.Table]:
    """``{split: MANIFEST table}`` for every split, empty ones included."""
    return {s: table_from_rows([r for r in rows if r["split"] == s], MANIFEST) for s in SPLITS}


def build(
    tables: Tables, tiles: pa.Table, decisions: pa.Table, params: Params
) -> tuple[dict[str, pa.Table], dict, str]:
    """The pure core on whole tables: (manifests per split, counts report, dataset card text); raises on a
    broken invariant."""
    rows = manifest_rows(tables, tiles, decisions, params)
    check_invariants(tables.photos, rows, decisions)
    summary = Summary()
    summary.add(rows, tables.photos, decisions)
    return split_tables(rows), counts(summary), render_card(summary, params)


def configure(parser: argparse.ArgumentParser) -> None:
    for name in ("photos", "downloads", "tiles", "pairs", "chips", "decisions"):
        parser.add_argument(f"--{name}", required=True, help=f"{name} table (Parquet)")
    parser.add_argument("--out-dir", required=True, help="folder for train/val/test.parquet")
    parser.add_argument("--card", required=True, help="dataset card to write (Markdown)")
    parser.add_argument("--metrics", required=True, help="counts report to write (DVC metrics JSON)")


def main(params: Params, args: argparse.Namespace) -> int:
    """:func:`build` a part of the photos at a time (pipeline/tablestream.py): each part's rows go straight to
    the split files; the invariants, counts and card are totalled over the parts. A broken invariant
    leaves no manifest written."""
    tiles = read_table(args.tiles, TILES)
    parts = {name: Cursor(getattr(args, name), schema)
             for name, schema in (("downloads", DOWNLOADS), ("pairs", PAIRS), ("chips", CHIPS), ("decisions", DECISIONS))}
    summary, check, out_dir = Summary(), Invariants(), Path(args.out_dir)
    with ExitStack() as stack:
        writers = {s: stack.enter_context(TableWriter(out_dir / f"{s}.parquet", MANIFEST)) for s in SPLITS}
        for photos, rest in id_chunks(Cursor(args.photos, PHOTOS), parts):
            decisions = rest.pop("decisions")
            rows = manifest_rows(Tables(photos=photos, **rest), tiles, decisions, params)
            check.add(photos, rows, decisions)
            summary.add(rows, photos, decisions)
            for split, table in split_tables(rows).items():
                writers[split].write(table)
        check.raise_if_broken()
    report = counts(summary)
    write_text_atomic(render_card(summary, params), args.card)
    write_json(report, args.metrics)
    log.info("manifests: %s; dropped %d of %d photos", report["rows"], report["dropped"], report["photos_found"])
    return 0
