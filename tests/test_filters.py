"""Each rule in filters/ on hand-built tables; the world built here is reused by the stage tests."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pyarrow as pa
import pytest

from filters import REGISTRY, chip_rules, curator_rules, location_rules, photo_rules
from filters.base import Tables, decisions_table, reason_code
from filters.funnel import first_drops, funnel_steps
from pipeline import filter as filter_stage
from pipeline.config import FilterParams
from pipeline.errors import CatalogError
from pipeline.schemas import CHIPS, DECISIONS, DOWNLOADS, PAIRS, PHOTOS, TILES, table_from_rows

SPAM_OWNER = "99999999@N00"
DENY_POLYGON = "POLYGON ((5.094 45.200, 5.096 45.200, 5.096 45.201, 5.094 45.201, 5.094 45.200))"

# id -> (city, split or None, what is planted); the first filter that must drop it (None: kept).
CASES: dict[str, tuple[str, str | None, str | None]] = {
    "p01": ("Alderport", "train", None),
    "p02": ("Alderport", "val", None),
    "p03": ("Brimvale", "test", None),
    "p04": ("Alderport", None, "download"),
    "p05": ("Alderport", "train", "single_band"),
    "p06": ("Alderport", "train", "too_small"),
    "p07": ("Alderport", "train", "duplicate_image"),
    "p08": ("Alderport", None, "coordinates"),
    "p09": ("Alderport", "train", "accuracy"),
    "p10": ("Brimvale", "test", "deny_list"),
    "p11": ("Alderport", "train", "deny_list"),
    "p12": ("Alderport", None, "pairing"),
    "p13": ("Alderport", "val", "density"),  # 3 m from p02, which every filter keeps
    "p14": ("Alderport", "train", "chip_nodata"),
    "p15": ("Brimvale", "test", "chip_uniform"),
    "p16": ("Alderport", "val", "chip_error"),
    "p17": ("Alderport", "train", "curator"),
    "p18": ("Alderport", "train", "licence"),
    "p19": ("Alderport", "train", None),
    "p20": ("Alderport", None, "split_buffer"),
    "p21": ("Brimvale", None, "pairing"),
}
EXPECTED_KEPT = {"p01", "p02", "p03", "p19"}
TILE = {
    "Alderport": ("alderport_r1c1", "DEMO_1_Alderport", 32631),
    "Brimvale": ("brimvale_r1c1", "DEMO_2_Brimvale", 32632),
}
PAIR_STATUS = {"p04": "not_downloaded", "p08": "bad_coordinates", "p12": "outside_tiles", "p20": "split_buffer",
               "p21": "near_tile_edge"}  # fmt: skip
VERDICTS_CSV = """id,verdict,curator,timestamp,note
p17,keep,ann,2026-01-01T10:00:00Z,first look
p02,keep,ann,2026-01-02T10:00:00Z,
p17,drop_indoor,bob,2026-01-03T09:00:00+00:00,a kitchen
p09,keep,ann,2026-01-03T10:00:00Z,a curator keep cannot undo a rule drop
nosuch,keep,ann,2026-01-03T10:00:00Z,not a photo
"""


def photo_row(i: str, k: int) -> dict:
    city = CASES[i][0]
    lon, lat = (5.1 + 0.001 * k, 45.2) if city == "Alderport" else (9.045 + 0.001 * k, 44.8)
    row = {
        "id": i, "source": "demo", "aoi": TILE[city][1], "city": city, "owner": f"{k}@N0{k % 10}",
        "owner_name": f"Owner {k}", "title": f"photo {i}", "licence_id": 4, "licence": "CC BY 2.0",
        "licence_url": "https://creativecommons.org/licenses/by/2.0/", "lat": lat, "lon": lon, "accuracy": 16,
        "context": 2, "date_taken": "2020-05-01 12:00:00", "date_upload_unix": 1588334400,
        "url": f"data/demo/photos/{i}.jpg", "url_width": 640, "url_height": 480,
        "page_url": f"https://www.flickr.com/photos/{k}@N0{k % 10}/{i}", "tags": "", "query_cell": "c0",
    }  # fmt: skip
    planted = {
        "p08": {"lat": math.nan},
        "p09": {"accuracy": 11},
        "p10": {"owner": SPAM_OWNER},
        "p11": {"lon": 5.095, "lat": 45.2005},
        "p18": {"licence_id": 0, "licence": None, "licence_url": None},
        "p19": {"accuracy": None, "owner_name": None},
    }
    return row | planted.get(i, {})


def download_row(i: str) -> dict:
    row = {"id": i, "uri": f"data/store/photos/{i}.jpg", "sha256": f"sha-{i}", "bytes": 1000, "width": 640,
           "height": 480, "bands": 3, "mode": "RGB", "exif_orientation": 1, "duplicate_of": None, "status": "ok",
           "error": ""}  # fmt: skip
    planted = {
        "p04": {
            "uri": None,
            "width": None,
            "height": None,
            "bands": None,
            "mode": None,
            "status": "corrupt",
            "error": "image file is truncated",
        },  # fmt: skip
        "p05": {"bands": 1, "mode": "L"},
        "p06": {"width": 40, "height": 30},
        "p07": {"sha256": "sha-p01", "duplicate_of": "p01"},
    }
    return row | planted.get(i, {})


def pair_row(i: str, k: int) -> dict:
    city, split, _ = CASES[i]
    status = PAIR_STATUS.get(i, "paired")
    tile_id, aoi, epsg = TILE[city]
    row = {"id": i, "aoi": aoi, "city": city, "tile_id": tile_id, "epsg": epsg, "x_m": 700000.0 + 100 * k,
           "y_m": 5000000.0 + 100 * k, "split": split if status == "paired" else None, "status": status,
           "reason": "" if status == "paired" else f"planted {status}"}  # fmt: skip
    if i == "p13":  # 3 m east of p02 (k = 1)
        row.update(x_m=700103.0, y_m=5000100.0)
    if status in ("bad_coordinates", "outside_tiles"):
        row.update(tile_id=None, epsg=None, x_m=None, y_m=None)
    return row


def chip_row(i: str) -> dict:
    row = {"id": i, "tile_id": TILE[CASES[i][0]][0], "uri": f"data/store/chips/h/{i}.jpg", "width": 750,
           "height": 750, "nodata_fraction": 0.0, "std": 30.0, "status": "ok", "error": ""}  # fmt: skip
    planted = {
        "p14": {"nodata_fraction": 0.2},
        "p15": {"std": 0.5},
        "p16": {"uri": None, "nodata_fraction": None, "std": None, "status": "error", "error": "window read failed"},
    }
    return row | planted.get(i, {})


def tiles_table() -> pa.Table:
    rows = []
    for city, (tile_id, aoi, epsg) in sorted(TILE.items()):
        rows.append({
            "tile_id": tile_id, "aoi": aoi, "city": city, "uri": f"data/store/tiles/{tile_id}.tif", "epsg": epsg,
            "gsd_m": 0.3, "satellite": "WorldView-3 (simulated)", "licence": "CC BY-SA 4.0",
            "licence_url": "https://creativecommons.org/licenses/by-sa/4.0/",
            "attribution": "crossview demo imagery (synthetic, generated in code)", "status": "ok",
        })  # fmt: skip
    return table_from_rows(rows, TILES)


def make_tables() -> Tables:
    ids = sorted(CASES)
    paired = [i for i in ids if PAIR_STATUS.get(i, "paired") == "paired"]
    return Tables(
        photos=table_from_rows([photo_row(i, k) for k, i in enumerate(ids)], PHOTOS),
        downloads=table_from_rows([download_row(i) for i in ids], DOWNLOADS),
        pairs=table_from_rows([pair_row(i, k) for k, i in enumerate(ids)], PAIRS),
        chips=table_from_rows([chip_row(i) for i in paired], CHIPS),
    )


def make_params(tmp_path: Path, verdicts_csv: str = VERDICTS_CSV, **kw) -> FilterParams:
    deny = tmp_path / "deny_list.yaml"
    deny.write_text(
        f'ids: ["p09"]\nowners:\n  - {{owner: "{SPAM_OWNER}", why: test}}\n'
        f'polygons:\n  - {{wkt: "{DENY_POLYGON}", why: test}}\n'
    )
    verdict_file = tmp_path / "verdicts.csv"
    verdict_file.write_text(verdicts_csv)
    return FilterParams(deny_list=str(deny), verdicts=str(verdict_file), **kw)


def judged(table: pa.Table) -> dict[str, tuple[bool, str, float | None]]:
    """``{id: (kept, reason, score)}`` of one filter's decisions."""
    assert table.schema.equals(DECISIONS)
    return {r["id"]: (r["kept"], r["reason"], r["score"]) for r in table.to_pylist()}


