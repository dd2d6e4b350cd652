"""Remote faults: a fault-injecting proxy (tests/faultproxy.py) in front of the moto S3 server and a photo server.

500s, resets and slow answers are retried (GDAL for /vsis3/ reads, botocore for store writes, the
download stage for HTTP); a 403/404 that lasts gives the tile or photo an error row and the rest go
on; a rerun after the fault clears completes the work and redoes nothing that finished. A CDN
placeholder served for many deleted photos is dropped for all of them.
"""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from catalogs import load_raster_catalog
from filters import photo_rules
from filters.base import Tables
from pipeline import tiles
from pipeline.config import FilterParams, S3Params
from pipeline.schemas import CHIPS, DOWNLOADS, PAIRS, read_table, table_from_rows
from tests.faultproxy import Fault, FaultProxy
from tests.test_download import FAST, PhotoServer, photos_table, run_stage
from tests.test_raster import write_multispectral
from tests.test_tiles import params_for, write_catalog


@pytest.fixture()
def proxied(s3) -> Iterator[tuple[FaultProxy, S3Params, object]]:
    """A fault proxy in front of moto; S3Params that go through it, and a boto3 client that does not."""
    # moto's backend is process-wide: start from empty buckets, whatever an earlier test left
    urllib.request.urlopen(urllib.request.Request(f"{s3.endpoint_url}/moto-api/reset", method="POST")).close()
    client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name=s3.region)
    with FaultProxy(s3.endpoint_url) as proxy:
        yield proxy, s3.model_copy(update={"endpoint_url": proxy.url}), client


@pytest.fixture()
def source_tiles(proxied, tmp_path, monkeypatch) -> list[str]:
    """Five small multispectral GeoTIFFs at s3://src/t/t<i>.tif; the store bucket s3://out exists."""
    monkeypatch.chdir(tmp_path)
    _, _, client = proxied
    client.create_bucket(Bucket="src")
    client.create_bucket(Bucket="out")
    names = []
    for i in range(5):
        path = write_multispectral(tmp_path / f"t{i}.tif", width=400, height=340, corner=60, patch=(0, 0, 0, 0), seed=i)
        client.upload_file(str(path), "src", f"t/t{i}.tif")
        names.append(f"t{i}")
    return names


def build(s3: S3Params, tmp_path: Path) -> dict[str, dict]:
    catalog = write_catalog(tmp_path / "cat.yaml", [{"aoi": "a", "uri": "s3://src/t/", "band_order": [5, 3, 2]}])
    params = params_for(catalog, s3=s3, store="s3://out/store")
    return {r["tile_id"]: r for r in tiles.build_tiles(params, load_raster_catalog(catalog)).to_pylist()}


def source_gets(proxy: FaultProxy, name: str) -> int:
    return proxy.hits(rf"^/src/t/{name}\.tif", "GET")


def test_tile_windowed_read_faults_are_retried_or_recorded_and_a_rerun_redoes_only_those(
    proxied, source_tiles, tmp_path
):
    proxy, s3, client = proxied
    # skip=1: the header read at open succeeds; the faults hit the windowed reads that follow
    read = {"methods": ("GET",), "ranged": True, "skip": 1}
    flaky = proxy.add(Fault(r"^/src/t/t0\.tif", 500, times=2, **read))
    reset = proxy.add(Fault(r"^/src/t/t1\.tif", "reset", times=1, **read))
    slow = proxy.add(Fault(r"^/src/t/t2\.tif", "delay", times=1, delay_s=1.5, **read))
    proxy.add(Fault(r"^/src/t/t3\.tif", 403, times=None, **read))
    proxy.add(Fault(r"^/src/t/t4\.tif", 404, times=None, **read))
    start = time.monotonic()
    rows = build(s3, tmp_path)
    assert time.monotonic() - start < 30  # GDAL's retry delays are 1 s, doubling: no long stall
    assert {k: r["status"] for k, r in rows.items()} == {
        "a__t0": "ok", "a__t1": "ok", "a__t2": "ok", "a__t3": "error", "a__t4": "error"}  # fmt: skip
    assert (flaky.fired, reset.fired, slow.fired) == (2, 1, 1)  # the faults did happen, and were survived
    for tid in ("a__t3", "a__t4"):
        err = rows[tid]["error"]
        assert err.startswith(f"s3://src/t/{tid[3:]}.tif: remote read failed after retries"), err
        assert "rerun" in err and "fake-secret" not in err and "write failed" not in err
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="out")["Contents"]}
    assert keys == {f"store/tiles/a__t{i}.{ext}" for i in range(3) for ext in ("tif", "json")}  # nothing partial
    # the fault clears: the rerun converts the two failed tiles and reads no finished tile's source
    proxy.clear()
    before = {n: source_gets(proxy, n) for n in source_tiles}
    again = build(s3, tmp_path)
    assert all(r["status"] == "ok" for r in again.values())
    assert all(again[k] == rows[k] for k in ("a__t0", "a__t1", "a__t2"))
    assert [source_gets(proxy, n) - before[n] for n in source_tiles[:3]] == [0, 0, 0]
    assert source_gets(proxy, "t3") > before["t3"] and source_gets(proxy, "t4") > before["t4"]
    assert {k for k in again if proxy.hits(rf"^/out/store/tiles/{k}\.tif", "PUT") > 1} == set()


