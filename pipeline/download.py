"""Fetch, validate and normalise photo files into the store → ``downloads`` table (one row per photo).

Each photo is one unit of work (:func:`process_one`): fetch the bytes (local path, ``http(s)://``
with retries, or ``s3://``), fully decode them (:func:`pipeline.images.inspect_image`), store an
upright RGB JPEG at ``photos/<id>.jpg``, then write ``photos/<id>.json`` holding the row. The
sidecar is written last and atomically, so it marks the unit finished: a rerun (after a crash or
``kill -9``) reuses it and fetches only what is missing. Transient failures (timeouts, 5xx,
connection errors) are not marked finished, so a rerun retries them.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import random
import re
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pyarrow as pa
import pyarrow.compute as pc
import urllib3
from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError

from pipeline.config import DownloadParams, Params, S3Params
from pipeline.errors import SchemaError, StoreError, describe
from pipeline.executor import local_paths, run
from pipeline.images import inspect_image, storable
from pipeline.schemas import DOWNLOADS, PHOTOS, table_from_rows
from pipeline.store import (
    S3_NO_KEY,
    Store,
    add_store_out,
    client_for,
    is_http,
    is_s3,
    make_store_out,
    read_bytes,
    redact,
    s3_error_code,
    split_s3,
)
from pipeline.tablestream import Cursor, TableWriter, repeated

log = logging.getLogger(__name__)

USER_AGENT = "crossview/0.1 (cross-view geolocalization dataset builder)"
BACKOFF_BASE_S = 0.5  # retry n waits uniform(0, min(cap, base * 2**n)): exponential backoff, full jitter
BACKOFF_CAP_S = 30.0
_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
# Rows made Arrow at a time by the stage. As dicts (~1.5 KB a row): with 16,384 a batch the stage's RSS rose
# ~1.5 KB a photo through 24k photos (the freed dicts' memory was not reused); with 1,024 it stayed flat.
BATCH_ROWS = 1_024


@dataclass(frozen=True)
class Fetched:
    """The outcome of one fetch; ``final`` is False for transient failures a later run should retry."""

    status: str  # ok | missing | http_error | timeout
    data: bytes = b""
    error: str = ""
    final: bool = True


@dataclass(frozen=True)
class Context:
    """What every unit of work needs (picklable, so Dask cluster workers can receive it)."""

    store_root: str
    s3: S3Params
    download: DownloadParams

    def store(self) -> Store:
        return Store(self.store_root, self.s3)


# ---------------------------------------------------------------- fetching


def _proxy_for(url: str) -> str:
    """The proxy the environment asks for ``url`` (``https_proxy``, ``no_proxy`` …), or ``""``."""
    parts = urlparse(url)
    key = (parts.scheme, parts.netloc)
    with _managers_lock:
        if key not in _proxies:
            proxy = urllib.request.getproxies().get(parts.scheme, "")
            if proxy and urllib.request.proxy_bypass(parts.hostname or ""):
                proxy = ""
            _proxies[key] = proxy
        return _proxies[key]


def _manager(url: str, connections: int) -> urllib3.PoolManager:
    """The process's connection pools (shared by its threads: connections are reused across photos)."""
    proxy = _proxy_for(url)
    with _managers_lock:
        manager = _managers.get((proxy, connections))
        if manager is None:
            kw = {"num_pools": 64, "maxsize": connections, "headers": {"User-Agent": USER_AGENT}}
            manager = urllib3.ProxyManager(proxy, **kw) if proxy else urllib3.PoolManager(**kw)
            _managers[(proxy, connections)] = manager
        return manager


_managers: dict[tuple[str, int], urllib3.PoolManager] = {}
_proxies: dict[tuple[str, str], str] = {}
_managers_lock = threading.Lock()
# no retries inside urllib3 (fetch_http retries with backoff), but follow redirects as browsers do
_NO_RETRY = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5, raise_on_redirect=True)


