"""``crossview catalog check``: does every raster catalog URI (S3 key, S3 prefix or local path) exist?

What a URI stands for is :mod:`pipeline.raster_uris`'s answer, the same the tiles stage and the
Flickr harvest use.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

from catalogs import RasterSource, load_raster_catalog, load_spacenet
from pipeline.config import Params, S3Params
from pipeline.errors import StoreError
from pipeline.raster_uris import MissingObject, head, is_prefix, is_tif, list_prefix

log = logging.getLogger(__name__)

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
