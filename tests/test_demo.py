"""The embedded demo AOI generator (pipeline/demo): rasters, photos, Flickr metadata, truth.

A small demo (the real rasters, every planted case, the fewest ordinary photos params allow) is
generated through the CLI for the module, and again to check byte determinism; the default
demo is planned (placed, with metadata) but not rendered. The geometry of every planted case is
checked independently of the generator: footprints are traced from the GeoTIFFs' valid data,
re-projected to UTM, and each photo's 225 m chip square is tested against them, as the tiles,
pair and chip stages will.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
import yaml
from PIL import Image, UnidentifiedImageError
from pyproj import Transformer
from scipy import ndimage
from shapely.geometry import shape

import pipeline.demo as demo_mod
from catalogs import load_demo, load_deny_list, load_raster_catalog
from pipeline.cli import main as cli_main
from pipeline.config import DemoParams
from pipeline.demo.flickr_json import DENIED_OWNER
from pipeline.demo.layout import build_cities
from pipeline.demo.palette import Cover
from pipeline.demo.photos import Camera, render
from pipeline.demo.placement import split_cases
from pipeline.demo.world import sample
from pipeline.geo import utm_epsg

REPO = Path(__file__).resolve().parent.parent
CHIP_HALF = 112.5
GOOD = {"ok", "density_pair", "low_accuracy", "deny_list", "single_band", "corrupt", "empty", "indoor", "relevance",
        "wrong_location"}
MODEL_JUDGED = {"indoor_view", "close_up", "portrait", "wrong_geotag"}  # planted at rates, not counts
SMALL = DemoParams(n_photos=40)


def planted_counts(n_photos: int) -> dict[str, int]:
    """Every planted case's count in a demo of ``n_photos``: the catalog's counts plus its rates per city."""
    cfg = load_demo()
    cities = build_cities(cfg, n_photos, np.random.default_rng(0))  # the seed only picks nodata corners
    spread = split_cases(cfg["cases"], cities, cfg["rates"])
    return {case: sum(spread[c.index].get(case, 0) for c in cities) for case in {**cfg["cases"], **cfg["rates"]}}


def _digests(root: Path) -> dict[str, str]:
    files = [p for p in sorted(root.rglob("*")) if p.is_file()]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The small demo, generated through `crossview demo` over a stale older folder."""
    root = tmp_path_factory.mktemp("demo")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"demo": {"seed": SMALL.seed, "n_photos": SMALL.n_photos}}))
    out = root / "demo"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    assert cli_main(["--params", str(params), "demo", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def plan():
    """Cities, worlds, suns and photos of the default demo, without writing files."""
    return demo_mod.plan_demo(load_demo(), DemoParams())


@pytest.fixture(scope="module")
def truth(demo) -> list[dict]:
    return list(csv.DictReader((demo / "truth.csv").open()))


@pytest.fixture(scope="module", params=["small", "default"])
def any_truth(request, demo, plan) -> tuple[list[dict], int]:
    """truth.csv of the small demo, or the truth rows of the default demo's plan, and its n_photos."""
    if request.param == "small":
        return list(csv.DictReader((demo / "truth.csv").open())), SMALL.n_photos
    small_tiles = [c.tiles for c in demo_mod.plan_demo(load_demo(), SMALL)[0]]
    assert small_tiles == [c.tiles for c in plan[0]], "the same rasters whatever n_photos is"
    return [p.truth for p in plan[3]], DemoParams().n_photos


@pytest.fixture(scope="module")
def records(demo) -> dict[str, dict]:
    out = {}
    for path in sorted((demo / "flickr").glob("*.json")):
        data = json.loads(path.read_text())
        assert data["image_count"] == len(data["images"])
        out.update({r["id"]: {**r, "_aoi": path.stem} for r in data["images"]})
    return out


def test_cli_writes_the_whole_demo_and_replaces_an_older_one(demo):
    names = ["flickr", "photos", "rasters", "rasters.yaml", "stac", "truth.csv"]
    assert sorted(p.name for p in demo.iterdir()) == names
    assert not list(demo.parent.glob(".demo.*")), "no partial or old folder is left beside the demo"
    assert sorted(p.name for p in (demo / "rasters").iterdir()) == [
        "alderport_r1c1.tif", "alderport_r1c2.tif", "brimvale_r1c1.tif"]
    assert sorted(p.name for p in (demo / "flickr").iterdir()) == ["DEMO_1_Alderport.json", "DEMO_2_Brimvale.json"]


def test_two_runs_give_byte_identical_files(demo, tmp_path):
    again = demo_mod.generate(tmp_path / "again", SMALL)
    first, second = _digests(demo), _digests(again)
    stac = 1 + 2 + 3  # catalog, a collection per city, an item per tile
    assert len(first) == 3 + 2 + 2 + 40 + sum(planted_counts(40).values()) + stac  # tiles, Flickr, yaml+csv, photos
    assert first == second


def test_interrupted_run_leaves_the_previous_demo_untouched(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "truth.csv").write_text("previous\n")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_mod, "_write_photos", boom)
    monkeypatch.setattr(demo_mod, "_write_rasters", lambda *a, **k: [])
    with pytest.raises(KeyboardInterrupt):
        demo_mod.generate(out, SMALL)
    assert (out / "truth.csv").read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_rasters_are_8_band_uint16_worldview3_geotiffs_in_epsg4326(demo):
    cfg = load_demo()
    tiles = {t["name"]: t for c in cfg["cities"] for t in c["tiles"]}
    for name, spec in tiles.items():
        with rasterio.open(demo / "rasters" / f"{name}.tif") as src:
            assert (src.count, src.dtypes[0], src.crs.to_epsg(), src.nodata) == (8, "uint16", 4326, 0)
            assert src.descriptions == ("Coastal", "Blue", "Green", "Yellow", "Red", "RedEdge", "NIR1", "NIR2")
            assert src.profile["tiled"] and src.block_shapes[0] == (256, 256)
            assert src.compression.value.lower() == "deflate"
            assert src.res == pytest.approx((cfg["pixel_deg"], cfg["pixel_deg"]))
            assert np.allclose(tuple(src.bounds), [spec["bounds"][i] for i in (0, 1, 2, 3)], atol=cfg["pixel_deg"] / 2)
            data = src.read()
        valid = (data != 0).all(axis=0)
        assert ((data == 0).any(axis=0) == ~valid).all(), "nodata is 0 in every band at once"
        assert data[:, valid].min() >= 1 and data.max() <= 2047, "11-bit values"
        assert 150 < np.median(data[:, valid]) < 900


def test_spectra_follow_land_cover(demo, plan):
    cities, worlds, _, _ = plan
    city = cities[1]
    with rasterio.open(demo / "rasters" / "brimvale_r1c1.tif") as src:
        data = src.read().astype(float)
        rows, cols = np.mgrid[0 : src.height, 0 : src.width]
        lon, lat = rasterio.transform.xy(src.transform, rows.ravel(), cols.ravel())
    x, y = city.frame.xy(np.array(lon), np.array(lat))
    s = sample(worlds[1], x, y)
    cover = np.where(s.canopy.ravel() > 0, 0, s.cover.ravel()).reshape(rows.shape)
    same = ndimage.minimum_filter(cover, 5) == ndimage.maximum_filter(cover, 5)  # away from edges and blur
    red, nir = data[4], data[6]
    ndvi = (nir - red) / np.maximum(nir + red, 1)
    grass, water, road = (same & (cover == c) & (data[0] > 0) for c in (Cover.GRASS, Cover.WATER, Cover.ROAD))
    assert grass.sum() > 1000 and water.sum() > 1000 and road.sum() > 1000
    assert np.median(ndvi[grass]) > 0.5, "vegetation is bright in NIR"
    assert np.median(nir[water]) < 80 and np.median(nir[water]) < np.median(nir[road]) / 2, "water is dark in NIR"
    assert abs(np.median(ndvi[road])) < 0.15
    roofs = same & (cover == Cover.ROOF)
    assert np.std(red[roofs]) > 60, "roofs are varied"


def test_overlapping_alderport_tiles_agree_pixel_for_pixel(demo):
    folder = demo / "rasters"
    with rasterio.open(folder / "alderport_r1c1.tif") as a, rasterio.open(folder / "alderport_r1c2.tif") as b:
        west, east = b.bounds.left, a.bounds.right
        assert east - west > 0.004, "the catalog's tiles overlap by 0.005 degrees"
        rng = np.random.default_rng(0)
        for lon, lat in zip(rng.uniform(west, east, 200), rng.uniform(a.bounds.bottom, a.bounds.top, 200)):
            ra, ca = a.index(lon, lat)
            rb, cb = b.index(lon, lat)
            assert a.xy(ra, ca) == pytest.approx(b.xy(rb, cb), abs=1e-9), "same pixel centres"
        overlap = (west, a.bounds.bottom, east, a.bounds.top)
        pa, pb = (src.read(window=rasterio.windows.from_bounds(*overlap, src.transform).round_offsets().round_lengths())
                  for src in (a, b))
    assert pa.shape == pb.shape and pa.shape[2] > 400
    assert np.array_equal(pa, pb)


def test_nodata_tiles_have_a_corner_triangle_and_an_interior_block(demo):
    for c in load_demo()["cities"]:
        for t in c["tiles"]:
            with rasterio.open(demo / "rasters" / f"{t['name']}.tif") as src:
                zero = src.read(1) == 0
                px_m2 = abs(src.res[0] * 78_600 * src.res[1] * 111_130)
            if not t["nodata_corner"]:
                assert not zero.any()
                continue
            labels, n = ndimage.label(zero)
            assert n == 2
            border = set(np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])) - {0}
            assert len(border) == 1, "one region touches the edge: the corner; the other is inside"
            corner = labels == border.pop()
            block = (labels > 0) & ~corner
            r, c = np.nonzero(corner)
            h, w = zero.shape
            assert (r.min() == 0 or r.max() == h - 1) and (c.min() == 0 or c.max() == w - 1), "in a corner"
            assert corner.sum() / ((np.ptp(r) + 1) * (np.ptp(c) + 1)) == pytest.approx(0.5, abs=0.03), "a triangle"
            assert 0.015 < corner.mean() < 0.05
            r, c = np.nonzero(block)
            assert block.sum() == (np.ptp(r) + 1) * (np.ptp(c) + 1), "a rectangular block"
            assert 0.09 < block.sum() * px_m2 / 225**2 < 0.16, "covering about 12 % of a chip"


