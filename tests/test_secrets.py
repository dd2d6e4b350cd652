"""The Flickr key and secret never reach output, logs, exceptions, state files or tables, on any path."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
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


# ---------------------------------------------------------------- the CLI, dvc.lock, tables, state, the review page

REPO = Path(__file__).resolve().parents[1]


def _project(root: Path, rest_url: str, state_dir: str = "data/flickr_state") -> Path:
    """A one-stage dvc project (search, source flickr) in ``root`` running this checkout's code."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    flickr = {"rest_url": rest_url, "bbox": [2.25, 48.80, 2.45, 48.92], "calls_per_hour": 1e8, "retries": 2,
              "backoff_s": 0.001, "min_accuracy": 6, "min_upload_date": "2008-01-01",
              "max_upload_date": "2022-12-31", "state_dir": state_dir}
    (root / "params.yaml").write_text(yaml.safe_dump({"source": "flickr", "flickr": flickr}))
    stage = {"cmd": f"{sys.executable} -m pipeline.cli -v search --out tables/photos.parquet",
             "params": ["source", "flickr"], "outs": ["tables/photos.parquet"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"search": stage}}))
    return root


def _cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLICKR_", "PYTHON"))}
    return {**env, "FLICKR_API_KEY": FAKE_KEY, "FLICKR_API_SECRET": FAKE_SECRET, "PYTHONPATH": str(REPO)}


def _assert_clean(texts: list[str]) -> None:
    for text in texts:
        for needle in (FAKE_KEY, FAKE_SECRET, "c0ffee-never-print", "d00d-never-print"):
            assert needle not in text, f"{needle!r} in {text[max(0, text.find(needle) - 300):][:600]!r}"


def test_dvc_repro_debug_logs_dvc_lock_tables_and_state_never_hold_the_key(photos, tmp_path):
    root = tmp_path / "project"
    with flickr_server(photos, {FAKE_KEY: FAKE_SECRET}) as srv:
        _project(root, srv.rest_url)
        env = _cli_env()
        subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, env=env, check=True, timeout=120)
        proc = subprocess.run(["dvc", "repro", "-v"], cwd=root, env=env, capture_output=True, text=True, timeout=300,
                              check=False)
        assert any(c.key == FAKE_KEY for c in srv.calls)  # the key really was used
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DEBUG" in proc.stdout + proc.stderr  # crossview -v really logged at debug
    assert (root / "dvc.lock").is_file() and (root / "tables/photos.parquet").is_file()
    _assert_clean([proc.stdout, proc.stderr, *_file_texts(root)])


@pytest.mark.parametrize("path", ["5xx_until_retries_run_out", "invalid_key", "unreachable", "interrupted", "crash"])
def test_cli_error_and_crash_output_never_holds_the_key(path, photos, tmp_path):
    root = tmp_path / "project"
    keys = {"FAKEKEY-someone-else": FAKE_SECRET} if path == "invalid_key" else {FAKE_KEY: FAKE_SECRET}
    with flickr_server(photos, keys) as srv:
        srv.state.always = {"5xx_until_retries_run_out": Fault("http", status=503),
                            "interrupted": Fault("slow", delay_s=5.0)}.get(path)  # wide: a loaded machine
        rest_url = _closed_port_url() if path == "unreachable" else srv.rest_url
        # crash: the state folder is a file named after the key, so the OS error (not a CrossviewError: a
        # traceback) quotes the key; the CLI must print it masked
        state_dir = f"state-{FAKE_KEY}" if path == "crash" else "data/flickr_state"
        _project(root, rest_url, state_dir)
        if path == "crash":
            (root / state_dir).write_text("a file where a folder should be\n")
        cmd = [sys.executable, "-m", "pipeline.cli", "-v", "search", "--out", "tables/photos.parquet"]
        if path == "interrupted":
            # A shell's background job (`pytest ... &`) inherits SIGINT ignored, and Python then never raises
            # KeyboardInterrupt: give the CLI the Ctrl-C handling a terminal user's process has.
            cmd[1:3] = ["-c", ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                               "from pipeline.cli import main; sys.exit(main(sys.argv[1:]))")]
        proc = subprocess.Popen(cmd, cwd=root, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        if path == "interrupted":
            deadline = time.monotonic() + 60
            while not srv.state.received and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            assert proc.poll() is None, "the search ended before it could be interrupted"
            proc.send_signal(signal.SIGINT)  # Ctrl-C mid-request (each call takes 5 s)
        out, err = proc.communicate(timeout=300)
    expected = {"interrupted": 130, "crash": 1}.get(path, 2)
    assert proc.returncode == expected, (proc.returncode, err[-3000:])
    if path == "crash":
        assert "Traceback" in err and "***" in err  # the traceback is there, the key in it masked
    else:
        assert "Traceback" not in err, err[-3000:]
    written = [p for p in root.rglob("*") if p.is_file() and p.name != "params.yaml" and FAKE_KEY not in p.name]
    _assert_clean([out, err, *(p.read_bytes().decode("latin-1") for p in written)])


def test_the_review_page_never_holds_the_key(tmp_path, monkeypatch):
    from starlette.testclient import TestClient

    from pipeline.config import Params
    from pipeline.review import make_app
    from tests.test_review_api import make_review_data

    ids = make_review_data(tmp_path, n=20)
    with TestClient(make_app(Params(), curator="alice", root=tmp_path), base_url="http://127.0.0.1") as client:
        texts = [client.get(p).text for p in ("/", "/api/queue", "/api/summary", f"/api/pair/{ids[0]}",
                                               "/api/pair/no-such-id", "/?queue=nonsense")]
        texts.append(client.post("/api/verdicts", json={"ids": [ids[0]], "verdict": "keep"}).text)
        texts.append(client.post("/api/verdicts", json={"ids": ["x"], "verdict": "keep"}).text)
    _assert_clean(texts + _file_texts(tmp_path))


def test_only_the_flickr_client_reads_the_credentials():
    """Every stage after search (download … manifest, reports, the review page) never holds the key, so its
    tables and reports cannot leak it: only pipeline/flickr reads the variables or the credentials file."""
    readers = sorted(
        str(p.relative_to(REPO)) for p in (REPO / "pipeline").rglob("*.py")
        if "FLICKR_API" in (text := p.read_text()) or "load_credentials(" in text
    )
    allowed = {"pipeline/errors.py", "pipeline/search.py"}  # errors: the names to mask; search: calls harvest
    assert [r for r in readers if not r.startswith("pipeline/flickr/") and r not in allowed] == []
