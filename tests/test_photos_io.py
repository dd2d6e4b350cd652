"""photos_io: Flickr-shaped dicts, custom photo tables and folders of geotagged images → photos rows."""

from __future__ import annotations

import csv
import math
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalogs import load_licences
from pipeline.errors import CatalogError
from pipeline.photos_io import (
    choose_url,
    custom_rows,
    photo_row_from_flickr,
    rows_from_folder,
    rows_from_table,
    sanitise_id,
)
from pipeline.schemas import PHOTOS, table_from_rows


def flickr_dict(**over) -> dict:
    """A photos.search photo dict with extras, numbers sent as strings (older API captures)."""
    d = {
        "id": "52900000001", "owner": "52755911@N03", "secret": "abc", "server": "65535", "farm": 66,
        "title": "Rue de Rivoli", "ispublic": 1, "isfriend": 0, "isfamily": 0, "license": "4",
        "dateupload": "1680000000", "datetaken": "2023-03-28 10:11:12", "ownername": "Ann",
        "latitude": "48.8566", "longitude": "2.3522", "accuracy": "16", "context": "2",
        "tags": "paris street", "url_m": "https://live.staticflickr.com/65535/52900000001_abc.jpg",
        "height_m": "375", "width_m": "500",
        "url_l": "https://live.staticflickr.com/65535/52900000001_abc_b.jpg", "height_l": "768", "width_l": "1024",
    }
    d.update(over)
    return d


def as_numbers(d: dict) -> dict:
    """The same dict as newer captures send it: numbers as JSON numbers."""
    out = dict(d)
    for key in ("latitude", "longitude"):
        out[key] = float(d[key])
    for key in ("accuracy", "context", "dateupload", "height_m", "width_m", "height_l", "width_l", "license"):
        out[key] = int(d[key])
    return out


def test_flickr_dict_with_type_drift_parses_identically():
    as_strings = photo_row_from_flickr(flickr_dict(), "AOI_3_Paris", "Paris")
    numeric = photo_row_from_flickr(as_numbers(flickr_dict()), "AOI_3_Paris", "Paris")
    assert as_strings == numeric
    assert as_strings["lat"] == pytest.approx(48.8566) and as_strings["lon"] == pytest.approx(2.3522)
    assert (as_strings["accuracy"], as_strings["context"]) == (16, 2)
    assert as_strings["date_upload_unix"] == 1680000000
    assert as_strings["date_taken"] == "2023-03-28 10:11:12"
    assert (as_strings["source"], as_strings["aoi"], as_strings["city"]) == ("flickr", "AOI_3_Paris", "Paris")
    assert as_strings["owner_name"] == "Ann" and as_strings["title"] == "Rue de Rivoli"
    assert set(as_strings) == set(PHOTOS.names)
    table_from_rows([as_strings], PHOTOS)  # fits the schema


@pytest.mark.parametrize("bad", ["nan", "", None, "not a number", "NaN"])
def test_unknown_numbers_become_nan_or_null_never_a_crash(bad):
    d = flickr_dict(latitude=bad, longitude=bad, accuracy=bad, context=bad, dateupload=bad)
    if bad is None:
        for key in ("latitude", "longitude", "accuracy", "context", "dateupload"):
            d.pop(key)
    row = photo_row_from_flickr(d, None, None)
    assert math.isnan(row["lat"]) and math.isnan(row["lon"])
    assert row["accuracy"] is None and row["context"] is None and row["date_upload_unix"] is None
    table = table_from_rows([row], PHOTOS)
    assert table.column("accuracy").null_count == 1


@pytest.mark.parametrize("licence_id", range(17))
def test_licence_ids_give_name_and_url(licence_id):
    lic = load_licences()[licence_id]
    for value in (licence_id, str(licence_id)):
        row = photo_row_from_flickr(flickr_dict(license=value), None, None)
        assert (row["licence_id"], row["licence"], row["licence_url"]) == (licence_id, lic.name, lic.url)
    assert load_licences()[11].name == "CC BY 4.0"
    assert load_licences()[0].name == "All Rights Reserved"


def test_unknown_licence_is_kept_as_null_id():
    row = photo_row_from_flickr(flickr_dict(license="99"), None, None)
    assert row["licence_id"] is None and row["licence"] == "99" and row["licence_url"] is None


def test_page_url_names_owner_and_id():
    row = photo_row_from_flickr(flickr_dict(), None, None)
    assert row["page_url"] == "https://www.flickr.com/photos/52755911@N03/52900000001"
    assert photo_row_from_flickr(flickr_dict(owner=""), None, None)["page_url"] is None


