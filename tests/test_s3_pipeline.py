"""The whole demo `dvc repro` with `store: s3://bucket/prefix` on a moto server on loopback: the same
manifests as the local run except for URIs, a second repro that does nothing, the review page reading
images through the store, and a chip run killed with SIGKILL that leaves no partial object behind."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipeline.config import load_params
from pipeline.store import client_for
from tests.conftest import repo_copy, sh
from tests.s3server import moto_s3

BUCKET, PREFIX = "bars-demo", "cv"
STORE = f"s3://{BUCKET}/{PREFIX}"
SPLITS = ("train", "val", "test")


def _set_params(root: Path, **changes) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            params.setdefault(section, {})[name] = value
        else:
            params[section] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _manifests(root: Path, local_prefix: str = "") -> dict[str, list[dict]]:
    out = {}
    for split in SPLITS:
        rows = pq.read_table(root / "manifests" / f"{split}.parquet").to_pylist()
        for row in rows:
            for col in ("photo_uri", "chip_uri"):
                if local_prefix and row[col].startswith(f"{STORE}/"):
                    row[col] = local_prefix + row[col][len(STORE) + 1 :]
        out[split] = rows
    return out


def _keys(client) -> list[tuple[str, int]]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX + "/")
    return [(o["Key"], o["Size"]) for page in pages for o in page.get("Contents", [])]


def _stamp(client, key: str) -> tuple[str, object]:
    head = client.head_object(Bucket=BUCKET, Key=key)
    return head["ETag"], head["LastModified"]


pytestmark = pytest.mark.slow  # the whole demo on a moto S3 store: about 10 minutes on 2 cores (.ci/run runs it)


@pytest.fixture(scope="module")
def s3_repo(tmp_path_factory):
    with moto_s3() as s3:
        root = repo_copy(tmp_path_factory.mktemp("s3repo"))
        _set_params(root, store=STORE, s3={"endpoint_url": s3.endpoint_url, "region": s3.region, "anonymous": False})
        client_for(s3).create_bucket(Bucket=BUCKET)
        (root / "first_repro.log").write_text(sh(["dvc", "repro"], root))
        yield root, s3


def test_demo_on_an_s3_store_gives_the_local_manifests_but_for_uris(s3_repo, demo_repo):
    root, s3 = s3_repo
    remote, local = _manifests(root, local_prefix="data/store/"), _manifests(demo_repo)
    assert {s: len(r) for s, r in remote.items()} == {s: len(r) for s, r in local.items()}
    assert remote == local
    assert all(r["chip_uri"].startswith(f"{STORE}/chips/") for r in _manifests(root)["train"])
    keys = [k for k, _ in _keys(client_for(s3))]
    assert any(k.startswith(f"{PREFIX}/photos/") for k in keys) and any(k.startswith(f"{PREFIX}/tiles/") for k in keys)
    assert not list((root / "data" / "store" / "photos").iterdir())  # the tracked local folder stays empty
    assert json.loads((root / "reports" / "eval_metrics.json").read_text())  # training read images from S3


def test_second_repro_on_s3_does_nothing(s3_repo):
    root, _ = s3_repo
    assert "Running stage" not in sh(["dvc", "repro"], root)


def test_review_page_reads_photos_and_chips_through_the_s3_store(s3_repo):
    from starlette.testclient import TestClient

    from pipeline.review import make_app

    root, _ = s3_repo
    row = pq.read_table(root / "manifests" / "train.parquet").to_pylist()[0]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        app = make_app(load_params(root / "params.yaml"), root=root, curator="tester")
        with TestClient(app, base_url="http://127.0.0.1") as client:
            for kind in ("photo", "chip"):
                resp = client.get(f"/img/{kind}/{row['id']}")
                assert resp.status_code == 200, (kind, resp.text)
                assert Image.open(io.BytesIO(resp.content)).size[0] > 0
    finally:
        os.chdir(cwd)


def test_sigkill_mid_chip_leaves_no_partial_object_and_a_rerun_completes(s3_repo):
    root, s3 = s3_repo
    client = client_for(s3)
    before = {k for k, _ in _keys(client) if k.startswith(f"{PREFIX}/chips/")}
    _set_params(root, **{"chip.jpeg_quality": 85})  # a new chip folder: every chip is cut again
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    cmd = ["crossview", "chip", "--pairs", "tables/pairs.parquet", "--tiles", "tables/tiles.parquet",
           "--out", "tables/chips.parquet", "--store-out", "data/store/chips"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            new = [k for k, _ in _keys(client) if k.startswith(f"{PREFIX}/chips/") and k not in before]
            if len(new) >= 6:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "chip finished before it could be interrupted"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        new = [(k, size) for k, size in _keys(client) if k.startswith(f"{PREFIX}/chips/") and k not in before]
        assert new
        for key, size in new:  # every object is whole: a JPEG that decodes or a sidecar that parses
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            assert len(body) == size > 0 and ".crossview-tmp-" not in key
            if key.endswith(".json"):
                json.loads(body)
            else:
                Image.open(io.BytesIO(body)).load()
        names = {k for k, _ in new}
        finished = {k: _stamp(client, k) for k in names if k.endswith(".jpg") and k[:-4] + ".json" in names}
        assert finished
        out = sh(["dvc", "repro"], root)
        assert "Running stage 'chip'" in out
        assert {k: _stamp(client, k) for k in finished} == finished  # chips finished before the kill: not redone
        rows = _manifests(root)["train"]
        assert rows and all(r["chip_uri"].startswith(f"{STORE}/chips/") for r in rows)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _set_params(root, **{"chip.jpeg_quality": 90})