@pytest.fixture()
def world(tmp_path):
    return make_tables(), make_params(tmp_path)


def test_registry_names_are_unique_and_kinds_known():
    names = [f.name for f in REGISTRY]
    assert len(names) == len(set(names))
    assert {f.kind for f in REGISTRY} <= {"rule", "model"}
    assert names[-2:] == ["curator", "density"]  # the density limit thins the survivors of all the others
    assert [f.name for f in REGISTRY if f.thins] == ["density"]


def test_every_registered_filter_returns_decisions_named_after_it(world):
    tables, params = world
    for f in REGISTRY:
        out = filter_stage.thin(tables, params, pa.array(sorted(CASES)), [f]) if f.thins else f.fn(tables, params)
        assert out.schema.equals(DECISIONS), f.name
        assert set(out.column("filter").to_pylist()) <= {f.name}
        ids = out.column("id").to_pylist()
        assert len(ids) == len(set(ids)), f.name


def test_download_failure_is_dropped_with_status_and_error(world):
    d = judged(photo_rules.download(*world))
    assert d["p04"] == (False, "corrupt: image file is truncated", None)
    assert d["p01"][0] is True and len(d) == len(CASES)


def test_photo_with_no_download_row_is_dropped(world):
    tables, params = world
    tables = Tables(tables.photos, tables.downloads.slice(1), tables.pairs, tables.chips)
    assert judged(photo_rules.download(tables, params))["p01"][:2] == (
        False,
        "no_download: no row in the downloads table (rerun `crossview download`)",
    )