def test_url_choice_is_largest_size_up_to_1024():
    url, width, height = choose_url(flickr_dict())
    assert url.endswith("_b.jpg") and (width, height) == (1024, 768)
    # url_l missing: url_c (800) beats url_z (640) and url_m (500)
    d = {"url_m": "m", "width_m": 500, "height_m": 333, "url_c": "c", "width_c": "800", "height_c": "533",
         "url_z": "z", "width_z": 640, "height_z": 427}
    assert choose_url(d) == ("c", 800, 533)
    # only url_n, sizes unknown: still chosen, dimensions null
    assert choose_url({"url_n": "n"}) == ("n", None, None)
    assert choose_url({"url_l": "l", "width_l": 2048, "height_l": 1536, "url_z": "z"}) == ("z", None, None)
    assert choose_url({}) == (None, None, None)
    row = photo_row_from_flickr(flickr_dict(), None, None)
    assert (row["url_width"], row["url_height"]) == (1024, 768)


def test_demo_urls_resolve_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = flickr_dict(url_l="photos/52900000001.jpg")
    row = photo_row_from_flickr(d, "DEMO_1_Alderport", "Alderport", "data/demo", source="demo")
    assert row["url"] == os.path.join("data", "demo", "photos", "52900000001.jpg")
    assert row["source"] == "demo"
    outside = photo_row_from_flickr(d, None, None, tmp_path.parent / "elsewhere", source="demo")
    assert not os.path.isabs(outside["url"]) and outside["url"].startswith("..")


def test_title_as_content_object_and_missing_id():
    row = photo_row_from_flickr(flickr_dict(title={"_content": "Quai"}), None, None)
    assert row["title"] == "Quai"
    with pytest.raises(CatalogError, match="id"):
        photo_row_from_flickr({"owner": "x"}, None, None)


# ---------------------------------------------------------------- custom tables


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def custom_records() -> list[dict]:
    return [
        {"id": "a1", "lat": "43.47", "lon": "11.88", "image": "img/a1.jpg", "owner": "me", "licence": "CC BY 4.0",
         "accuracy": "16", "title": "street"},
        {"id": "a2", "lat": "north", "lon": "", "image": "https://example.org/a2.jpg", "owner": "you",
         "licence": "5", "accuracy": "", "title": ""},
        {"id": "a3", "lat": "-33.9", "lon": "151.2", "image": "s3://bucket/a3.jpg", "owner": "them",
         "licence": "my own terms", "accuracy": "11", "title": "harbour"},
    ]


def test_custom_csv_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat").mkdir()
    rows = {r["id"]: r for r in rows_from_table(write_csv(tmp_path / "cat" / "photos.csv", custom_records()))}
    assert rows["a1"]["url"] == os.path.join("cat", "img", "a1.jpg")  # relative to the table's folder
    assert (rows["a1"]["licence_id"], rows["a1"]["licence"]) == (11, "CC BY 4.0")
    assert rows["a1"]["licence_url"] == "https://creativecommons.org/licenses/by/4.0/"
    assert (rows["a1"]["lat"], rows["a1"]["lon"], rows["a1"]["accuracy"]) == (43.47, 11.88, 16)
    assert math.isnan(rows["a2"]["lat"]) and math.isnan(rows["a2"]["lon"])  # kept: the pair stage records why
    assert rows["a2"]["url"] == "https://example.org/a2.jpg" and rows["a2"]["licence"] == "CC BY-SA 2.0"
    assert rows["a2"]["page_url"] == "https://example.org/a2.jpg"  # a public image URL is its own source link
    assert rows["a1"]["page_url"] is None and rows["a3"]["page_url"] is None
    assert rows["a3"]["url"] == "s3://bucket/a3.jpg"
    assert rows["a3"]["licence_id"] is None and rows["a3"]["licence"] == "my own terms"
    assert all(r["aoi"] is None and r["city"] is None and r["source"] == "custom" for r in rows.values())
    table_from_rows(rows.values(), PHOTOS)


def test_custom_parquet_matches_csv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    records = custom_records()
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "photos.parquet")
    from_parquet = rows_from_table(tmp_path / "photos.parquet")
    from_csv = rows_from_table(write_csv(tmp_path / "photos.csv", records))
    assert [r["id"] for r in from_parquet] == ["a1", "a2", "a3"]
    assert str(from_parquet) == str(from_csv)  # str(): NaN != NaN


def test_custom_table_numeric_ids_from_parquet(tmp_path):
    table = pa.table({"id": [7, 8], "lat": [1.0, None], "lon": [2.0, 3.0], "image": ["x.jpg", "y.jpg"],
                      "owner": ["o", "o"], "licence": [4, 0]})
    pq.write_table(table, tmp_path / "p.parquet")
    rows = rows_from_table(tmp_path / "p.parquet")
    assert [r["id"] for r in rows] == ["7", "8"] and math.isnan(rows[1]["lat"])
    assert [r["licence"] for r in rows] == ["CC BY 2.0", "All Rights Reserved"]


