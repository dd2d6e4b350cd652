"""``crossview catalog check``: does every raster catalog URI (S3 key, S3 prefix or local path) exist?

Also the one place that resolves a catalog ``uri`` to the GeoTIFFs behind it (a key, or every
``.tif`` under a prefix/folder) with their size and version (ETag or mtime), which the tiles
stage uses for its work list and resume keys.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from catalogs import RasterSource, load_raster_catalog, load_spacenet
from pipeline.config import Params, S3Params
from pipeline.errors import StoreError
from pipeline.store import client_for, is_http, is_s3, redact, split_s3

log = logging.getLogger(__name__)

TIF_SUFFIXES = (".tif", ".tiff")


class MissingObject(StoreError):
    """The key, prefix or file does not exist (as opposed to a failed request)."""


@dataclass(frozen=True)
class SourceObject:
    """One GeoTIFF behind a catalog URI: its URI, size in bytes and version (ETag or mtime)."""

    uri: str
    size: int
    version: str


def is_prefix(uri: str) -> bool:
    """A catalog URI names a prefix/folder when it ends with '/' or is a local directory."""
    return uri.endswith("/") or (not is_s3(uri) and Path(uri).is_dir())


def is_tif(name: str) -> bool:
    return name.lower().endswith(TIF_SUFFIXES)


def _missing(err: Exception) -> bool:
    code = str((getattr(err, "response", None) or {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


def s3_error(uri: str, err: Exception) -> str:
    """A one-line explanation of an S3 failure that says what to do (credentials never included)."""
    response = getattr(err, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("404", "NoSuchKey", "NotFound"):
        return f"{uri}: not found (404): fix the uri in the catalog (`crossview catalog check` lists what exists)"
    if code == "NoSuchBucket":
        return f"{uri}: bucket does not exist: fix the uri in the catalog"
    if code in ("403", "AccessDenied", "Forbidden") or status == 403:
        return (
            f"{uri}: access denied (403): public buckets need s3.anonymous: true; private ones need "
            "s3.anonymous: false and AWS credentials in the environment"
        )
    return f"{uri}: S3 request failed: {type(err).__name__}: {redact(str(err))}"


def head(uri: str, s3: S3Params) -> SourceObject:
    """Size and version of one object, URL or local file; StoreError with advice when it is missing."""
    if is_http(uri):
        return _head_http(uri)
    if not is_s3(uri):
        try:
            st = os.stat(uri)
        except OSError:
            raise MissingObject(f"{uri}: no such file: fix the uri in the raster catalog") from None
        return SourceObject(uri, st.st_size, f"mtime:{st.st_mtime_ns}")
    bucket, key = split_s3(uri)
    try:
        meta = client_for(s3).head_object(Bucket=bucket, Key=key)
    except Exception as err:  # botocore raises many types; all become one clear message
        raise (MissingObject if _missing(err) else StoreError)(s3_error(uri, err)) from None
    return SourceObject(uri, int(meta["ContentLength"]), f"etag:{meta.get('ETag', '').strip(chr(34))}")


def _head_http(uri: str, timeout_s: float = 30.0) -> SourceObject:
    """HEAD an http(s) raster (a STAC asset): size and ETag (or Last-Modified) as its version."""
    import requests

    try:
        resp = requests.head(uri, allow_redirects=True, timeout=timeout_s)
    except requests.RequestException as err:
        raise StoreError(f"{redact(uri)}: request failed: {type(err).__name__}: {redact(str(err))}") from None
    if resp.status_code in (404, 410):
        raise MissingObject(f"{redact(uri)}: not found ({resp.status_code}): fix the URL in the catalog")
    if resp.status_code >= 400:
        raise StoreError(f"{redact(uri)}: HTTP {resp.status_code}: check the URL and that the server allows reads")
    version = resp.headers.get("ETag", "").strip('"') or resp.headers.get("Last-Modified", "")
    return SourceObject(uri, int(resp.headers.get("Content-Length") or 0), f"http:{version}")


def list_prefix(uri: str, s3: S3Params, tif_only: bool = True) -> list[SourceObject]:
    """Every (GeoTIFF) object under an S3 prefix or local folder, sorted by URI."""
    if not is_s3(uri):
        base = Path(uri)
        if not base.is_dir():
            raise MissingObject(f"{uri}: no such folder: fix the uri in the raster catalog")
        paths = sorted(p for p in base.rglob("*") if p.is_file() and (is_tif(p.name) or not tif_only))
        return [head(str(p), s3) for p in paths]
    bucket, prefix = split_s3(uri)
    out = []
    try:
        for page in client_for(s3).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if is_tif(obj["Key"]) or not tif_only:
                    etag = obj.get("ETag", "").strip('"')
                    out.append(SourceObject(f"s3://{bucket}/{obj['Key']}", int(obj["Size"]), f"etag:{etag}"))
    except Exception as err:  # as above
        raise (MissingObject if _missing(err) else StoreError)(s3_error(uri, err)) from None
    return sorted(out, key=lambda o: o.uri)


def resolve(uri: str, s3: S3Params) -> list[SourceObject]:
    """The GeoTIFFs a catalog URI stands for: the one key/file, or every .tif under a prefix/folder."""
    if not is_prefix(uri):
        return [head(uri, s3)]
    found = list_prefix(uri, s3)
    if not found:
        raise MissingObject(f"{uri}: no .tif files under this prefix: fix the uri in the raster catalog")
    return found


@dataclass(frozen=True)
class CheckResult:
    """What exists behind one catalog row."""

    aoi: str
    uri: str
    key_status: str
    exists: bool | None  # None: could not tell (network or permission error)
    size: int = 0
    objects: int = 0  # for prefixes: how many objects (of which ``tifs`` are GeoTIFFs)
    tifs: int = 0
    detail: str = ""


def check_source(source: RasterSource, s3: S3Params) -> CheckResult:
    """HEAD the key or list the prefix of one catalog row."""
    base = {"aoi": source.aoi, "uri": source.uri, "key_status": source.key_status}
    try:
        if is_prefix(source.uri):
            objs = list_prefix(source.uri, s3, tif_only=False)
            tifs = sum(is_tif(o.uri) for o in objs)
            detail = "" if objs else "prefix is empty"
            return CheckResult(
                **base, exists=bool(objs), size=sum(o.size for o in objs), objects=len(objs), tifs=tifs, detail=detail
            )
        obj = head(source.uri, s3)
        return CheckResult(**base, exists=True, size=obj.size, objects=1, tifs=int(is_tif(obj.uri)))
    except StoreError as err:
        exists = False if isinstance(err, MissingObject) else None
        return CheckResult(**base, exists=exists, detail=str(err).removeprefix(f"{source.uri}: "))


def human_size(n: int) -> str:
    """Bytes as a short human-readable size (1000-based)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