def test_single_band_is_dropped_or_kept_with_a_conversion_note(world, tmp_path):
    tables, params = world
    d = judged(photo_rules.single_band(tables, params))
    assert d["p05"] == (False, "single_band: 1 band (mode L)", 1.0)
    assert d["p01"] == (True, "", 3.0) and "p04" not in d
    kept = judged(photo_rules.single_band(tables, params.model_copy(update={"single_band": "convert"})))
    assert kept["p05"] == (True, "single_band: converted to RGB (mode L)", 1.0)


def test_too_small_and_duplicate_image(world):
    small = judged(photo_rules.too_small(*world))
    assert small["p06"] == (False, "too_small: 40x30 px, shorter side < 64", 30.0)
    assert small["p01"] == (True, "", 480.0)
    dup = judged(photo_rules.duplicate_image(*world))
    assert dup["p07"] == (False, "duplicate_image: same bytes as photo p01", None)
    assert dup["p01"][0] is True


def test_accuracy_below_street_level_is_dropped_and_unknown_is_kept_with_a_note(world):
    d = judged(photo_rules.accuracy(*world))
    assert d["p09"][0] is False and d["p09"][1].startswith("low_accuracy: level 11 < 16") and d["p09"][2] == 11.0
    assert d["p19"] == (True, "accuracy: unknown (no Flickr geo accuracy); kept", None)
    assert d["p01"] == (True, "", 16.0)


