"""Raster primitives: percentile stretch from an overview, WarpedVRT re-projection, windowed COG writing,
footprint, and reading a chip window from an 8-bit tile.

Each primitive works window by window (or on a decimated read), so memory stays bounded whatever
the raster size; GDAL's block cache is bounded by :func:`bound_gdal_cache`. Conventions:

- nodata: a source pixel is nodata where GDAL's mask says so (nodata value, internal mask or
  alpha) or where every selected band is 0 (WITW's rule: 0 is nodata in SpaceNet imagery).
- 8-bit output: valid data is 1..255 and 0 is nodata in all three bands. uint16 (or other)
  sources are stretched per band between the low/high percentiles of their valid non-zero pixels
  (``gdal_translate -ot Byte -a_nodata 0 -scale lo hi 1 255``); uint8 sources are passed through
  unstretched, except that a valid 0 becomes 1 so that 0 only ever means nodata.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.features import shapes
from rasterio.warp import aligned_target, calculate_default_transform, reproject
from rasterio.warp import transform as warp_points
from rasterio.windows import Window
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.ops import unary_union

from pipeline.blocks import column_bands, sampled_read
from pipeline.errors import RasterError
from pipeline.geo import utm_epsg
from pipeline.threads import ordered_map

if TYPE_CHECKING:  # a type only: the tiles stage runs this module but not chipgeom (nor lists it in dvc.yaml)
    from pipeline.chipgeom import PixelWindow

log = logging.getLogger(__name__)

CACHE_MB = 256  # GDAL block cache: the biggest term of peak RSS during a conversion
WARP_MEM_MB = 64  # the warper's working buffer per chunk
COG_BLOCK_PX = 512
MAX_SIDE_PX = 400_000  # guards against a gsd_m typo filling the disk (a 120 km tile at 0.3 m)
ALPHA_VALID = 128  # warped alpha >= this (half the kernel weight on valid source pixels) is valid


def bound_gdal_cache(mb: int = CACHE_MB) -> None:
    """Cap GDAL's (process-wide) block cache so peak RSS does not grow with the raster size."""
    rasterio.env.set_gdal_config("GDAL_CACHEMAX", int(mb) * 2**20)


@dataclass(frozen=True)
class Stretch:
    """How source values become 8-bit: per output band [low, high] -> 1..255, or uint8 pass-through."""

    method: str  # "percentile" | "passthrough"
    bands: tuple[tuple[float, float], ...]
    percentiles: tuple[float, float] | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "method": self.method,
                "percentiles": list(self.percentiles) if self.percentiles else None,
                "bands": [list(b) for b in self.bands],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Stretch:
        data = json.loads(text)
        pct = data.get("percentiles")
        return cls(data["method"], tuple(tuple(b) for b in data["bands"]), tuple(pct) if pct else None)


PASSTHROUGH = Stretch("passthrough", ((0.0, 255.0),) * 3)


