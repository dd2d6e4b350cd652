"""The pair stage: tile choice, reasons for every drop, splits and their buffer (the density limit: test_density.py)."""

from __future__ import annotations

import argparse
import itertools
import math
import random

import pyarrow as pa
import pytest
import shapely

from pipeline import pair, schemas, tablestream
from pipeline.config import parse_params
from pipeline.geo import transformer
from pipeline.schemas import (
    DOWNLOADS,
    PAIRS,
    PHOTOS,
    TILES,
    read_table,
    table_from_rows,
    write_table,
)

EPSG = 32631  # UTM 31N (Paris)
X0, Y0 = 448_000.0, 5_411_000.0  # south-west corner of the test tile "t1" (1 km square)


def params(**sections):
    base = {"split": {"test_cities": ["Paris"], "val_fraction": 0.0}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return parse_params(base)


def lonlat(x: float, y: float, epsg: int = EPSG) -> tuple[float, float]:
    return transformer(epsg, 4326).transform(x, y)


def photo(pid: str, x: float | None = None, y: float | None = None, lat=None, lon=None) -> dict:
    if x is not None:
        lon, lat = lonlat(x, y)
    return {"id": pid, "source": "custom", "lat": lat, "lon": lon}


def tile(tile_id: str, footprint, city: str = "Lyon", aoi: str = "AOI_X", epsg: int = EPSG) -> dict:
    return {"tile_id": tile_id, "aoi": aoi, "city": city, "epsg": epsg, "footprint_wkb": shapely.to_wkb(footprint),
            "uri": f"tiles/{tile_id}.tif", "gsd_m": 0.3, "status": "ok"}


def run_pair(photos: list[dict], tiles: list[dict], downloads: dict | None = None, **p) -> dict[str, dict]:
    downloads = downloads or {}
    dl = [{"id": r["id"], "status": downloads.get(r["id"], ("ok", None))[0], "error": downloads.get(r["id"], ("ok", None))[1]}
          for r in photos if downloads.get(r["id"]) != "absent"]
    table = pair.pair_photos(table_from_rows(photos, PHOTOS), table_from_rows(dl, DOWNLOADS), table_from_rows(tiles, TILES), params(**p))
    assert table.schema == PAIRS
    assert table["id"].to_pylist() == sorted(r["id"] for r in photos)
    return {r["id"]: r for r in table.to_pylist()}


T1 = tile("t1", shapely.box(X0, Y0, X0 + 1000, Y0 + 1000))


def test_photo_in_the_middle_of_a_tile_is_paired_with_its_utm_position():
    rows = run_pair([photo("a", X0 + 500, Y0 + 500)], [T1])
    r = rows["a"]
    assert (r["status"], r["tile_id"], r["epsg"], r["reason"]) == ("paired", "t1", EPSG, "")
    assert r["x_m"] == pytest.approx(X0 + 500, abs=1e-6) and r["y_m"] == pytest.approx(Y0 + 500, abs=1e-6)
    assert (r["aoi"], r["city"], r["split"]) == ("AOI_X", "Lyon", "train")  # aoi/city from the tile


def test_chip_near_tile_edge_is_rejected_with_reason():
    rows = run_pair([photo("edge", X0 + 50, Y0 + 500), photo("inner", X0 + 113, Y0 + 500)], [T1])
    assert rows["edge"]["status"] == "near_tile_edge"
    assert "t1" in rows["edge"]["reason"] and "225 m" in rows["edge"]["reason"]
    assert rows["edge"]["tile_id"] is None and rows["edge"]["split"] is None
    assert rows["inner"]["status"] == "paired"  # 113 m from the edge: the 225 m square just fits


def test_photo_outside_every_tile_is_outside_tiles():
    rows = run_pair([photo("far", X0 + 5000, Y0 + 500), photo("elsewhere", lat=10.0, lon=100.0)], [T1])
    assert {r["status"] for r in rows.values()} == {"outside_tiles"}


def test_bad_coordinates_say_what_is_wrong():
    rows = run_pair([photo("nan", lat=math.nan, lon=2.0), photo("null", lat=48.8, lon=None),
                     photo("range", lat=95.0, lon=200.0)], [T1])
    assert {r["status"] for r in rows.values()} == {"bad_coordinates"}
    assert rows["nan"]["reason"] == "lat is NaN"
    assert rows["null"]["reason"] == "lon is null"
    assert "lat 95.0 is outside [-90, 90]" in rows["range"]["reason"] and "lon 200.0" in rows["range"]["reason"]


def test_failed_or_missing_download_is_not_downloaded():
    photos = [photo("ok", X0 + 500, Y0 + 500), photo("bad", X0 + 600, Y0 + 600), photo("gone", X0 + 400, Y0 + 400)]
    rows = run_pair(photos, [T1], downloads={"bad": ("http_error", "HTTP 404"), "gone": "absent"})
    assert rows["ok"]["status"] == "paired"
    assert rows["bad"]["status"] == "not_downloaded" and rows["bad"]["reason"] == "download status http_error: HTTP 404"
    assert rows["gone"]["status"] == "not_downloaded" and "no row" in rows["gone"]["reason"]


def test_tile_with_most_margin_wins_and_ties_go_to_the_lower_tile_id():
    wide = tile("b_wide", shapely.box(X0 - 1000, Y0 - 1000, X0 + 2000, Y0 + 2000), city="Nice")
    twin = tile("a_twin", shapely.box(X0, Y0, X0 + 1000, Y0 + 1000), city="Nice")
    rows = run_pair([photo("p", X0 + 500, Y0 + 500)], [T1, wide, twin])
    assert rows["p"]["tile_id"] == "b_wide" and rows["p"]["city"] == "Nice"
    rows = run_pair([photo("p", X0 + 500, Y0 + 500)], [T1, twin])
    assert rows["p"]["tile_id"] == "a_twin"  # same margin as t1: lowest tile_id


def test_tiles_in_another_utm_zone_are_matched_in_their_own_crs():
    x, y = transformer(4326, 32632).transform(*lonlat(X0 + 500, Y0 + 500))
    t2 = tile("z32", shapely.box(x - 500, y - 500, x + 500, y + 500), epsg=32632)
    rows = run_pair([photo("p", X0 + 500, Y0 + 500)], [t2])
    assert (rows["p"]["status"], rows["p"]["epsg"]) == ("paired", 32632)
    assert rows["p"]["x_m"] == pytest.approx(x, abs=1e-3)


def test_test_city_is_test_whole_and_val_blocks_are_whole_blocks():
    paris = tile("paris", shapely.box(X0 - 20_000, Y0, X0 - 10_000, Y0 + 10_000), city="Paris")
    lyon = tile("lyon", shapely.box(X0, Y0, X0 + 10_000, Y0 + 10_000), city="Lyon")
    grid = [(i, j) for i in range(20) for j in range(20)]
    photos = [photo(f"l{i:02d}{j:02d}", X0 + 250 + 480 * i, Y0 + 250 + 480 * j) for i, j in grid]
    photos += [photo(f"p{i:02d}{j:02d}", X0 - 19_750 + 480 * i, Y0 + 250 + 480 * j) for i, j in grid]
    rows = run_pair(photos, [paris, lyon], split={"val_fraction": 0.3, "block_m": 1000, "seed": 4})
    paris_rows = [r for r in rows.values() if r["city"] == "Paris"]
    assert {(r["status"], r["split"]) for r in paris_rows} == {("paired", "test")}
    lyon_rows = [r for r in rows.values() if r["city"] == "Lyon"]
    splits = {r["split"] for r in lyon_rows if r["status"] == "paired"}
    assert splits == {"train", "val"}
    by_block: dict = {}
    for r in lyon_rows:
        if r["status"] == "paired":
            by_block.setdefault((r["x_m"] // 1000, r["y_m"] // 1000), set()).add(r["split"])
    assert all(len(s) == 1 for s in by_block.values())
    n_val = sum(s == {"val"} for s in by_block.values())
    assert 0.1 < n_val / len(by_block) < 0.6


def test_no_chip_of_one_split_overlaps_a_chip_of_another():
    lyon = tile("lyon", shapely.box(X0, Y0, X0 + 6000, Y0 + 6000), city="Lyon")
    rng = random.Random(5)
    photos = [photo(f"q{i:04d}", X0 + rng.uniform(120, 5880), Y0 + rng.uniform(120, 5880)) for i in range(600)]
    rows = run_pair(photos, [lyon], split={"val_fraction": 0.3, "block_m": 500, "seed": 1})
    buffered = [r for r in rows.values() if r["status"] == "split_buffer"]
    assert buffered and all("overlaps the val chip of photo" in r["reason"] for r in buffered)
    assert all(r["split"] is None and r["tile_id"] == "lyon" for r in buffered)
    paired = [r for r in rows.values() if r["status"] == "paired"]
    for a, b in itertools.combinations(paired, 2):
        if a["split"] != b["split"]:
            assert max(abs(a["x_m"] - b["x_m"]), abs(a["y_m"] - b["y_m"])) >= 225.0


def test_main_writes_byte_identical_tables_and_reads_only_ok_tiles(tmp_path):
    photos = [photo("a", X0 + 500, Y0 + 500), photo("b", X0 + 502, Y0 + 500), photo("c", X0 + 5000, Y0)]
    broken = {**tile("t0", shapely.box(X0, Y0, X0 + 1000, Y0 + 1000)), "status": "error", "footprint_wkb": None}
    write_table(table_from_rows(photos, PHOTOS), tmp_path / "photos.parquet", PHOTOS)
    write_table(table_from_rows([{"id": p["id"], "status": "ok"} for p in photos], DOWNLOADS), tmp_path / "dl.parquet", DOWNLOADS)
    write_table(table_from_rows([broken, T1], TILES), tmp_path / "tiles.parquet", TILES, sort_by=["tile_id"])
    parser = argparse.ArgumentParser()
    pair.configure(parser)
    outs = []
    for k in range(2):
        out = tmp_path / f"pairs{k}.parquet"
        args = parser.parse_args(["--photos", str(tmp_path / "photos.parquet"), "--downloads", str(tmp_path / "dl.parquet"),
                                  "--tiles", str(tmp_path / "tiles.parquet"), "--out", str(out)])
        assert pair.main(params(), args) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    rows = {r["id"]: r for r in read_table(tmp_path / "pairs0.parquet", PAIRS).to_pylist()}
    assert sorted(r["status"] for r in rows.values()) == ["outside_tiles", "paired", "paired"]  # a, b 2 m apart: both
    assert {r["tile_id"] for r in rows.values() if r["status"] == "paired"} == {"t1"}


def test_the_stage_in_chunks_writes_the_bytes_of_the_whole_table_core(tmp_path, monkeypatch, caplog):
    """Split-buffer drops across chunks (the reason names a photo of another chunk), a swapped photo and a
    failed download: chunks of 7 photos and 4-row row groups give the whole-table core's bytes; one warning."""
    monkeypatch.setattr(schemas, "ROW_GROUP_ROWS", 4)
    monkeypatch.setattr(tablestream, "ROW_GROUP_ROWS", 4)
    monkeypatch.setattr(tablestream, "CHUNK_ROWS", 7)
    monkeypatch.setattr(tablestream, "RUN_ROWS", 9)  # the places and the drops sorted on disk in runs
    monkeypatch.setattr(tablestream, "MERGE_MIN_ROWS", 2)
    monkeypatch.setattr(pair, "SWEEP_POINTS", 5)  # and swept a few at a time
    lyon = tile("lyon", shapely.box(X0, Y0, X0 + 3000, Y0 + 3000), city="Lyon")
    rng = random.Random(5)
    photos = [photo(f"q{i:04d}", X0 + rng.uniform(120, 2880), Y0 + rng.uniform(120, 2880)) for i in range(150)]
    lon, lat = lonlat(X0 + 1500, Y0 + 1500)
    photos += [photo("s1", lat=lon, lon=lat), photo("s2", lat=lon, lon=lat)]  # swapped: outside, with a hint
    downloads = [{"id": p["id"], "status": "error" if p["id"] == "q0003" else "ok"} for p in photos]
    p = params(split={"val_fraction": 0.3, "block_m": 500, "seed": 1})
    write_table(table_from_rows(photos, PHOTOS), tmp_path / "photos.parquet", PHOTOS)
    write_table(table_from_rows(downloads, DOWNLOADS), tmp_path / "dl.parquet", DOWNLOADS)
    write_table(table_from_rows([lyon], TILES), tmp_path / "tiles.parquet", TILES, sort_by=["tile_id"])
    whole = pair.pair_photos(read_table(tmp_path / "photos.parquet", PHOTOS), read_table(tmp_path / "dl.parquet", DOWNLOADS),
                             read_table(tmp_path / "tiles.parquet", TILES), p)  # fmt: skip
    write_table(whole, tmp_path / "whole.parquet", PAIRS)
    parser = argparse.ArgumentParser()
    pair.configure(parser)
    args = parser.parse_args(["--photos", str(tmp_path / "photos.parquet"), "--downloads", str(tmp_path / "dl.parquet"),
                              "--tiles", str(tmp_path / "tiles.parquet"), "--out", str(tmp_path / "chunked.parquet")])
    caplog.clear()
    assert pair.main(p, args) == 0
    assert (tmp_path / "chunked.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    rows = whole.to_pylist()
    position = {r["id"]: k for k, r in enumerate(rows)}
    far = [r for r in rows if r["status"] == "split_buffer"
           and abs(position[r["reason"].split("chip of photo ")[1].split()[0]] - position[r["id"]]) >= 7]
    assert far, "no split-buffer drop names a photo of another chunk: the test would not show the global step"
    assert {r["status"] for r in rows} == {"paired", "split_buffer", "outside_tiles", "not_downloaded"}
    swapped = [r.getMessage() for r in caplog.records if "swapped" in r.getMessage()]
    assert swapped == [f"2 of 2 photos outside every tile lie inside one with lat and lon swapped: {pair.SWAP_FIX}"]


def _split_rule(places: list[dict], edge_m: float) -> dict[str, str]:
    """The split buffer spelled out: rank by rank, each place against every kept place of a higher-priority
    split in its zone; the nearest (Chebyshev) overlapped one named, the lowest row among equally near."""
    state = {p["id"]: p["rank"] == 0 for p in places}
    drops = {}
    for r in range(1, len(pair.SPLIT_PRIORITY)):
        for p in (p for p in places if p["rank"] == r):
            near = [(max(abs(p["x_m"] - q["x_m"]), abs(p["y_m"] - q["y_m"])), q["row"], q) for q in places
                    if q["epsg"] == p["epsg"] and q["rank"] < r and state[q["id"]]]  # fmt: skip
            near = [n for n in near if n[0] < edge_m]
            state[p["id"]] = not near
            if near:
                d, _, q = min(near, key=lambda n: n[:2])
                drops[p["id"]] = (f"{pair.SPLIT_PRIORITY[r]} chip overlaps the {pair.SPLIT_PRIORITY[q['rank']]} chip of "
                                  f"photo {q['id']} (centres {d:.1f} m apart, Chebyshev < {edge_m:g} m)")  # fmt: skip
    return drops


@pytest.mark.parametrize("seed", range(4))
def test_the_split_sweep_in_any_blocks_is_the_rule_spelled_out(seed):
    """Places on a coarse grid (many equal distances and repeated positions) in two zones, swept in blocks of 1
    to all and deciding every 1 to 10^6 places: the drops and the photo each names are the rule's."""
    rng = random.Random(seed)
    edge = 3.0
    places = [{"row": k, "id": f"p{k:04d}", "rank": rng.choice([0, 1, 1, 2, 2, 2]), "epsg": rng.choice([32631, 32632]),
               "x_m": float(rng.randrange(120)), "y_m": float(rng.randrange(12))} for k in range(400)]  # fmt: skip
    want = _split_rule(places, edge)
    assert 50 < len(want) < 300
    table = pa.Table.from_pylist(places, schema=pair.BUFFER_PLACES).sort_by([(k, "ascending") for k in pair.PLACE_ORDER])
    for block, points in ((1, 1), (7, 3), (64, 50), (400, 10**6), (13, 10**6)):
        blocks = [table.slice(a, block) for a in range(0, table.num_rows, block)]
        got = pa.concat_tables(pair.split_sweep(blocks, edge, points)).to_pylist()
        assert len(got) == len(want) and {r["id"]: r["reason"] for r in got} == want, (block, points)
    shuffled = table.take(pa.array(rng.sample(range(400), 400)))
    whole = pair.split_buffer_drops(shuffled, edge).to_pylist()
    assert [r["id"] for r in whole] == sorted(want) and {r["id"]: r["reason"] for r in whole} == want


def test_the_split_sweep_names_the_lowest_row_among_equally_near_chips():
    """A val chip 2 m from four test chips (two at one position): the lowest row of them is named, whichever
    other chips the sweep holds; the brute-force rule agrees."""
    places = [{"row": 10, "id": "v", "rank": 1, "epsg": 1, "x_m": 0.0, "y_m": 0.0}]
    places += [{"row": r, "id": f"t{r}", "rank": 0, "epsg": 1, "x_m": x, "y_m": y}
               for r, (x, y) in zip([7, 5, 3, 8], [(2.0, 0.0), (-2.0, 1.0), (-2.0, 1.0), (0.5, -2.0)], strict=True)]
    table = pa.Table.from_pylist(places, schema=pair.BUFFER_PLACES)
    got = pair.split_buffer_drops(table, 3.0).to_pylist()
    assert got == [{"id": "v", "reason": _split_rule(places, 3.0)["v"]}]
    assert "chip of photo t3 " in got[0]["reason"]