def test_store_write_faults_are_retried_or_recorded_and_a_rerun_completes(proxied, source_tiles, tmp_path):
    proxy, s3, client = proxied
    put = {"methods": ("PUT",)}
    server_error = proxy.add(Fault(r"^/out/store/tiles/a__t0\.tif", 500, times=2, **put))
    reset = proxy.add(Fault(r"^/out/store/tiles/a__t1\.tif", "reset", times=1, **put))
    proxy.add(Fault(r"^/out/store/tiles/a__t2\.json", 503, times=1, **put))  # S3's SlowDown
    proxy.add(Fault(r"^/out/store/tiles/a__t3\.tif", 403, times=None, **put))
    rows = build(s3, tmp_path)
    assert {k: r["status"] for k, r in rows.items()} == {
        "a__t0": "ok", "a__t1": "ok", "a__t2": "ok", "a__t3": "error", "a__t4": "ok"}  # fmt: skip
    assert (server_error.fired, reset.fired) == (2, 1)
    err = rows["a__t3"]["error"]
    assert "s3://out/store/tiles/a__t3.tif: write failed" in err and "AccessDenied" in err, err
    assert "fake-secret" not in err
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="out")["Contents"]}
    assert not any(k.startswith("store/tiles/a__t3") for k in keys)  # no COG without its sidecar
    proxy.clear()
    before = dict(proxy.requests)
    again = build(s3, tmp_path)
    assert again["a__t3"]["status"] == "ok"
    puts = {p for (m, p), n in proxy.requests.items() if m == "PUT" and n > before.get((m, p), 0)}
    assert puts == {"/out/store/tiles/a__t3.tif", "/out/store/tiles/a__t3.json"}  # nothing finished is redone


# ---------------------------------------------------------------- the download stage


@pytest.fixture()
def photo_server(tmp_path_factory, realdata, monkeypatch) -> Iterator[PhotoServer]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    root = tmp_path_factory.mktemp("served")
    for name in ("outdoor_street_01.jpg", "outdoor_park_01.jpg", "indoor_room_01.jpg"):
        (root / name).write_bytes((realdata / "photos" / name).read_bytes())
    with PhotoServer(root) as server:
        yield server


def test_download_survives_store_and_source_faults_and_a_rerun_fetches_only_the_rest(
    proxied, photo_server, tmp_path, monkeypatch
):
    proxy, s3, client = proxied
    monkeypatch.chdir(tmp_path)
    client.create_bucket(Bucket="out")
    client.create_bucket(Bucket="src")
    park = Path(photo_server.root, "outdoor_park_01.jpg").read_bytes()
    client.put_object(Bucket="src", Key="in/park.jpg", Body=park)
    client.put_object(Bucket="src", Key="in/private.jpg", Body=park)
    files = f"{photo_server.url}/files"
    items = {
        "put500": f"{files}/outdoor_street_01.jpg",
        "putreset": f"{files}/outdoor_park_01.jpg",
        "put403": f"{files}/indoor_room_01.jpg",
        "head403": f"{files}/outdoor_street_01.jpg",
        "src500": "s3://src/in/park.jpg",
        "src403": "s3://src/in/private.jpg",
    }
    proxy.add(Fault(r"^/out/run/photos/put500\.jpg", 500, methods=("PUT",), times=2))
    proxy.add(Fault(r"^/out/run/photos/putreset\.jpg", "reset", methods=("PUT",), times=1))
    proxy.add(Fault(r"^/out/run/photos/put403\.jpg", 403, methods=("PUT",), times=None))
    proxy.add(Fault(r"^/out/run/photos/head403\.json", 403, methods=("HEAD",), times=None))
    proxy.add(Fault(r"^/src/in/park\.jpg", 500, methods=("GET",), times=1))
    proxy.add(Fault(r"^/src/in/private\.jpg", 403, methods=("GET",), times=None))
    params = {"store": "s3://out/run", "s3": s3.model_dump(), "download": FAST["download"]}
    rows = run_stage(params, items)
    status = {k: r["status"] for k, r in rows.items()}
    assert status == {"put500": "ok", "putreset": "ok", "put403": "store_error", "head403": "store_error",
                      "src500": "ok", "src403": "http_error"}
    assert rows["src403"]["error"] == "S3 HTTP 403 AccessDenied"  # a source's refusal is final, as HTTP 403 is
    assert rows["put403"]["error"].startswith("s3://out/run/photos/put403.jpg: write failed")
    assert "AccessDenied" in rows["put403"]["error"] and "fake-secret" not in rows["put403"]["error"]
    assert "s3://out/run/photos/head403.json: cannot check existence" in rows["head403"]["error"]
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="out")["Contents"]}
    assert "run/photos/put403.json" not in keys and "run/photos/head403.json" not in keys  # not marked finished
    # the fault clears: only the two store_error photos are fetched again
    proxy.clear()
    hits = sum(photo_server.hits.values())
    s3_gets = proxy.hits(r"^/src/in/", "GET")
    again = run_stage(params, items, "again.parquet")
    assert {k: r["status"] for k, r in again.items()} == {**status, "put403": "ok", "head403": "ok"}
    assert sum(photo_server.hits.values()) - hits == 2
    assert proxy.hits(r"^/src/in/", "GET") == s3_gets
    for k in ("put500", "putreset", "src500", "src403"):  # reused as they were (head403 now shares put500's bytes)
        assert {**again[k], "duplicate_of": None} == {**rows[k], "duplicate_of": None}


