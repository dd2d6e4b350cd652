"""Where the demo's cities and tiles lie: local metre frames, tiles on one global pixel grid, nodata regions.

Every city has a local equirectangular frame (metres east/north of the centre of its tiles), in
which the world is built and photos are placed. Tile bounds from ``catalogs/demo_aoi.yaml`` are
snapped to a global grid of ``pixel_deg`` cells (by less than half a pixel), so overlapping tiles
share pixel centres and can agree pixel for pixel. A tile marked ``nodata_corner`` loses a
triangle at one corner (a strip edge) and a pixel-aligned block inside (a dropped scan block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine

from pipeline.demo.world import World, build_world
from pipeline.errors import ConfigError

CORNERS = ("sw", "se", "nw", "ne")
TRIANGLE_FRACTION = (0.22, 0.24)  # legs of the nodata corner, as fractions of the tile's width and height


@dataclass(frozen=True)
class Frame:
    """A local equirectangular frame: metres east/north of (lon0, lat0) on the WGS 84 ellipsoid."""

    lon0: float
    lat0: float
    m_per_deg_lon: float
    m_per_deg_lat: float

    @classmethod
    def at(cls, lon0: float, lat0: float) -> Frame:
        """The frame centred on a point (series for the length of a degree on WGS 84)."""
        phi = math.radians(lat0)
        m_lat = 111132.954 - 559.822 * math.cos(2 * phi) + 1.175 * math.cos(4 * phi)
        m_lon = 111412.84 * math.cos(phi) - 93.5 * math.cos(3 * phi) + 0.118 * math.cos(5 * phi)
        return cls(lon0, lat0, m_lon, m_lat)

    def xy(self, lon, lat) -> tuple[np.ndarray, np.ndarray]:
        """Lon/lat (degrees) to metres east/north of the frame origin."""
        return (np.asarray(lon) - self.lon0) * self.m_per_deg_lon, (np.asarray(lat) - self.lat0) * self.m_per_deg_lat

    def lonlat(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Metres east/north of the frame origin to lon/lat (degrees)."""
        return self.lon0 + np.asarray(x) / self.m_per_deg_lon, self.lat0 + np.asarray(y) / self.m_per_deg_lat


