"""The Flickr key and secret never reach output, logs, exceptions, state files or tables, on any path."""

from __future__ import annotations

import logging
import socket
import time
import traceback
from pathlib import Path

import pytest

from pipeline.config import FlickrParams
from pipeline.errors import CrossviewError
from pipeline.flickr import AOI, FlickrClient, harvest, load_credentials
from pipeline.flickr.state import HarvestState
from pipeline.schemas import PHOTOS, table_from_rows, write_table
from tests.flickr_server import Fault, flickr_server, make_population

FAKE_KEY = "FAKEKEY-c0ffee-never-print-7f3a9"
FAKE_SECRET = "FAKESECRET-d00d-never-print-51b2"
AOI_ = AOI("AOI_3_Paris", "Paris", (2.25, 48.80, 2.45, 48.92))

# path -> (server keys, fault on every call, extra params)
PATHS = {
    "ok": ({FAKE_KEY: FAKE_SECRET}, None, {}),
    "invalid_key": ({"FAKEKEY-someone-else": FAKE_SECRET}, None, {}),
    "wrong_secret": ({FAKE_KEY: "FAKESECRET-someone-else"}, None, {}),
    "5xx_until_retries_run_out": ({FAKE_KEY: FAKE_SECRET}, Fault("http", status=503), {}),
    "429_until_retries_run_out": ({FAKE_KEY: FAKE_SECRET}, Fault("http", status=429), {}),
    "timeouts": ({FAKE_KEY: FAKE_SECRET}, Fault("slow", delay_s=0.5), {"timeout_s": 0.1}),
    "bad_params": ({FAKE_KEY: FAKE_SECRET}, Fault("stat", code=18, message="Illogical arguments"), {}),
    "http_400": ({FAKE_KEY: FAKE_SECRET}, Fault("http", status=400), {}),
    "not_json": ({FAKE_KEY: FAKE_SECRET}, Fault("garbage"), {}),
    "unreachable": ({FAKE_KEY: FAKE_SECRET}, None, {"rest_url": "closed-port"}),
}


@pytest.fixture(scope="module")
def photos():
    return make_population(400, seed=8, hotspot_fraction=0.0)


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch):
    monkeypatch.setenv("FLICKR_API_KEY", FAKE_KEY)
    monkeypatch.setenv("FLICKR_API_SECRET", FAKE_SECRET)


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/services/rest/"


def _exception_texts(exc: BaseException) -> list[str]:
    texts = []
    while exc is not None:
        texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc)), repr(exc.args)]
        exc = exc.__cause__ or exc.__context__
    return texts


def _file_texts(root: Path) -> list[str]:
    return [p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file()]


@pytest.mark.parametrize("path", list(PATHS))
def test_the_fake_key_and_secret_appear_nowhere(path, photos, tmp_path, caplog, capfd):
    keys, fault, extra = PATHS[path]
    caplog.set_level(logging.DEBUG)  # as `crossview -v` would: every library's debug records too
    with flickr_server(photos, keys) as srv:
        srv.state.always = fault
        rest_url = _closed_port_url() if extra.get("rest_url") == "closed-port" else srv.rest_url
        fp = FlickrParams(**{"rest_url": rest_url, "calls_per_hour": 1e8, "retries": 2, "backoff_s": 0.001,
                             "min_upload_date": "2008-01-01", "max_upload_date": "2022-12-31", "min_accuracy": 6,
                             **{k: v for k, v in extra.items() if k != "rest_url"}})
        client = FlickrClient(fp)  # credentials from the environment, as in production
        texts = [repr(client), repr(load_credentials(fp))]
        try:
            rows = harvest(fp, [AOI_], tmp_path / "state", client=client)
        except CrossviewError as err:
            assert path != "ok", f"the ok path failed: {err}"
            assert err.__cause__ is None and err.__context__ is None  # no chained request objects
            texts += _exception_texts(err)
        else:
            assert path == "ok" and len(rows) == 400
            write_table(table_from_rows(rows, PHOTOS), tmp_path / "photos.parquet", PHOTOS)
        if path != "unreachable":
            deadline = time.monotonic() + 5
            while len(srv.calls) < srv.state.received and time.monotonic() < deadline:
                time.sleep(0.05)  # slow calls are logged when they answer
            assert any(c.key == FAKE_KEY for c in srv.calls)  # the key really travelled to the server
        texts += [repr(HarvestState(tmp_path / "state", AOI_.aoi, {}))]
    out, err_out = capfd.readouterr()
    texts += [out, err_out, caplog.text]
    texts += [r.getMessage() for r in caplog.records] + [repr(r.args) for r in caplog.records]
    texts += _file_texts(tmp_path)
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # debug logging really was captured
    for text in texts:
        assert FAKE_KEY not in text and FAKE_SECRET not in text
        assert "c0ffee-never-print" not in text and "d00d-never-print" not in text


def test_missing_credentials_error_names_the_variables_not_values(monkeypatch, tmp_path):
    monkeypatch.setenv("FLICKR_API_KEY", FAKE_KEY)
    monkeypatch.delenv("FLICKR_API_SECRET")
    with pytest.raises(CrossviewError) as info:
        load_credentials(FlickrParams())
    assert "FLICKR_API_SECRET" in str(info.value) and FAKE_KEY not in str(info.value)
    cred = tmp_path / "cred.yaml"
    cred.write_text(f"key: {FAKE_KEY}\n")  # secret missing: the message must not quote the file
    with pytest.raises(CrossviewError) as info:
        load_credentials(FlickrParams(credentials_file=str(cred)))
    assert FAKE_KEY not in "".join(_exception_texts(info.value))
