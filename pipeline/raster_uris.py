"""What a raster catalog ``uri`` stands for: one GeoTIFF (S3 key or local file), or every GeoTIFF
under an S3 prefix or local folder (recursively), each with its size and version (ETag or mtime).

The tiles stage (work list and resume keys), the Flickr harvest (AOI bounds) and ``crossview
catalog check`` all resolve URIs here, so they agree on what a catalog row means. A URI is a
prefix when it ends with ``/`` or is a local folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import S3Params
from pipeline.errors import StoreError
from pipeline.store import S3_NO_KEY, client_for, is_http, is_s3, redact, s3_error_code, split_s3

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
    return s3_error_code(err) in S3_NO_KEY | {"NoSuchBucket"}


def s3_error(uri: str, err: Exception) -> str:
    """A one-line explanation of an S3 failure that says what to do (credentials never included)."""
    code = s3_error_code(err)
    status = (getattr(err, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in S3_NO_KEY:
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
