"""search: demo metadata (WITW metadata.json shape) or custom photos → tables/photos.parquet."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
from pathlib import Path

import pytest

from catalogs import load_demo
from pipeline import search, tablestream
from pipeline.config import parse_params
from pipeline.errors import CatalogError, ConfigError, StageInputError
from pipeline.schemas import PHOTOS, read_table, write_table


def photo(photo_id: str, **over) -> dict:
    d = {"id": photo_id, "owner": "1234@N05", "license": "4", "latitude": "45.2", "longitude": 5.1,
         "accuracy": "16", "context": 2, "datetaken": "2021-06-01 12:00:00", "dateupload": "1622548800",
         "url_m": f"photos/{photo_id}.jpg", "width_m": "500", "height_m": 375, "title": f"photo {photo_id}"}
    d.update(over)
    return d


def write_demo(root: Path, per_aoi: dict[str, list[dict]]) -> Path:
    """A demo folder as the demo generator writes it: flickr/<aoi>.json in WITW metadata.json shape."""
    (root / "flickr").mkdir(parents=True, exist_ok=True)
    for aoi, images in per_aoi.items():
        doc = {"image_count": len(images), "images": images}
        (root / "flickr" / f"{aoi}.json").write_text(json.dumps(doc, indent=2))
    return root


def aois() -> list[str]:
    return [c["aoi"] for c in load_demo()["cities"]]


def run_main(params: dict, *argv: str) -> None:
    parser = argparse.ArgumentParser()
    search.configure(parser)
    search.main(parse_params(params), parser.parse_args(list(argv)))


def test_demo_search_writes_one_row_per_photo_sorted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = aois()
    write_demo(Path("data/demo"), {
        first: [photo("300"), photo("100", latitude="nan", accuracy="")],
        second: [photo("200", latitude=44.8, longitude="9.05")],
    })
    run_main({}, "--demo", "data/demo", "--out", "tables/photos.parquet")
    table = read_table("tables/photos.parquet", PHOTOS)
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == ["100", "200", "300"]
    by_id = {r["id"]: r for r in rows}
    cities = {c["aoi"]: c["city"] for c in load_demo()["cities"]}
    assert (by_id["200"]["aoi"], by_id["200"]["city"]) == (second, cities[second])
    assert by_id["300"]["aoi"] == first and by_id["300"]["source"] == "demo"
    assert math.isnan(by_id["100"]["lat"]) and by_id["100"]["accuracy"] is None
    assert by_id["300"]["url"] == os.path.join("data", "demo", "photos", "300.jpg")
    assert by_id["300"]["licence"] == "CC BY 2.0" and by_id["300"]["url_width"] == 500
    assert by_id["300"]["page_url"] == "https://www.flickr.com/photos/1234@N05/300"


def test_search_output_is_byte_identical_across_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = aois()
    write_demo(Path("demo"), {first: [photo(str(i)) for i in range(50, 0, -1)], second: [photo("x")]})
    run_main({}, "--demo", "demo", "--out", "a.parquet")
    run_main({}, "--demo", "demo", "--out", "b.parquet")
    assert Path("a.parquet").read_bytes() == Path("b.parquet").read_bytes()


def test_duplicate_ids_across_files_give_one_row(tmp_path, caplog):
    first, second = aois()
    demo = write_demo(tmp_path, {first: [photo("1"), photo("2")], second: [photo("2"), photo("3")]})
    with caplog.at_level(logging.INFO, logger="pipeline.search"):
        table = search.search(parse_params({}), demo)
    assert sorted(table.column("id").to_pylist()) == ["1", "2", "3"]
    assert "listed twice with different metadata" in caplog.text  # the aoi differs between the two files


def test_missing_or_malformed_demo_files_are_clear_errors(tmp_path):
    first, second = aois()
    with pytest.raises(StageInputError, match="crossview demo"):
        search.search(parse_params({}), tmp_path)
    write_demo(tmp_path, {first: [photo("1")], second: []})
    (tmp_path / "flickr" / f"{second}.json").write_text("[1, 2]")
    with pytest.raises(CatalogError, match="images"):
        search.search(parse_params({}), tmp_path)
    write_demo(tmp_path, {first: [photo("1")], second: [{"owner": "no id"}]})
    with pytest.raises(CatalogError, match=r"image 1: .*id"):
        search.search(parse_params({}), tmp_path)


def test_flickr_source_harvests_through_the_flickr_protocol(tmp_path, monkeypatch):
    from tests.flickr_server import expected_ids, flickr_server, make_population

    photos = make_population(600, seed=3)
    monkeypatch.setenv("FLICKR_API_KEY", "FAKEKEY-search-0000")
    monkeypatch.setenv("FLICKR_API_SECRET", "FAKESECRET-search-1111")
    with flickr_server(photos, {"FAKEKEY-search-0000": "FAKESECRET-search-1111"}) as server:
        params = parse_params({
            "source": "flickr",
            "flickr": {"rest_url": server.rest_url, "bbox": [2.25, 48.80, 2.45, 48.92], "calls_per_hour": 1e8,
                       "min_accuracy": 6, "min_upload_date": "2008-01-01", "max_upload_date": "2022-12-31",
                       "state_dir": str(tmp_path / "state"), "backoff_s": 0.001},
        })
        table = search.search(params, tmp_path)
        # the stage streams the harvest into a table sorted on disk: 37 rows a batch, runs of 100 rows
        monkeypatch.setattr(search, "BATCH_ROWS", 37)
        monkeypatch.setattr(tablestream, "RUN_ROWS", 100)
        parser = argparse.ArgumentParser()
        search.configure(parser)
        search.main(params, parser.parse_args(["--out", str(tmp_path / "streamed.parquet")]))
    write_table(table, tmp_path / "whole.parquet", PHOTOS)
    assert (tmp_path / "streamed.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 600
    assert set(ids) == expected_ids(photos)
    assert set(table.column("source").to_pylist()) == {"flickr"}
    assert all(u.startswith("https://www.flickr.com/photos/") for u in table.column("page_url").to_pylist())


def test_custom_source_needs_custom_photos(tmp_path):
    with pytest.raises(ConfigError, match="custom.photos"):
        search.search(parse_params({"source": "custom"}), tmp_path)


def test_custom_table_search(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("mine.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "lat", "lon", "image", "owner", "licence", "owner_name"])
        writer.writerow(["b", "1.5", "2.5", "b.jpg", "o", "12", "Bea"])
        writer.writerow(["a", "", "x", "a.jpg", "o", "All Rights Reserved", ""])
    params = {"source": "custom", "custom": {"photos": "mine.csv"}}
    run_main(params, "--out", "photos.parquet")
    rows = read_table("photos.parquet", PHOTOS).to_pylist()
    assert [r["id"] for r in rows] == ["a", "b"]
    assert math.isnan(rows[0]["lat"]) and rows[0]["licence_id"] == 0
    assert rows[1]["licence"] == "CC BY-SA 4.0" and rows[1]["owner_name"] == "Bea"
    assert rows[1]["source"] == "custom" and rows[1]["aoi"] is None


def test_custom_folder_search(tmp_path, monkeypatch, realdata):
    monkeypatch.chdir(tmp_path)
    params = {"source": "custom", "custom": {"photos": str(realdata / "photos")}}
    run_main(params, "--out", "photos.parquet")
    rows = {r["id"]: r for r in read_table("photos.parquet", PHOTOS).to_pylist()}
    assert len(rows) == 17  # every image file, readable or not; labels.csv is not an image
    assert rows["outdoor_street_01"]["lat"] == pytest.approx(43.468, abs=1e-3)
    assert math.isnan(rows["special_grayscale_01"]["lat"])
    assert not os.path.isabs(rows["outdoor_street_01"]["url"])
    assert Path(rows["outdoor_street_01"]["url"]).resolve() == (realdata / "photos" / "outdoor_street_01.jpg").resolve()