def _failed(err: Exception, timeout_s: float) -> Fetched:
    reason = err.reason if isinstance(err, urllib3.exceptions.MaxRetryError) and err.reason else err
    # NewConnectionError (refused, unknown host) subclasses ConnectTimeoutError for old reasons: not a timeout
    if isinstance(reason, urllib3.exceptions.TimeoutError) and not isinstance(reason, urllib3.exceptions.NewConnectionError):
        return Fetched("timeout", error=f"no complete response within {timeout_s:g} s", final=False)
    if isinstance(reason, urllib3.exceptions.ResponseError):  # the only retry left on: redirects
        return Fetched("http_error", error="too many redirects")
    detail = redact(str(reason)) if not isinstance(reason, urllib3.exceptions.NewConnectionError) else "cannot connect"
    return Fetched("http_error", error=f"connection failed: {type(reason).__name__}: {detail}", final=False)


def _get_once(url: str, timeout_s: float, connections: int) -> Fetched:
    """One GET with a whole-response deadline; HTTP status → missing / http_error (5xx, 429 transient).

    urllib3 directly rather than requests: the same connection pooling for about half the CPU per
    request, which is what bounds a download on a fast link (``bench/bench_download.py``).
    """
    deadline = time.monotonic() + timeout_s
    try:
        resp = _manager(url, connections).request(
            "GET", url, preload_content=False, timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            retries=_NO_RETRY,
        )
    except urllib3.exceptions.LocationValueError:
        return Fetched("http_error", error="invalid URL: fix it in the photos table")
    except urllib3.exceptions.HTTPError as err:
        return _failed(err, timeout_s)
    reusable = False  # whether the connection may go back to the pool (its response read to the end)
    try:
        code = resp.status
        if not 200 <= code < 300:
            resp.drain_conn()  # a short error page: read it so the connection stays usable
            reusable = True
            if code in (404, 410):
                return Fetched("missing", error=f"HTTP {code} {resp.reason}")
            return Fetched("http_error", error=f"HTTP {code} {resp.reason}", final=not (code >= 500 or code == 429))
        chunks = []
        for chunk in resp.stream(1 << 20):
            chunks.append(chunk)
            if time.monotonic() > deadline:
                return Fetched("timeout", error=f"response not complete within {timeout_s:g} s", final=False)
        reusable = True
        return Fetched("ok", b"".join(chunks))
    except urllib3.exceptions.HTTPError as err:
        return _failed(err, timeout_s)
    finally:
        if reusable:
            resp.release_conn()
        else:
            resp.close()  # an unread body would poison the next request on this connection


_host_slots: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_host_slots_lock = threading.Lock()


def _slot(key: tuple[str, int]) -> threading.BoundedSemaphore:
    with _host_slots_lock:
        return _host_slots.setdefault(key, threading.BoundedSemaphore(key[1]))


def host_slot(url: str, per_host: int) -> threading.BoundedSemaphore:
    """The semaphore that caps requests in flight to ``url``'s host at ``per_host`` (one per process)."""
    return _slot(("host:" + urlparse(url).netloc.lower(), per_host))


def fetch_slot(workers: int) -> threading.BoundedSemaphore:
    """The semaphore that caps fetches in flight in this process at ``download.workers``."""
    return _slot(("all", workers))


def fetch_http(url: str, opts: DownloadParams) -> Fetched:
    """GET with ``opts.retries`` retries on timeouts, 5xx, 429 and connection errors (backoff + jitter),
    never more than ``opts.per_host`` requests in flight to one host."""
    result = Fetched("timeout")
    for attempt in range(opts.retries + 1):
        with fetch_slot(opts.workers), host_slot(url, opts.per_host):
            result = _get_once(url, opts.timeout_s, opts.workers)
        if result.final:
            return result
        if attempt < opts.retries:
            time.sleep(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)))
    return replace(result, error=f"{result.error} (after {opts.retries + 1} attempts)")


