"""The review app's HTTP API on small generated tables and images (Starlette TestClient)."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipeline.config import Params
from pipeline.review import make_app
from pipeline.schemas import CHIPS, DECISIONS, DOWNLOADS, PAIRS, PHOTOS, read_table, table_from_rows, write_table

CITIES = ("Alderton", "Brimvale")
MODELS = ("indoor", "relevance")


def _jpeg(path: Path, seed: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 215, 3)
    pixels = np.clip(base + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "JPEG", quality=80)


def _photo(k: int, i: str) -> dict:
    return {
        "id": i,
        "source": "demo",
        "aoi": "demo",
        "city": CITIES[k % 2],
        "owner": f"owner{k % 5}@N00",
        "owner_name": f"Owner {k % 5}",
        "title": f"Street corner {k}",
        "licence_id": 4,
        "licence": "CC BY 2.0",
        "licence_url": "https://creativecommons.org/licenses/by/2.0/",
        "lat": 10 + k * 1e-4,
        "lon": 20 + k * 1e-4,
        "accuracy": 16,
        "context": 2,
        "date_taken": "2016-05-01 12:00:00",
        "url": f"data/demo/photos/{i}.jpg",
        "page_url": f"https://www.flickr.com/photos/x/{i}/",
    }


def _decisions(k: int, i: str, paired: bool, ok: bool) -> list[dict]:
    indoor, relevance = (k * 37 % 100) / 100, (k * 53 % 100) / 100
    rows = [
        {"id": i, "filter": "download", "kept": ok, "reason": "" if ok else "corrupt: truncated JPEG"},
        {"id": i, "filter": "pairing", "kept": paired, "reason": "" if paired else "outside_tiles"},
    ]
    if ok:
        rows += [
            {
                "id": i,
                "filter": "indoor",
                "kept": indoor < 0.5,
                "reason": "" if indoor < 0.5 else "indoor: top-10 vote",
                "score": indoor,
            },
            {
                "id": i,
                "filter": "relevance",
                "kept": relevance >= 0.5,
                "reason": "" if relevance >= 0.5 else "irrelevant",
                "score": relevance,
            },
        ]
    return rows


def make_review_data(root: Path, n: int = 40, images: bool = True, prefix: str = "") -> list[str]:
    """Tables under ``root/tables`` and images under ``root/data/store`` like the pipeline writes; returns ids.

    Photo k: city alternates; k % 10 == 3 failed to download (no photo, no chip); k % 10 == 7 did
    not pair (no chip); indoor score (37k mod 100)/100 drops at >= 0.5, relevance (53k mod 100)/100
    drops below 0.5.
    """
    ids = [f"{prefix}{100000 + k}" for k in range(n)]
    photos, downloads, pairs, chips, decisions = [], [], [], [], []
    for k, i in enumerate(ids):
        ok, paired = k % 10 != 3, k % 10 not in (3, 7)
        photos.append(_photo(k, i))
        downloads.append(
            {
                "id": i,
                "uri": f"data/store/photos/{i}.jpg" if ok else None,
                "width": 96,
                "height": 64,
                "status": "ok" if ok else "corrupt",
                "bands": 3,
                "mode": "RGB",
            }
        )
        pairs.append(
            {
                "id": i,
                "aoi": "demo",
                "city": CITIES[k % 2],
                "tile_id": "t1",
                "epsg": 32631,
                "split": (("test" if k % 2 else ("val" if k % 6 == 0 else "train")) if paired else None),
                "status": "paired" if paired else ("not_downloaded" if not ok else "outside_tiles"),
                "reason": "",
            }
        )
        if paired:
            chips.append(
                {
                    "id": i,
                    "tile_id": "t1",
                    "uri": f"data/store/chips/abc/{i}.jpg",
                    "width": 75,
                    "height": 75,
                    "nodata_fraction": 0.0,
                    "std": 30.0,
                    "status": "ok",
                }
            )
        decisions += _decisions(k, i, paired, ok)
        if images and ok:
            _jpeg(root / f"data/store/photos/{i}.jpg", k, (96, 64))
        if images and paired:
            _jpeg(root / f"data/store/chips/abc/{i}.jpg", 1000 + k, (75, 75))
    t = root / "tables"
    write_table(table_from_rows(photos, PHOTOS), t / "photos.parquet", PHOTOS)
    write_table(table_from_rows(downloads, DOWNLOADS), t / "downloads.parquet", DOWNLOADS)
    write_table(table_from_rows(pairs, PAIRS), t / "pairs.parquet", PAIRS)
    write_table(table_from_rows(chips, CHIPS), t / "chips.parquet", CHIPS)
    write_table(table_from_rows(decisions, DECISIONS), t / "decisions.parquet", DECISIONS, sort_by=["id", "filter"])
    (root / "review").mkdir(exist_ok=True)
    (root / "review/verdicts.csv").write_text("id,verdict,curator,timestamp,note\n")
    return ids


@pytest.fixture()
def review_root(tmp_path: Path) -> Path:
    make_review_data(tmp_path)
    return tmp_path


@pytest.fixture()
def client(review_root: Path):
    from starlette.testclient import TestClient

    app = make_app(Params(), curator="alice", root=review_root)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


def _ids(resp) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [it["id"] for it in resp.json()["items"]]


def test_page_renders_the_queue_with_photo_chip_and_summary(client):
    resp = client.get("/")
    assert resp.status_code == 200
    html = resp.text
    assert "Dropped by a model" in html and "dvc repro" in html
    assert "/img/photo/" in html and "/img/chip/" in html and 'class="pin"' in html
    assert "50 m" in html  # scale bar for a 225 m chip


def test_model_dropped_queue_holds_model_drops_most_uncertain_first(client):
    data = client.get("/api/queue", params={"queue": "model_dropped", "per_page": 500}).json()
    items = data["items"]
    assert data["total"] == len(items) > 0
    assert all(it["model_drop"] for it in items)
    margins = []
    for it in items:
        own = [abs(it["scores"][m] - 0.5) for m in it["model_drop"]]
        margins.append(min(own))
    assert margins == sorted(margins)
    only_indoor = client.get("/api/queue", params={"queue": "model_dropped", "value": "indoor", "per_page": 500}).json()
    assert {tuple(it["model_drop"]) for it in only_indoor["items"]} <= {("indoor",), ("indoor", "relevance")}


def test_kept_queues_low_confidence_and_seeded_sample(client):
    low = client.get("/api/queue", params={"queue": "low_confidence", "margin": 0.1, "per_page": 500}).json()["items"]
    assert low and all(it["kept"] and it["margin"] <= 0.1 for it in low)
    assert [it["margin"] for it in low] == sorted(it["margin"] for it in low)
    a = _ids(client.get("/api/queue", params={"queue": "kept_sample", "seed": 3, "sample": 5}))
    b = _ids(client.get("/api/queue", params={"queue": "kept_sample", "seed": 3, "sample": 5}))
    c = _ids(client.get("/api/queue", params={"queue": "kept_sample", "seed": 4, "sample": 5}))
    assert a == b and len(a) == 5 and a != c
    kept = _ids(client.get("/api/queue", params={"queue": "all", "per_page": 500}))
    assert set(a) <= set(kept)


def test_reason_city_split_queues_and_paging(client):
    corrupt = _ids(client.get("/api/queue", params={"queue": "reason", "value": "corrupt", "per_page": 500}))
    assert corrupt == [str(100000 + k) for k in range(40) if k % 10 == 3]
    city = client.get("/api/queue", params={"queue": "city", "value": "Brimvale", "per_page": 500}).json()
    assert city["total"] == 20 and all(it["city"] == "Brimvale" for it in city["items"])
    test = client.get("/api/queue", params={"queue": "split", "value": "test", "per_page": 500}).json()
    assert test["total"] > 0 and all(it["split"] == "test" for it in test["items"])
    pages = [client.get("/api/queue", params={"queue": "all", "per_page": 7, "page": p}).json() for p in (1, 2, 6)]
    assert pages[0]["pages"] == 6 and len(pages[0]["items"]) == 7 and len(pages[2]["items"]) == 40 - 35
    assert not set(_ids_of(pages[0])) & set(_ids_of(pages[1]))
    assert client.get("/api/queue", params={"queue": "nope"}).status_code == 400


def _ids_of(data: dict) -> list[str]:
    return [it["id"] for it in data["items"]]


def test_verdict_is_saved_at_once_shown_on_reload_and_undone(client, review_root):
    resp = client.post("/api/verdicts", json={"ids": ["100004"], "verdict": "keep", "note": "a street, not a room"})
    assert resp.status_code == 200, resp.text
    row = resp.json()["rows"][0]
    assert row["curator"] == "alice" and row["timestamp"].endswith("Z")
    saved = list(csv.reader((review_root / "review/verdicts.csv").open()))
    assert saved == [
        ["id", "verdict", "curator", "timestamp", "note"],
        ["100004", "keep", "alice", row["timestamp"], "a street, not a room"],
    ]
    pair = client.get("/api/pair/100004").json()
    assert pair["verdict"]["verdict"] == "keep" and len(pair["history"]) == 1
    assert any(d["filter"] == "indoor" for d in pair["decisions"])
    assert "100004" in client.get("/").text and "Keep" in client.get("/").text
    assert resp.json()["summary"]["reviewed"] == 1 and resp.json()["summary"]["pending"] == 1

    second = client.post("/api/verdicts", json={"ids": ["100004"], "verdict": "drop_irrelevant"}).json()["rows"][0]
    assert client.get("/api/pair/100004").json()["verdict"]["verdict"] == "drop_irrelevant"
    undo = client.post("/api/undo", json={"rows": [second]}).json()
    assert undo["removed"] == 1 and undo["verdicts"]["100004"]["verdict"] == "keep"
    undo = client.post("/api/undo", json={"rows": [row]}).json()
    assert undo["verdicts"]["100004"] is None
    assert (review_root / "review/verdicts.csv").read_text() == "id,verdict,curator,timestamp,note\n"


def test_bulk_verdict_and_reviewed_filter(client):
    ids = ["100000", "100001", "100002"]
    rows = client.post("/api/verdicts", json={"ids": ids, "verdict": "drop_wrong_location"}).json()["rows"]
    assert [r["id"] for r in rows] == ids and len({r["timestamp"] for r in rows}) == 1
    reviewed = _ids(client.get("/api/queue", params={"queue": "all", "reviewed": "yes", "per_page": 500}))
    assert sorted(reviewed) == ids
    rest = _ids(client.get("/api/queue", params={"queue": "all", "reviewed": "no", "per_page": 500}))
    assert len(rest) == 37 and not set(rest) & set(ids)
    assert client.post("/api/undo", json={"rows": rows}).json()["removed"] == 3


def test_unknown_ids_and_verdicts_are_rejected_with_a_clear_message(client, review_root):
    before = (review_root / "review/verdicts.csv").read_text()
    resp = client.post("/api/verdicts", json={"ids": ["100000", "999"], "verdict": "keep"})
    assert resp.status_code == 400 and "unknown photo id" in resp.json()["error"] and "'999'" in resp.json()["error"]
    resp = client.post("/api/verdicts", json={"ids": ["100000"], "verdict": "maybe"})
    assert resp.status_code == 400 and "drop_indoor" in resp.json()["error"]
    resp = client.post(
        "/api/verdicts", content=b'{"ids": ["100000"], "verdict": "keep"}', headers={"content-type": "text/plain"}
    )
    assert resp.status_code == 415
    assert (
        client.get("/api/pair/999").status_code == 404
        and "unknown photo id" in client.get("/api/pair/999").json()["error"]
    )
    assert (review_root / "review/verdicts.csv").read_text() == before


def test_model_agreement_with_curators(client):
    # 100001: indoor 0.37 kept, relevance 0.53 kept; 100002: indoor 0.74 dropped; 100004: indoor 0.48 kept.
    client.post("/api/verdicts", json={"ids": ["100002"], "verdict": "drop_indoor"})  # agrees
    client.post("/api/verdicts", json={"ids": ["100004"], "verdict": "drop_indoor"})  # missed by indoor
    client.post("/api/verdicts", json={"ids": ["100001"], "verdict": "keep"})
    indoor = client.get("/api/summary").json()["models"]["indoor"]
    assert (indoor["tp"], indoor["fp"], indoor["fn"], indoor["tn"]) == (1, 0, 1, 1)
    assert indoor["precision"] == 1.0 and indoor["recall"] == 0.5


@pytest.mark.parametrize(
    "path",
    [
        "/img/photo/../../tables/photos.parquet",
        "/img/photo/..%2F..%2Ftables%2Fphotos.parquet",
        "/img/photo/%2Fetc%2Fpasswd",
        "/img/photo//etc/passwd",
        "/img/chip/..%252F..%252Fetc%252Fpasswd",
        "/img/../../etc/passwd",
        "/img/photo/data%2Fstore%2Fphotos%2F100000.jpg",
        "/img/secret/100000",
        "/img/photo/999999",
        "/img/photo/100003",  # in the dataset, but its download failed: no image
        "/static/../pipeline/config.py",
        "/static/..%2F..%2Fconfig.py",
        "/static/%2Fetc%2Fpasswd",
    ],
)
def test_only_dataset_images_are_served(client, path):
    resp = client.get(path)
    assert resp.status_code == 404, (path, resp.status_code)
    assert b"root:" not in resp.content and b"PAR1" not in resp.content


def test_thumbnails_are_jpegs_made_once_and_cached(client):
    thumbs = client.app.state.review.dataset.thumbnails
    first = client.get("/img/photo/100000?size=thumb")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(first.content)).size == (96, 64)  # never upscaled
    misses = thumbs.misses
    assert client.get("/img/photo/100000?size=thumb").content == first.content
    assert thumbs.misses == misses and thumbs.hits >= 1
    assert client.get("/img/chip/100000?size=large").status_code == 200
    assert client.get("/img/chip/100000?size=huge").status_code == 404


def test_requests_for_another_host_are_refused(review_root):
    from starlette.testclient import TestClient

    with TestClient(make_app(Params(), root=review_root), base_url="http://evil.example") as c:
        assert c.get("/").status_code == 400


def test_index_is_rebuilt_only_when_a_table_changes(client, review_root):
    dataset = client.app.state.review.dataset
    ix = dataset.index()
    client.get("/api/queue")
    assert dataset.index() is ix
    make_review_data(review_root, n=12, images=False)
    assert client.get("/api/queue", params={"queue": "all"}).json()["total"] == 12
    assert dataset.index() is not ix


def _big_tables(root: Path, n: int) -> None:
    ids = pa.array([f"{10**9 + k}" for k in range(n)])
    rng = np.random.default_rng(0)
    cities = pa.array(np.array(["Alderton", "Brimvale", "Carrow"])[np.arange(n) % 3])
    photos = {name: pa.nulls(n, PHOTOS.field(name).type) for name in PHOTOS.names}
    photos.update(id=ids, city=cities, title=pa.array(np.full(n, "t")))
    write_table(pa.table(photos, schema=PHOTOS), root / "tables/photos.parquet", PHOTOS)
    pairs = {name: pa.nulls(n, PAIRS.field(name).type) for name in PAIRS.names}
    pairs.update(
        id=ids,
        city=cities,
        status=pa.array(np.full(n, "paired")),
        split=pa.array(np.array(["train", "val", "test"])[rng.integers(0, 3, n)]),
    )
    write_table(pa.table(pairs, schema=PAIRS), root / "tables/pairs.parquet", PAIRS)
    parts = []
    for name, thr in (("chip_nodata", None), ("indoor", 0.5), ("relevance", 0.5)):
        score = rng.random(n)
        kept = score < 0.97 if thr is None else (score < thr if name == "indoor" else score >= thr)
        reason = np.where(kept, "", f"{name}: too much")
        parts.append(
            pa.table(
                {
                    "id": ids,
                    "filter": pa.array(np.full(n, name)),
                    "kept": pa.array(kept),
                    "reason": pa.array(reason),
                    "score": pa.array(score),
                },
                schema=DECISIONS,
            )
        )
    write_table(pa.concat_tables(parts), root / "tables/decisions.parquet", DECISIONS, sort_by=["id", "filter"])


def test_queues_are_fast_on_100k_pairs(tmp_path):
    from starlette.testclient import TestClient

    _big_tables(tmp_path, 100_000)
    app = make_app(Params(), root=tmp_path)
    start = time.perf_counter()
    app.state.review.dataset.index()
    built = time.perf_counter() - start
    assert built < 15, f"index took {built:.1f} s"
    with TestClient(app, base_url="http://127.0.0.1") as c:
        for params in (
            {"queue": "model_dropped"},
            {"queue": "low_confidence"},
            {"queue": "city", "value": "Carrow"},
            {"queue": "kept_sample"},
            {"queue": "reason", "value": "chip_nodata"},
        ):
            c.get("/api/queue", params=params)  # first request computes and caches the queue
            start = time.perf_counter()
            for page in (1, 50, 400):
                data = c.get("/api/queue", params={**params, "page": page, "reviewed": "no"}).json()
                assert data["items"], params
            took = (time.perf_counter() - start) / 3
            assert took < 0.25, f"{params}: {took * 1000:.0f} ms a page"
        assert c.get("/").status_code == 200


def test_custom_ids_with_slashes_and_spaces_are_looked_up_not_used_as_paths(tmp_path):
    from starlette.testclient import TestClient

    ids = make_review_data(tmp_path, n=3, prefix="trips/2019 day #1/")
    with TestClient(make_app(Params(), root=tmp_path), base_url="http://127.0.0.1") as c:
        item = c.get("/api/queue", params={"queue": "all"}).json()["items"][0]
        assert item["id"] in ids and item["photo"].startswith("/img/photo/trips%2F2019%20day%20%231%2F")
        assert c.get(item["photo"]).headers["content-type"] == "image/jpeg"
        assert c.get("/api/pair/" + quote(ids[0], safe="")).json()["id"] == ids[0]
        assert c.post("/api/verdicts", json={"ids": [ids[0]], "verdict": "keep"}).status_code == 200


def test_a_malformed_verdicts_file_is_reported_not_overwritten(client, review_root):
    path = review_root / "review/verdicts.csv"
    path.write_text("id,verdict,curator,timestamp,note\n100000,perhaps,bob,2026-01-01T00:00:00Z,\n")
    resp = client.get("/")
    assert resp.status_code == 500 and "line 2: unknown verdict 'perhaps'" in resp.text
    resp = client.post("/api/verdicts", json={"ids": ["100001"], "verdict": "keep"})
    assert resp.status_code == 500 and "line 2" in resp.json()["error"]
    assert "perhaps" in path.read_text() and "100001" not in path.read_text()


def test_images_in_an_s3_store_are_read_through_the_store(s3, tmp_path):
    from starlette.testclient import TestClient

    from pipeline.store import Store, client_for

    ids = make_review_data(tmp_path, n=2)
    client_for(s3).create_bucket(Bucket="crossview-review")
    store = Store("s3://crossview-review/run", s3)
    uri = store.put_bytes(f"photos/{ids[0]}.jpg", (tmp_path / f"data/store/photos/{ids[0]}.jpg").read_bytes())
    downloads = read_table(tmp_path / "tables/downloads.parquet", DOWNLOADS).to_pylist()
    downloads[0]["uri"] = uri
    write_table(table_from_rows(downloads, DOWNLOADS), tmp_path / "tables/downloads.parquet", DOWNLOADS)
    (tmp_path / f"data/store/photos/{ids[0]}.jpg").unlink()
    params = Params(s3=s3)
    with TestClient(make_app(params, root=tmp_path), base_url="http://127.0.0.1") as c:
        resp = c.get(f"/img/photo/{ids[0]}")
        assert resp.status_code == 200 and Image.open(io.BytesIO(resp.content)).size == (96, 64)


def test_model_filters_are_the_registry_kind_model(review_root):
    from pipeline.review.dataset import Dataset, QueueSpec, Settings, TablePaths

    settings = Settings(root=review_root, kinds={"indoor": "rule", "relevance": "model", "download": "rule"})
    ix, positions = Dataset(TablePaths.under(review_root / "tables"), settings).queue(QueueSpec("model_dropped"))
    assert set(ix.model_drop) == {"relevance"} and set(ix.scores) == {"relevance"}
    assert all(ix.model_drop["relevance"][p] for p in positions)
    assert ix.first_drop[ix.pos["100003"]].startswith("download: corrupt")  # registry order: download first
