"""``crossview tiles``: source rasters -> 8-bit RGB UTM Cloud-Optimized GeoTIFFs in the store + the tiles table.

Sources come from the demo catalog (``<demo>/rasters.yaml``), ``custom.rasters`` or the SpaceNet
AOI catalog; a catalog ``uri`` is one GeoTIFF (local or ``s3://``) or a prefix/folder of them.
Each tile is converted in one windowed pass (pipeline.raster) on every core: RGB bands by
``band_order``, percentile stretch to 1..255 (uint8 sources passed through), then re-projection of
the 8-bit bands to UTM at ``tiles.gsd_m`` block by block (WITW's order: stretch, then warp), COG
written atomically at ``tiles/<tile_id>.tif``.
The bytes do not depend on the number of threads.

Resume: a sidecar ``tiles/<tile_id>.json`` written after the COG holds a key (hash of source URI +
size + ETag/mtime, band order, EPSG, tiles params and the code version); a COG whose sidecar has the
same key is never rebuilt, only its table row is recomputed from it. The key is kept out of the COG
so that the COG's bytes depend only on the source pixels and params (a from-scratch rebuild gives
byte-identical tiles, chips and tables). Any per-tile failure becomes a row with
``status = "error"`` and an ``error`` that names the file and what to do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

import pyarrow as pa
import rasterio
import shapely

from catalogs import RasterSource, load_raster_catalog, load_spacenet
from pipeline.config import Params, S3Params, TilesParams
from pipeline.errors import CatalogError, ConfigError, CrossviewError, RasterError, StoreError
from pipeline.executor import local_paths, run
from pipeline.raster import (
    PASSTHROUGH,
    apply_stretch,
    band_subset_path,
    bound_gdal_cache,
    compute_stretch,
    footprint,
    read_overview,
    target_epsg,
    target_grid,
    warped_blocks,
    write_cog,
)
from pipeline.raster_uris import resolve
from pipeline.schemas import TILES, table_from_rows, write_table
from pipeline.store import (
    Store,
    add_store_out,
    gdal_path,
    make_store_out,
    rasterio_env,
    read_bytes,
    redact,
    sha256_file,
)
from pipeline.threads import cpu_threads

log = logging.getLogger(__name__)

CODE_VERSION = "tiles-2"  # bump when the conversion changes what a COG holds: finished tiles are then redone
KEY_TAG = "CROSSVIEW_KEY"
STRETCH_TAG = "CROSSVIEW_STRETCH"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class TileJob:
    """One GeoTIFF to convert: its tile id, catalog row, URI and version (or why it cannot be)."""

    tile_id: str
    source: RasterSource
    uri: str
    version: str = ""  # "<size>:<etag or mtime>"; part of the resume key
    error: str = ""


def raster_sources(params: Params, demo_dir: str) -> list[RasterSource]:
    """The raster catalog for ``params.source``: demo, custom or SpaceNet; the items of ``stac.url`` when set."""
    if params.stac.url:
        from pipeline.stac import raster_sources as stac_sources

        return stac_sources(params)
    if params.source == "demo":
        catalog = Path(demo_dir) / "rasters.yaml"
        if not catalog.exists():
            raise CatalogError(f"{catalog} not found: run `crossview demo --out {demo_dir}` first (or `dvc repro`)")
        return load_raster_catalog(catalog)
    if params.source == "custom":
        if not params.custom.rasters:
            raise ConfigError("source is custom but custom.rasters is not set: point it at a raster catalog")
        return load_raster_catalog(params.custom.rasters)
    return load_spacenet()


def make_tile_id(aoi: str, uri: str) -> str:
    """``<aoi>__<file stem>`` with anything but letters, digits, '.', '_' and '-' replaced by '_'."""
    name = PurePosixPath(uri.rstrip("/")).name
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return _UNSAFE.sub("_", f"{aoi}__{stem}")


def _dedupe(jobs: list[TileJob]) -> list[TileJob]:
    """Make tile ids unique: two files with one stem (in different folders) get a hash of their URI."""
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.tile_id] = counts.get(job.tile_id, 0) + 1
    out = []
    for job in jobs:
        if counts[job.tile_id] > 1:
            suffix = hashlib.sha1(job.uri.encode()).hexdigest()[:8]
            job = TileJob(f"{job.tile_id}__{suffix}", job.source, job.uri, job.version, job.error)
        out.append(job)
    return out


def plan(sources: list[RasterSource], s3: S3Params) -> list[TileJob]:
    """Expand catalog rows into one job per GeoTIFF; a missing key/prefix becomes a job that only reports."""
    jobs = []
    for src in sources:
        try:
            objects = resolve(src.uri, s3)
        except StoreError as err:
            jobs.append(TileJob(make_tile_id(src.aoi, src.uri), src, src.uri, error=str(err)))
            continue
        jobs.extend(TileJob(make_tile_id(src.aoi, o.uri), src, o.uri, f"{o.size}:{o.version}") for o in objects)
    return _dedupe(jobs)


def resume_key(job: TileJob, tiles: TilesParams) -> str:
    """Hash of everything that decides a tile's COG: source identity, band order, EPSG, params, code."""
    spec = {
        "code": CODE_VERSION,
        "uri": job.uri,
        "version": job.version,
        "band_order": list(job.source.band_order),
        "epsg": job.source.epsg,
        "tiles": tiles.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def convert(job: TileJob, out_path: str, tiles: TilesParams, s3: S3Params) -> None:
    """Convert one source GeoTIFF to an 8-bit RGB UTM COG at ``out_path`` in one windowed pass."""
    bands = job.source.band_order
    with rasterio_env(s3):
        with rasterio.open(gdal_path(job.uri)) as raw:
            count = raw.count
        if max(bands) > count:
            raise RasterError(
                f"band_order {list(bands)} names band {max(bands)} but the file has {count} band(s): "
                f"fix band_order of aoi {job.source.aoi} in the raster catalog"
            )
        unique = list(dict.fromkeys(bands))  # warp each source band once, even for [1, 1, 1]
        pick = [unique.index(b) for b in bands]
        threads = cpu_threads()  # every core: warp, overview read and COG compression run on threads
        with rasterio.open(band_subset_path(gdal_path(job.uri), unique)) as src:
            data, valid = read_overview(src, tiles.overview_max_px, threads)
            if not valid.any():  # before the warp: a huge empty (sparse) file would else make a huge empty COG
                raise RasterError(
                    f"no valid pixels in {src.width}x{src.height} px (every pixel is nodata, or 0 in all bands, "
                    "in an overview read): the file is empty or its nodata value is wrong; fix it or drop it "
                    "from the raster catalog"
                )
            uint8 = all(dt == "uint8" for dt in src.dtypes)
            stretch = PASSTHROUGH if uint8 else compute_stretch(data[pick], valid, tiles.percentiles)
            del data, valid
            grid = target_grid(src, target_epsg(src, job.source.epsg), tiles.gsd_m)
            blocks = warped_blocks(
                src, grid, tiles.resampling, tiles.block_px, lambda b, ok: apply_stretch(b[pick], ok, stretch), threads
            )
            tags = {STRETCH_TAG: stretch.to_json(), "CROSSVIEW_SOURCE": job.uri}
            write_cog(blocks, grid, out_path, tiles.compress, tags, threads)


def describe(path: str, max_px: int) -> dict:
    """The geometry columns of a finished COG: EPSG, bounds, size, gsd, stretch and valid-data footprint."""
    with rasterio.open(path) as ds:
        left, bottom, right, top = ds.bounds
        info = {
            "epsg": ds.crs.to_epsg(),
            "minx": left,
            "miny": bottom,
            "maxx": right,
            "maxy": top,
            "gsd_m": float(ds.transform.a),
            "width": ds.width,
            "height": ds.height,
            "stretch": ds.tags().get(STRETCH_TAG),
        }
    info["footprint_wkb"] = shapely.to_wkb(footprint(path, max_px))
    return info


def _sidecar(tile_key: str) -> str:
    return tile_key.removesuffix(".tif") + ".json"


def _finished(store: Store, tile_key: str, params: Params) -> dict:
    """The sidecar of a finished COG (``{CROSSVIEW_KEY, sha256}``), or {} when it is not finished."""
    if not (store.exists(_sidecar(tile_key)) and store.exists(tile_key)):
        return {}
    try:
        doc = json.loads(read_bytes(store.uri(_sidecar(tile_key)), params.s3.model_copy(update={"anonymous": False})))
    except (StoreError, ValueError):
        return {}
    return doc if isinstance(doc, dict) and {KEY_TAG, "sha256"} <= set(doc) else {}


def _describe_stored(store: Store, key: str, params: Params, sha256: str) -> dict:
    """Rebuild a finished tile's columns from the stored COG (header, mask overview) and its sidecar's sha256."""
    with rasterio_env(params.s3, anonymous=False):
        info = describe(gdal_path(store.uri(key)), params.tiles.overview_max_px)
    return {**info, "sha256": sha256}


def _base_row(job: TileJob) -> dict:
    src = job.source
    return {
        "tile_id": job.tile_id,
        "aoi": src.aoi,
        "city": src.city,
        "source_uri": job.uri,
        "band_order": ",".join(str(b) for b in src.band_order),
        "satellite": src.satellite,
        "licence": src.licence,
        "licence_url": src.licence_url,
        "attribution": src.attribution,
    }


def explain(uri: str, err: BaseException) -> str:
    """One line naming the file, what went wrong and what to do (credentials removed)."""
    text = redact(str(err))
    if err.__cause__ is not None and str(err.__cause__) not in str(err):  # rasterio: "See previous exception"
        text = f"{text} ({redact(str(err.__cause__))})"
    if isinstance(err, CrossviewError):
        return text if text.startswith(uri) else f"{uri}: {text}"
    if isinstance(err, rasterio.errors.RasterioIOError):
        if "403" in text or "404" in text:
            return f"{uri}: cannot read over S3 ({text}): check the key with `crossview catalog check` and s3 params"
        if "://" in uri:  # a remote read that failed after GDAL's retries: access, a vanished object or the network
            return (
                f"{uri}: remote read failed after retries ({text}): check access with `crossview catalog check`, "
                "then rerun (finished tiles are not redone)"
            )
        return (
            f"{uri}: cannot read raster ({text}): the file is truncated, corrupt or not a GeoTIFF; "
            "re-download it or remove it from the catalog"
        )
    return f"{uri}: conversion failed: {type(err).__name__}: {text}"


def process_one(job: TileJob, params: Params) -> dict:
    """Convert one tile (or reuse its finished COG) and return its table row; failures become error rows."""
    row = _base_row(job)
    if job.error:
        return {**row, "status": "error", "error": job.error}
    bound_gdal_cache()
    store = Store(params.store, params.s3)
    store_key = f"tiles/{job.tile_id}.tif"
    key = resume_key(job, params.tiles)
    try:
        done = _finished(store, store_key, params)
        if done.get(KEY_TAG) == key:
            log.debug("%s: finished earlier with the same key; rebuilding its row only", job.tile_id)
            info = _describe_stored(store, store_key, params, done["sha256"])
        else:
            start = time.monotonic()
            with store.writer(store_key) as tmp:
                convert(job, tmp, params.tiles, params.s3)
                info = describe(tmp, params.tiles.overview_max_px)
                info["sha256"] = sha256_file(tmp)
            store.put_json(_sidecar(store_key), {KEY_TAG: key, "sha256": info["sha256"]})
            log.info("%s: %dx%d px COG in %.1f s", job.tile_id, info["width"], info["height"], time.monotonic() - start)
    except Exception as err:  # one bad tile must not stop the others; recorded as data
        log.debug("%s failed", job.tile_id, exc_info=True)
        return {**row, "status": "error", "error": explain(job.uri, err)}
    return {**row, **info, "uri": store.uri(store_key), "status": "ok", "error": ""}


def build_tiles(params: Params, sources: list[RasterSource]) -> pa.Table:
    """Convert every tile of ``sources`` into the store and return the tiles table."""
    store = Store(params.store, params.s3)
    stale = store.clean_partial("tiles")
    if stale:
        log.info("removed %d temp files left by an interrupted run", stale)
    if not store.remote:
        Path(store.uri("tiles")).mkdir(parents=True, exist_ok=True)
    jobs = plan(sources, params.s3)
    reach = local_paths([store.root, *(job.uri for job in jobs)])
    work = partial(process_one, params=params)
    rows = list(run(work, jobs, scheduler=params.scheduler, workers=params.workers, desc="tiles", reach=reach))
    for row in rows:
        if row["status"] != "ok":
            log.warning("tile %s: %s", row["tile_id"], row["error"])
    return table_from_rows(rows, TILES)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--demo", default=None, help="demo folder holding rasters.yaml (default: params demo.out)")
    parser.add_argument("--out", default="tables/tiles.parquet", help="tiles table to write")
    add_store_out(parser)


def main(params: Params, args: argparse.Namespace) -> int:
    """Read the raster catalog, convert every tile, write the tiles table."""
    sources = raster_sources(params, args.demo or params.demo.out)
    table = build_tiles(params, sources)
    make_store_out(args.store_out)
    write_table(table, args.out, TILES, sort_by=["tile_id"])
    ok = sum(s == "ok" for s in table.column("status").to_pylist())
    log.info("tiles: %d ok, %d error -> %s", ok, table.num_rows - ok, args.out)
    return 0