@dataclass(frozen=True)
class Tile:
    """One demo raster on the global grid: pixel (gi, gj) spans lon [gi, gi+1]*p, lat [gj, gj+1]*p."""

    name: str
    col0: int  # gi of the first column
    top: int  # north edge in pixels (row r has gj = top - 1 - r)
    width: int
    height: int
    pixel_deg: float
    corner: str | None = None  # which corner is nodata (a triangle), if any
    patch: tuple[int, int, int, int] | None = None  # nodata block: gi0, gi1, gj0, gj1 (half-open)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in degrees."""
        p = self.pixel_deg
        return self.col0 * p, (self.top - self.height) * p, (self.col0 + self.width) * p, self.top * p

    @property
    def transform(self) -> Affine:
        """The GeoTIFF geotransform (north up, EPSG:4326)."""
        return Affine(self.pixel_deg, 0.0, self.col0 * self.pixel_deg, 0.0, -self.pixel_deg, self.top * self.pixel_deg)

    def grid(self, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Global indices (gi, gj) of a window of rows/cols (may reach outside the tile), as 2-D arrays."""
        gi = np.arange(self.col0 + cols[0], self.col0 + cols[1], dtype=np.int64)
        gj = np.arange(self.top - 1 - rows[0], self.top - 1 - rows[1], -1, dtype=np.int64)
        return np.meshgrid(gi, gj, indexing="xy")


@dataclass(frozen=True)
class City:
    """One demo city: its name, AOI, frame, tiles and how many ordinary photos it gets."""

    index: int
    name: str
    aoi: str
    frame: Frame
    tiles: tuple[Tile, ...]
    n_photos: int


def snap_tile(name: str, bounds, pixel_deg: float) -> Tile:
    """A tile on the global grid from its (west, south, east, north) bounds, each moved < half a pixel."""
    w, s, e, n = (float(b) for b in bounds)
    if not (w < e and s < n):
        raise ConfigError(f"demo tile {name}: bounds must be [west, south, east, north], got {list(bounds)}")
    col0, col1 = round(w / pixel_deg), round(e / pixel_deg)
    south, top = round(s / pixel_deg), round(n / pixel_deg)
    return Tile(name, col0, top, col1 - col0, top - south, pixel_deg)


def centres(tile: Tile, gi: np.ndarray, gj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat of pixel centres given global indices."""
    return (gi + 0.5) * tile.pixel_deg, (gj + 0.5) * tile.pixel_deg


def rect_m(city: City, tile: Tile) -> tuple[float, float, float, float]:
    """The tile's bounds in the city frame: (x0, y0, x1, y1) metres."""
    w, s, e, n = tile.bounds
    (x0, x1), (y0, y1) = city.frame.xy(np.array([w, e]), np.array([s, n]))
    return float(x0), float(y0), float(x1), float(y1)


def _triangle(city: City, tile: Tile) -> tuple[float, float, float, float]:
    """Corner point (x, y) and legs (a east-west, b north-south) of the nodata triangle, metres."""
    x0, y0, x1, y1 = rect_m(city, tile)
    a, b = TRIANGLE_FRACTION[0] * (x1 - x0), TRIANGLE_FRACTION[1] * (y1 - y0)
    return (x0 if tile.corner[1] == "w" else x1), (y0 if tile.corner[0] == "s" else y1), a, b


def patch_m(city: City, tile: Tile) -> tuple[float, float, float, float] | None:
    """The interior nodata block in the city frame (x0, y0, x1, y1), or None."""
    if tile.patch is None:
        return None
    gi0, gi1, gj0, gj1 = tile.patch
    p = tile.pixel_deg
    (x0, x1), (y0, y1) = city.frame.xy(np.array([gi0 * p, gi1 * p]), np.array([gj0 * p, gj1 * p]))
    return float(x0), float(y0), float(x1), float(y1)


def nodata_mask(city: City, tile: Tile, gi: np.ndarray, gj: np.ndarray) -> np.ndarray:
    """True where the tile has no data: inside the corner triangle or the interior block."""
    mask = np.zeros(gi.shape, bool)
    if tile.corner is not None:
        x, y = city.frame.xy(*centres(tile, gi, gj))
        cx, cy, a, b = _triangle(city, tile)
        mask |= np.abs(x - cx) / a + np.abs(y - cy) / b < 1.0
    if tile.patch is not None:
        gi0, gi1, gj0, gj1 = tile.patch
        mask |= (gi >= gi0) & (gi < gi1) & (gj >= gj0) & (gj < gj1)
    return mask


def outer_polygon(city: City, tile: Tile) -> shapely.Polygon:
    """The tile's outer valid-data boundary in the city frame: its rectangle less the corner triangle."""
    rect = shapely.box(*rect_m(city, tile))
    if tile.corner is None:
        return rect
    cx, cy, a, b = _triangle(city, tile)
    sx, sy = (1 if tile.corner[1] == "w" else -1), (1 if tile.corner[0] == "s" else -1)
    return rect.difference(shapely.Polygon([(cx, cy), (cx + sx * a, cy), (cx, cy + sy * b)]))


def valid_polygon(city: City, tile: Tile) -> shapely.Polygon:
    """Where the tile has data: the outer boundary less the interior nodata block."""
    outer = outer_polygon(city, tile)
    block = patch_m(city, tile)
    return outer if block is None else outer.difference(shapely.box(*block))


def patch_block(city: City, tile: Tile, x: float, y: float, size_m: float) -> tuple[int, int, int, int]:
    """A pixel-aligned block of about ``size_m`` x ``size_m`` centred on (x, y), in global indices."""
    lon, lat = city.frame.lonlat(x, y)
    p = tile.pixel_deg
    half_i = size_m / city.frame.m_per_deg_lon / p / 2
    half_j = size_m / city.frame.m_per_deg_lat / p / 2
    gi, gj = float(lon) / p, float(lat) / p
    return round(gi - half_i), round(gi + half_i), round(gj - half_j), round(gj + half_j)


def _share(counts: list[int], total: int) -> list[int]:
    """Scale counts to sum to ``total`` (largest remainders get the leftovers)."""
    raw = [c * total / max(sum(counts), 1) for c in counts]
    out = [math.floor(r) for r in raw]
    for k in sorted(range(len(raw)), key=lambda k: out[k] - raw[k])[: total - sum(out)]:
        out[k] += 1
    return out


def build_cities(cfg: dict, n_photos: int, rng: np.random.Generator) -> list[City]:
    """The cities of catalogs/demo_aoi.yaml: tiles on the global grid, nodata corners, photo counts."""
    try:
        pixel = float(cfg["pixel_deg"])
        entries = list(cfg["cities"])
        counts = _share([int(c["photos"]) for c in entries], n_photos)
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"catalogs/demo_aoi.yaml: needs pixel_deg and cities with photos counts ({err})") from None
    cities = []
    for index, (entry, n) in enumerate(zip(entries, counts)):
        tiles = []
        for t in entry["tiles"]:
            tile = snap_tile(t["name"], t["bounds"], pixel)
            corner = str(rng.choice(CORNERS)) if t.get("nodata_corner") else None
            tiles.append(Tile(tile.name, tile.col0, tile.top, tile.width, tile.height, pixel, corner))
        w = min(t.bounds[0] for t in tiles)
        s = min(t.bounds[1] for t in tiles)
        e = max(t.bounds[2] for t in tiles)
        nth = max(t.bounds[3] for t in tiles)
        frame = Frame.at((w + e) / 2, (s + nth) / 2)
        cities.append(City(index, str(entry["city"]), str(entry["aoi"]), frame, tuple(tiles), n))
    return cities


def union_m(city: City) -> tuple[float, float, float, float]:
    """The bounding box of all the city's tiles in its frame (x0, y0, x1, y1)."""
    rects = np.array([rect_m(city, t) for t in city.tiles])
    return float(rects[:, 0].min()), float(rects[:, 1].min()), float(rects[:, 2].max()), float(rects[:, 3].max())


WORLD_MARGIN_M = 900.0


def city_worlds(cities: list[City], seed: int) -> list[World]:
    """One procedural city per demo city, big enough for photos outside the tiles and their views."""
    worlds = []
    for city in cities:
        aoi = union_m(city)
        half = max(abs(v) for v in aoi) + WORLD_MARGIN_M
        worlds.append(build_world(seed * 1000 + city.index, aoi, ("river", "lake")[city.index % 2], half))
    return worlds
