"""Bad rasters (through the tiles stage), bad custom photo tables (through ``custom.photos``, the pair
stage's coordinate checks and tile matching, and the filter stage's ``date_taken`` rule) and params with every wrong type: each gets a recorded error row or a one-line
error naming the file, row, column or key and what to do; the other tiles/rows go on.

:func:`table_rows` feeds the README's "Bad input → outcome" table (``python -m tests.test_bad_photos``).
"""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import rasterio
import shapely
from affine import Affine
from pydantic import BaseModel
from rasterio.transform import from_origin

from catalogs import RasterSource
from filters.base import Tables
from filters.photo_rules import date_taken
from pipeline.config import FilterParams, Params, parse_params
from pipeline.errors import CatalogError, ConfigError
from pipeline.geo import transformer
from pipeline.pair import coordinate_problems, pair_photos
from pipeline.photos_io import custom_rows
from pipeline.schemas import CHIPS, DOWNLOADS, PAIRS, PHOTOS, TILES, table_from_rows
from pipeline.tiles import build_tiles
from tests.test_bad_photos import matches

REPO = Path(__file__).resolve().parents[1]
UTM = from_origin(448000, 5411000, 0.5, 0.5)

# ---------------------------------------------------------------- rasters


@dataclass(frozen=True)
class RasterCase:
    name: str
    input: str
    band_order: tuple[int, ...]
    status: str
    outcome: str
    error_has: str = ""


RASTERS = [
    RasterCase("control", "a 3-band uint8 UTM GeoTIFF", (1, 2, 3), "ok", "ok"),
    RasterCase("truncated", "GeoTIFF cut in half", (1, 2, 3), "error",
               "error row: `<file>: cannot read raster (…): the file is truncated, corrupt or not a GeoTIFF; "
               "re-download it or remove it from the catalog`", "truncated"),
    RasterCase("no_crs", "GeoTIFF without a CRS", (1, 2, 3), "error",
               "error row: `<file>: the raster has no CRS: give it one (gdal_edit.py -a_srs) or drop it …`", "no CRS"),
    RasterCase("rotated", "rotated/sheared geotransform", (1, 2, 3), "ok",
               "ok: warped to a north-up UTM grid (nodata collar)"),
    RasterCase("all_nodata", "every pixel nodata", (1, 2, 3), "error",
               "error row: `<file>: no valid pixels in 128x128 px (…): the file is empty or its nodata value is "
               "wrong; fix it or drop it from the raster catalog`", "no valid pixels"),
    RasterCase("one_band", "1 band when `band_order` asks for 3", (1, 2, 3), "error",
               "error row: `<file>: band_order [1, 2, 3] names band 3 but the file has 1 band(s): fix band_order of "
               "aoi … in the raster catalog`", "band_order"),
    RasterCase("band_beyond", "`band_order` [1, 2, 5] on a 3-band file", (1, 2, 5), "error",
               "error row: `<file>: band_order [1, 2, 5] names band 5 but the file has 3 band(s): fix band_order …`",
               "names band 5"),
    RasterCase("sparse_3gb", "sparse GeoTIFF whose header claims 32000 × 32000 × 3 px (3 GB), file 32 kB",
               (1, 2, 3), "error", "error row in seconds (`no valid pixels in 32000x32000 px …`), no 3 GB read or "
               "written", "32000x32000"),
]


