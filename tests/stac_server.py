"""Loopback HTTP peers for the STAC tests: a static file server with HTTP Range support (what GDAL's
``/vsicurl/`` needs to read a GeoTIFF by window) and a small STAC API (landing page, collections, item
search with paging, bbox, intersects, datetime and collections), both logging what they were asked.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import shapely
from shapely.geometry import shape

RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class Log:
    """What a server was asked: (method, path, Range header or '', bytes sent), thread-safe."""

    def __init__(self) -> None:
        self.lock, self.entries = threading.Lock(), []

    def add(self, *entry) -> None:
        with self.lock:
            self.entries.append(entry)


def _send_file(h: BaseHTTPRequestHandler, path: Path, log: Log, head: bool) -> None:
    """Serve ``path`` whole or one ``Range`` of it, with Content-Length, Accept-Ranges and an ETag."""
    data = path.read_bytes()
    rng = h.headers.get("Range", "")
    start, end, code = 0, len(data) - 1, 200
    m = RANGE.match(rng)
    if m:
        start, code = int(m.group(1)), 206
        end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
    body = data[start : end + 1]
    h.send_response(code)
    h.send_header("Content-Type", "application/json" if path.suffix == ".json" else "image/tiff")
    h.send_header("Content-Length", str(len(body)))
    h.send_header("Accept-Ranges", "bytes")
    h.send_header("ETag", f'"{len(data)}-{int(path.stat().st_mtime_ns)}"')
    if code == 206:
        h.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
    h.end_headers()
    if not head:
        h.wfile.write(body)
    log.add(h.command, h.path, rng, 0 if head else len(body))


def _not_found(h: BaseHTTPRequestHandler, log: Log) -> None:
    body = b'{"code": "NotFound"}'
    h.send_response(404)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)
    log.add(h.command, h.path, "", 0)


def _static_handler(root: Path, log: Log):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _serve(self, head: bool) -> None:
            path = (root / urlparse(self.path).path.lstrip("/")).resolve()
            if not path.is_file() or root.resolve() not in path.parents:
                return _not_found(self, log)
            _send_file(self, path, log, head)

        def do_GET(self) -> None:  # http.server's naming
            self._serve(head=False)

        def do_HEAD(self) -> None:
            self._serve(head=True)

    return Handler


@contextmanager
def _serving(handler) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def static_server(root: Path) -> Iterator[tuple[str, Log]]:
    """Serve the files under ``root`` (GET with Range, HEAD); yields (base URL, request log)."""
    log = Log()
    with _serving(_static_handler(root, log)) as url:
        yield url, log


# ---------------------------------------------------------------- a STAC API


def _when(text: str, end: bool) -> datetime | None:
    if text in ("", ".."):
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _matches(item: dict, query: dict) -> bool:
    """The item-search filters the tests use: collections, bbox, intersects, datetime (instant or interval)."""
    if query.get("collections") and item.get("collection") not in query["collections"]:
        return False
    footprint = shape(item["geometry"])
    if query.get("bbox") and not footprint.intersects(shapely.box(*query["bbox"])):
        return False
    if query.get("intersects") and not footprint.intersects(shape(query["intersects"])):
        return False
    if query.get("datetime"):
        parts = query["datetime"].split("/")
        lo, hi = _when(parts[0], False), _when(parts[-1], True)
        when = datetime.fromisoformat(item["properties"]["datetime"].replace("Z", "+00:00"))
        if (lo and when < lo) or (hi and when > hi):
            return False
    return True


class StacApi:
    """Items (dicts) and collections served as a STAC API; ``searches`` logs each search request's query."""

    def __init__(self, items: list[dict], collections: list[dict], files: Path, page_size: int = 2) -> None:
        self.items, self.collections, self.files, self.page_size = items, collections, files, page_size
        self.searches: list[dict] = []
        self.log = Log()
        self.url = ""

    def landing(self) -> dict:
        return {
            "type": "Catalog", "id": "test-api", "stac_version": "1.0.0", "description": "loopback STAC API",
            "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search",
                           "https://api.stacspec.org/v1.0.0/collections"],
            "links": [{"rel": "self", "href": f"{self.url}/", "type": "application/json"},
                      {"rel": "root", "href": f"{self.url}/", "type": "application/json"},
                      {"rel": "data", "href": f"{self.url}/collections", "type": "application/json"},
                      *({"rel": "search", "href": f"{self.url}/search", "type": "application/geo+json", "method": m}
                        for m in ("GET", "POST"))],
        }

    def search(self, query: dict) -> dict:
        """One page of matches; the ``next`` link carries the query and the offset as GET parameters."""
        self.searches.append(query)
        hits = [i for i in self.items if _matches(i, query)]
        offset, limit = int(query.get("token") or 0), min(int(query.get("limit") or self.page_size), self.page_size)
        page = hits[offset : offset + limit]
        links = [{"rel": "root", "href": f"{self.url}/", "type": "application/json"}]
        if offset + limit < len(hits):
            params = {k: (",".join(map(str, v)) if isinstance(v, list) else json.dumps(v) if isinstance(v, dict) else v)
                      for k, v in query.items() if k != "token"}
            links.append({"rel": "next", "href": f"{self.url}/search?{urlencode({**params, 'token': offset + limit})}",
                          "type": "application/geo+json", "method": "GET"})
        return {"type": "FeatureCollection", "features": page, "links": links, "numberMatched": len(hits)}

    def handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _json(self, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                api.log.add(self.command, self.path, "", len(body))

            def do_GET(self) -> None:  # http.server's naming
                parsed = urlparse(self.path)
                if parsed.path in ("", "/"):
                    return self._json(api.landing())
                if parsed.path.startswith("/collections/"):
                    cid = parsed.path.removeprefix("/collections/")
                    doc = next((c for c in api.collections if c["id"] == cid), None)
                    return self._json(doc) if doc else _not_found(self, api.log)
                if parsed.path == "/search":
                    q = {k: v[0] for k, v in parse_qs(parsed.query).items()}
                    query = {**q, **{k: [float(x) for x in q[k].split(",")] for k in ("bbox",) if k in q},
                             **{k: q[k].split(",") for k in ("collections",) if k in q},
                             **{k: json.loads(q[k]) for k in ("intersects",) if k in q}}
                    return self._json(api.search(query))
                path = (api.files / parsed.path.lstrip("/")).resolve()
                if path.is_file() and api.files.resolve() in path.parents:
                    return _send_file(self, path, api.log, head=False)
                return _not_found(self, api.log)

            def do_HEAD(self) -> None:
                path = (api.files / urlparse(self.path).path.lstrip("/")).resolve()
                if path.is_file() and api.files.resolve() in path.parents:
                    return _send_file(self, path, api.log, head=True)
                return _not_found(self, api.log)

            def do_POST(self) -> None:
                if urlparse(self.path).path != "/search":
                    return _not_found(self, api.log)
                length = int(self.headers.get("Content-Length") or 0)
                return self._json(api.search(json.loads(self.rfile.read(length) or b"{}")))

        return Handler


@contextmanager
def stac_api(items: list[dict], collections: list[dict], files: Path, page_size: int = 2) -> Iterator[StacApi]:
    """A STAC API on loopback over ``items`` (their asset hrefs may use ``{url}``), also serving ``files``."""
    api = StacApi(items, collections, files, page_size)
    with _serving(api.handler()) as url:
        api.url = url
        text = json.dumps(items).replace("{url}", url)
        api.items = json.loads(text)
        yield api