def test_planted_case_counts_match_the_catalog(any_truth):
    truth, n_photos = any_truth
    cfg = load_demo()
    cases = collections.Counter(t["case"] for t in truth)
    assert cases.pop("normal") == n_photos
    assert dict(cases) == {k: v for k, v in planted_counts(n_photos).items() if v}
    for case, rate in cfg["rates"].items():  # rated cases follow the ordinary photos
        assert cases[case] == pytest.approx(rate * n_photos, abs=len(cfg["cities"]))
    assert len({t["id"] for t in truth}) == len(truth)
    per_city = collections.Counter(t["city"] for t in truth if t["case"] == "normal")
    yaml_total = sum(c["photos"] for c in cfg["cities"])
    for c in cfg["cities"]:
        assert per_city[c["city"]] == pytest.approx(c["photos"] * n_photos / yaml_total, abs=1)
    if n_photos == yaml_total:
        assert per_city == {c["city"]: c["photos"] for c in cfg["cities"]}
    cities = {c["city"] for c in cfg["cities"]}
    for case, n in cfg["cases"].items():
        if n >= len(cities):
            assert {t["city"] for t in truth if t["case"] == case} == cities, f"{case} is spread over the cities"


def test_every_demo_file_is_listed_once(demo, truth, records):
    assert [t["id"] for t in truth] == sorted(t["id"] for t in truth)
    assert set(records) == {t["id"] for t in truth}
    assert sorted(p.stem for p in (demo / "photos").iterdir()) == sorted(records)
    for t in truth:
        assert records[t["id"]]["_aoi"] == t["aoi"]