def test_http_photo_server_reset_and_slow_answers_are_retried_then_recorded(photo_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with FaultProxy(photo_server.url) as proxy:
        once = proxy.add(Fault(r"^/files/outdoor_street_01\.jpg", "reset", times=1))
        proxy.add(Fault(r"^/files/outdoor_park_01\.jpg", "reset", times=None))
        proxy.add(Fault(r"^/files/indoor_room_01\.jpg", "delay", times=1, delay_s=1.0))  # past timeout_s 0.5
        items = {f"p{i}": f"{proxy.url}/files/{name}" for i, name in
                 enumerate(["outdoor_street_01.jpg", "outdoor_park_01.jpg", "indoor_room_01.jpg"])}  # fmt: skip
        rows = run_stage(FAST, items)
        assert {k: r["status"] for k, r in rows.items()} == {"p0": "ok", "p1": "http_error", "p2": "ok"}
        assert once.fired == 1 and proxy.hits(r"^/files/outdoor_park_01") == 2  # tried, retried once, recorded
        assert rows["p1"]["error"].startswith("connection failed") and "after 2 attempts" in rows["p1"]["error"]
        assert not Path("store/photos/p1.json").exists()  # transient: a rerun tries it again
        proxy.clear()
        again = run_stage(FAST, items, "again.parquet")
        assert again["p1"]["status"] == "ok" and proxy.hits(r"^/files/outdoor_street_01") == 2


# ---------------------------------------------------------------- a CDN placeholder for deleted photos


def test_a_placeholder_served_for_many_deleted_photos_is_dropped_for_all_of_them(
    tmp_path_factory, realdata, tmp_path, monkeypatch
):
    """A CDN answers deleted photos with one "unavailable" image (200, same bytes): every copy is dropped."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.chdir(tmp_path)
    root = tmp_path_factory.mktemp("cdn")
    placeholder = (realdata / "photos" / "special_grayscale_01.jpg").read_bytes()
    for name in ("gone_1.jpg", "gone_2.jpg", "gone_3.jpg", "gone_4.jpg"):
        (root / name).write_bytes(placeholder)
    (root / "street.jpg").write_bytes((realdata / "photos" / "outdoor_street_01.jpg").read_bytes())
    (root / "street_again.jpg").write_bytes((realdata / "photos" / "outdoor_street_01.jpg").read_bytes())
    (root / "park.jpg").write_bytes((realdata / "photos" / "outdoor_park_01.jpg").read_bytes())
    with PhotoServer(root) as server:
        names = ["gone_1", "gone_2", "gone_3", "gone_4", "street", "street_again", "park"]
        run_stage({"store": "store"}, {n: f"{server.url}/files/{n}.jpg" for n in names})
    downloads = read_table("tables/downloads.parquet", DOWNLOADS)
    assert set(downloads.column("status").to_pylist()) == {"ok"}
    photos = photos_table(dict.fromkeys(names, "x"))
    tables = Tables(photos, downloads, table_from_rows([], PAIRS), table_from_rows([], CHIPS))
    decided = {r["id"]: r for r in photo_rules.placeholder_image(tables, FilterParams()).to_pylist()}
    dropped = {i for i, r in decided.items() if not r["kept"]}
    assert dropped == {"gone_1", "gone_2", "gone_3", "gone_4"}  # all of them, not all but the first
    assert decided["gone_1"]["reason"].startswith("placeholder_image: 4 photos have these exact bytes")
    assert decided["gone_1"]["score"] == 4.0 and decided["street"]["score"] == 2.0
    # two copies of one photo are a duplicate, not a placeholder: duplicate_image keeps one of them
    dup = {r["id"]: r["kept"] for r in photo_rules.duplicate_image(tables, FilterParams()).to_pylist()}
    assert dup["street"] is True and dup["street_again"] is False
    # the threshold is a param: at 5 the four copies count as ordinary duplicates
    relaxed = photo_rules.placeholder_image(tables, FilterParams(placeholder_copies=5))
    assert all(relaxed.column("kept").to_pylist())
    assert os.path.exists("store/photos/gone_1.jpg")
