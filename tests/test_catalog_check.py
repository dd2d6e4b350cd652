"""`crossview catalog check` against a loopback moto S3 server holding some of the catalog's keys."""

from __future__ import annotations

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError, EndpointConnectionError

from catalogs import load_raster_catalog
from pipeline import catalog_check, cli, raster_uris
from pipeline.config import S3Params
from tests.s3server import FAKE_ENV

LICENCE = {"city": "x", "satellite": "WorldView-3", "licence": "CC BY-SA 4.0", "attribution": "SpaceNet"}


@pytest.fixture()
def bucket(s3):
    """A bucket with one key and a prefix of three objects (two GeoTIFFs)."""
    client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name=s3.region)
    client.create_bucket(Bucket="spacenet-like")
    client.put_object(Bucket="spacenet-like", Key="AOIs/AOI_10/PS-MS/mosaic_COG.tif", Body=b"x" * 1500)
    for key, size in (
        ("AOIs/AOI_1/PS-RGB/a.tif", 1000),
        ("AOIs/AOI_1/PS-RGB/b.TIF", 2000),
        ("AOIs/AOI_1/PS-RGB/README.TXT", 10),
    ):
        client.put_object(Bucket="spacenet-like", Key=key, Body=b"y" * size)
    return s3


def write_catalog(path, uris: dict[str, str]):
    rows = [
        {"aoi": aoi, "uri": uri, "band_order": "5,3,2", "key_status": "inferred", **LICENCE}
        for aoi, uri in uris.items()
    ]
    path.write_text(yaml.safe_dump(rows))
    return path


def test_keys_and_prefixes_are_checked_and_missing_ones_reported(bucket, tmp_path):
    catalog = write_catalog(
        tmp_path / "cat.yaml",
        {
            "AOI_10": "s3://spacenet-like/AOIs/AOI_10/PS-MS/mosaic_COG.tif",
            "AOI_1": "s3://spacenet-like/AOIs/AOI_1/PS-RGB/",
            "AOI_2": "s3://spacenet-like/AOIs/AOI_2/PS-MS/AOI_2_PS-MS_COG.tif",
            "AOI_3": "s3://spacenet-like/AOIs/AOI_3/",
            "AOI_4": "s3://no-such-bucket/AOIs/x.tif",
        },
    )
    results = {r.aoi: r for r in (catalog_check.check_source(s, bucket) for s in load_raster_catalog(catalog))}
    assert results["AOI_10"].exists and results["AOI_10"].size == 1500
    assert results["AOI_1"].exists and (results["AOI_1"].objects, results["AOI_1"].tifs, results["AOI_1"].size) == (
        3,
        2,
        3010,
    )
    assert not results["AOI_2"].exists and "404" in results["AOI_2"].detail
    assert not results["AOI_3"].exists and results["AOI_3"].detail == "prefix is empty"
    assert not results["AOI_4"].exists and "404" in results["AOI_4"].detail  # HEAD has no body: no NoSuchBucket
    table = catalog_check.format_table(list(results.values()))
    lines = table.splitlines()
    assert lines[0].split()[:5] == ["aoi", "uri", "key_status", "exists", "size"]
    assert "3 objects (2 .tif), 3.0 kB" in table and "1.5 kB" in table
    assert sum(" NO " in line for line in lines) == 3


def test_cli_exits_1_when_something_is_missing_and_0_when_all_exist(bucket, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", {k: v for k, v in cli.COMMANDS.items() if k in ("tiles", "catalog")})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"s3": bucket.model_dump()}))
    some = write_catalog(
        tmp_path / "some.yaml",
        {
            "AOI_10": "s3://spacenet-like/AOIs/AOI_10/PS-MS/mosaic_COG.tif",
            "AOI_2": "s3://spacenet-like/AOIs/AOI_2/x.tif",
        },
    )
    assert cli.main(["--params", str(params), "catalog", "check", "--catalog", str(some)]) == 1
    out = capsys.readouterr()
    assert "AOI_2" in out.out and "NO" in out.out
    for secret in FAKE_ENV.values():
        if "fake" in secret.lower():
            assert secret not in out.out + out.err
    every = write_catalog(tmp_path / "all.yaml", {"AOI_1": "s3://spacenet-like/AOIs/AOI_1/PS-RGB/"})
    assert cli.main(["--params", str(params), "catalog", "--catalog", str(every)]) == 0
    assert "yes" in capsys.readouterr().out


def test_local_paths_are_checked_too(tmp_path):
    (tmp_path / "scenes").mkdir()
    (tmp_path / "scenes" / "a.tif").write_bytes(b"z" * 10)
    catalog = write_catalog(tmp_path / "cat.yaml", {"here": "scenes", "gone": "scenes/missing.tif"})
    results = {r.aoi: r for r in (catalog_check.check_source(s, S3Params()) for s in load_raster_catalog(catalog))}
    assert results["here"].exists and results["here"].tifs == 1
    assert not results["gone"].exists and "no such file" in results["gone"].detail


def test_unreachable_endpoint_is_unknown_not_missing(tmp_path, monkeypatch):
    class Unreachable:
        def head_object(self, **kwargs):
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    monkeypatch.setattr(raster_uris, "client_for", lambda s3: Unreachable())
    catalog = write_catalog(tmp_path / "cat.yaml", {"far": "s3://spacenet-like/x.tif"})
    (result,) = [catalog_check.check_source(s, S3Params()) for s in load_raster_catalog(catalog)]
    assert result.exists is None and "S3 request failed" in result.detail
    assert " ? " in catalog_check.format_table([result])


def test_403_is_explained_with_what_to_change():
    err = ClientError(
        {"Error": {"Code": "403", "Message": "Forbidden"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "HeadObject"
    )
    message = raster_uris.s3_error("s3://b/k.tif", err)
    assert message.startswith("s3://b/k.tif: access denied (403)") and "s3.anonymous" in message