def overview_shape(height: int, width: int, max_px: int) -> tuple[int, int]:
    """(h, w) of a decimated read whose longer side is at most ``max_px`` (never upsampled)."""
    scale = min(1.0, max_px / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def compute_stretch(data: np.ndarray, valid: np.ndarray, percentiles: Sequence[float]) -> Stretch:
    """Per-band [low, high] at ``percentiles`` of the valid, non-zero pixels of ``data`` (bands, h, w)."""
    lo_pct, hi_pct = float(percentiles[0]), float(percentiles[1])
    bands = []
    for i, band in enumerate(data):
        values = band[valid & (band != 0)]
        if values.size == 0:
            raise RasterError(f"band {i + 1} of the RGB selection has no valid non-zero pixels")
        low, high = (float(v) for v in np.percentile(values, [lo_pct, hi_pct]))
        bands.append((low, max(high, low + 1.0)))
    return Stretch("percentile", tuple(bands), (lo_pct, hi_pct))


def apply_stretch(data: np.ndarray, valid: np.ndarray, stretch: Stretch) -> np.ndarray:
    """8-bit RGB (3, h, w) from ``data``: valid pixels in 1..255, invalid ones 0 in every band."""
    if data.dtype == np.uint16 and data.size > 1 << 18:  # a table of every uint16 value: same bytes, 5x faster
        lut = _stretch_table(stretch, len(data))
        out = np.empty(data.shape, np.uint8)
        for k, band in enumerate(data):
            np.take(lut[k], band, out=out[k])
    else:
        out = _stretch_values(data, stretch)
    out *= valid
    return out


def _stretch_values(data: np.ndarray, stretch: Stretch) -> np.ndarray:
    """The stretch arithmetic, validity aside."""
    if stretch.method == "passthrough":
        return np.clip(data, 1, 255).astype(np.uint8)
    low = np.array([b[0] for b in stretch.bands], dtype=np.float32)[:, None, None]
    high = np.array([b[1] for b in stretch.bands], dtype=np.float32)[:, None, None]
    scaled = 1.0 + (data.astype(np.float32) - low) * (254.0 / (high - low))
    return np.clip(np.rint(scaled), 1, 255).astype(np.uint8)


@functools.lru_cache(maxsize=16)
def _stretch_table(stretch: Stretch, bands: int) -> np.ndarray:
    """(bands, 65536) uint8: the stretch of every uint16 value, by the same arithmetic as the direct path."""
    values = np.broadcast_to(np.arange(1 << 16, dtype=np.uint16), (bands, 1, 1 << 16))
    return np.ascontiguousarray(_stretch_values(values, stretch)[:, 0])


def has_gdal_mask(src) -> bool:
    """True when validity comes from an internal/external mask or alpha band rather than a nodata value."""
    flags = src.mask_flag_enums[0]
    return MaskFlags.per_dataset in flags or MaskFlags.alpha in flags


def read_overview(src, max_px: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A decimated read of every band of ``src`` (longer side <= max_px) and its validity mask."""
    h, w = overview_shape(src.height, src.width, max_px)
    if src.overviews(1) or has_gdal_mask(src) or (h, w) == (src.height, src.width):
        data = src.read(out_shape=(src.count, h, w))  # from an overview level when the file has them: cheap
    else:
        data = sampled_read(src, h, w, threads)
    return data, valid_pixels(src, data, out_shape=(h, w))


def band_subset_path(path: str, bands: Sequence[int]) -> str:
    """A GDAL ``vrt://`` connection string exposing only ``bands`` (1-based) of ``path``, so only they are warped."""
    return f"vrt://{path}?bands={','.join(str(b) for b in bands)}"


@dataclass(frozen=True)
class Grid:
    """An output pixel grid: EPSG code, affine transform and size."""

    epsg: int
    transform: Affine
    width: int
    height: int

    @property
    def gsd_m(self) -> float:
        return float(self.transform.a)


def target_epsg(src, hint: int | None = None) -> int:
    """The UTM zone to re-project to: ``hint`` when given, else the zone of the raster's centre."""
    if hint:
        return int(hint)
    if src.crs is None:
        raise RasterError("the raster has no CRS: give it one (gdal_edit.py -a_srs) or drop it from the catalog")
    left, bottom, right, top = src.bounds
    lon, lat = warp_points(src.crs, "EPSG:4326", [(left + right) / 2], [(bottom + top) / 2])
    return utm_epsg(lon[0], lat[0])


def target_grid(src, epsg: int, gsd_m: float) -> Grid:
    """The target-aligned grid (pixel edges on multiples of ``gsd_m``) covering ``src`` in ``epsg``."""
    if src.crs is None:
        raise RasterError("the raster has no CRS: give it one (gdal_edit.py -a_srs) or drop it from the catalog")
    dst_crs = CRS.from_epsg(epsg)
    transform, width, height = calculate_default_transform(
        src.crs, dst_crs, src.width, src.height, *src.bounds, resolution=gsd_m
    )
    transform, width, height = aligned_target(transform, width, height, gsd_m)
    if max(width, height) > MAX_SIDE_PX:
        raise RasterError(
            f"re-projected at gsd_m={gsd_m} the tile would be {width}x{height} px: raise tiles.gsd_m in params.yaml"
        )
    return Grid(epsg, transform, int(width), int(height))


def block_windows(width: int, height: int, block_px: int) -> Iterator[Window]:
    """Windows of at most ``block_px`` square covering a width x height grid, row by row."""
    for row in range(0, height, block_px):
        for col in range(0, width, block_px):
            yield Window(col, row, min(block_px, width - col), min(block_px, height - row))


KERNEL_RADIUS = {"nearest": 1, "bilinear": 1, "cubic": 2, "lanczos": 3}  # source px at scale 1 (GDAL's kernels)
EDGE_PX = 32  # more source px read around a block whose kernel reach crosses the source's edge (source_window)


def valid_pixels(src, data: np.ndarray, **where) -> np.ndarray:
    """Which pixels of ``data``, read from ``src`` with ``where`` (window= or out_shape=), are valid (nodata rule above)."""
    valid = np.any(data != 0, axis=0)
    if has_gdal_mask(src):
        valid &= src.dataset_mask(**where) > 0
    elif src.nodata is not None and src.nodata != 0:  # (nodata 0 is the rule's first test already)
        valid &= np.any(data != src.nodata, axis=0)
    return valid


def source_window(src, grid: Grid, window: Window, resampling: str) -> tuple[Window, bool]:
    """The source pixels ``window`` of ``grid`` is warped from, and whether the kernel's reach lies inside ``src``.

    The window's outline (16 points an edge) is projected onto the source's pixel grid; its bounds
    are widened by the kernel radius, scaled when the warp shrinks the source (GDAL widens its
    kernels then), plus 2 px. Where that reach crosses the source's edge, GDAL's warper sizes its
    kernel from the part of the window it can use, and the pixels then depend on how much lies
    beyond the reach on the other sides (up to 16 px in tests): such edge windows are widened by
    ``EDGE_PX`` more. Either way a block equals the same warp of the whole source (tested).
    """
    t = grid.transform * Affine.translation(window.col_off, window.row_off)
    w, h = float(window.width), float(window.height)
    s = np.linspace(0.0, 1.0, 17)
    cols = np.concatenate([s * w, np.full_like(s, w), s * w, np.zeros_like(s)])
    rows = np.concatenate([np.zeros_like(s), s * h, np.full_like(s, h), s * h])
    xs, ys = warp_points(CRS.from_epsg(grid.epsg), src.crs, *(t * (cols, rows)))
    sc, sr = ~src.transform * (np.asarray(xs), np.asarray(ys))
    ok = np.isfinite(sc) & np.isfinite(sr)
    if not ok.any():
        return Window(0, 0, 0, 0), False
    sc, sr = sc[ok], sr[ok]
    scale = max((sc.max() - sc.min()) / w, (sr.max() - sr.min()) / h, 1.0)
    pad = int(np.ceil(KERNEL_RADIUS[resampling] * scale)) + 2
    c0, r0 = int(np.floor(sc.min())) - pad, int(np.floor(sr.min())) - pad
    c1, r1 = int(np.ceil(sc.max())) + pad, int(np.ceil(sr.max())) + pad
    inside = bool(ok.all()) and c0 >= 0 and r0 >= 0 and c1 <= src.width and r1 <= src.height
    if not inside:
        edge = int(np.ceil(EDGE_PX * scale))
        c0, r0, c1, r1 = c0 - edge, r0 - edge, c1 + edge, r1 + edge
    c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, src.width), min(r1, src.height)
    return Window(c0, r0, max(c1 - c0, 0), max(r1 - r0, 0)), inside


def warp_block(src, grid: Grid, window: Window, resampling: str, to_8bit: Callable) -> np.ndarray:
    """8-bit RGB (3, h, w) of ``window`` of ``grid``: source pixels read, made 8-bit, then re-projected.

    ``to_8bit(data, valid)`` gives 1..255 where valid and 0 elsewhere (the stretch), so the warp
    runs on bytes, as WITW's ``gdal_translate`` then ``gdalwarp`` do (warping the source's uint16
    took ~1.5x as long). Nodata is 0 in all three bands: a source window holding only valid pixels,
    wholly inside the source, is warped without masks (every output pixel is valid); otherwise
    source pixels that are 0 in all bands are masked and an output pixel is valid where the warped
    alpha (the kernel weight on valid pixels) is >= ALPHA_VALID. Valid output is lifted to >= 1
    (the kernel's undershoot may round to 0).
    """
    h, w = int(window.height), int(window.width)
    area, inside = source_window(src, grid, window, resampling)
    if area.width == 0 or area.height == 0:
        return np.zeros((3, h, w), np.uint8)
    data = src.read(window=area)
    valid = valid_pixels(src, data, window=area)
    rgb = to_8bit(data, valid)
    del data
    options = {
        "src_transform": src.window_transform(area),
        "src_crs": src.crs,
        "dst_transform": grid.transform * Affine.translation(window.col_off, window.row_off),
        "dst_crs": CRS.from_epsg(grid.epsg),
        "resampling": Resampling[resampling],
        "init_dest_nodata": False,
        "warp_mem_limit": WARP_MEM_MB,
    }
    if inside and valid.all():
        out = np.zeros((3, h, w), np.uint8)
        reproject(rgb, out, src_nodata=None, dst_nodata=None, **options)
        return np.maximum(out, 1, out=out)
    out = np.zeros((4, h, w), np.uint8)
    reproject(rgb, out, src_nodata=0, dst_alpha=4, UNIFIED_SRC_NODATA="YES", **options)
    return np.maximum(out[:3], 1) * (out[3] >= ALPHA_VALID)


def warped_blocks(
    src, grid: Grid, resampling: str, block_px: int, to_8bit: Callable, threads: int = 1
) -> Iterator[tuple[Window, np.ndarray]]:
    """Re-project ``src`` onto ``grid`` block by block, yielding (window, 8-bit RGB) in order (:func:`warp_block`).

    With ``threads`` > 1 the blocks are warped on that many threads, each with its own handle of
    ``src``; a block's pixels depend only on the block, not on the thread or the handle.
    """
    n = max(1, min(threads, -(-grid.width // block_px)))  # no more threads than blocks in a row
    per_row = -(-grid.width // block_px)

    def warp(handle, window: Window) -> tuple[Window, np.ndarray]:
        return window, warp_block(handle, grid, window, resampling, to_8bit)

    with ExitStack() as stack:
        handles = [src] + [stack.enter_context(rasterio.open(src.name)) for _ in range(n - 1)]
        # Each thread warps one vertical band of the grid: the source blocks under a band are read
        # by one handle (a block straddling two bands is decoded twice, not every block), and a
        # row plus a block per thread in flight keeps every thread busy.
        windows = list(block_windows(grid.width, grid.height, block_px))
        owner = column_bands(windows, grid.width, n)
        yield from ordered_map(warp, windows, handles, per_row + n, lambda w: owner[w.row_off, w.col_off])


def _creation_options(compress: str) -> dict[str, str]:
    opts = {"COMPRESS": compress.upper(), "BLOCKSIZE": str(COG_BLOCK_PX), "BIGTIFF": "IF_SAFER"}
    opts["OVERVIEW_RESAMPLING"] = "AVERAGE"  # averages valid pixels only, so overviews keep nodata edges
    if compress == "jpeg":
        opts["QUALITY"] = "90"
    else:
        opts["PREDICTOR"] = "YES"
    return opts


def write_cog(
    blocks: Iterator[tuple[Window, np.ndarray]],
    grid: Grid,
    out_path: str,
    compress: str,
    tags: dict[str, str],
    threads: int = 1,
) -> None:
    """Write 8-bit RGB blocks to a tiled temp GeoTIFF beside ``out_path``, then copy it as a COG with overviews.

    nodata is 0; with JPEG compression (lossy, so 0 cannot mark nodata) the validity travels as
    an alpha band that the COG driver turns into an internal mask. ``threads`` compress tiles and
    compute overviews in parallel (the bytes do not depend on it).
    """
    raw = f"{out_path}.raw.tif"  # shares out_path's temp prefix, so Store.clean_partial removes leftovers
    jpeg = compress == "jpeg"
    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": 4 if jpeg else 3,
        "dtype": "uint8",
        "crs": CRS.from_epsg(grid.epsg),
        "transform": grid.transform,
        "nodata": None if jpeg else 0,
        "tiled": True,
        "blockxsize": COG_BLOCK_PX,
        "blockysize": COG_BLOCK_PX,
        "compress": "zstd",
        "zstd_level": 1,  # a scratch file: fast beats small
        "bigtiff": "IF_SAFER",
        "interleave": "pixel",
        "num_threads": str(max(1, threads)),
    }
    try:
        with rasterio.open(raw, "w", **profile) as dst:
            if jpeg:
                dst.colorinterp = [
                    rasterio.enums.ColorInterp.red,
                    rasterio.enums.ColorInterp.green,
                    rasterio.enums.ColorInterp.blue,
                    rasterio.enums.ColorInterp.alpha,
                ]
            dst.update_tags(**tags)
            for window, rgb in blocks:
                if jpeg:
                    rgb = np.concatenate([rgb, ((rgb[0] > 0) * 255).astype(np.uint8)[None]])
                dst.write(rgb, window=window)
        opts = {**_creation_options(compress), "NUM_THREADS": str(max(1, threads))}
        # The COG driver keeps the overviews in a zstd temp file until it copies them (at level 9 by
        # default): level 1 saves ~15 % of the copy's CPU and the COG's bytes do not change.
        with rasterio.Env(ZSTD_LEVEL_OVERVIEW="1"):
            rasterio.shutil.copy(raw, out_path, driver="COG", **opts)
    finally:
        Path(raw).unlink(missing_ok=True)


def footprint(path: str, max_px: int) -> Polygon | MultiPolygon:
    """The outer boundary of valid data (holes filled, simplified, shrunk ~1.5 decimated px) in the file's CRS."""
    with rasterio.open(path) as ds:
        h, w = overview_shape(ds.height, ds.width, max_px)
        mask = (ds.dataset_mask(out_shape=(h, w)) > 0).astype(np.uint8)
        transform = ds.transform @ Affine.scale(ds.width / w, ds.height / h)
    px = abs(transform.a)
    parts = [Polygon(shape(geom).exterior) for geom, value in shapes(mask, transform=transform) if value]
    if not parts:
        return Polygon()
    # Overview masks are optimistic by up to one decimated pixel and simplifying moves edges by at
    # most its tolerance, so shrinking by both keeps the polygon inside the valid data.
    outline = _fill_holes(unary_union(parts)).simplify(0.5 * px, preserve_topology=True)
    shrunk = outline.buffer(-1.5 * px, join_style="mitre")
    return Polygon() if shrunk.is_empty else shrunk


def _fill_holes(geom: Polygon | MultiPolygon) -> Polygon | MultiPolygon:
    """The geometry without interior rings (a union of hole-free parts can still enclose a gap)."""
    if isinstance(geom, Polygon):
        return Polygon(geom.exterior)
    return MultiPolygon([Polygon(g.exterior) for g in geom.geoms])


def read_chip(src: rasterio.DatasetReader, window: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
    """The (3, n, n) uint8 chip and its valid-pixel mask; what lies outside the raster is nodata (0)."""
    if src.count < 3 or src.dtypes[0] != "uint8":
        raise RasterError(f"tile must be 8-bit RGB, got {src.count} band(s) of {src.dtypes[0]}: rerun the tiles stage")
    inner = window.clip(src.width, src.height)
    if inner is None:
        return np.zeros((3, window.height, window.width), np.uint8), np.zeros((window.height, window.width), bool)
    win = Window(inner.col_off, inner.row_off, inner.width, inner.height)
    data = src.read((1, 2, 3), window=win)
    valid = data.any(axis=0)
    if has_gdal_mask(src):  # an internal mask or alpha band
        valid &= src.dataset_mask(window=win) > 0
    if inner != window:  # part of the window lies outside the raster: nodata there
        out = np.zeros((3, window.height, window.width), np.uint8)
        full = np.zeros((window.height, window.width), bool)
        r0, c0 = inner.row_off - window.row_off, inner.col_off - window.col_off
        out[:, r0 : r0 + inner.height, c0 : c0 + inner.width] = data
        full[r0 : r0 + inner.height, c0 : c0 + inner.width] = valid
        data, valid = out, full
    if not valid.all():
        data[:, ~valid] = 0
    return data, valid