def format_table(results: list[CheckResult]) -> str:
    """A plain-text table: aoi, uri, key_status, exists, size (objects for prefixes), detail."""
    header = ("aoi", "uri", "key_status", "exists", "size", "detail")
    rows = [header]
    for r in results:
        size = human_size(r.size) if r.exists else "-"
        if r.exists and is_prefix(r.uri):
            size = f"{r.objects} objects ({r.tifs} .tif), {human_size(r.size)}"
        shown = {True: "yes", False: "NO", None: "?"}[r.exists]
        rows.append((r.aoi, r.uri, r.key_status or "-", shown, size, r.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", default="check", choices=["check"], help="what to do (default: check)")
    parser.add_argument("--catalog", default=None, help="raster catalog to check (default: the SpaceNet AOI catalog)")


def main(params: Params, args: argparse.Namespace) -> int:
    """Check every catalog row, print the table; exit 0 when everything exists, 1 otherwise."""
    sources = load_raster_catalog(args.catalog) if args.catalog else load_spacenet()
    results = [check_source(s, params.s3) for s in sources]
    sys.stdout.write(format_table(results))
    missing = [r.aoi for r in results if r.exists is False]
    unknown = [r.aoi for r in results if r.exists is None]
    if missing:
        log.warning("%d of %d catalog entries not found: %s", len(missing), len(results), ", ".join(missing))
    if unknown:
        log.warning("could not check %d entries (see the detail column): %s", len(unknown), ", ".join(unknown))
    if missing or unknown:
        return 1
    log.info("all %d catalog entries exist", len(results))
    return 0