def _footprints(demo: Path) -> list[dict]:
    """Each tile's outer valid-data boundary and interior nodata, in the UTM zone of its centre."""
    out = []
    for entry in load_raster_catalog(demo / "rasters.yaml"):
        with rasterio.open(entry.uri) as src:
            valid = (src.read() != 0).all(axis=0)
            shapes = rasterio.features.shapes(valid.astype(np.uint8), mask=valid, transform=src.transform)
            valid_poly = shapely.union_all([shape(g) for g, v in shapes if v == 1])
            bounds = src.bounds
        outer = shapely.Polygon(max(getattr(valid_poly, "geoms", [valid_poly]), key=lambda p: p.area).exterior)
        epsg = utm_epsg((bounds.left + bounds.right) / 2, (bounds.bottom + bounds.top) / 2)
        tr = Transformer.from_crs(4326, epsg, always_xy=True)

        def to_utm(geom, tr=tr):
            dense = shapely.segmentize(geom, 1e-4)
            return shapely.transform(dense, lambda c: np.column_stack(tr.transform(c[:, 0], c[:, 1])))

        out.append({"aoi": entry.aoi, "tr": tr, "outer": to_utm(outer), "holes": to_utm(outer.difference(valid_poly)),
                    "rect": to_utm(shapely.box(*bounds))})
    return out


