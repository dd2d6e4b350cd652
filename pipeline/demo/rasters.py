"""Render the demo's overhead tiles: 8-band uint16 WorldView-3-like GeoTIFFs in EPSG:4326.

Each pixel centre is looked up in the city's world and given its material's spectrum, roof and
tree shading, building shadows (cast toward the sun's opposite, at most ``SHADOW_M`` long), a
slight optical blur, haze and sensor noise. Everything a pixel depends on lies within
``MARGIN_M`` of it and the noise is hashed from its global grid index, so tiles rendered in
strips, and overlapping tiles, agree pixel for pixel.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from scipy.ndimage import gaussian_filter

from pipeline.demo.layout import City, Tile, centres, nodata_mask
from pipeline.demo.noise import hash32, to_unit, uniform, value_noise
from pipeline.demo.palette import (
    BAND_NAMES,
    COVER_SPECTRA,
    DN_MAX,
    DN_PER_REFLECTANCE,
    HAZE,
    ROOFS,
    TREE_SPECTRUM,
    Cover,
)
from pipeline.demo.world import Sample, Sun, World, sample

log = logging.getLogger(__name__)

SHADOW_M = 40.0
SHADOW_STEPS_M = (1.5, 3.0, 5.0, 8.0, 12.0, 17.0, 23.0, 31.0, 40.0)
MARGIN_M = 44.0
BLUR_PX = 0.6
STRIP_ROWS = 256
BLOCK_PX = 256
NOISE_DN = 3.0  # read noise; shot noise adds 1 % of the signal


def _reflectance(world: World, s: Sample, x: np.ndarray, y: np.ndarray, sun: Sun) -> np.ndarray:
    """Surface reflectance (rows, cols, 8) of each sample, before shadows and haze."""
    refl = COVER_SPECTRA[s.cover]
    texture = 0.86 + 0.28 * value_noise(world.seed + 7, x, y, 6.0)
    soft = np.isin(s.cover, (Cover.GRASS, Cover.SOIL, Cover.WATER))
    refl *= np.where(soft, texture, 0.96 + 0.08 * texture / 1.14)[..., None]
    roof = s.cover == Cover.ROOF
    brightness = (0.88 + 0.24 * uniform(world.seed + 11, s.building[roof]))[:, None]
    refl[roof] = ROOFS[s.roof[roof]] * (s.roof_shade[roof][:, None] * brightness)
    tree = s.canopy > 0
    if tree.any():
        sx, sy = sun.toward
        dx, dy = (x[tree] - s.tree_x[tree]) / s.tree_r[tree], (y[tree] - s.tree_y[tree]) / s.tree_r[tree]
        lit = 0.75 - 0.3 * (dx * dx + dy * dy) + 0.25 * (dx * sx + dy * sy)
        leaf = 0.85 + 0.3 * value_noise(world.seed + 13, x[tree], y[tree], 1.5)
        refl[tree] = TREE_SPECTRUM * (s.tree_shade[tree] * lit * leaf)[:, None]
    return refl


def _shadows(height: np.ndarray, surface: np.ndarray, sun: Sun, px_m: tuple[float, float]) -> np.ndarray:
    """True where a taller building toward the sun shades the pixel (window arrays, rows north->south)."""
    sx, sy = sun.toward
    tan_el = math.tan(math.radians(sun.elevation))
    shade = np.zeros(height.shape, bool)
    rows, cols = height.shape
    for d in SHADOW_STEPS_M:
        di, dj = round(-d * sy / px_m[1]), round(d * sx / px_m[0])  # row offset grows southward
        src = height[max(di, 0) : rows + min(di, 0), max(dj, 0) : cols + min(dj, 0)]
        dst = (slice(max(-di, 0), rows + min(-di, 0)), slice(max(-dj, 0), cols + min(-dj, 0)))
        shade[dst] |= src > surface[dst] + d * tan_el
    return shade


def _noise(seed: int, gi: np.ndarray, gj: np.ndarray, dn: np.ndarray) -> np.ndarray:
    """Sensor noise (rows, cols, 8) hashed from the global pixel index and band."""
    band = np.arange(8, dtype=np.int64)
    h = hash32(seed, gi[..., None], gj[..., None], band)
    tri = to_unit(h) + to_unit(h * np.uint32(0x2C1B3C6D)) - 1.0  # triangular in (-1, 1), std 0.41
    return tri * ((NOISE_DN + 0.01 * dn) / 0.41)


def render_window(world: World, city: City, tile: Tile, rows: tuple[int, int], sun: Sun) -> np.ndarray:
    """Digital numbers (8, rows, width) uint16 of tile rows ``rows``; nodata pixels are 0."""
    px_m = (tile.pixel_deg * city.frame.m_per_deg_lon, tile.pixel_deg * city.frame.m_per_deg_lat)
    mc, mr = math.ceil(MARGIN_M / px_m[0]), math.ceil(MARGIN_M / px_m[1])
    gi, gj = tile.grid((rows[0] - mr, rows[1] + mr), (-mc, tile.width + mc))
    x, y = city.frame.xy(*centres(tile, gi, gj))
    s = sample(world, x, y)
    refl = _reflectance(world, s, x, y, sun)
    surface = np.maximum(s.height, s.canopy)
    shade = _shadows(s.height, surface, sun, px_m)
    refl = np.where(shade[..., None], refl * 0.3 + np.float32(0.008), refl)
    refl = gaussian_filter(refl, sigma=(BLUR_PX, BLUR_PX, 0), truncate=3.0)
    inner = (slice(mr, refl.shape[0] - mr), slice(mc, refl.shape[1] - mc))
    gi, gj = gi[inner], gj[inner]
    dn = (refl[inner] + HAZE) * DN_PER_REFLECTANCE
    dn = np.clip(np.rint(dn + _noise(world.seed + 17, gi, gj, dn)), 1, DN_MAX).astype(np.uint16)
    dn[nodata_mask(city, tile, gi, gj)] = 0
    return np.moveaxis(dn, -1, 0)


def write_tile(path: Path, world: World, city: City, tile: Tile, sun: Sun, meta: dict[str, str]) -> None:
    """Write one tile as a tiled, deflate-compressed 8-band uint16 GeoTIFF (EPSG:4326, nodata 0)."""
    profile = {
        "driver": "GTiff",
        "width": tile.width,
        "height": tile.height,
        "count": 8,
        "dtype": "uint16",
        "crs": "EPSG:4326",
        "transform": tile.transform,
        "nodata": 0,
        "tiled": True,
        "blockxsize": BLOCK_PX,
        "blockysize": BLOCK_PX,
        "compress": "deflate",
        "predictor": 2,
        "interleave": "pixel",
    }
    with rasterio.open(path, "w", **profile) as dst:
        for band, name in enumerate(BAND_NAMES, start=1):
            dst.set_band_description(band, name)
        dst.update_tags(**meta)
        for r0 in range(0, tile.height, STRIP_ROWS):
            r1 = min(r0 + STRIP_ROWS, tile.height)
            dst.write(render_window(world, city, tile, (r0, r1), sun), window=Window(0, r0, tile.width, r1 - r0))
    log.debug("wrote %s (%dx%d px)", path, tile.width, tile.height)