def test_licence_that_forbids_redistribution_is_dropped_and_catalog_fills_names(world):
    tables, params = world
    d = judged(photo_rules.licence(tables, params))
    assert d["p18"][:2] == (False, "licence: All Rights Reserved does not allow redistribution")
    assert d["p01"][:2] == (True, "")
    rows = tables.photos.to_pylist()
    rows[0].update(licence=None, licence_url=None, licence_id=5)  # name and URL come from the catalog
    rows[1].update(page_url=None)
    rows[2].update(licence_id=None, licence="Company internal", licence_url="https://example.com/terms")
    patched = Tables(table_from_rows(rows, PHOTOS), tables.downloads, tables.pairs, tables.chips)
    d = judged(photo_rules.licence(patched, params))
    assert d["p01"] == (True, "", None)
    assert d["p02"][:2] == (False, "licence: no photo page URL to attribute (Flickr's API terms)")
    assert d["p03"][0] is True and "not in catalogs/licences.csv" in d["p03"][1]


def test_custom_photos_need_a_page_url_only_where_the_licence_asks_for_a_link(world):
    tables, params = world
    rows = tables.photos.to_pylist()
    for r in rows[:4]:
        r.update(source="custom", page_url=None, licence_id=None, licence_url=None)
    rows[0].update(licence="CC BY-SA 4.0")
    rows[1].update(licence="CC0-1.0", owner=None)  # public domain: nobody to credit, nothing to link
    rows[2].update(licence="CC BY 4.0", owner=None)
    rows[3].update(licence="Company terms", licence_url="https://example.com/terms")
    patched = Tables(table_from_rows(rows, PHOTOS), tables.downloads, tables.pairs, tables.chips)
    d = judged(photo_rules.licence(patched, params))
    assert d["p01"][:2] == (True, "no page URL: attribution credits the owner and the licence only")
    assert d["p02"][:2] == (True, "no page URL: attribution credits the owner and the licence only")
    assert d["p03"][:2] == (False, "licence: no owner to attribute")
    assert d["p04"][0] is True and "not in catalogs/licences.csv" in d["p04"][1]


def test_coordinates_and_split_buffer_come_from_pair_status(world):
    bad = (False, "bad_coordinates: planted bad_coordinates", None)
    assert judged(location_rules.coordinates(*world))["p08"] == bad
    assert judged(location_rules.split_buffer(*world))["p20"][:2] == (False, "split_buffer: planted split_buffer")
    assert judged(location_rules.split_buffer(*world))["p01"] == (True, "", None)


def density(tables: Tables, params: FilterParams, candidates: list[str]) -> pa.Table:
    """The density filter on the places of ``candidates``, as the filter stage runs it."""
    return filter_stage.thin(tables, params, pa.array(candidates), [f for f in REGISTRY if f.name == "density"])


def test_density_judges_only_its_candidates_and_names_the_kept_photo(world):
    tables, params = world
    d = judged(density(tables, params, ["p01", "p02", "p03", "p13", "p19"]))
    assert set(d) == {"p01", "p02", "p03", "p13", "p19"}
    assert d["p13"] == (False, "density: 3.00 m from kept photo p02 (density limit 10 m)", pytest.approx(3.0))
    assert all(d[i][:2] == (True, "") for i in ("p01", "p02", "p03", "p19"))
    # without p02 among the candidates (another filter dropped it), nothing is near p13: it stays
    assert judged(density(tables, params, ["p01", "p13"]))["p13"] == (True, "", None)