def _chip_facts(fps: list[dict], aoi: str, lon: float, lat: float) -> list[dict]:
    facts = []
    for fp in (f for f in fps if f["aoi"] == aoi):
        x, y = fp["tr"].transform(lon, lat)
        chip = shapely.box(x - CHIP_HALF, y - CHIP_HALF, x + CHIP_HALF, y + CHIP_HALF)
        point = shapely.Point(x, y)
        facts.append({
            "xy": (x, y), "in_rect": fp["rect"].contains(point), "inside": fp["outer"].contains(point),
            "to_edge": fp["outer"].exterior.distance(point),
            "fits": fp["outer"].contains(chip),
            "fits_with_5m": fp["outer"].contains(chip.buffer(5, join_style="mitre")),
            "fits_less_5m": fp["outer"].contains(chip.buffer(-5, join_style="mitre")),
            "nodata": chip.intersection(fp["holes"]).area / chip.area,
        })
    return facts


def test_every_planted_case_sits_where_its_rule_fires(demo, any_truth):
    truth, _ = any_truth
    fps = _footprints(demo)
    for t in truth:
        try:
            lat, lon = float(t["lat"]), float(t["lon"])
            usable = math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180
        except ValueError:
            usable = False
        assert usable == (t["expected"] != "bad_coordinates"), t
        if not usable:
            continue
        f = _chip_facts(fps, t["aoi"], lon, lat)
        e = t["expected"]
        if e in GOOD:
            assert any(r["fits_with_5m"] and r["nodata"] == 0 for r in f), t
            taken = _chip_facts(fps, t["aoi"], float(t["true_lon"]), float(t["true_lat"]))
            assert any(r["fits_with_5m"] and r["nodata"] == 0 for r in taken), t
        elif e == "near_tile_edge":
            assert any(r["inside"] and r["to_edge"] > 10 for r in f) and not any(r["fits_less_5m"] for r in f), t
        elif e == "outside_tiles":
            assert not any(r["in_rect"] for r in f) and all(r["to_edge"] > 20 for r in f), t
        elif e == "chip_nodata":
            assert any(r["fits_with_5m"] and r["nodata"] > 0.08 for r in f), t
            assert not any(r["fits"] and r["nodata"] <= 0.05 for r in f), t
        else:
            pytest.fail(f"unexpected reason {e!r}")


