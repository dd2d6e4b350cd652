"""Where the demo's photos are taken, and which planted case each one is.

Ordinary photos stand outdoors (street, sidewalk, plaza, lawn), at least ``MIN_SEP_M`` from every
other photo, where a full chip (``CHIP_M`` square plus a margin for the UTM grid's rotation)
lies inside one tile's valid data. Each planted case gets the place its rule needs: outside
every tile, inside a footprint but too near every edge, inside the outer footprint with the
chip over the interior nodata block, or within a few metres of an ordinary photo. Rooms,
close-ups and portraits stand where ordinary photos do; a wrong geotag is taken at one good
place and recorded at another 200-600 m away (both with a full chip).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import shapely

from pipeline.demo.layout import City, outer_polygon, patch_block, patch_m, rect_m, union_m, valid_polygon
from pipeline.demo.palette import Cover
from pipeline.demo.world import World, sample
from pipeline.errors import ConfigError

CHIP_M = 225.0
FIT_HALF_M = CHIP_M / 2 + 12.5  # a chip fits with room for the UTM grid's rotation and resampling
NO_FIT_HALF_M = CHIP_M / 2 - 15.0  # even a chip this much smaller fits in no tile
MIN_SEP_M = 22.0  # > density 10 m + the 8 m of a near duplicate, with room to spare
PATCH_M = 80.0  # the interior nodata block: 6400 m2 = 12.6 % of a chip
EXPECTED = {
    "normal": "ok",
    "outside_tiles": "outside_tiles",
    "near_tile_edge": "near_tile_edge",
    "near_duplicate": "density_pair",
    "nan_coordinates": "bad_coordinates",
    "out_of_range": "bad_coordinates",
    "low_accuracy": "low_accuracy",
    "denied_owner": "deny_list",
    "single_band": "single_band",
    "cmyk": "ok",
    "truncated": "corrupt",
    "zero_byte": "empty",
    "nodata_chip": "chip_nodata",
    # judged by a model or a curator: the default demo run has no relevance head and no curator verdicts
    "indoor_view": "indoor",
    "close_up": "relevance",
    "portrait": "relevance",
    "wrong_geotag": "wrong_location",
}
# Cases whose photo stands where an ordinary one would: only its metadata or file is wrong.
AT_GOOD_PLACE = ("nan_coordinates", "out_of_range", "low_accuracy", "denied_owner", "single_band", "cmyk",
                 "truncated", "zero_byte", "indoor_view", "close_up", "portrait", "wrong_geotag")
WRONG_GEOTAG_M = (200.0, 600.0)
STANDING = np.array([Cover.SIDEWALK, Cover.PAVED, Cover.GRASS, Cover.ROAD])


@dataclass(frozen=True)
class Shot:
    """One planned photo: which city and case, where the camera stands (metres), which way it looks."""

    city: int
    case: str
    x: float
    y: float
    bearing_deg: float
    partner: int | None = None  # index of the ordinary photo a near duplicate stands beside
    geotag: tuple[float, float] | None = None  # where the record puts it, when not where it was taken (metres)

    @property
    def expected(self) -> str:
        return EXPECTED[self.case]


def split_cases(cases: dict[str, int], cities: list[City], rates: dict[str, float] | None = None
                ) -> dict[int, dict[str, int]]:
    """Spread each case's count over the cities in turn (nodata_chip only where a tile has a nodata block),
    and give each city ``round(rate * its ordinary photos)`` of each rated case."""
    unknown = (set(cases) | set(rates or {})) - set(EXPECTED)
    if unknown:
        raise ConfigError(f"catalogs/demo_aoi.yaml cases/rates: unknown {sorted(unknown)} (known: {sorted(EXPECTED)})")
    out: dict[int, dict[str, int]] = {c.index: {} for c in cities}
    for case, rate in (rates or {}).items():
        for c in cities:
            out[c.index][case] = out[c.index].get(case, 0) + round(float(rate) * c.n_photos)
    for case, n in cases.items():
        eligible = [c.index for c in cities if case != "nodata_chip" or any(t.corner for t in c.tiles)]
        if not eligible and n:
            raise ConfigError("catalogs/demo_aoi.yaml: nodata_chip cases need a tile with nodata_corner: true")
        for k in range(int(n)):
            city = eligible[k % len(eligible)]
            out[city][case] = out[city].get(case, 0) + 1
    return out


def outdoors(world: World, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """True where a person can stand: street-level open ground with no wall within 4 m."""
    ok = np.isin(sample(world, x, y, detail=False).cover, STANDING)
    for a in np.arange(8) * (math.pi / 4):
        ok &= sample(world, x + 4.0 * math.sin(a), y + 4.0 * math.cos(a), detail=False).height == 0
    return ok


def _boxes(x: np.ndarray, y: np.ndarray, half: float) -> np.ndarray:
    return shapely.box(x - half, y - half, x + half, y + half)


def fits(polys: list, x: np.ndarray, y: np.ndarray, half: float) -> np.ndarray:
    """True where a square of half-side ``half`` centred on (x, y) lies within any of ``polys``."""
    boxes = _boxes(x, y, half)
    ok = np.zeros(np.shape(x), bool)
    for poly in polys:
        ok |= shapely.within(boxes, poly)
    return ok


def choose_patches(city: City, world: World, rng: np.random.Generator) -> City:
    """Give each nodata-corner tile an interior nodata block that only this tile could chip around."""
    tiles = list(city.tiles)
    for k, tile in enumerate(tiles):
        if tile.corner is None:
            continue
        others = [outer_polygon(city, t) for j, t in enumerate(tiles) if j != k]
        x0, y0, x1, y1 = rect_m(city, tile)
        x, y = rng.uniform(x0, x1, 4000), rng.uniform(y0, y1, 4000)
        ok = fits([outer_polygon(city, tile)], x, y, FIT_HALF_M + 45.0) & ~fits(others, x, y, NO_FIT_HALF_M)
        ok[ok] = outdoors(world, x[ok], y[ok])
        if not ok.any():
            raise ConfigError(f"demo tile {tile.name}: too small for an interior nodata block with a chip around it")
        i = int(np.argmax(ok))
        tiles[k] = replace(tile, patch=patch_block(city, tile, float(x[i]), float(y[i]), PATCH_M))
    return replace(city, tiles=tuple(tiles))


class _Placer:
    """Greedy placement of one city's photos, keeping every photo ``MIN_SEP_M`` from the others."""

    def __init__(self, city: City, world: World, rng: np.random.Generator) -> None:
        self.city, self.world, self.rng = city, world, rng
        self.outer = [outer_polygon(city, t) for t in city.tiles]
        self.valid = [valid_polygon(city, t) for t in city.tiles]
        self.bbox = union_m(city)
        self.xy = np.empty((0, 2))

    def _take(self, x: np.ndarray, y: np.ndarray, ok: np.ndarray, n: int, what: str) -> list[tuple[float, float]]:
        """Accept candidates in order while they keep their distance; fail clearly when too few fit."""
        got: list[tuple[float, float]] = []
        for cx, cy in zip(x[ok], y[ok]):
            if len(got) == n:
                break
            if len(self.xy) and np.min(np.hypot(self.xy[:, 0] - cx, self.xy[:, 1] - cy)) < MIN_SEP_M:
                continue
            self.xy = np.vstack([self.xy, [cx, cy]])
            got.append((float(cx), float(cy)))
        if len(got) < n:
            raise ConfigError(f"demo city {self.city.name}: found room for only {len(got)} of {n} {what} photos")
        return got

    def _candidates(self, n: int, pad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        x0, y0, x1, y1 = self.bbox
        return self.rng.uniform(x0 - pad, x1 + pad, n), self.rng.uniform(y0 - pad, y1 + pad, n)

    def good(self, n: int) -> list[tuple[float, float]]:
        """Places where an ordinary photo's full chip fits in one tile's valid data."""
        x, y = self._candidates(max(60 * n, 4000))
        ok = fits(self.valid, x, y, FIT_HALF_M)
        ok[ok] = outdoors(self.world, x[ok], y[ok])
        return self._take(x, y, ok, n, "ordinary")

    def near_edge(self, n: int) -> list[tuple[float, float]]:
        """Inside a footprint (20 m clear of its boundary) where no chip fits in any tile."""
        x, y = self._candidates(20000)
        pts = shapely.buffer(shapely.points(x, y), 20.0)
        ok = np.zeros(x.shape, bool)
        for poly in self.valid:
            ok |= shapely.within(pts, poly)
        ok &= ~fits(self.outer, x, y, NO_FIT_HALF_M)
        ok[ok] = outdoors(self.world, x[ok], y[ok])
        return self._take(x, y, ok, n, "near_tile_edge")

    def outside(self, n: int) -> list[tuple[float, float]]:
        """Near the city's tiles but at least 40 m outside every one of them."""
        x, y = self._candidates(8000, pad=500.0)
        rects = shapely.union_all([shapely.box(*rect_m(self.city, t)).buffer(40.0) for t in self.city.tiles])
        ok = ~shapely.intersects(shapely.points(x, y), rects)
        ok[ok] = outdoors(self.world, x[ok], y[ok])
        return self._take(x, y, ok, n, "outside_tiles")

    def over_patch(self, n: int) -> list[tuple[float, float]]:
        """Chip inside one tile's outer footprint, covering its nodata block (>= 9 % of the chip)."""
        found: list[tuple[float, float]] = []
        tiles = [(t, patch_m(self.city, t)) for t in self.city.tiles if t.patch is not None]
        for k, (tile, block) in enumerate(tiles):
            want = n // len(tiles) + (1 if k < n % len(tiles) else 0)
            cx, cy = (block[0] + block[2]) / 2, (block[1] + block[3]) / 2
            x, y = cx + self.rng.uniform(-45, 45, 3000), cy + self.rng.uniform(-45, 45, 3000)
            frac = shapely.area(shapely.intersection(_boxes(x, y, CHIP_M / 2), shapely.box(*block))) / CHIP_M**2
            ok = (frac >= 0.09) & fits([outer_polygon(self.city, tile)], x, y, FIT_HALF_M)
            others = [p for t, p in zip(self.city.tiles, self.outer) if t is not tile]
            ok &= ~fits(others, x, y, NO_FIT_HALF_M)
            ok[ok] = outdoors(self.world, x[ok], y[ok])
            found += self._take(x, y, ok, want, "nodata_chip")
        return found

    def moved(self, x: float, y: float) -> tuple[float, float]:
        """A place 200-600 m from (x, y) where an ordinary photo's chip fits (a wrong geotag)."""
        r = self.rng.uniform(*WRONG_GEOTAG_M, 400)
        a = self.rng.uniform(0, 2 * math.pi, 400)
        px, py = x + r * np.sin(a), y + r * np.cos(a)
        ok = fits(self.valid, px, py, FIT_HALF_M)
        return self._take(px, py, ok, 1, "wrong_geotag")[0]

    def beside(self, x: float, y: float) -> tuple[float, float]:
        """A spot 2-8 m from (x, y) where a person can stand (a near duplicate)."""
        r, a = self.rng.uniform(2.5, 7.5, 200), self.rng.uniform(0, 2 * math.pi, 200)
        px, py = x + r * np.sin(a), y + r * np.cos(a)
        ok = outdoors(self.world, px, py) & fits(self.valid, px, py, CHIP_M / 2 + 5.0)
        if not ok.any():
            raise ConfigError(f"demo city {self.city.name}: no room for a near duplicate beside ({x:.0f}, {y:.0f})")
        i = int(np.argmax(ok))
        return float(px[i]), float(py[i])


def bearing(world: World, x: float, y: float, rng: np.random.Generator) -> float:
    """A direction to look: often along the street grid, never straight into a wall a few metres away."""
    grid = math.degrees(world.angle)
    along = grid + 90.0 * rng.integers(0, 4, 12) + rng.normal(0, 12, 12)
    candidates = np.where(rng.random(12) < 0.5, along, rng.uniform(0, 360, 12)) % 360.0
    d = np.array([3.0, 6.0, 9.0, 12.0])
    az = np.radians(candidates)[:, None, None] + np.radians([-25.0, 0.0, 25.0])[None, :, None]
    free = sample(world, x + d * np.sin(az), y + d * np.cos(az), detail=False).height == 0
    open_ = free.all(axis=(1, 2))
    return round(float(candidates[int(np.argmax(open_))] if open_.any() else candidates[0]), 1)


def plan_city(city: City, world: World, counts: dict[str, int], rng: np.random.Generator) -> list[Shot]:
    """Every photo of one city: ordinary ones, then the planted cases, in a shuffled order."""
    placer = _Placer(city, world, rng)
    shots: list[Shot] = []
    for case, where in (("nodata_chip", placer.over_patch), ("near_tile_edge", placer.near_edge),
                        ("outside_tiles", placer.outside)):
        shots += [Shot(city.index, case, x, y, 0.0) for x, y in where(counts.get(case, 0))]
    at_good = [c for c in AT_GOOD_PLACE for _ in range(counts.get(c, 0))]
    n_dup = counts.get("near_duplicate", 0)
    good = placer.good(city.n_photos + len(at_good))
    order = rng.permutation(len(good))
    kinds = ["normal"] * city.n_photos + at_good
    base = len(shots)
    shots += [Shot(city.index, kinds[order[i]], x, y, 0.0) for i, (x, y) in enumerate(good)]
    shots = [replace(s, geotag=placer.moved(s.x, s.y)) if s.case == "wrong_geotag" else s for s in shots]
    normals = [i for i in range(base, len(shots)) if shots[i].case == "normal"]
    for partner in normals[:n_dup]:
        x, y = placer.beside(shots[partner].x, shots[partner].y)
        shots.append(Shot(city.index, "near_duplicate", x, y, 0.0, partner))
    return [replace(s, bearing_deg=bearing(world, s.x, s.y, rng)) for s in shots]