def _write_raster(folder: Path, case: RasterCase) -> str:
    path = folder / f"{case.name}.tif"
    rng = np.random.default_rng(0)
    profile = {"driver": "GTiff", "width": 128, "height": 128, "count": 3, "dtype": "uint8", "crs": "EPSG:32631",
               "transform": UTM}
    data = rng.integers(20, 230, (3, 128, 128)).astype("uint8")
    if case.name == "no_crs":
        del profile["crs"]
    elif case.name == "rotated":
        profile["transform"] = Affine(0.5, 0.2, 448000, 0.2, -0.5, 5411000)
    elif case.name == "all_nodata":
        profile["nodata"] = 0
        data[:] = 0
    elif case.name == "one_band":
        profile["count"], data = 1, data[:1]
    elif case.name == "truncated":
        profile.update(width=512, height=512)
        data = rng.integers(20, 230, (3, 512, 512)).astype("uint8")
    elif case.name == "sparse_3gb":
        profile.update(width=32000, height=32000, tiled=True, blockxsize=512, blockysize=512, SPARSE_OK=True)
        data = None
    with rasterio.open(path, "w", **profile) as ds:
        if data is not None:
            ds.write(data)
    if case.name == "truncated":
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    return str(path)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("rasters")
    sources = [
        RasterSource(f"AOI_{c.name}", "Testville", _write_raster(folder, c), c.band_order, "test", "CC BY 4.0", "t")
        for c in RASTERS
    ]
    table = build_tiles(Params(store=str(folder / "store"), workers=2), sources)
    return {r["aoi"].removeprefix("AOI_"): r for r in table.to_pylist()}


def test_every_raster_gets_a_row(tiles):
    assert sorted(tiles) == sorted(c.name for c in RASTERS)


@pytest.mark.parametrize("case", RASTERS, ids=lambda c: c.name)
def test_each_bad_raster_gets_an_error_row_naming_the_file(case, tiles):
    row = tiles[case.name]
    assert row["status"] == case.status, row
    if case.status == "ok":
        assert row["error"] == "" and row["width"] > 0
        return
    assert row["error"].startswith(row["source_uri"]), row["error"]  # names the file
    assert case.error_has in row["error"] and "\n" not in row["error"], row["error"]
    assert any(w in row["error"] for w in ("fix", "drop", "remove", "give it")), row["error"]  # what to do
    assert matches(case.outcome, row["error"], row["source_uri"]), (case.outcome, row["error"])


# ---------------------------------------------------------------- custom photo tables

HEADER = ["id", "lat", "lon", "image", "owner", "licence", "date_taken"]


@dataclass(frozen=True)
class TableCase:
    name: str
    input: str
    rows: list  # data rows (lists) or raw bytes for the whole file
    outcome: str
    error_has: tuple[str, ...] = ()  # CatalogError naming these
    reason: str = ""  # or: the recorded reason for row 2 (after `check`)
    check: str = "coordinates"  # coordinates: the pair stage's coordinate check; pair: the pair stage on one
    # tile over Rotterdam; date_taken: the filter stage's date rule (default params)


def _row(i: str, lat="48.85", lon="2.35", date="2016-05-01 12:00:00") -> list[str]:
    return [i, lat, lon, f"{i}.jpg", "owner", "CC BY 2.0", date]