def test_near_duplicates_stand_2_to_8_m_from_a_partner_and_others_keep_apart(demo, any_truth):
    truth, _ = any_truth
    fps = {}
    for fp in _footprints(demo):
        fps.setdefault(fp["aoi"], fp)
    placed = [t for t in truth if t["expected"] != "bad_coordinates"]
    xy = np.array([fps[t["aoi"]]["tr"].transform(float(t["lon"]), float(t["lat"])) for t in placed])
    aoi = np.array([t["aoi"] for t in placed])
    for k, t in enumerate(placed):
        d = np.hypot(*(xy - xy[k]).T)
        d[k] = np.inf
        d[aoi != aoi[k]] = np.inf
        if t["case"] == "near_duplicate":
            assert 2.0 <= d.min() <= 8.0, t
        elif t["expected"] == "density_pair":
            assert d.min() <= 8.0, t
        else:
            assert d.min() > 15.0, t
    assert sum(t["expected"] == "density_pair" for t in truth) == 2 * load_demo()["cases"]["near_duplicate"]


def test_wrong_geotags_are_recorded_200_to_600_m_from_where_the_photo_was_taken(demo, any_truth):
    truth, _ = any_truth
    fps = {}
    for fp in _footprints(demo):
        fps.setdefault(fp["aoi"], fp)
    moved = 0
    for t in truth:
        if t["expected"] == "bad_coordinates":
            continue
        tr = fps[t["aoi"]]["tr"]
        d = math.dist(tr.transform(float(t["lon"]), float(t["lat"])), tr.transform(float(t["true_lon"]),
                                                                                    float(t["true_lat"])))
        if t["case"] == "wrong_geotag":
            assert 195 <= d <= 605 and t["expected"] == "wrong_location", t
            moved += 1
        else:
            assert d < 0.5, t  # recorded where it was taken (6-decimal rounding)
    assert moved == sum(t["case"] == "wrong_geotag" for t in truth) > 0


def test_rooms_close_ups_and_portraits_are_drawn_as_such_and_the_shipped_classifier_calls_rooms_indoor(demo, truth):
    from pipeline.config import ClassifyParams
    from pipeline.scene.backbone import load_backbone
    from pipeline.scene.infer import prepare
    from pipeline.scene.spec import model_spec
    from pipeline.scene.vote import vote

    torch = pytest.importorskip("torch")
    spec = model_spec(ClassifyParams())
    backbone = load_backbone(spec)
    verdict = {}
    for t in (t for t in truth if t["case"] in MODEL_JUDGED | {"normal"}):
        data = (demo / "photos" / f"{t['id']}.jpg").read_bytes()
        with torch.no_grad():
            logits, _ = backbone.forward(torch.from_numpy(prepare(data, spec.preprocess))[None])
        verdict[t["id"]] = (t["case"], vote(torch.softmax(logits, 1)[0].numpy(), spec.labels.io_array(),
                                            spec.vote).is_indoor)
    rooms = [indoor for case, indoor in verdict.values() if case == "indoor_view"]
    streets = [indoor for case, indoor in verdict.values() if case in ("normal", "wrong_geotag")]
    assert rooms and all(rooms), "every planted room is indoor to the shipped classifier"
    assert sum(streets) <= 0.25 * len(streets), "street views are mostly outdoor"
    expected = {t["case"]: t["expected"] for t in truth if t["case"] in MODEL_JUDGED}
    assert expected == {"indoor_view": "indoor", "close_up": "relevance", "portrait": "relevance",
                        "wrong_geotag": "wrong_location"}