def fetch_s3(url: str, s3: S3Params) -> Fetched:
    """GET an S3 object (botocore retries throttling and 5xx itself)."""
    bucket, key = split_s3(url)
    try:
        return Fetched("ok", client_for(s3).get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as err:
        code = s3_error_code(err)
        http = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in S3_NO_KEY | {"NoSuchBucket"}:
            return Fetched("missing", error=f"S3 {code}")
        return Fetched("http_error", error=f"S3 HTTP {http} {code}", final=bool(http) and http < 500)
    except (ConnectTimeoutError, ReadTimeoutError):
        return Fetched("timeout", error="S3 request timed out", final=False)
    except BotoCoreError as err:
        return Fetched("http_error", error=f"S3 request failed: {type(err).__name__}: {redact(str(err))}", final=False)


def fetch_local(path: str) -> Fetched:
    """Read a local file (paths are relative to the working directory)."""
    try:
        return Fetched("ok", Path(path).read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        return Fetched("missing", error="no such file")
    except OSError as err:
        return Fetched("missing", error=f"cannot read: {type(err).__name__}: {err.strerror}")


def fetch(url: str, ctx: Context) -> Fetched:
    """Fetch ``url`` from wherever it lives."""
    if is_http(url):
        return fetch_http(url, ctx.download)
    if is_s3(url):
        with fetch_slot(ctx.download.workers):
            return fetch_s3(url, ctx.s3)
    if url.startswith("file://"):
        return fetch_local(url2pathname(urlparse(url).path))
    if "://" in url:
        scheme = url.split("://")[0]
        return Fetched("missing", error=f"unsupported URL scheme {scheme!r} (use http(s)://, s3:// or a path)")
    return fetch_local(url)


# ---------------------------------------------------------------- one photo


def _row(photo_id: str, **values) -> dict:
    row = dict.fromkeys(DOWNLOADS.names)
    row.update({"id": photo_id, "error": "", **values})
    return row


def _read_store(store: Store, key: str) -> bytes:
    if store.remote:  # writing the store needs credentials, so reading it back does too
        return read_bytes(store.uri(key), store.s3.model_copy(update={"anonymous": False}))
    return Path(store.uri(key)).read_bytes()


def _finished(store: Store, photo_id: str, stamp: dict) -> dict | None:
    """The row of a finished unit for the same URL and settings, or None when it must be (re)done."""
    key = f"photos/{photo_id}.json"
    if not store.exists(key):
        return None
    try:
        doc = json.loads(_read_store(store, key))
        row = doc["row"]
    except (StoreError, ValueError, KeyError, TypeError) as err:
        log.warning("%s: unreadable sidecar, fetching again (%s)", store.uri(key), err)
        return None
    if doc.get("fetch") != stamp or set(row) != set(DOWNLOADS.names):
        return None
    if row["status"] == "ok":
        if not store.exists(f"photos/{photo_id}.jpg"):
            return None
        row["uri"] = store.uri(f"photos/{photo_id}.jpg")
    row["duplicate_of"] = None
    return row


def _info_row(photo_id: str, info) -> dict:
    return _row(
        photo_id, sha256=info.sha256, bytes=info.bytes, width=info.width, height=info.height, bands=info.bands,
        mode=info.mode, exif_orientation=info.exif_orientation, status=info.status, error=info.error,
    )


def process_one(item: tuple[str, str | None], ctx: Context) -> dict:
    """Fetch, validate, normalise and store one photo; return its ``downloads`` row (failures are data).

    A store that cannot be read or written (403, or 5xx/resets that outlast botocore's retries) gives a
    ``store_error`` row, not marked finished, so a rerun after the fault clears does the photo again.
    """
    photo_id, url = item
    if not url:
        return _row(photo_id, status="no_url", error="the photos table has no image URL for this photo")
    try:
        return _process(photo_id, url, ctx)
    except StoreError as err:
        return _row(photo_id, status="store_error", error=f"{err}; check the store's access and rerun")


def _process(photo_id: str, url: str, ctx: Context) -> dict:
    store = ctx.store()
    stamp = {"url": url, "jpeg_quality": ctx.download.jpeg_quality}
    done = _finished(store, photo_id, stamp)
    if done is not None:
        log.debug("%s: finished earlier, reused", photo_id)
        return done
    fetched = fetch(url, ctx)
    if fetched.status != "ok":
        row = _row(photo_id, status=fetched.status, error=fetched.error)
        if fetched.final:
            _mark_finished(store, photo_id, row, stamp)
        return row
    info = inspect_image(fetched.data)
    row = _info_row(photo_id, info)
    if info.status == "ok":
        try:
            jpeg = storable(fetched.data, info, ctx.download.jpeg_quality)
        except Exception as err:  # noqa: BLE001 - decodable but not convertible (exotic mode): recorded
            row.update(status="corrupt", error=f"cannot convert to RGB: {describe(err)}")
        else:
            row["uri"] = store.put_bytes(f"photos/{photo_id}.jpg", jpeg)
    _mark_finished(store, photo_id, row, stamp)
    return row


def _mark_finished(store: Store, photo_id: str, row: dict, stamp: dict) -> None:
    doc = {"fetch": stamp, "row": {**row, "duplicate_of": None}}
    store.put_json(f"photos/{photo_id}.json", doc)


# ---------------------------------------------------------------- the stage


def mark_duplicates(rows: list[dict]) -> list[dict]:
    """Set ``duplicate_of`` to the smallest id with the same sha256 (ok rows only; not on that id itself)."""
    first: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: r["id"]):
        if row["status"] == "ok":
            first.setdefault(row["sha256"], row["id"])
    for row in rows:
        original = first.get(row["sha256"]) if row["status"] == "ok" else None
        row["duplicate_of"] = original if original != row["id"] else None
    return rows


def _ok(part: pa.Table) -> pa.Array:
    return pc.equal(part["status"], "ok")


def with_duplicates(part: pa.Table, firsts: dict[str, tuple[str, int]]) -> pa.Table:
    """``part`` (downloads rows) with ``duplicate_of`` set from ``{sha256: (smallest id, ok rows)}`` as
    :func:`mark_duplicates` sets it."""
    ok = _ok(part).to_pylist()
    dup = [
        None if not good or (hit := firsts.get(sha)) is None or hit[0] == pid else hit[0]
        for pid, sha, good in zip(part["id"].to_pylist(), part["sha256"].to_pylist(), ok, strict=True)
    ]
    return part.set_column(part.schema.get_field_index("duplicate_of"), "duplicate_of", pa.array(dup, pa.string()))


def _check_ids(ids: Iterable) -> None:
    """Stop unless the ids, in sorted order (so repeats are neighbours), are unique and usable as file names."""
    repeated_ids, unsafe, last = [], [], object()
    for pid in ids:
        if pid == last:
            if not repeated_ids or repeated_ids[-1] != str(pid):
                repeated_ids.append(str(pid))
        elif pid is None or not _SAFE_ID.fullmatch(pid):
            unsafe.append(str(pid))
        last = pid
    if repeated_ids or unsafe:
        raise SchemaError(
            f"photos table: ids must be unique and use only letters, digits, '.', '_', '-' "
            f"(repeated: {repeated_ids[:10]}, unusable: {sorted(unsafe)[:10]}); rerun `crossview search`"
        )


def check_id_file(path: str | Path) -> int:
    """:func:`_check_ids` over an id-sorted photos table read forward; its row count."""
    rows = 0

    def ids() -> Iterator[str | None]:
        nonlocal rows
        for part in Cursor(path, PHOTOS, ["id"]).parts():
            rows += part.num_rows
            yield from part["id"].to_pylist()

    _check_ids(ids())
    return rows


def _prepare(params: Params) -> Context:
    """The units' context; the store's photos folder made and emptied of an interrupted run's partial files."""
    ctx = Context(params.store, params.s3, params.download)
    store = ctx.store()
    if not store.remote:
        Path(store.uri("photos")).mkdir(parents=True, exist_ok=True)  # a dvc out even when nothing is stored
    stale = store.clean_partial("photos")
    if stale:
        log.info("removed %d partial files left by an interrupted run", stale)
    return ctx


def fetch_rows(items: Iterable[tuple[str, str | None]], ctx: Context, params: Params, total: int) -> Iterator[dict]:
    """The ``downloads`` row of every (id, url) of ``items``, in their order (``duplicate_of`` not yet set).

    A few more threads than fetches in flight (fetch_slot caps those at download.workers): while the
    fetches run, the spare threads validate and store, so a fetch slot never waits on a decode. More
    spares only add GIL contention (bench/bench_download.py: 16 threads lost 15 % at 0 ms).
    """
    threads = params.download.workers + max(1, params.download.workers // 4)
    items = iter(items)
    head = list(itertools.islice(items, 3))  # a few urls to probe, on a cluster, for reach
    reach = local_paths([ctx.store().root, *(url for _, url in head)])
    work = functools.partial(process_one, ctx=ctx)
    yield from run(work, itertools.chain(head, items), scheduler=params.scheduler, workers=threads, desc="download",
                   reach=reach, total=total)


def _log_counts(counts: Counter) -> None:
    log.info("download: %s", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


def download(photos: pa.Table, params: Params) -> pa.Table:
    """The ``downloads`` table for every photo in ``photos`` (columns ``id``, ``url``), files in the store."""
    ids, urls = photos.column("id").to_pylist(), photos.column("url").to_pylist()
    _check_ids(sorted(ids, key=str))
    ctx = _prepare(params)
    rows = mark_duplicates(list(fetch_rows(sorted(zip(ids, urls, strict=True)), ctx, params, len(ids))))
    _log_counts(Counter(r["status"] for r in rows))
    return table_from_rows(rows, DOWNLOADS)


def download_file(photos: str | Path, out: str | Path, params: Params, store_out: str | None = None) -> int:
    """:func:`download` from an id-sorted photos table file to ``out``, a part at a time: memory does not grow
    with the photos (rows go to a temp table; the duplicates, found with 8 bytes a photo, are set while it
    is copied to ``out``). The bytes :func:`download` + ``write_table`` give. Returns the row count."""
    total = check_id_file(photos)
    ctx = _prepare(params)
    counts: Counter = Counter()

    def items() -> Iterator[tuple[str, str | None]]:
        for part in Cursor(photos, PHOTOS, ["id", "url"]).parts():
            yield from zip(part["id"].to_pylist(), part["url"].to_pylist(), strict=True)

    with tempfile.TemporaryDirectory(prefix="crossview-download-") as tmp:
        fetched = Path(tmp) / "downloads.parquet"
        with TableWriter(fetched, DOWNLOADS, geometry=False) as writer:
            rows = fetch_rows(items(), ctx, params, total)
            while part := list(itertools.islice(rows, BATCH_ROWS)):  # row dicts: few at a time
                counts.update(r["status"] for r in part)
                writer.write(table_from_rows(part, DOWNLOADS))
        firsts = repeated(fetched, DOWNLOADS, "sha256", _ok, ["status"])
        _log_counts(counts)
        make_store_out(store_out)
        with TableWriter(out, DOWNLOADS) as writer:
            for part in Cursor(fetched, DOWNLOADS, geometry=False).parts():
                writer.write(with_duplicates(part, firsts))
    return writer.rows


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--photos", required=True, help="photos table to read (Parquet)")
    parser.add_argument("--out", required=True, help="downloads table to write (Parquet)")
    add_store_out(parser)


def main(params: Params, args: argparse.Namespace) -> int:
    rows = download_file(args.photos, args.out, params, args.store_out)
    log.info("download: %d rows -> %s", rows, args.out)
    return 0