TABLES = [
    TableCase("duplicate_ids", "two rows with id `a`", [_row("a"), _row("b"), _row("a")],
              "error: `…: id 'a' repeated in rows 1, 3 (rows count from 1, header excluded)`", ("'a'", "rows 1, 3")),
    TableCase("missing_columns", "no `lon` and `licence` columns", b"id,lat,image,owner\na,48.8,a.jpg,o\n",
              "error: `…: missing required columns lon, licence (need id, lat, lon, image, owner, licence)`",
              ("lon", "licence")),
    TableCase("not_utf8", "Latin-1 text (`Sérgio`) in a CSV",
              "id,lat,lon,image,owner,licence\na,48.8,2.3,a.jpg,o,CC BY 2.0\nb,48.8,2.3,b.jpg,S\xe9rgio,CC BY 2.0\n"
              .encode("latin-1"),
              "error: `…: line 3 is not UTF-8 text (byte 0xe9 …): save the table as UTF-8 …`", ("line 3", "UTF-8")),
    TableCase("lat_nan", "`lat` = NaN", [_row("a"), _row("b", lat="nan")], "pairing reason `lat is NaN`",
              reason="lat is NaN"),
    TableCase("lon_inf", "`lon` = inf", [_row("a"), _row("b", lon="inf")],
              "pairing reason `lon inf is outside [-180, 180]`", reason="lon inf is outside [-180, 180]"),
    TableCase("lat_minus_inf", "`lat` = -inf", [_row("a"), _row("b", lat="-inf")],
              "pairing reason `lat -inf is outside [-90, 90]`", reason="lat -inf is outside [-90, 90]"),
    TableCase("swapped_lat_lon", "lat/lon swapped (Sydney: lat 151.2, lon -33.9)",
              [_row("a"), _row("b", lat="151.2", lon="-33.9")],
              "pairing reason `lat 151.2 is outside [-90, 90]; lat and lon look swapped (lat -33.9, lon 151.2 would "
              "be valid): where a photo table has them swapped, swap its lat and lon columns …`",
              reason="lat 151.2 is outside [-90, 90]; lat and lon look swapped (lat -33.9, lon 151.2 would be valid): "
              "where a photo table has them swapped, swap its lat and lon columns (lat is north-south, lon east-west)"),
    TableCase("swapped_in_range", "lat/lon swapped, both in range (Rotterdam: lat 4.47, lon 51.92)",
              [_row("a", lat="51.92", lon="4.47"), _row("b", lat="4.47", lon="51.92")],
              "pairing reason `position is inside no tile footprint; with lat 51.92, lon 4.47 it lies inside tile …: "
              "lat and lon look swapped; where a photo table has them swapped, swap its lat and lon columns …` "
              "(and one warning for the run)",
              reason="position is inside no tile footprint; with lat 51.92, lon 4.47 it lies inside tile rdam_0: "
              "lat and lon look swapped; where a photo table has them swapped, swap its lat and lon columns "
              "(lat is north-south, lon east-west)", check="pair"),
    TableCase("future_date", "`date_taken` 2099-01-01 (table column; EXIF and Flickr dates alike)",
              [_row("a"), _row("b", date="2099-01-01 10:00:00")],
              "kept with filter reason `date_taken: 2099-01-01 10:00:00 is after filter.latest_date_taken 2030-12-31 "
              "(a wrong camera clock?); kept, the date is unreliable …` (`filter.implausible_date: drop` drops it)",
              reason="date_taken: 2099-01-01 10:00:00 is after filter.latest_date_taken 2030-12-31 (a wrong camera "
              "clock?); kept, the date is unreliable (filter.implausible_date)", check="date_taken"),
    TableCase("date_before_1826", "`date_taken` 1800-06-01", [_row("a"), _row("b", date="1800-06-01")],
              "kept with filter reason `date_taken: 1800-06-01 is before filter.earliest_date_taken 1826-01-01 "
              "(the first photograph); kept, …`",
              reason="date_taken: 1800-06-01 is before filter.earliest_date_taken 1826-01-01 (the first photograph); "
              "kept, the date is unreliable (filter.implausible_date)", check="date_taken"),
    TableCase("date_not_a_date", "`date_taken` `31/12/2015`", [_row("a"), _row("b", date="31/12/2015")],
              "kept with filter reason `date_taken: '31/12/2015' is not a date (YYYY-MM-DD[ HH:MM:SS]); kept, …`",
              reason="date_taken: '31/12/2015' is not a date (YYYY-MM-DD[ HH:MM:SS]); kept, the date is unreliable "
              "(filter.implausible_date)", check="date_taken"),
]


def _write_table(path: Path, case: TableCase) -> None:
    if isinstance(case.rows, bytes):
        path.write_bytes(case.rows)
        return
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        writer.writerows(case.rows)