def test_bad_photo_files_fail_as_planted(demo, truth, records):
    for t in truth:
        path = demo / "photos" / f"{t['id']}.jpg"
        rec = records[t["id"]]
        if t["case"] == "zero_byte":
            assert path.stat().st_size == 0
            with pytest.raises(UnidentifiedImageError):
                Image.open(path)
            continue
        with Image.open(path) as im:
            if t["case"] == "truncated":
                with pytest.raises(OSError):
                    im.load()
                continue
            im.load()
            assert im.format == "JPEG"
            assert im.mode == {"single_band": "L", "cmyk": "CMYK"}.get(t["case"], "RGB")
            assert im.size == (int(rec["width_m"]), int(rec["height_m"]))
    sizes = [(demo / "photos" / f"{t['id']}.jpg").stat().st_size for t in truth if t["case"] == "truncated"]
    assert all(s > 1000 for s in sizes)


def test_every_photo_file_has_its_own_bytes(demo, truth):
    digests = [hashlib.sha256((demo / "photos" / f"{t['id']}.jpg").read_bytes()).hexdigest()
               for t in truth if t["case"] != "zero_byte"]
    assert len(set(digests)) == len(digests)


def test_flickr_records_have_the_search_api_shape_with_type_drift(records, truth):
    keys = {"id", "owner", "ownername", "secret", "server", "farm", "title", "ispublic", "license", "dateupload",
            "datetaken", "datetakengranularity", "accuracy", "context", "place_id", "woeid", "tags", "url_m",
            "height_m", "width_m"}
    kinds = collections.defaultdict(collections.Counter)
    for r in records.values():
        assert keys <= set(r), keys - set(r)
        assert re.fullmatch(r"\d{10,11}", r["id"]) and re.fullmatch(r"\d{6,9}@N\d\d", r["owner"])
        assert r["url_m"] == f"photos/{r['id']}.jpg"
        assert isinstance(r["license"], str) and 1 <= int(r["license"]) <= 16
        assert re.fullmatch(r"\d{10}", r["dateupload"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", r["datetaken"])
        assert isinstance(r["farm"], int) and isinstance(r["server"], str) and isinstance(r["woeid"], str)
        for k in ("latitude", "longitude", "accuracy", "height_m"):
            kinds[k][type(r.get(k)).__name__] += 1
    quarter = len(records) / 4
    assert kinds["latitude"]["str"] > quarter and kinds["latitude"]["float"] > quarter
    assert kinds["accuracy"]["str"] > quarter and kinds["accuracy"]["int"] > quarter
    assert kinds["height_m"]["str"] > quarter and kinds["height_m"]["int"] > quarter
    by_case = collections.defaultdict(list)
    for t in truth:
        by_case[t["case"]].append(records[t["id"]])
    nan = by_case["nan_coordinates"]
    assert {r.get("latitude", "missing") for r in nan} == {"nan", "", "missing"}
    assert all(abs(float(r["latitude"])) > 90 or abs(float(r["longitude"])) > 180 for r in by_case["out_of_range"])
    assert all(6 <= int(r["accuracy"]) <= 11 for r in by_case["low_accuracy"])
    assert all(int(r["accuracy"]) == 16 for c, rs in by_case.items() if c != "low_accuracy" for r in rs)
    assert all(r["owner"] == DENIED_OWNER[0] for r in by_case["denied_owner"])
    assert sum(r["owner"] == DENIED_OWNER[0] for r in records.values()) == len(by_case["denied_owner"])
    assert len({r["owner"] for r in records.values()}) > len(records) / 4, "many owners"
    assert len({r["license"] for r in records.values()}) >= 6, "a mix of licences"


def test_the_denied_owner_is_on_the_shipped_deny_list():
    assert DENIED_OWNER[0] in load_deny_list(REPO / "catalogs" / "deny_list.yaml").owners


def test_raster_catalog_loads_with_the_custom_catalog_loader(demo, monkeypatch):
    monkeypatch.chdir(demo.parent)
    entries = load_raster_catalog(demo / "rasters.yaml")
    assert [Path(e.uri).name for e in entries] == ["alderport_r1c1.tif", "alderport_r1c2.tif", "brimvale_r1c1.tif"]
    assert all(Path(e.uri).exists() and not Path(e.uri).is_absolute() for e in entries)
    assert {(e.aoi, e.city) for e in entries} == {("DEMO_1_Alderport", "Alderport"), ("DEMO_2_Brimvale", "Brimvale")}
    assert all(e.band_order == (5, 3, 2) and e.epsg is None and e.licence == "CC BY-SA 4.0" for e in entries)
    assert all(e.licence_url and e.attribution and e.satellite for e in entries)


def test_photos_depend_on_place_and_bearing(plan):
    _, worlds, suns, photos = plan
    shots = [p.shot for p in photos if p.shot.case == "normal" and p.shot.city == 0]
    a, b = shots[0], max(shots, key=lambda s: math.hypot(s.x - shots[0].x, s.y - shots[0].y))
    assert math.hypot(a.x - b.x, a.y - b.y) > 300

    def view(x, y, bearing):
        return render(worlds[0], Camera(x, y, bearing), suns[0]).astype(int)

    here = view(a.x, a.y, a.bearing_deg)
    assert np.array_equal(here, view(a.x, a.y, a.bearing_deg))
    assert np.abs(here - view(b.x, b.y, a.bearing_deg)).mean() > 12
    assert np.abs(here - view(a.x, a.y, a.bearing_deg + 90)).mean() > 12
    assert here.std() > 20, "not a blank picture"


def test_photo_ground_has_the_colour_of_the_land_cover_seen_from_above(plan):
    _, worlds, suns, photos = plan
    agree = total = 0
    for p in [p for p in photos if p.shot.case == "normal"][:40]:
        cam = Camera(p.camera.x, p.camera.y, p.camera.bearing_deg)  # level, known framing
        img = render(worlds[p.shot.city], cam, suns[p.shot.city]).astype(int)
        t = (cam.height / 2 + cam.focal_px * math.tan(math.radians(cam.pitch_deg)) - (cam.height - 0.5)) / cam.focal_px
        d = 1.7 / -t  # where the bottom-centre pixel's line of sight meets the ground
        b = math.radians(cam.bearing_deg)
        gx, gy = np.array([cam.x + d * math.sin(b)]), np.array([cam.y + d * math.cos(b)])
        cover = sample(worlds[p.shot.city], gx, gy).cover[0]
        r, g, bl = img[-1, cam.width // 2]
        green = g > r + 8 and g > bl + 8
        if cover in (Cover.GRASS, Cover.ROAD, Cover.SIDEWALK, Cover.PAVED):
            total += 1
            agree += green == (cover == Cover.GRASS)
    assert total >= 30 and agree >= 0.9 * total


def test_photo_counts_scale_with_n_photos_and_cases_spread_over_cities():
    cfg = load_demo()
    cities = build_cities(cfg, 40, np.random.default_rng(0))
    assert sum(c.n_photos for c in cities) == 40
    assert [c.n_photos for c in cities] == [30, 10]
    spread = split_cases(cfg["cases"], cities, cfg["rates"])
    for case, n in cfg["cases"].items():
        assert sum(spread[c.index].get(case, 0) for c in cities) == n
    for case, rate in cfg["rates"].items():
        assert [spread[c.index][case] for c in cities] == [round(rate * c.n_photos) for c in cities]
    assert all(spread[c.index].get("outside_tiles") for c in cities)


def test_published_stac_catalog_reads_back_as_the_demo_raster_catalog(demo, monkeypatch):
    from pipeline.config import parse_params
    from pipeline.stac import raster_sources

    monkeypatch.chdir(demo.parent)
    url = str((demo / "stac" / "catalog.json").relative_to(demo.parent))
    from_stac = raster_sources(parse_params({"stac": {"url": url}}))
    assert from_stac == load_raster_catalog(demo / "rasters.yaml")  # same aoi, city, uri, bands, licence, ...
    one_city = raster_sources(parse_params({"stac": {"url": url, "bbox": [9.0, 44.7, 9.1, 44.9]}}))
    assert [s.city for s in one_city] == ["Brimvale"]
