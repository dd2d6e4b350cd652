"""Bad rasters (through the tiles stage), bad custom photo tables (through ``custom.photos`` and the pair
stage's coordinate checks) and params with every wrong type: each gets a recorded error row or a one-line
error naming the file, row, column or key and what to do; the other tiles/rows go on.

:func:`table_rows` feeds the README's "Bad input → outcome" table (``python -m tests.test_bad_photos``).
"""

from __future__ import annotations

import csv
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pydantic import BaseModel
from rasterio.transform import from_origin

from catalogs import RasterSource
from pipeline.config import Params, parse_params
from pipeline.errors import CatalogError, ConfigError
from pipeline.pair import coordinate_problems
from pipeline.photos_io import custom_rows
from pipeline.schemas import PHOTOS, table_from_rows
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
    reason: str = ""  # or: the pair stage's coordinate reason for row 2


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
              "pairing reason `lat 151.2 is outside [-90, 90]` (swaps inside both ranges pair as `outside_tiles`)",
              reason="lat 151.2 is outside [-90, 90]"),
    TableCase("future_date", "`date_taken` 2099-01-01", [_row("a"), _row("b", date="2099-01-01 10:00:00")],
              "error: `…: column date_taken is in the future in row 2 (2099-01-01 10:00:00) …: fix the dates …`",
              ("date_taken", "row 2")),
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
    problems = coordinate_problems(table_from_rows(rows, PHOTOS))
    assert problems == {1: case.reason}  # the bad row gets the reason, the good row none
    assert matches(case.outcome, case.reason)


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