@pytest.mark.parametrize("case", TABLES, ids=lambda c: c.name)
def test_each_bad_photo_table_gets_a_one_line_error_or_a_recorded_reason(case, tmp_path):
    path = tmp_path / f"{case.name}.csv"
    _write_table(path, case)
    if case.error_has:
        with pytest.raises(CatalogError) as info:
            custom_rows(path)
        message = str(info.value)
        assert message.startswith(str(path)) and "\n" not in message, message
        for word in case.error_has:
            assert word in message, message
        assert matches(case.outcome, message.removeprefix(str(path))), (case.outcome, message)
        return
    rows = custom_rows(path)
    assert [r["id"] for r in rows] == ["a", "b"]
    problems = RECORDED[case.check](table_from_rows(rows, PHOTOS))
    assert problems == {1: case.reason}  # the bad row gets the reason, the good row none
    assert matches(case.outcome, case.reason)


ROTTERDAM_UTM = 32631


def _rotterdam_tiles() -> pa.Table:
    x, y = transformer(4326, ROTTERDAM_UTM).transform(4.47, 51.92)
    footprint = shapely.box(x - 1000, y - 1000, x + 1000, y + 1000)
    return table_from_rows([{"tile_id": "rdam_0", "aoi": "rdam", "city": "Rotterdam", "epsg": ROTTERDAM_UTM,
                             "footprint_wkb": shapely.to_wkb(footprint), "status": "ok"}], TILES)


def _pair_problems(photos: pa.Table) -> dict[int, str]:
    """Row index -> the pair stage's reason, for photos it did not pair (all downloads ok, one tile)."""
    downloads = table_from_rows([{"id": i, "status": "ok"} for i in photos["id"].to_pylist()], DOWNLOADS)
    pairs = pair_photos(photos, downloads, _rotterdam_tiles(), Params()).to_pylist()
    return {k: r["reason"] for k, r in enumerate(pairs) if r["status"] != "paired"}


def _date_problems(photos: pa.Table, params: FilterParams | None = None) -> dict[int, str]:
    """Row index -> the filter stage's date_taken reason."""
    tables = Tables(photos, DOWNLOADS.empty_table(), PAIRS.empty_table(), CHIPS.empty_table())
    ids = photos["id"].to_pylist()
    return {ids.index(r["id"]): r["reason"] for r in date_taken(tables, params or FilterParams()).to_pylist()}


RECORDED = {"coordinates": coordinate_problems, "pair": _pair_problems, "date_taken": _date_problems}


def test_a_table_with_every_row_swapped_warns_once_for_the_run(tmp_path, caplog):
    case = next(c for c in TABLES if c.name == "swapped_in_range")
    rows = [_row(str(k), lat=f"4.47{k}", lon=f"51.92{k}") for k in range(5)]
    _write_table(tmp_path / "all.csv", dataclasses.replace(case, rows=rows))
    problems = _pair_problems(table_from_rows(custom_rows(tmp_path / "all.csv"), PHOTOS))
    assert len(problems) == 5 and all("look swapped" in why for why in problems.values()), problems
    warnings = [r.getMessage() for r in caplog.records if "swapped" in r.getMessage()]
    expected = ("5 of 5 photos outside every tile lie inside one with lat and lon swapped: where a photo table has "
                "them swapped, swap its lat and lon columns (lat is north-south, lon east-west)")
    assert warnings == [expected], warnings


def test_a_photo_outside_every_tile_either_way_gets_no_swap_hint():
    photos = table_from_rows([{"id": "far", "lat": 10.0, "lon": 20.0}], PHOTOS)
    assert _pair_problems(photos) == {0: "position is inside no tile footprint"}