def test_pairing_drops_unpaired_photos_with_the_pair_reason(world):
    tables, params = world
    d = judged(location_rules.pairing(tables, params))
    assert d["p12"][:2] == (False, "outside_tiles: planted outside_tiles")
    assert d["p21"][:2] == (False, "near_tile_edge: planted near_tile_edge")
    assert d["p04"][:2] == (False, "not_downloaded: planted not_downloaded")
    assert d["p13"][:2] == (True, "")  # density has its own filter
    missing = Tables(tables.photos, tables.downloads, tables.pairs.slice(1), tables.chips)
    assert judged(location_rules.pairing(missing, params))["p01"][1].startswith("not_paired:")


def test_deny_list_matches_id_owner_and_polygon(world):
    tables, params = world
    d = judged(location_rules.deny_list(tables, params))
    dropped = {i for i, (kept, _, _) in d.items() if not kept}
    assert dropped == {"p09", "p10", "p11"}
    assert d["p10"][1] == f"deny_list: owner {SPAM_OWNER} ({params.deny_list})"
    assert d["p11"][1].startswith("deny_list: inside polygon 1")
    assert d["p09"][1].startswith("deny_list: photo id p09")
    assert d["p08"][0] is True  # NaN coordinates are in no polygon


def test_deny_list_with_bad_wkt_names_the_polygon(tmp_path, world):
    tables, _ = world
    deny = tmp_path / "bad.yaml"
    deny.write_text('polygons:\n  - {wkt: "POLYGON ((1 2, 3"}\n')
    with pytest.raises(CatalogError, match="polygon 1 is not valid WKT"):
        location_rules.deny_list(tables, FilterParams(deny_list=str(deny)))


def test_chip_rules(world):
    tables, params = world
    err = judged(chip_rules.chip_error(tables, params))
    assert err["p16"][:2] == (False, "chip_error: window read failed")
    nodata = judged(chip_rules.chip_nodata(tables, params))
    assert nodata["p14"] == (False, "chip_nodata: 20.0% nodata > 5.0%", 0.2)
    assert "p16" not in nodata and nodata["p01"] == (True, "", 0.0)
    uniform = judged(chip_rules.chip_uniform(tables, params))
    assert uniform["p15"] == (False, "chip_uniform: pixel std 0.50 < 2", 0.5)
    no_chip = Tables(tables.photos, tables.downloads, tables.pairs, tables.chips.slice(1))
    assert judged(chip_rules.chip_error(no_chip, params))["p01"][1].startswith("chip_error: paired but no row")


def test_curator_latest_verdict_wins_and_unknown_ids_warn(world, caplog):
    tables, params = world
    d = judged(curator_rules.curator(tables, params))
    with caplog.at_level(logging.WARNING, logger="filters.curator_rules"):  # once a run, by the filter stage
        filter_stage.run_filters(tables, params, [f for f in REGISTRY if f.name == "curator"])
    assert d == {
        "p02": (True, "curator: keep", None),
        "p09": (True, "curator: keep", None),
        "p17": (False, "drop_indoor: a kitchen", None),
    }
    assert "nosuch" in caplog.text and "1 verdict(s)" in caplog.text


def test_curator_same_timestamp_later_line_wins(tmp_path, world):
    tables, _ = world
    csv_text = "id,verdict,curator,timestamp,note\np01,drop_wrong_location,a,2026-01-02T00:00:00,x\n" \
               "p01,keep,b,2026-01-01T00:00:00Z,\np01,drop_irrelevant,c,2026-01-02T00:00:00Z,a logo\n"  # fmt: skip
    params = make_params(tmp_path, csv_text)
    assert judged(curator_rules.curator(tables, params))["p01"] == (False, "drop_irrelevant: a logo", None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("p01,dorp,a,2026-01-01T00:00:00Z,\n", r"line 3: unknown verdict 'dorp'"),
        ("p01,keep,a,yesterday,\n", r"line 3: timestamp 'yesterday' is not ISO 8601"),
        ("p01,keep,a\n", r"line 3: expected 5 fields"),
        (",keep,a,2026-01-01T00:00:00Z,\n", r"line 3: empty id"),
    ],
)
def test_malformed_verdicts_name_the_line(tmp_path, world, body, message):
    tables, _ = world
    params = make_params(tmp_path, "id,verdict,curator,timestamp,note\np02,keep,a,2026-01-01T00:00:00Z,\n" + body)
    with pytest.raises(CatalogError, match=message):
        curator_rules.curator(tables, params)


