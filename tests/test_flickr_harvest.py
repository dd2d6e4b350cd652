"""The Flickr harvest end to end: the real flickrapi client against the Flickr-protocol server on loopback."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.config import FlickrParams, Params
from pipeline.errors import RasterError
from pipeline.flickr import (
    AOI,
    Credentials,
    FlickrAuthError,
    FlickrClient,
    FlickrRequestError,
    aois_from_params,
    harvest,
    harvest_table,
    raster_bounds_lonlat,
)
from pipeline.flickr.plan import cell_id
from pipeline.flickr.state import HarvestState
from pipeline.schemas import PHOTOS
from tests.flickr_server import Fault, expected_ids, flickr_server, make_population

KEY, SECRET = "FAKEKEY-harvest-0000", "FAKESECRET-harvest-1111"
BBOX = (2.25, 48.80, 2.45, 48.92)
PARIS = AOI("AOI_3_Paris", "Paris", BBOX)
REPO = Path(__file__).resolve().parent.parent


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def fparams(server, **kw) -> FlickrParams:
    base = {"rest_url": server.rest_url, "calls_per_hour": 1e8, "retries": 4, "backoff_s": 0.001, "timeout_s": 5.0,
            "min_accuracy": 6, "min_upload_date": "2008-01-01", "max_upload_date": "2022-12-31", "min_cell_deg": 0.01}
    return FlickrParams(**{**base, **kw})


def run(server, state_dir, aoi=PARIS, **kw) -> list[dict]:
    fp = fparams(server, **kw)
    return harvest(fp, [aoi], state_dir, client=FlickrClient(fp, Credentials(KEY, SECRET), seed=0))


def query_key(call) -> tuple:
    p = call.params
    return p["bbox"], p["min_upload_date"], p["max_upload_date"], p["page"]


@pytest.fixture(scope="module")
def big():
    return make_population(20_000, seed=11)


@pytest.fixture(scope="module")
def small():
    return make_population(2_500, seed=12, hotspot_fraction=0.2)


# ---------------------------------------------------------------- completeness


def test_harvest_of_20000_photos_returns_each_exactly_once(big, tmp_path):
    with flickr_server(big, {KEY: SECRET}) as srv:
        start = time.perf_counter()
        rows = run(srv, tmp_path)
        elapsed = time.perf_counter() - start
        calls = srv.search_calls()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 20_000
    assert set(ids) == expected_ids(big)
    assert ids == sorted(ids)
    keys = [query_key(c) for c in calls]
    assert len(keys) == len(set(keys))  # no page asked twice
    assert all(int(c.params["per_page"]) == 250 for c in calls)
    assert all(int(c.params["page"]) <= 16 for c in calls)  # never past Flickr's 4,000-result cap
    state = HarvestState(tmp_path, "AOI_3_Paris", json.loads(next(tmp_path.glob("*/plan.json")).read_text())["fingerprint"])
    quads = {rec.quad for rec in state.cells.values()}
    split_by_date = [cid for cid, rec in state.cells.items() if rec.status == "split" and
                     state.cells[rec.children[0]].quad == rec.quad]
    assert max(len(q) for q in quads) >= 2 and split_by_date  # quadtree and date splits both happened
    assert all(rec.status == "done" and rec.total <= 3500 for rec in state.cells.values() if rec.status != "split")
    fetched = sum(rec.fetched for rec in state.cells.values() if rec.status == "done")
    assert 20_000 <= fetched < 20_010  # a photo on a shared cell edge comes back twice: kept once
    assert {r["query_cell"] for r in rows} <= set(state.cells)
    assert rows[0]["source"] == "flickr" and rows[0]["aoi"] == "AOI_3_Paris" and rows[0]["city"] == "Paris"
    assert elapsed < 30


def test_every_page_is_fetched_including_the_last(tmp_path):
    photos = make_population(501, seed=4, decoys=False, hotspot_fraction=0.0)
    with flickr_server(photos, {KEY: SECRET}) as srv:
        rows = run(srv, tmp_path)
        pages = sorted(int(c.params["page"]) for c in srv.search_calls())
        assert len(rows) == 501
        assert pages == [1, 2, 3]  # WITW's range(1, pages) would have stopped at page 2
        srv.state.calls.clear()
        fp = fparams(srv)
        table = harvest_table(fp, [PARIS], tmp_path, client=FlickrClient(fp, Credentials(KEY, SECRET)))
        assert srv.calls == []  # a rerun answers from the persisted state alone
    assert table.schema == PHOTOS and table.column("id").to_pylist() == [r["id"] for r in rows]


def test_paging_stops_at_an_empty_page(tmp_path):
    photos = make_population(700, seed=4, decoys=False, hotspot_fraction=0.0)
    with flickr_server(photos, {KEY: SECRET}) as srv:
        srv.state.schedule = {2: Fault("empty")}  # page 2 of 3 comes back empty (photos deleted meanwhile)
        rows = run(srv, tmp_path)
        pages = [int(c.params["page"]) for c in srv.search_calls()]
    assert pages == [1, 2] and len(rows) == 250


def test_cell_ids_are_stable_and_readable():
    assert cell_id("AOI_3_Paris", "0123", ts("2019-01-01"), ts("2019-07-01") - 1) == \
        "AOI_3_Paris/q0123/2019-01-01..2019-06-30"
    assert cell_id("A", "", ts("2019-01-01T06:00:00"), ts("2019-01-02")) == "A/q/2019-01-01T06:00:00..2019-01-02T00:00:00"


# ---------------------------------------------------------------- failures


def test_transient_failures_mid_harvest_are_retried_and_the_result_is_complete(small, tmp_path):
    with flickr_server(small, {KEY: SECRET}) as srv:
        srv.state.schedule = {3: Fault("stat", code=105), 4: Fault("stat", code=201), 7: Fault("http", status=503),
                              9: Fault("http", status=429), 12: Fault("slow", delay_s=1.0), 14: Fault("stat", code=0),
                              16: Fault("garbage"), 18: Fault("http", status=502), 19: Fault("stat", code=10)}
        rows = run(srv, tmp_path, timeout_s=0.5, per_page=100, split_threshold=500)
        outcomes = [c.outcome for c in srv.calls]
    assert {r["id"] for r in rows} == expected_ids(small) and len(rows) == len(expected_ids(small))
    assert sum(o != "ok" for o in outcomes) >= 8


def test_the_servers_rate_limit_is_survived(small, tmp_path):
    with flickr_server(small, {KEY: SECRET}) as srv:
        srv.state.rate_limit_per_s = 25
        rows = run(srv, tmp_path, per_page=100, split_threshold=500, retries=8, backoff_s=0.05)
        outcomes = [c.outcome for c in srv.calls]
    assert {r["id"] for r in rows} == expected_ids(small)
    assert "http:429" in outcomes


def test_an_invalid_key_stops_the_harvest_with_a_clear_error(small, tmp_path):
    with flickr_server(small, {"FAKEKEY-the-real-one": SECRET}) as srv:
        with pytest.raises(FlickrAuthError, match="check FLICKR_API_KEY"):
            run(srv, tmp_path)
        assert len(srv.calls) == 1


def test_bad_parameters_stop_the_harvest_with_a_clear_error(small, tmp_path):
    with flickr_server(small, {KEY: SECRET}) as srv:
        srv.state.schedule = {2: Fault("stat", code=18, message="Illogical arguments")}
        with pytest.raises(FlickrRequestError, match=r"Illogical arguments.*params.yaml"):
            run(srv, tmp_path, per_page=100, split_threshold=500)
        assert len(srv.calls) == 2


def test_a_low_budget_paces_the_harvest(tmp_path):
    photos = make_population(900, seed=6, decoys=False, hotspot_fraction=0.0)
    with flickr_server(photos, {KEY: SECRET}) as srv:
        start = time.perf_counter()
        rows = run(srv, tmp_path, calls_per_hour=20 * 3600, per_page=100)  # 20 calls/s
        elapsed = time.perf_counter() - start
        times = [c.time for c in srv.calls]
    assert len(rows) == 900 and len(times) == 9
    assert times[-1] - times[0] >= 8 * 0.05 * 0.9  # 9 calls at 20/s span at least 0.4 s
    assert elapsed >= 8 * 0.05 * 0.9


# ---------------------------------------------------------------- resume and incremental reruns


CHILD = """
import json, sys
from pipeline.config import FlickrParams
from pipeline.flickr import AOI, harvest
harvest(FlickrParams(**json.loads(sys.argv[1])), [AOI(*json.loads(sys.argv[2]))], sys.argv[3])
"""


def test_kill_9_mid_harvest_then_rerun_gives_the_same_rows_without_refetching(small, tmp_path):
    kw = {"per_page": 100, "split_threshold": 500}
    with flickr_server(small, {KEY: SECRET}) as srv:
        reference = run(srv, tmp_path / "reference", **kw)
        n_reference = len(srv.search_calls())
        srv.state.calls.clear()
        srv.state.delay_s = 0.03
        fp = fparams(srv, **kw).model_dump()
        env = {**os.environ, "FLICKR_API_KEY": KEY, "FLICKR_API_SECRET": SECRET, "PYTHONPATH": str(REPO)}
        child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(fp), json.dumps([PARIS.aoi, PARIS.city,
                                 list(PARIS.bbox)]), str(tmp_path / "state")], env=env, cwd=REPO)
        deadline = time.monotonic() + 60
        while len(srv.calls) < n_reference // 2 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.01)
        assert child.poll() is None, "the harvest finished before it could be interrupted"
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        time.sleep(0.2)  # let the server log the call in flight
        first = [query_key(c) for c in srv.search_calls()]
        srv.state.calls.clear()
        srv.state.delay_s = 0.0
        resumed = run(srv, tmp_path / "state", **kw)
        second = [query_key(c) for c in srv.search_calls()]
    assert resumed == reference
    assert len(set(first) & set(second)) <= 1  # at most the page in flight at the kill is asked again
    assert len(first) + len(second) <= n_reference + 1
    assert not [p for p in (tmp_path / "state").rglob("*") if p.name.startswith(".")]  # no temp file left


def test_a_rerun_with_a_wider_date_range_queries_only_the_new_range(small, tmp_path):
    kw = {"per_page": 100, "split_threshold": 500}
    with flickr_server(small, {KEY: SECRET}) as srv:
        narrow = run(srv, tmp_path / "state", min_upload_date="2012-01-01", max_upload_date="2016-12-31", **kw)
        srv.state.calls.clear()
        wide = run(srv, tmp_path / "state", min_upload_date="2010-01-01", max_upload_date="2019-12-31", **kw)
        calls = srv.search_calls()
        fresh = run(srv, tmp_path / "fresh", min_upload_date="2010-01-01", max_upload_date="2019-12-31", **kw)
    old_lo, old_hi = ts("2012-01-01"), ts("2017-01-01") - 1
    assert calls
    for c in calls:
        lo, hi = int(c.params["min_upload_date"]), int(c.params["max_upload_date"])
        assert lo >= ts("2010-01-01") and hi <= ts("2020-01-01") - 1
        assert hi < old_lo or lo > old_hi, "a query repeated the range the first run already harvested"
    want = {str(p.id) for p in small if not p.decoy and ts("2010-01-01") <= p.dateupload < ts("2020-01-01")}
    assert {r["id"] for r in wide} == want
    assert {r["id"] for r in narrow} < want

    def content(rows):
        return [{k: v for k, v in r.items() if k != "query_cell"} for r in rows]

    assert content(wide) == content(fresh)
    # and narrowing the range again needs no call at all: the state already holds every page
    with flickr_server(small, {KEY: SECRET}) as srv:
        again = run(srv, tmp_path / "state", min_upload_date="2013-01-01", max_upload_date="2013-12-31", **kw)
        assert srv.calls == []
    assert {r["id"] for r in again} == {i for i in want if ts("2013-01-01") <= _upload(small, i) < ts("2014-01-01")}


def _upload(photos, pid: str) -> int:
    return next(p.dateupload for p in photos if str(p.id) == pid)


def test_changing_the_licences_starts_a_separate_state(small, tmp_path):
    with flickr_server(small, {KEY: SECRET}) as srv:
        all_rows = run(srv, tmp_path, per_page=100, split_threshold=500)
        by = run(srv, tmp_path, per_page=100, split_threshold=500, licences=[4, 11])
    assert len(list(tmp_path.glob("AOI_3_Paris-*"))) == 2
    assert {r["id"] for r in by} == {r["id"] for r in all_rows if r["licence_id"] in (4, 11)}


# ---------------------------------------------------------------- AOI bounding boxes


def test_aoi_bbox_param_overrides_the_catalog():
    params = Params(flickr=FlickrParams(bbox=(2.25, 48.8, 2.45, 48.92)))
    assert aois_from_params(params) == [AOI("bbox", "bbox", (2.25, 48.8, 2.45, 48.92))]


def test_aoi_bbox_comes_from_the_raster_header_on_s3(s3, realdata):
    import boto3
    import rasterio
    from rasterio.warp import transform_bounds

    from catalogs import RasterSource

    local = realdata / "rasters" / "spacenet_rotterdam_rgb_uint8_utm31n.tif"
    other = realdata / "rasters" / "spacenet_atlanta_pan_uint16_utm16n.tif"
    client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name=s3.region)
    client.create_bucket(Bucket="spacenet-dataset")
    client.upload_file(str(local), "spacenet-dataset", "AOIs/AOI_11_Rotterdam/PS-RGBNIR/a.tif")
    client.upload_file(str(other), "spacenet-dataset", "AOIs/AOI_11_Rotterdam/PS-RGBNIR/b.TIF")
    client.put_object(Bucket="spacenet-dataset", Key="AOIs/AOI_11_Rotterdam/PS-RGBNIR/readme.txt", Body=b"x")
    with rasterio.open(local) as a, rasterio.open(other) as b:
        box_a = transform_bounds(a.crs, "EPSG:4326", *a.bounds, densify_pts=21)
        box_b = transform_bounds(b.crs, "EPSG:4326", *b.bounds, densify_pts=21)
    one = raster_bounds_lonlat("s3://spacenet-dataset/AOIs/AOI_11_Rotterdam/PS-RGBNIR/a.tif", s3)
    assert one == pytest.approx(box_a)
    assert 4.34 < one[0] < one[2] < 4.36 and 51.88 < one[1] < one[3] < 51.9
    src = RasterSource("AOI_11_Rotterdam", "Rotterdam", "s3://spacenet-dataset/AOIs/AOI_11_Rotterdam/PS-RGBNIR/",
                       (3, 2, 1), "WorldView-2", "CC BY-SA 4.0", "SpaceNet")
    (aoi,) = aois_from_params(Params(s3=s3), sources=[src])
    assert aoi.aoi == "AOI_11_Rotterdam" and aoi.city == "Rotterdam"
    assert aoi.bbox == pytest.approx((min(box_a[0], box_b[0]), min(box_a[1], box_b[1]),
                                      max(box_a[2], box_b[2]), max(box_a[3], box_b[3])))
    assert not math.isnan(sum(aoi.bbox))


def test_aoi_bounds_of_a_local_folder_cover_every_geotiff_under_it_as_tiles_see_them(realdata, tmp_path):
    """One rule for what a catalog uri means (pipeline.raster_uris): a local folder without a trailing '/'
    is a prefix, searched recursively, for the Flickr harvest exactly as for the tiles stage."""
    import shutil

    import rasterio
    from rasterio.warp import transform_bounds

    from pipeline.raster_uris import resolve

    src = realdata / "rasters" / "spacenet_rotterdam_rgb_uint8_utm31n.tif"
    (tmp_path / "aoi" / "deeper").mkdir(parents=True)
    shutil.copy(src, tmp_path / "aoi" / "a.tif")
    shutil.copy(realdata / "rasters" / "landsat_rgb_byte_utm18n.tif", tmp_path / "aoi" / "deeper" / "b.TIFF")
    (tmp_path / "aoi" / "notes.txt").write_text("not a raster")
    boxes = []
    for path in (tmp_path / "aoi" / "a.tif", tmp_path / "aoi" / "deeper" / "b.TIFF"):
        with rasterio.open(path) as r:
            boxes.append(transform_bounds(r.crs, "EPSG:4326", *r.bounds, densify_pts=21))
    got = raster_bounds_lonlat(str(tmp_path / "aoi"), Params().s3)
    assert got == pytest.approx(
        (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    )
    assert [o.uri for o in resolve(str(tmp_path / "aoi"), Params().s3)] == [
        str(tmp_path / "aoi" / "a.tif"),
        str(tmp_path / "aoi" / "deeper" / "b.TIFF"),
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(RasterError, match=r"no \.tif files under this prefix.*or set flickr\.bbox"):
        raster_bounds_lonlat(str(tmp_path / "empty"), Params().s3)


def test_seen_ids_answer_as_a_set_of_the_strings_would():
    """Decimal ids go into sorted int64 runs (merged every few ids here); "007" is not "7", nor "٣" 3."""
    import random

    from pipeline.flickr import SeenIds

    rng = random.Random(5)
    pool = [str(rng.randrange(10**12)) for _ in range(300)] + ["0", "00", "007", "7", "x7", "٣", "3", "", "9" * 19,
                                                               str(2**63), "12a", "53000000001"]  # fmt: skip
    seen, want = SeenIds(buffer=7), set()
    for pid in rng.choices(pool, k=2_000):
        assert (pid in seen) == (pid in want), pid
        seen.add(pid)
        want.add(pid)
    assert len(seen) == len(want)
    assert all(pid in seen for pid in want) and "8" not in seen and "070" not in seen
