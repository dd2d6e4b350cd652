"""Find photos → ``photos`` table: the demo's Flickr-shaped metadata, a custom table/folder, or Flickr."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

from catalogs import load_demo
from pipeline import photos_io
from pipeline.config import Params
from pipeline.errors import CatalogError, ConfigError, StageInputError
from pipeline.schemas import PHOTOS, table_from_rows, write_table
from pipeline.tablestream import SortingWriter

log = logging.getLogger(__name__)

BATCH_ROWS = 4_096  # harvest rows made Arrow at a time


def _demo_images(path: Path) -> list[dict]:
    """The ``images`` list of a WITW ``metadata.json``-shaped file."""
    if not path.is_file():
        raise StageInputError(f"{path} does not exist: run `crossview demo` (or `dvc repro demo`) first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CatalogError(f"{path}: not valid JSON ({err}); regenerate it with `crossview demo`") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise CatalogError(f'{path}: expected {{"image_count": N, "images": [...]}}')
    if data.get("image_count") not in (None, len(images)):
        log.warning("%s: image_count is %s but %d images are listed", path, data["image_count"], len(images))
    return images


def demo_rows(demo_dir: str | Path) -> list[dict]:
    """One row per photo in ``DIR/flickr/<aoi>.json`` for every city of the demo AOI."""
    demo_dir = Path(demo_dir)
    rows = []
    for city in load_demo()["cities"]:
        path = demo_dir / "flickr" / f"{city['aoi']}.json"
        for i, d in enumerate(_demo_images(path)):
            if not isinstance(d, dict):
                raise CatalogError(f"{path}: image {i + 1} is not a JSON object")
            try:
                rows.append(photos_io.photo_row_from_flickr(d, city["aoi"], city["city"], demo_dir, source="demo"))
            except CatalogError as err:
                raise CatalogError(f"{path}: image {i + 1}: {err}") from None
    return rows


def _comparable(row: dict) -> dict:
    """The row with NaN replaced, so that two NaN coordinates compare equal."""
    return {k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def dedupe(rows: Iterable[dict]) -> list[dict]:
    """One row per id: the first seen is kept; repeats are logged (a warning when their content differs)."""
    kept: dict[str, dict] = {}
    for row in rows:
        first = kept.setdefault(row["id"], row)
        if first is row:
            continue
        if _comparable(first) == _comparable(row):
            log.info("photo %s listed more than once; keeping one row", row["id"])
        else:
            log.warning("photo %s listed twice with different metadata (aoi %s and %s); keeping the first",
                        row["id"], first["aoi"], row["aoi"])
    return list(kept.values())


def search(params: Params, demo_dir: str | Path) -> pa.Table:
    """The ``photos`` table for ``params.source``."""
    if params.source == "flickr":
        from pipeline import flickr

        rows = flickr.harvest(params, flickr.aois_from_params(params))
    elif params.source == "custom":
        if not params.custom.photos:
            raise ConfigError("source: custom needs custom.photos (a CSV/Parquet photo table or a folder of images)")
        rows = photos_io.custom_rows(params.custom.photos)
    else:
        rows = demo_rows(demo_dir)
    return table_from_rows(dedupe(rows), PHOTOS)


def write_flickr(params: Params, out: str | Path) -> int:
    """The Flickr harvest's ``photos`` table written to ``out`` as its rows are built, sorted on disk
    (:class:`~pipeline.tablestream.SortingWriter`): memory holds a run of rows and the ids seen, not every
    row. The bytes ``write_table(search(...))`` gives (the harvest's rows are already one per id)."""
    from pipeline import flickr

    with SortingWriter(out, PHOTOS) as writer:
        rows = flickr.harvest_rows(params, flickr.aois_from_params(params))
        while batch := list(itertools.islice(rows, BATCH_ROWS)):  # as dicts, ~2.5 KB a row: few at a time
            writer.write(table_from_rows(batch, PHOTOS))
    return writer.rows


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--demo", default="data/demo", help="demo folder (read when source: demo)")
    parser.add_argument("--out", required=True, help="photos table to write (Parquet)")


def main(params: Params, args: argparse.Namespace) -> int:
    if params.source == "flickr":
        rows = write_flickr(params, args.out)
    else:
        table = search(params, args.demo)
        write_table(table, args.out, PHOTOS)
        rows = table.num_rows
    log.info("search (%s): %d photos -> %s", params.source, rows, args.out)
    return 0
