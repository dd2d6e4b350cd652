"""The review app as real servers on loopback (uvicorn): two curators and 20 concurrent verdict writers lose
and double nothing; other Host headers, other sites' origins, oversized bodies, unknown ids and path tricks
are refused with a 4xx."""

from __future__ import annotations

import contextlib
import csv
import io
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn

from pipeline.config import Params
from pipeline.review import make_app
from pipeline.review.app import MAX_BODY_BYTES
from tests.test_review_api import make_review_data

WRITERS = 20
SAVES_PER_WRITER = 12


@contextlib.contextmanager
def server(root: Path, curator: str) -> Iterator[str]:
    """The review app for ``curator`` over ``root`` served by uvicorn on a free loopback port."""
    app = make_app(Params(), curator=curator, root=root)
    app.state.review.dataset.index()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture()
def review_root(tmp_path: Path) -> tuple[Path, list[str]]:
    return tmp_path, make_review_data(tmp_path, n=60)


@pytest.fixture()
def two_curators(review_root) -> Iterator[tuple[Path, list[str], dict[str, str]]]:
    root, ids = review_root
    with server(root, "alice") as alice, server(root, "bob") as bob:
        yield root, ids, {"alice": alice, "bob": bob}


def _file_rows(root: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO((root / "review/verdicts.csv").read_text(encoding="utf-8"))))


def test_two_curators_and_20_concurrent_writers_lose_and_double_nothing(two_curators):
    root, ids, urls = two_curators

    def writer(k: int) -> tuple[list[dict], list[dict]]:
        rng = random.Random(k)
        curator = ("alice", "bob")[k % 2]
        saved, undone = [], []
        with httpx.Client(base_url=urls[curator], timeout=30) as client:
            for s in range(SAVES_PER_WRITER):
                chosen = rng.sample(ids, rng.choice((1, 1, 3)))
                verdict = rng.choice(("keep", "drop_indoor", "drop_irrelevant", "drop_wrong_location"))
                resp = client.post("/api/verdicts", json={"ids": chosen, "verdict": verdict, "note": f"w{k} s{s}"})
                assert resp.status_code == 200, resp.text
                rows = resp.json()["rows"]
                assert [r["id"] for r in rows] == chosen and all(r["curator"] == curator for r in rows)
                saved += rows
                if s % 4 == 3:  # undo the save just made, as the page's undo does
                    resp = client.post("/api/undo", json={"rows": rows})
                    assert resp.status_code == 200 and resp.json()["removed"] == len(rows), resp.text
                    undone += rows
        return saved, undone

    with ThreadPoolExecutor(WRITERS) as pool:
        results = list(pool.map(writer, range(WRITERS)))
    saved = [r for s, _ in results for r in s]
    undone = [r for _, u in results for r in u]
    key = lambda r: (r["id"], r["curator"], r["timestamp"])
    expected = Counter(map(key, saved)) - Counter(map(key, undone))
    on_file = Counter(map(key, _file_rows(root)))
    assert max(on_file.values()) == 1  # none doubled
    assert on_file == expected  # none lost, every undo removed exactly its rows
    assert sum(expected.values()) > WRITERS * SAVES_PER_WRITER  # the test really wrote many rows
    assert {r["curator"] for r in _file_rows(root)} == {"alice", "bob"}
    # both curators' pages agree with the file: the latest row per id wins
    latest = {}
    for r in _file_rows(root):
        latest[r["id"]] = r["verdict"]
    for url in urls.values():
        summary = httpx.get(f"{url}/api/summary").json()
        assert summary["reviewed"] == len(latest) and summary["by_verdict"] == dict(Counter(latest.values()))


def _raw(url: str, request: bytes) -> int:
    """Send ``request`` byte for byte (no client normalising paths or headers); return the status code."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


PATH_TRICKS = [
    "/img/photo/../../../../etc/passwd",
    "/img/photo/..%2F..%2F..%2Fetc%2Fpasswd",
    "/img/chip/%2e%2e/%2e%2e/tables/photos.parquet",
    "/img/photo//etc/passwd",
    "/static/../../pipeline/config.py",
    "/static/%2e%2e/%2e%2e/params.yaml",
    "/../../etc/passwd",
    "/api/pair/..%2F..%2Ftables%2Fphotos.parquet",
]


@pytest.mark.parametrize("path", PATH_TRICKS)
def test_path_tricks_are_refused(review_root, path):
    root, _ = review_root
    with server(root, "alice") as url:
        status = _raw(url, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    assert 400 <= status < 500, (path, status)


def test_hosts_origins_bodies_and_unknown_ids_are_refused(review_root):
    root, ids = review_root
    good = {"ids": [ids[0]], "verdict": "keep"}
    with server(root, "alice") as url, httpx.Client(base_url=url, timeout=30) as client:
        # another Host header (DNS rebinding): refused on every route
        for path in ("/", "/api/summary", f"/img/photo/{ids[0]}"):
            assert client.get(path, headers={"Host": "evil.example"}).status_code == 400
        assert client.post("/api/verdicts", json=good, headers={"Host": "evil.example:8765"}).status_code == 400
        # a page on another site posting a verdict
        resp = client.post("/api/verdicts", json=good, headers={"Origin": "http://evil.example"})
        assert resp.status_code == 403, resp.text
        assert client.post("/api/verdicts", json=good, headers={"Origin": url}).status_code == 200
        # oversized bodies: by Content-Length, and chunked with no length
        big = b'{"ids": ["' + b"x" * (MAX_BODY_BYTES + 10) + b'"], "verdict": "keep"}'
        resp = client.post("/api/verdicts", content=big, headers={"Content-Type": "application/json"})
        assert resp.status_code == 413, resp.text

        def chunks():
            for _ in range(MAX_BODY_BYTES // 65536 + 4):
                yield b" " * 65536

        resp = client.post("/api/verdicts", content=chunks(), headers={"Content-Type": "application/json"})
        assert resp.status_code == 413, resp.text
        status = _raw(url, b"POST /api/verdicts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 99999999999\r\nConnection: close\r\n\r\n{}")
        assert status == 413
        # unknown ids, unknown verdicts, wrong types, not JSON: 4xx and nothing written
        before = _file_rows(root)
        for body in (
            {"ids": ["no-such-photo"], "verdict": "keep"},
            {"ids": [ids[1], "../../etc/passwd"], "verdict": "keep"},
            {"ids": [ids[1]], "verdict": "delete_everything"},
            {"ids": "not-a-list", "verdict": "keep"},
            {"ids": [1, 2], "verdict": "keep"},
        ):
            resp = client.post("/api/verdicts", json=body)
            assert 400 <= resp.status_code < 500 and resp.json()["error"], (body, resp.text)
        assert client.post("/api/verdicts", content=b"ids=1", headers={
            "Content-Type": "application/x-www-form-urlencoded"}).status_code == 415
        assert client.get("/api/verdicts").status_code == 405
        assert client.get("/api/pair/no-such-photo").status_code == 404
        assert _file_rows(root) == before