def test_custom_table_missing_columns_are_named(tmp_path):
    path = write_csv(tmp_path / "p.csv", [{"id": "1", "lat": "1", "image": "x.jpg"}])
    with pytest.raises(CatalogError) as err:
        rows_from_table(path)
    assert "lon, owner, licence" in str(err.value)


def test_custom_table_bad_ids_name_the_rows(tmp_path):
    records = custom_records() + [dict(custom_records()[0]), dict(custom_records()[1], id=""),
                                  dict(custom_records()[2], id="a/b")]
    with pytest.raises(CatalogError) as err:
        rows_from_table(write_csv(tmp_path / "p.csv", records))
    text = str(err.value)
    assert "empty id in rows 5" in text
    assert "id 'a1' repeated in rows 1, 4" in text
    assert "rows 6" in text  # the '/' id


def test_custom_rows_errors_for_missing_path_and_wrong_type(tmp_path):
    with pytest.raises(CatalogError, match="not found"):
        custom_rows(tmp_path / "nope.csv")
    (tmp_path / "p.xlsx").write_text("x")
    with pytest.raises(CatalogError, match="csv or .parquet"):
        custom_rows(tmp_path / "p.xlsx")


# ---------------------------------------------------------------- custom folder (real EXIF GPS)


def test_folder_reads_exif_gps_of_real_photos(tmp_path, monkeypatch, realdata):
    folder = tmp_path / "mine"
    (folder / "sub dir").mkdir(parents=True)
    for name in ("outdoor_street_01.jpg", "indoor_room_01.jpg", "special_png_alpha_01.png", "bad_empty_01.jpg"):
        shutil.copy(realdata / "photos" / name, folder / name)
    shutil.copy(realdata / "photos" / "outdoor_park_01.jpg", folder / "sub dir" / "park.JPG")
    (folder / "notes.txt").write_text("not an image")
    monkeypatch.chdir(tmp_path)
    rows = {r["id"]: r for r in custom_rows("mine")}
    assert sorted(rows) == ["bad_empty_01", "indoor_room_01", "outdoor_street_01", "special_png_alpha_01",
                            "sub_dir__park"]
    street = rows["outdoor_street_01"]
    assert street["lat"] == pytest.approx(43.4684, abs=1e-3) and street["lon"] == pytest.approx(11.8816, abs=1e-3)
    assert street["date_taken"] == "2008-10-22 16:43:21"  # EXIF DateTimeOriginal, Flickr's format
    assert street["url"] == os.path.join("mine", "outdoor_street_01.jpg")
    assert street["owner"] == "unknown" and street["licence"] == "unknown" and street["licence_id"] is None
    assert rows["special_png_alpha_01"]["lat"] == pytest.approx(43.466, abs=1e-2)  # PNG eXIf chunk
    assert rows["sub_dir__park"]["lat"] == pytest.approx(43.467, abs=1e-2)
    room = rows["indoor_room_01"]
    assert math.isnan(room["lat"]) and math.isnan(room["lon"])
    assert room["licence"] == "(C) by RDC-5300 User"  # EXIF Copyright, padding stripped
    assert math.isnan(rows["bad_empty_01"]["lat"])  # unreadable file: still a row
    table_from_rows(rows.values(), PHOTOS)


def test_folder_ids_are_sanitised_and_unique(tmp_path):
    assert sanitise_id("a b/c:d.jpg") == "a_b__c_d.jpg"
    for name in ("x.jpg", "x.png", "y.tif", "a b.jpg", "a_b.jpg", "a_b.jpg-2.jpg"):
        (tmp_path / name).write_bytes(b"")
    ids = sorted(r["id"] for r in rows_from_folder(tmp_path))
    assert ids == ["a_b.jpg", "a_b.jpg-2", "a_b.jpg-3", "x.jpg", "x.png", "y"]


def test_size_param_picks_a_named_size_or_the_largest_under_a_cap():
    d = {"url_m": "m.jpg", "width_m": "500", "height_m": 375, "url_l": "l.jpg", "width_l": 1024, "height_l": "768",
         "url_o": "o.jpg", "width_o": "4000", "height_o": "3000"}
    assert choose_url(d) == ("l.jpg", 1024, 768)
    assert choose_url(d, "largest<=640") == ("m.jpg", 500, 375)
    assert choose_url(d, "url_o") == ("o.jpg", 4000, 3000)
    del d["url_o"]
    assert choose_url(d, "url_o") == ("l.jpg", 1024, 768)  # owner restricted the original
