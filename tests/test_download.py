"""download: real fetches from a loopback HTTP server, local paths and a moto S3 server; resume and kill -9."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

import pytest
import yaml
from PIL import Image

from pipeline import download
from pipeline.config import parse_params
from pipeline.schemas import DOWNLOADS, PHOTOS, read_table, table_from_rows, write_table

REPO = Path(__file__).resolve().parent.parent
TMP_PREFIX = ".crossview-tmp-"


# ---------------------------------------------------------------- a photo server on loopback


class PhotoServer:
    """Serves files from ``root`` under ``/files/``, plus endpoints that fail in known ways; counts hits."""

    def __init__(self, root: Path, delay_s: float = 0.0, slow_s: float = 3.0) -> None:
        self.root, self.delay_s, self.slow_s = root, delay_s, slow_s
        self.hits: Counter[str] = Counter()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # http.server's naming
                with server._lock:
                    server.hits[self.path] += 1
                    hit = server.hits[self.path]
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    server.respond(self, self.path, hit)

        return Handler

    def respond(self, h: BaseHTTPRequestHandler, path: str, hit: int) -> None:
        name = path.rsplit("/", 1)[-1]
        if path.startswith("/files/"):
            self.stop.wait(self.delay_s)
            self.send_file(h, name)
        elif path.startswith("/flaky/"):  # 500 on the first request, then the file
            self.send_file(h, name) if hit > 1 else self.send(h, 500, b"try again")
        elif path.startswith("/slow/"):  # answers after the client's timeout
            self.stop.wait(self.slow_s)
            self.send_file(h, name)
        elif path.startswith("/moved/"):  # a CDN redirect to where the file is
            h.send_response(302)
            h.send_header("Location", f"/files/{name}")
            h.send_header("Content-Length", "0")
            h.end_headers()
        elif path.startswith("/loop/"):  # redirects to itself for ever
            h.send_response(302)
            h.send_header("Location", path)
            h.send_header("Content-Length", "0")
            h.end_headers()
        elif path.startswith("http://"):  # absolute form: we are being used as the proxy
            self.send_file(h, name)
        elif path == "/error500":
            self.send(h, 500, b"boom")
        elif path == "/forbidden":
            self.send(h, 403, b"no")
        elif path == "/html":
            self.send(h, 200, b"<html><body>not a photo</body></html>", "text/html")
        else:
            self.send(h, 404, b"not found")

    def send_file(self, h, name: str) -> None:
        path = self.root / name
        self.send(h, 200, path.read_bytes(), "image/jpeg") if path.is_file() else self.send(h, 404, b"not found")

    @staticmethod
    def send(h, code: int, body: bytes, ctype: str = "text/plain") -> None:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def __enter__(self) -> Self:
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def served(tmp_path_factory, realdata) -> Path:
    """The real photos plus a byte-identical copy of one (a duplicate)."""
    root = tmp_path_factory.mktemp("served")
    for path in (realdata / "photos").iterdir():
        shutil.copy(path, root / path.name)
    shutil.copy(realdata / "photos" / "outdoor_street_01.jpg", root / "copy_of_street.jpg")
    return root


@pytest.fixture()
def server(served, monkeypatch) -> Iterator[PhotoServer]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with PhotoServer(served) as srv:
        yield srv


# ---------------------------------------------------------------- helpers


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def photos_table(items: dict[str, str | None]):
    return table_from_rows([{"id": k, "url": v, "source": "custom"} for k, v in items.items()], PHOTOS)


def run_stage(params: dict, items: dict[str, str | None], out: str = "tables/downloads.parquet") -> dict[str, dict]:
    """``download.main`` as the CLI calls it; returns the written rows by id."""
    write_table(photos_table(items), "tables/photos.parquet", PHOTOS)
    parser = argparse.ArgumentParser()
    download.configure(parser)
    args = parser.parse_args(["--photos", "tables/photos.parquet", "--out", out])
    download.main(parse_params(params), args)
    return {r["id"]: r for r in read_table(out, DOWNLOADS).to_pylist()}


FAST = {"store": "store", "download": {"workers": 4, "timeout_s": 0.5, "retries": 1}}


def decoded(path: Path) -> Image.Image:
    im = Image.open(path)
    im.load()
    return im


# ---------------------------------------------------------------- statuses


def test_every_outcome_is_a_row_with_its_status(tmp_path, monkeypatch, server, realdata):
    monkeypatch.chdir(tmp_path)
    photos = realdata / "photos"
    items = {
        "h_ok": f"{server.url}/files/outdoor_street_01.jpg",
        "h_copy": f"{server.url}/files/copy_of_street.jpg",
        "h_404": f"{server.url}/files/nope.jpg",
        "h_500": f"{server.url}/error500",
        "h_403": f"{server.url}/forbidden",
        "h_flaky": f"{server.url}/flaky/outdoor_park_01.jpg",
        "h_slow": f"{server.url}/slow/outdoor_park_01.jpg",
        "h_html": f"{server.url}/html",
        "h_refused": f"http://127.0.0.1:{closed_port()}/x.jpg?X-Amz-Signature=abc123",
        "l_gray": os.path.relpath(photos / "special_grayscale_01.jpg"),
        "l_cmyk": str(photos / "special_cmyk_01.jpg"),
        "l_turned": str(photos / "special_exif_orientation_01.jpg"),
        "l_alpha": str(photos / "special_png_alpha_01.png"),
        "l_street": str(photos / "outdoor_street_01.jpg"),
        "l_trunc": str(photos / "bad_truncated_01.jpg"),
        "l_empty": str(photos / "bad_empty_01.jpg"),
        "l_missing": str(tmp_path / "gone.jpg"),
        "l_file_url": (photos / "outdoor_park_01.jpg").as_uri(),
        "ftp": "ftp://example.org/x.jpg",
        "no_url": None,
    }
    rows = run_stage(FAST, items)
    status = {k: r["status"] for k, r in rows.items()}
    assert status == {
        "h_ok": "ok", "h_copy": "ok", "h_404": "missing", "h_500": "http_error", "h_403": "http_error",
        "h_flaky": "ok", "h_slow": "timeout", "h_html": "corrupt", "h_refused": "http_error",
        "l_gray": "ok", "l_cmyk": "ok", "l_turned": "ok", "l_alpha": "ok", "l_street": "ok",
        "l_trunc": "corrupt", "l_empty": "empty",
        "l_missing": "missing", "l_file_url": "ok", "ftp": "missing", "no_url": "no_url",
    }
    assert rows["h_500"]["error"] == "HTTP 500 Internal Server Error (after 2 attempts)"
    assert rows["h_403"]["error"] == "HTTP 403 Forbidden"
    assert rows["h_404"]["error"] == "HTTP 404 Not Found"
    assert "0.5 s" in rows["h_slow"]["error"] and "after 2 attempts" in rows["h_slow"]["error"]
    assert rows["h_refused"]["error"].startswith("connection failed") and "abc123" not in rows["h_refused"]["error"]
    assert "truncated" in rows["l_trunc"]["error"] and rows["l_missing"]["error"] == "no such file"
    # retries: 5xx and timeouts are retried, 4xx is not
    assert server.hits["/error500"] == 2 and server.hits["/forbidden"] == 1
    assert server.hits["/flaky/outdoor_park_01.jpg"] == 2 and server.hits["/slow/outdoor_park_01.jpg"] == 2
    # what the fetched files were, and what was stored
    assert (rows["l_gray"]["bands"], rows["l_gray"]["mode"]) == (1, "L")
    assert (rows["l_cmyk"]["bands"], rows["l_cmyk"]["mode"]) == (4, "CMYK")
    turned = rows["l_turned"]
    assert (turned["width"], turned["height"], turned["exif_orientation"]) == (600, 450, 6)
    for photo_id, row in rows.items():
        if row["status"] == "ok":
            assert row["uri"] == f"store/photos/{photo_id}.jpg" and row["error"] == ""
            im = decoded(Path(row["uri"]))
            assert im.mode == "RGB" and im.size == (row["width"], row["height"])
        else:
            assert row["uri"] is None and row["error"]
    # duplicates: same bytes as the smallest id of the group
    assert rows["h_copy"]["duplicate_of"] is None
    assert rows["h_ok"]["duplicate_of"] == "h_copy" and rows["l_street"]["duplicate_of"] == "h_copy"
    assert rows["h_ok"]["sha256"] == rows["l_street"]["sha256"]
    # finished units carry a sidecar; transient failures and no_url do not
    sidecars = {p.stem for p in Path("store/photos").glob("*.json")}
    assert sidecars == set(items) - {"h_500", "h_slow", "h_refused", "no_url"}
    doc = json.loads(Path("store/photos/h_ok.json").read_text())
    assert doc["row"]["status"] == "ok" and doc["fetch"]["url"] == items["h_ok"]


def test_rerun_fetches_only_unfinished_and_tables_are_byte_identical(tmp_path, monkeypatch, server):
    monkeypatch.chdir(tmp_path)
    items = {f"p{i}": f"{server.url}/files/{name}" for i, name in
             enumerate(["outdoor_street_01.jpg", "indoor_room_01.jpg", "special_cmyk_01.jpg", "nope.jpg",
                        "bad_truncated_01.jpg", "special_png_alpha_01.png"])}
    items["p9"] = f"{server.url}/error500"
    run_stage(FAST, items, "first.parquet")
    first_hits = sum(server.hits.values())
    run_stage(FAST, items, "second.parquet")
    assert Path("first.parquet").read_bytes() == Path("second.parquet").read_bytes()
    assert sum(server.hits.values()) - first_hits == 2  # only the 500 (transient) was tried again, with its retry
    # a changed setting redoes the units it affects
    redo = run_stage({**FAST, "download": {**FAST["download"], "jpeg_quality": 70}}, items, "third.parquet")
    assert server.hits["/files/outdoor_street_01.jpg"] == 2
    assert redo["p0"]["sha256"] == read_table("first.parquet", DOWNLOADS).to_pylist()[0]["sha256"]
    # a stored photo deleted by hand is fetched again
    Path("store/photos/p1.jpg").unlink()
    run_stage({**FAST, "download": {**FAST["download"], "jpeg_quality": 70}}, items, "fourth.parquet")
    assert server.hits["/files/indoor_room_01.jpg"] == 3 and Path("store/photos/p1.jpg").is_file()


def test_fresh_store_gives_the_same_table_bytes(tmp_path, monkeypatch, server):
    items = {f"p{i}": f"{server.url}/files/{n}" for i, n in enumerate(["outdoor_park_01.jpg", "nope.jpg"])}
    tables = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        run_stage(FAST, items, "d.parquet")
        tables.append(Path("d.parquet").read_bytes())
    assert tables[0] == tables[1]


def test_empty_photos_table_still_creates_the_store_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = run_stage({"store": "data/store"}, {})
    assert rows == {} and Path("data/store/photos").is_dir()


def test_unusable_ids_are_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match="ids must be unique"):
        run_stage({"store": "store"}, {"../escape": "x.jpg"})


def test_error_texts_carry_no_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    text = download.redact(
        "GET https://user:pw@host/a.jpg?X-Amz-Credential=AKIA&X-Amz-Signature=f00 failed; key s3cr3t-value"
    )
    assert text == "GET https://***@host/a.jpg?*** failed; key ***"


# ---------------------------------------------------------------- S3: store and source


def test_s3_store_and_s3_sources(tmp_path, monkeypatch, s3, server, realdata):
    import boto3

    monkeypatch.chdir(tmp_path)
    client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name=s3.region)
    client.create_bucket(Bucket="photos-src")
    client.create_bucket(Bucket="crossview-store")
    client.put_object(Bucket="photos-src", Key="in/street.jpg",
                      Body=(realdata / "photos" / "outdoor_street_01.jpg").read_bytes())
    params = {"store": "s3://crossview-store/run1", "s3": s3.model_dump(), "download": FAST["download"]}
    items = {
        "s3_ok": "s3://photos-src/in/street.jpg",
        "s3_nokey": "s3://photos-src/in/none.jpg",
        "s3_nobucket": "s3://no-such-bucket-here/x.jpg",
        "h_ok": f"{server.url}/files/special_grayscale_01.jpg",
    }
    rows = run_stage(params, items)
    assert {k: r["status"] for k, r in rows.items()} == {
        "s3_ok": "ok", "s3_nokey": "missing", "s3_nobucket": "missing", "h_ok": "ok"}
    assert rows["s3_ok"]["uri"] == "s3://crossview-store/run1/photos/s3_ok.jpg"
    body = client.get_object(Bucket="crossview-store", Key="run1/photos/s3_ok.jpg")["Body"].read()
    assert Image.open(io.BytesIO(body)).mode == "RGB"
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="crossview-store")["Contents"]}
    assert "run1/photos/h_ok.json" in keys and "run1/photos/s3_nokey.json" in keys
    assert not any(TMP_PREFIX in k for k in keys)
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert all(secret not in (r["error"] or "") for r in rows.values())
    again = run_stage(params, items, "again.parquet")
    assert server.hits["/files/special_grayscale_01.jpg"] == 1  # reused from the S3 store's sidecar
    assert again == rows


# ---------------------------------------------------------------- kill -9 and resume through the CLI


def cli(cwd: Path) -> subprocess.Popen:
    """``crossview download`` in ``cwd`` (stderr to ``cwd/stderr.log``, so a full pipe never blocks it)."""
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pipeline.cli", "download", "--photos", "photos.parquet", "--out", "downloads.parquet"]
    with (cwd / "stderr.log").open("a") as err:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)


def stderr_of(cwd: Path) -> str:
    return (cwd / "stderr.log").read_text()[-3000:]


def prepare(cwd: Path, items: dict[str, str]) -> None:
    cwd.mkdir()
    params = {"store": "store", "download": {"workers": 2, "timeout_s": 5, "retries": 1}}
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    write_table(photos_table(items), cwd / "photos.parquet", PHOTOS)


def test_kill_9_mid_run_then_rerun_matches_an_uninterrupted_run(tmp_path, served, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    names = sorted(p.name for p in served.iterdir() if p.suffix in (".jpg", ".png"))
    with PhotoServer(served, delay_s=0.15) as srv:
        items = {f"p{i:02d}": f"{srv.url}/files/{names[i % len(names)]}" for i in range(30)}
        killed, clean = tmp_path / "killed", tmp_path / "clean"
        prepare(killed, items)
        prepare(clean, items)
        proc = cli(killed)
        photos = killed / "store" / "photos"
        deadline = time.monotonic() + 60
        while len(list(photos.glob("*.json"))) < 6 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{stderr_of(killed)}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (killed / "downloads.parquet").exists()
        finished_before = len(list(photos.glob("*.json")))
        (photos / f"{TMP_PREFIX}stale.jpg").write_bytes(b"\xff\xd8 half a jpeg")  # what a kill can leave
        hits_before = sum(srv.hits.values())
        for cwd in (killed, clean):
            done = cli(cwd)
            assert done.wait(timeout=120) == 0, stderr_of(cwd)
        refetched = sum(srv.hits.values()) - hits_before - len(items)  # minus the clean run's fetches
    assert refetched <= len(items) - finished_before
    assert (killed / "downloads.parquet").read_bytes() == (clean / "downloads.parquet").read_bytes()
    assert not list(photos.glob(f"{TMP_PREFIX}*"))
    for jpeg in photos.glob("*.jpg"):
        decoded(jpeg)  # every stored file is whole
    rows = read_table(killed / "downloads.parquet", DOWNLOADS).to_pylist()
    assert len(rows) == 30 and {r["status"] for r in rows} >= {"ok", "empty", "corrupt"}


def test_requests_to_one_host_never_exceed_per_host(tmp_path, monkeypatch, realdata):
    """8 workers, per_host 2: the server never sees more than 2 requests at once, and all succeed."""
    monkeypatch.chdir(tmp_path)
    body = (realdata / "photos" / "outdoor_park_01.jpg").read_bytes()
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
            time.sleep(0.1)
            with lock:
                state["now"] -= 1
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        items = {f"h{i}": f"http://127.0.0.1:{httpd.server_port}/p{i}.jpg" for i in range(12)}
        rows = run_stage({"store": "store", "download": {"workers": 8, "per_host": 2}}, items)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert {r["status"] for r in rows.values()} == {"ok"} and len(rows) == 12
    assert state["max"] == 2


# ---------------------------------------------------------------- HTTP details


def test_redirects_are_followed_and_connections_reused_after_errors(served, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with PhotoServer(served) as srv:
        moved = download._get_once(f"{srv.url}/moved/outdoor_park_01.jpg", 5, 4)
        missing = download._get_once(f"{srv.url}/files/nope.jpg", 5, 4)
        again = download._get_once(f"{srv.url}/files/outdoor_park_01.jpg", 5, 4)
        loop = download._get_once(f"{srv.url}/loop/redirect.jpg", 5, 4)
    assert moved.status == "ok" and moved.data == (served / "outdoor_park_01.jpg").read_bytes()
    assert srv.hits["/moved/outdoor_park_01.jpg"] == 1 and srv.hits["/files/outdoor_park_01.jpg"] == 2
    assert (missing.status, missing.error) == ("missing", "HTTP 404 Not Found")
    assert again.status == "ok" and again.data == moved.data
    assert (loop.status, loop.error, loop.final) == ("http_error", "too many redirects", True)
    assert srv.hits["/loop/redirect.jpg"] == 6  # the first request and 5 redirects


def test_the_proxy_from_the_environment_is_used(served, monkeypatch):
    """As requests did: ``http_proxy`` / ``no_proxy`` from the environment (here the photo server is the proxy)."""
    with PhotoServer(served) as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        got = download._get_once("http://photos.example.invalid:8123/x/outdoor_street_01.jpg", 5, 4)
    assert got.status == "ok", got
    assert got.data == (served / "outdoor_street_01.jpg").read_bytes()
    assert proxy.hits["http://photos.example.invalid:8123/x/outdoor_street_01.jpg"] == 1


def test_the_stage_in_parts_writes_the_bytes_of_the_whole_table(tmp_path, monkeypatch, realdata):
    """download.main reads the photos 3 at a time (and the duplicates' first ids from a temp table) and writes the
    bytes of download() + write_table over the whole table: byte copies whose first id lies parts earlier, a copy
    of a photo whose first copy failed, missing and corrupt files."""
    from pipeline import tablestream

    photos = sorted(p for p in (realdata / "photos").iterdir() if p.suffix in (".jpg", ".png"))
    items = {f"p{k:02d}": str(path) for k, path in enumerate(photos)}
    street = str(realdata / "photos" / "outdoor_street_01.jpg")
    items.update({"p90": street, "q10": street, "z99": street, "q20": str(realdata / "photos" / "outdoor_park_01.jpg"),
                  "q30": str(tmp_path / "nope.jpg"), "q31": str(realdata / "photos" / "bad_truncated_01.jpg")})
    for name in ("whole", "parts"):  # each with a fresh store of the same name
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "whole")
    whole = download.download(photos_table(items), parse_params({"store": "store", "download": {"workers": 2}}))
    write_table(whole, "d.parquet", DOWNLOADS)
    monkeypatch.chdir(tmp_path / "parts")
    monkeypatch.setattr(tablestream, "CHUNK_ROWS", 3)
    monkeypatch.setattr(download, "BATCH_ROWS", 3)
    rows = run_stage({"store": "store", "download": {"workers": 2}}, items, "d.parquet")
    assert (tmp_path / "parts" / "d.parquet").read_bytes() == (tmp_path / "whole" / "d.parquet").read_bytes()
    first_street = min(k for k, v in items.items() if v == street)
    assert {rows[k]["duplicate_of"] for k in ("p90", "q10", "z99")} == {first_street} != rows[first_street]["duplicate_of"]
    assert rows["q30"]["status"] == "missing" and rows["q31"]["status"] != "ok"
    assert rows["q31"]["duplicate_of"] is None


def test_repeated_ids_in_different_parts_are_refused_before_any_work(tmp_path, monkeypatch):
    from pipeline import tablestream

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tablestream, "CHUNK_ROWS", 2)
    rows = [{"id": f"a{k}", "url": "x.jpg", "source": "custom"} for k in range(5)]
    write_table(table_from_rows([*rows, rows[3]], PHOTOS), "photos.parquet", PHOTOS)
    with pytest.raises(Exception, match=r"ids must be unique.*repeated: \['a3'\]"):
        download.download_file("photos.parquet", "d.parquet", parse_params({"store": "store"}))
    assert not Path("store").exists() and not Path("d.parquet").exists()