def test_implausible_dates_are_judged_against_params_and_the_upload_never_the_clock():
    photos = table_from_rows([
        {"id": "a", "date_taken": "2029-06-01 10:00:00"},
        {"id": "b", "date_taken": "2015-06-05 09:00:00", "date_upload_unix": 1433203200},  # uploaded 2015-06-02
        {"id": "c", "date_taken": "2015-06-03 09:00:00", "date_upload_unix": 1433203200},  # local time: a day ahead
        {"id": "d", "date_taken": "2099"},
        {"id": "e", "date_taken": None},
    ], PHOTOS)
    default = _date_problems(photos)
    assert sorted(default) == [1, 3], default  # 2029 is before the default reference date 2030-12-31
    assert default[1].startswith("date_taken: 2015-06-05 09:00:00 is after the photo's upload on 2015-06-02 (UTC)")
    strict = FilterParams(latest_date_taken="2028-12-31", implausible_date="drop")
    tables = Tables(photos, DOWNLOADS.empty_table(), PAIRS.empty_table(), CHIPS.empty_table())
    dropped = {r["id"]: r for r in date_taken(tables, strict).to_pylist()}
    assert sorted(dropped) == ["a", "b", "d"] and not any(r["kept"] for r in dropped.values())
    assert dropped["a"]["reason"] == ("date_taken: 2029-06-01 10:00:00 is after filter.latest_date_taken 2028-12-31 "
                                      "(a wrong camera clock?): fix the date at the source or leave it empty")


def test_the_reference_date_must_be_a_date():
    with pytest.raises(ConfigError, match="filter.latest_date_taken"):
        parse_params({"filter": {"latest_date_taken": "2030-02-31"}})


def test_the_cli_reports_a_bad_table_in_one_line_without_a_traceback(tmp_path):
    _write_table(tmp_path / "mine.csv", TABLES[2])  # not UTF-8
    (tmp_path / "params.yaml").write_text("source: custom\ncustom:\n  photos: mine.csv\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "search", "--out", "photos.parquet"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "mine.csv: line 3 is not UTF-8" in errors[0], proc.stderr


# ---------------------------------------------------------------- params with wrong types


def _wrong_values(annotation) -> list:
    """Values of the wrong type for a field annotated ``annotation``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (dict, typing.Mapping) or annotation is dict:
        return ["a-string", [1, 2]]
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        accepts_str = any(a is str for a in args)
        return [{"a": "mapping"}, [1, 2]] if accepts_str else [{"a": "mapping"}, "not-a-number-xyz"]
    if annotation is str:
        return [{"a": "mapping"}, [1, 2]]
    return [{"a": "mapping"}, "not-a-number-xyz"]  # numbers, bools, tuples, lists, Literals


def _fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.append(((*prefix, name), "section"))
            out += _fields(ann, (*prefix, name))
        else:
            out.append(((*prefix, name), ann))
    return out


PARAM_FIELDS = _fields(Params)


def _nest(path: tuple[str, ...], value) -> dict:
    for key in reversed(path):
        value = {key: value}
    return value


@pytest.mark.parametrize(("path", "annotation"), PARAM_FIELDS, ids=[".".join(p) for p, _ in PARAM_FIELDS])
def test_every_param_with_a_wrong_type_is_a_config_error_naming_the_key(path, annotation):
    values = [5, "a-string", [1, 2]] if annotation == "section" else _wrong_values(annotation)
    key = ".".join(path)
    for value in values:
        with pytest.raises(ConfigError) as info:
            parse_params(_nest(path, value))
        assert key in str(info.value), (key, value, str(info.value))


def test_the_param_sweep_covers_every_section():
    sections = {p[0] for p, _ in PARAM_FIELDS}
    assert sections == set(Params.model_fields) and len(PARAM_FIELDS) > 100


# ---------------------------------------------------------------- the README rows


def table_rows() -> list[tuple[str, str, str]]:
    """(kind, bad input, outcome) for the README table."""
    rows = [("raster", c.input, c.outcome) for c in RASTERS]
    rows += [("photo table", c.input, c.outcome) for c in TABLES]
    rows.append(("params", f"every field of every section ({len(PARAM_FIELDS)} keys) with a wrong type",
                 "error: `params.yaml: <section>.<key>: <what is wrong> (got …)`"))
    return rows