def test_verdicts_header_and_missing_file(tmp_path, world):
    tables, _ = world
    with pytest.raises(CatalogError, match="line 1: header lacks timestamp"):
        curator_rules.curator(tables, make_params(tmp_path, "id,verdict,curator,note\n"))
    absent = FilterParams(verdicts=str(tmp_path / "none.csv"), deny_list=str(tmp_path / "none.yaml"))
    assert curator_rules.curator(tables, absent).num_rows == 0


def test_first_drops_follows_the_given_order():
    decisions = decisions_table("b", [("x", False, "b: no", None), ("y", True, "", None)])
    decisions = pa.concat_tables([decisions, decisions_table("a", [("x", False, "a: no", None)])])
    assert first_drops(decisions, ["a", "b"]) == {"x": ("a", "a: no")}
    assert first_drops(decisions, ["b", "a"]) == {"x": ("b", "b: no")}
    assert reason_code("corrupt: bad JPEG") == "corrupt" and reason_code("density") == "density"


def test_funnel_steps_count_each_photo_once_under_its_first_drop():
    decisions = pa.concat_tables(
        [
            decisions_table("a", [("x", False, "corrupt: bad", None), ("y", True, "", None)]),
            decisions_table("b", [("x", False, "density: 3 m", None), ("y", False, "density: 4 m", None)]),
            decisions_table("c", [("gone", False, "c", None)]),  # not a photo of this funnel
        ]
    )
    steps = funnel_steps(["x", "y", "z"], decisions, ["a", "b", "c"])
    assert (steps.found, steps.kept) == (3, 1)
    assert steps.removed == {"a": 1, "b": 1, "c": 0} and steps.remaining == {"a": 2, "b": 1, "c": 1}
    assert steps.first == {"x": ("a", "corrupt: bad"), "y": ("b", "density: 4 m")}
    assert steps.by_reason == {"corrupt": 1, "density": 1}


def test_colour_modes_are_converted_and_noted_or_rejected_by_param(tmp_path):
    modes = {"a": ("RGB", 3), "b": ("CMYK", 4), "c": ("P", 1), "d": ("RGBA", 4), "e": ("L", 1)}
    tables = Tables(
        photos=table_from_rows([{"id": i} for i in modes], PHOTOS),
        downloads=table_from_rows([{"id": i, "status": "ok", "mode": m, "bands": b} for i, (m, b) in modes.items()],
                                  DOWNLOADS),
        pairs=table_from_rows([], PAIRS),
        chips=table_from_rows([], CHIPS),
    )
    judged_modes = photo_rules.colour_mode(tables, make_params(tmp_path)).to_pylist()
    got = {r["id"]: (r["kept"], r["reason"]) for r in judged_modes}
    assert got == {"b": (True, "colour_mode: CMYK converted to RGB"), "c": (True, "colour_mode: P converted to RGB"),
                   "d": (True, "colour_mode: RGBA converted to RGB")}
    strict = make_params(tmp_path, reject_modes=["CMYK", "P"])
    got = {r["id"]: r["kept"] for r in photo_rules.colour_mode(tables, strict).to_pylist()}
    assert got == {"b": False, "c": False, "d": True}
    # a palette image has one band of colour indices: it is not the single_band rule's
    single = {r["id"]: r["kept"] for r in photo_rules.single_band(tables, make_params(tmp_path)).to_pylist()}
    assert single["c"] is True and single["e"] is False
