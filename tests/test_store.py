"""The store: local folder or S3 (moto on loopback), atomic writes, URIs without absolute paths."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from pipeline.errors import StoreError
from pipeline.store import (
    Store,
    gdal_options,
    gdal_path,
    put_local_atomic,
    read_bytes,
    sha256_file,
    write_json,
    write_text_atomic,
)


def test_local_store_uris_are_relative_and_writes_atomic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store("data/store")
    uri = store.put_bytes("photos/1.jpg", b"jpeg")
    assert uri == "data/store/photos/1.jpg" and not os.path.isabs(uri)
    assert store.exists("photos/1.jpg") and not store.exists("photos/2.jpg")
    assert read_bytes(uri, store.s3) == b"jpeg"


def test_failed_write_leaves_nothing(tmp_path):
    store = Store(str(tmp_path / "store"))
    with pytest.raises(RuntimeError), store.writer("tiles/t.tif") as tmp:
        open(tmp, "wb").write(b"half")
        raise RuntimeError("killed mid-write")
    assert not store.exists("tiles/t.tif")
    assert list((tmp_path / "store" / "tiles").iterdir()) == []


def test_put_local_atomic_makes_ordinary_files_and_leaves_no_temp(tmp_path):
    umask = os.umask(0o027)
    try:
        put_local_atomic(tmp_path / "new" / "dir" / "a.json", b"{}")  # missing parents are made
        put_local_atomic(tmp_path / "new" / "dir" / "a.json", b'{"v": 2}')  # replaced whole
    finally:
        os.umask(umask)
    path = tmp_path / "new" / "dir" / "a.json"
    assert path.read_bytes() == b'{"v": 2}' and (path.stat().st_mode & 0o777) == 0o640
    with pytest.raises(TypeError):
        put_local_atomic(tmp_path / "new" / "dir" / "b.json", "not bytes")  # fails after the temp file exists
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_json_files_have_one_layout_with_the_options_each_writer_needs(tmp_path):
    data = {"b": 1, "a": ["é", 2.5]}
    write_json(data, tmp_path / "report.json")
    write_json(data, tmp_path / "model.json", indent=1, sort_keys=True)
    write_json(data, tmp_path / "state.json", indent=None, sort_keys=True)
    report = '{\n  "b": 1,\n  "a": [\n    "é",\n    2.5\n  ]\n}\n'
    assert (tmp_path / "report.json").read_text(encoding="utf-8") == report
    assert (tmp_path / "model.json").read_text(encoding="utf-8") == '{\n "a": [\n  "é",\n  2.5\n ],\n "b": 1\n}\n'
    assert (tmp_path / "state.json").read_text(encoding="utf-8") == '{"a":["é",2.5],"b":1}\n'
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["model.json", "report.json", "state.json"]


def test_an_fsynced_text_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "review" / "verdicts.csv"
    path.parent.mkdir()
    path.write_text("old\n")
    write_text_atomic("id,verdict\n1,keep\n", path, fsync=True)
    assert path.read_text() == "id,verdict\n1,keep\n" and [p.name for p in path.parent.iterdir()] == ["verdicts.csv"]


def test_sidecars_are_sorted_json_and_sha256_file_streams(tmp_path):
    store = Store(str(tmp_path / "store"))
    store.put_json("tiles/t.json", {"sha256": "ab", "CROSSVIEW_KEY": "k"})
    raw = (tmp_path / "store" / "tiles" / "t.json").read_bytes()
    assert raw == b'{"CROSSVIEW_KEY": "k", "sha256": "ab"}' and json.loads(raw)["sha256"] == "ab"
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 << 20))
    assert sha256_file(big, chunk=1 << 16) == hashlib.sha256(big.read_bytes()).hexdigest()


def test_clean_partial_removes_stale_temp_files(tmp_path):
    store = Store(str(tmp_path / "store"))
    (tmp_path / "store" / "chips" / "h").mkdir(parents=True)
    (tmp_path / "store" / "chips" / "h" / ".crossview-tmp-abc.jpg").write_bytes(b"x")
    (tmp_path / "store" / "chips" / "h" / "1.jpg").write_bytes(b"x")
    assert store.clean_partial("chips") == 1
    assert [p.name for p in (tmp_path / "store" / "chips" / "h").iterdir()] == ["1.jpg"]


def test_s3_store_round_trip_on_moto(s3):
    from pipeline.store import client_for

    client_for(s3).create_bucket(Bucket="crossview-test")
    store = Store("s3://crossview-test/run1", s3)
    uri = store.put_bytes("photos/7.jpg", b"\xff\xd8data")
    assert uri == "s3://crossview-test/run1/photos/7.jpg"
    assert store.exists("photos/7.jpg") and not store.exists("photos/8.jpg")
    assert read_bytes(uri, s3) == b"\xff\xd8data"


def test_missing_objects_give_a_store_error_naming_the_uri(s3, tmp_path):
    from pipeline.store import client_for

    client_for(s3).create_bucket(Bucket="crossview-test")
    with pytest.raises(StoreError, match="s3://crossview-test/nope.jpg"):
        read_bytes("s3://crossview-test/nope.jpg", s3)
    with pytest.raises(StoreError, match="no such file"):
        read_bytes(str(tmp_path / "nope.jpg"), s3)


def test_gdal_paths_and_options_for_a_local_endpoint(s3):
    assert gdal_path("s3://spacenet-dataset/AOIs/x.tif") == "/vsis3/spacenet-dataset/AOIs/x.tif"
    assert gdal_path("https://h/x.tif") == "/vsicurl/https://h/x.tif"
    opts = gdal_options(s3, anonymous=True)
    assert opts["AWS_NO_SIGN_REQUEST"] == "YES" and opts["AWS_HTTPS"] == "NO"
    assert opts["AWS_S3_ENDPOINT"].startswith("127.0.0.1:")
    assert not any("secret" in v.lower() for v in opts.values())
