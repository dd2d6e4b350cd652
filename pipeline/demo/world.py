"""A procedural city for the demo: streets, blocks, buildings, parks, trees and water, in metres.

A :class:`World` is a handful of arrays (street lines, a tree grid, the water body) built once
per city from a seed; :func:`sample` answers, for any array of points (metres east/north of the
city origin), what is there: land cover, building id and height, roof and wall material, the
nearest wall, tree canopy. Per-object attributes (a block's use, a lot's building, a tree) are
hashed from their integer grid keys (:mod:`pipeline.demo.noise`), so the answer depends only on
the point: the overhead rasters and the ground photos are both rendered from this one world.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from pipeline.demo.noise import draw, hash32, uniform, value_noise
from pipeline.demo.palette import ROOF_PITCHED, Cover

TREE_CELL_M = 10.0
# Salts for the hashed attributes of one object, so that no two attributes share a draw.
_S_BLOCK, _S_LOTW, _S_STREET = 1, 2, 3
_S_SIDE, _S_SIDEGAP, _S_FRONT, _S_BACK, _S_EMPTY, _S_YARD = 10, 11, 12, 13, 14, 15
_S_STOREYS, _S_TOWER, _S_TOWERH, _S_STOREYM, _S_ROOF, _S_WALL, _S_ERA = 20, 21, 22, 23, 24, 25, 26
DISTRICT_M = 300.0  # the scale on which a city's building style (old town .. modern) changes
OLD_WALLS, NEW_WALLS = np.array([0, 1, 4, 6, 7, 0, 6, 1]), np.array([2, 3, 5, 1, 2, 3, 5, 2])  # palette.WALLS
DENSE, SUBURB, PARK, PLAZA = range(4)
# Flat roofs (palette.ROOFS 1..6: concrete, bitumen, white, green metal, blue metal, gravel): shares.
_FLAT_ROOF_CUMULATIVE = np.cumsum([0.34, 0.20, 0.08, 0.05, 0.06])


@dataclass(frozen=True)
class Streets:
    """Street centre lines along one axis of the grid, with roadway half-widths and sidewalk widths."""

    centre: np.ndarray
    half_width: np.ndarray
    sidewalk: np.ndarray


@dataclass(frozen=True)
class Water:
    """A river (sinuous band) or a lake (ellipse) in a frame rotated by ``angle``."""

    kind: str
    cx: float
    cy: float
    angle: float
    size_a: float  # river: half-width; lake: semi-major axis
    size_b: float  # river: meander amplitude; lake: semi-minor axis
    wavelength: float
    phase: float


@dataclass(frozen=True)
class Trees:
    """One possible tree per ``TREE_CELL_M`` cell, its canopy wholly inside the cell."""

    x0: float
    y0: float
    exists: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    top: np.ndarray
    shade: np.ndarray


@dataclass(frozen=True)
class World:
    """One demo city: a rotated street grid, a downtown, a water body and trees."""

    seed: int
    angle: float
    u: Streets
    v: Streets
    downtown: tuple[float, float]
    water: Water
    trees: Trees | None = None


@dataclass(frozen=True)
class Sun:
    """Where the sun is for a city's image: azimuth clockwise from north, elevation, in degrees."""

    azimuth: float
    elevation: float

    @property
    def toward(self) -> tuple[float, float]:
        """Unit vector (east, north) pointing toward the sun."""
        a = math.radians(self.azimuth)
        return math.sin(a), math.cos(a)


class Sample(NamedTuple):
    """What the world holds at each queried point (arrays of the query's shape).

    Fields marked * are None when sampled with ``detail=False``.
    """

    cover: np.ndarray  # uint8 Cover
    building: np.ndarray  # int64 building id, -1 where there is none
    height: np.ndarray  # float32 building height in metres (0 off buildings)
    roof: np.ndarray  # * uint8 index into palette.ROOFS
    roof_shade: np.ndarray  # * float32 brightness of the roof facet (pitched roofs have two)
    wall: np.ndarray  # * uint8 index into palette.WALLS
    wall_nx: np.ndarray  # * float32 outward normal (east, north) of the nearest wall of the lot's building
    wall_ny: np.ndarray  # *
    wall_t: np.ndarray  # * float32 position along that wall in metres (for window columns)
    storey_m: np.ndarray  # float32 storey height
    canopy: np.ndarray  # float32 height of the tree top (0 where no canopy)
    tree_top: np.ndarray  # float32 top of the tree of this point's grid cell (0 if the cell has none)
    tree_x: np.ndarray  # float64 centre of the tree of the point's grid cell
    tree_y: np.ndarray
    tree_r: np.ndarray  # float32 canopy radius
    tree_shade: np.ndarray  # float32 leaf brightness


def _streets(rng: np.random.Generator, half_extent: float) -> Streets:
    """Street lines across [-half_extent, half_extent]: varied block lengths and street widths."""
    widths = np.array([7.0, 9.0, 12.0, 16.0, 22.0])
    probs = np.array([0.22, 0.33, 0.25, 0.13, 0.07])
    centre, half, side = [], [], []
    pos = -half_extent - 200.0
    while pos < half_extent + 200.0:
        w = float(rng.choice(widths, p=probs))
        centre.append(pos)
        half.append(w / 2)
        side.append(2.0 + 0.12 * w + rng.uniform(0, 1.0))
        pos += w + rng.uniform(60.0, 140.0)
    return Streets(np.array(centre), np.array(half), np.array(side))


def _water(rng: np.random.Generator, kind: str, aoi_m: tuple[float, float, float, float]) -> Water:
    """A river crossing the area of interest, or a lake inside it."""
    x0, y0, x1, y1 = aoi_m
    cx = rng.uniform(x0 + 0.3 * (x1 - x0), x0 + 0.7 * (x1 - x0))
    cy = rng.uniform(y0 + 0.25 * (y1 - y0), y0 + 0.75 * (y1 - y0))
    if kind == "river":
        return Water("river", cx, cy, rng.uniform(-0.5, 0.5), rng.uniform(22, 38), rng.uniform(40, 90),
                     rng.uniform(700, 1400), rng.uniform(0, 2 * math.pi))
    return Water("lake", cx, cy, rng.uniform(0, math.pi), rng.uniform(110, 170), rng.uniform(60, 100), 0.0, 0.0)


def build_world(seed: int, aoi_m: tuple[float, float, float, float], water: str, half_extent: float) -> World:
    """Build one city from a seed; ``aoi_m`` (x0, y0, x1, y1) is where its tiles lie, in metres."""
    rng = np.random.default_rng([seed, 0x57A1D])
    angle = rng.uniform(-0.35, 0.35)
    u, v = _streets(rng, half_extent), _streets(rng, half_extent)
    cx, cy = (aoi_m[0] + aoi_m[2]) / 2, (aoi_m[1] + aoi_m[3]) / 2
    downtown = (cx + rng.uniform(-250, 250), cy + rng.uniform(-200, 200))
    world = World(seed, angle, u, v, downtown, _water(rng, water, aoi_m))
    return replace(world, trees=_plant_trees(world, half_extent))


def _plant_trees(world: World, half_extent: float) -> Trees:
    """Decide, once, which grid cells hold a tree: likely in parks, on lawns and some sidewalks."""
    n = math.ceil(2 * half_extent / TREE_CELL_M)
    x0 = y0 = -half_extent
    j, i = np.meshgrid(np.arange(n), np.arange(n), indexing="xy")
    seed = world.seed + 101
    radius = 2.0 + 2.6 * uniform(seed, i, j, 1)
    cx = x0 + j * TREE_CELL_M + radius + (TREE_CELL_M - 2 * radius) * uniform(seed, i, j, 2)
    cy = y0 + i * TREE_CELL_M + radius + (TREE_CELL_M - 2 * radius) * uniform(seed, i, j, 3)
    base = _ground(world, cx.ravel(), cy.ravel())
    cover, kind, street_trees = (a.reshape(cx.shape) for a in (base["cover"], base["kind"], base["street_trees"]))
    prob = np.zeros(cx.shape, np.float32)
    prob[(cover == Cover.GRASS) & (kind == PARK)] = 0.6
    prob[(cover == Cover.GRASS) & (kind != PARK)] = 0.22
    prob[(cover == Cover.SIDEWALK) & street_trees] = 0.75
    prob[(cover == Cover.PAVED) & (kind == PLAZA)] = 0.15
    exists = uniform(seed, i, j, 4) < prob
    top = (5.0 + 3.0 * radius * uniform(seed, i, j, 5)).astype(np.float32)
    shade = (0.75 + 0.5 * uniform(seed, i, j, 6)).astype(np.float32)
    return Trees(x0, y0, exists, cx, cy, radius.astype(np.float32), top, shade)


class _Axis(NamedTuple):
    block: np.ndarray  # index of the block (between street i and i+1)
    road: np.ndarray
    walk: np.ndarray  # road or sidewalk
    s: np.ndarray  # position inside the block's interior
    length: np.ndarray  # interior length of the block
    street: np.ndarray  # nearest street line
    off: np.ndarray  # distance to that street's centre line


def _axis(st: Streets, q: np.ndarray) -> _Axis:
    """Locate coordinates ``q`` among one axis's streets."""
    i = np.clip(np.searchsorted(st.centre, q) - 1, 0, len(st.centre) - 2)
    c0, c1 = st.centre[:-1], st.centre[1:]
    road0, road1 = c0 + st.half_width[:-1], c1 - st.half_width[1:]
    start, stop = road0 + st.sidewalk[:-1], road1 - st.sidewalk[1:]
    # one gather of every per-block edge, then plain comparisons
    c0, c1, road0, road1, start, stop = np.stack([c0, c1, road0, road1, start, stop], axis=1)[i].T
    near0 = q - c0 < c1 - q
    return _Axis(
        block=i,
        road=(q < road0) | (q > road1),
        walk=(q < start) | (q > stop),
        s=q - start,
        length=stop - start,
        street=np.where(near0, i, i + 1),
        off=np.where(near0, q - c0, c1 - q),
    )


def _block_kind(world: World, iu: np.ndarray, iv: np.ndarray, ax: _Axis, ay: _Axis
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each block's use (dense, suburb, park, plaza), distance from downtown (metres) and district style
    (0 old town .. 1 modern, smooth over blocks: districts share an architecture, seen from above and below)."""
    ca, sa = math.cos(world.angle), math.sin(world.angle)
    bu = world.u.centre[iu] + (ax.length / 2 + world.u.half_width[iu] + world.u.sidewalk[iu])
    bv = world.v.centre[iv] + (ay.length / 2 + world.v.half_width[iv] + world.v.sidewalk[iv])
    bx, by = bu * ca - bv * sa, bu * sa + bv * ca
    r = np.hypot(bx - world.downtown[0], by - world.downtown[1])
    t = np.clip((r - 250.0) / 700.0, 0, 1).astype(np.float32)
    p_park, p_plaza = 0.11 + 0.07 * t, 0.08 - 0.06 * t
    p_dense = (1 - p_park - p_plaza) * (1 - 0.85 * t)
    x = uniform(world.seed, iu, iv, _S_BLOCK)
    kind = np.where(x < p_dense, DENSE, SUBURB)
    kind = np.where(x >= 1 - p_park, PARK, kind)
    style = np.clip(2.0 * value_noise(world.seed + 41, bx, by, DISTRICT_M) - 0.5, 0, 1)  # stretched: clear districts
    return np.where((x >= 1 - p_park - p_plaza) & (x < 1 - p_park), PLAZA, kind), r, style


def _water_mask(w: Water, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(water, bank): inside the water body, and on the 12 m park strip around it."""
    c, s = math.cos(w.angle), math.sin(w.angle)
    p, q = (x - w.cx) * c + (y - w.cy) * s, -(x - w.cx) * s + (y - w.cy) * c
    if w.kind == "river":
        k = 2 * math.pi / w.wavelength
        slope = w.size_b * k * np.cos(k * p + w.phase)
        dist = np.abs(q - w.size_b * np.sin(k * p + w.phase)) / np.sqrt(1 + slope * slope)
        return dist < w.size_a, dist < w.size_a + 12.0
    rho = np.sqrt((p / w.size_a) ** 2 + (q / w.size_b) ** 2)
    return rho < 1.0, rho < 1.0 + 12.0 / w.size_b


def _ground(world: World, x: np.ndarray, y: np.ndarray, detail: bool = True) -> dict[str, np.ndarray]:
    """Everything but trees: streets, blocks, lots and buildings, water (flat arrays)."""
    ca, sa = math.cos(world.angle), math.sin(world.angle)
    u, v = x * ca + y * sa, -x * sa + y * ca
    ax, ay = _axis(world.u, u), _axis(world.v, v)
    iu, iv = ax.block, ay.block
    kind, r, style = _block_kind(world, iu, iv, ax, ay)
    out = _buildings(world, kind, r, style, ax, ay, detail)
    cover = out["cover"]
    park_path = (kind == PARK) & ((np.abs(ax.s - ax.length / 2) < 1.6) | (np.abs(ay.s - ay.length / 2) < 1.6))
    cover = np.where(park_path, np.uint8(Cover.PAVED), cover)
    fountain = (kind == PLAZA) & (np.hypot(ax.s - ax.length / 2, ay.s - ay.length / 2) < 5.0)
    cover = np.where(fountain, np.uint8(Cover.WATER), cover)
    along = np.where(np.abs(ax.off) < np.abs(ay.off), v, u)
    wide = np.where(ax.road, world.u.half_width[ax.street], world.v.half_width[ay.street]) >= 4.0
    marking = (ax.road ^ ay.road) & wide & (np.minimum(ax.off, ay.off) < 0.12) & ((along % 6.0) < 3.0)
    road_cover = np.where(marking, np.uint8(Cover.MARKING), np.uint8(Cover.ROAD))
    walk = ax.walk | ay.walk
    cover = np.where(walk, np.uint8(Cover.SIDEWALK), cover)
    road = ax.road | ay.road
    cover = np.where(road, road_cover, cover)
    water, bank = _water_mask(world.water, x, y)
    bridge = road & (np.where(ax.road, world.u.half_width[ax.street], world.v.half_width[ay.street]) >= 5.5)
    cover = np.where(bank & ~bridge, np.uint8(Cover.GRASS), cover)
    cover = np.where(water & ~bridge, np.uint8(Cover.WATER), cover)
    on_roof = cover == Cover.ROOF
    out["cover"] = cover
    out["building"] = np.where(on_roof, out["building"], -1)
    out["height"] = np.where(on_roof, out["height"], np.float32(0))
    out["kind"] = kind
    if detail:
        street = np.where(ax.off < ay.off, ax.street, ay.street + 100_000)
        out["street_trees"] = uniform(world.seed, street, _S_STREET) < 0.55
    return out


def _lot(kind: np.ndarray, seed: int, iu: np.ndarray, iv: np.ndarray, ax: _Axis, ay: _Axis):
    """Split each block into lots; return lot keys and the position inside the lot."""
    dense = kind == DENSE
    lot_w = np.where(dense, 12.0, 15.0) + np.where(dense, 12.0, 8.0) * uniform(seed, iu, iv, _S_LOTW)
    n = np.maximum(1, np.round(ax.length / lot_w))
    lw = ax.length / n
    lu = np.clip(np.floor(ax.s / lw), 0, n - 1)
    rows = np.where(ay.length > 40.0, 2, 1)
    lvw = ay.length / rows
    lv = np.where((rows == 2) & (ay.s >= lvw), 1, 0)
    a, b = ax.s - lu * lw, ay.s - lv * lvw
    front = np.where(lv == 0, b, lvw - b)  # distance from the street the lot faces
    return lu.astype(np.int64), lv, a, lw, front, lvw - front


def _buildings(world: World, kind, r, style, ax: _Axis, ay: _Axis, detail: bool) -> dict[str, np.ndarray]:
    """Buildings on lots of built blocks; yards, parks and plazas elsewhere (walls and roofs if ``detail``)."""
    iu, iv, dense = ax.block, ay.block, kind == DENSE
    lu, lv, a, lw, front, back = _lot(kind, world.seed, iu, iv, ax, ay)
    h = hash32(world.seed, iu, iv, lu, lv)
    gap = draw(h, _S_SIDEGAP)
    side = np.where(dense, np.where(draw(h, _S_SIDE) < 0.7, 0.0, 1.0 + 2.0 * gap), 2.0 + 3.0 * gap)
    f_r, b_r = draw(h, _S_FRONT), draw(h, _S_BACK)
    f_in = np.where(dense, 2.0 * f_r, 4.0 + 5.0 * f_r)
    b_in = np.where(dense, 3.0 + 7.0 * b_r, 6.0 + 9.0 * b_r)
    built = (kind == DENSE) | (kind == SUBURB)
    empty = draw(h, _S_EMPTY) < 0.06
    e = (a - side, lw - side - a, front - f_in, back - b_in)  # distance to each wall
    inside = built & ~empty & (np.minimum(np.minimum(e[0], e[1]), np.minimum(e[2], e[3])) >= 0)
    yard_r = draw(h, _S_YARD)
    yard_dense = np.where(yard_r < 0.7, Cover.PAVED, Cover.GRASS)
    yard = np.where(dense, yard_dense, np.where(yard_r < 0.85, Cover.GRASS, Cover.SOIL))
    yard = np.where(built & empty, np.where(dense, Cover.PAVED, Cover.SOIL), yard)
    yard = np.where(kind == PARK, Cover.GRASS, np.where(kind == PLAZA, Cover.PAVED, yard))
    out = _building_looks(h, dense, r, style, detail)
    if detail:
        out.update(_walls(world, e, lv, ax, ay))
        pitched = ROOF_PITCHED[out["roof"]]
        out["roof_shade"] = np.where(pitched, np.where(e[2] < (e[2] + e[3]) / 2, 0.8, 1.08), 1.0).astype(np.float32)
    out["cover"] = np.where(inside, Cover.ROOF, yard).astype(np.uint8)
    out["building"] = ((iu * 4096 + iv) * 64 + lu) * 2 + lv
    return out


def _walls(world: World, e: tuple, lv: np.ndarray, ax: _Axis, ay: _Axis) -> dict[str, np.ndarray]:
    """The nearest wall of each point's footprint: outward normal (east, north) and position along it."""
    nearest = np.argmin(np.stack(e), axis=0)
    ca, sa = math.cos(world.angle), math.sin(world.angle)
    # walls at a=0 and a=lw face -u and +u; the front faces the lot's street, the back away from it
    sgn_front = np.where(lv == 0, -1.0, 1.0)
    nu = np.array([-1.0, 1.0, 0.0, 0.0])[nearest]
    nv = np.array([0.0, 0.0, 1.0, -1.0])[nearest] * sgn_front
    return {
        "wall_nx": (nu * ca - nv * sa).astype(np.float32),
        "wall_ny": (nu * sa + nv * ca).astype(np.float32),
        "wall_t": np.where(nearest < 2, ay.s, ax.s).astype(np.float32),
    }


def _building_looks(h: np.ndarray, dense: np.ndarray, r: np.ndarray, style: np.ndarray, detail: bool
                    ) -> dict[str, np.ndarray]:
    """Height and storey height of the building on each lot; roof material and wall colour if ``detail``.

    Old-town districts (low ``style``) build pitched red-tiled roofs over brick and warm plaster;
    modern ones flat roofs over white, concrete and glass.
    """
    core = np.exp(-((r / 450.0) ** 2))
    h1, h2 = draw(h, _S_STOREYS), draw(h, _S_TOWER)
    storeys = np.where(dense, np.maximum(2, np.round((3 + 7 * core) * (0.55 + 0.9 * h1))), 1 + np.floor(2.6 * h1))
    tower = dense & (h2 < 0.05 * core)
    storeys = np.where(tower, 14 + np.floor(12 * draw(h, _S_TOWERH)), storeys)
    storey_m = (3.0 + 0.5 * draw(h, _S_STOREYM)).astype(np.float32)
    old = 1.0 - style
    pitched = (~dense | (storeys <= 5)) & (h2 < np.where(dense, 0.1 + 0.8 * old, 0.55 + 0.45 * old)) & ~tower
    height = (storeys * storey_m + np.where(pitched, 2.5, 0.8)).astype(np.float32)
    if not detail:
        return {"height": height, "storey_m": storey_m}
    roof_r = draw(h, _S_ROOF)
    roof_pitched = np.where(roof_r < 0.2 + 0.7 * old, 0, np.where(roof_r < 0.95, 7, 1))  # red clay, slate, grey
    roof_flat = 1 + np.searchsorted(_FLAT_ROOF_CUMULATIVE, roof_r, side="right")  # 1..6: concrete .. gravel
    roof = np.where(pitched, roof_pitched, roof_flat).astype(np.uint8)
    wall_i = np.minimum((draw(h, _S_WALL) * 8).astype(np.int64), 7)
    wall = np.where(draw(h, _S_ERA) < style, NEW_WALLS[wall_i], OLD_WALLS[wall_i]).astype(np.uint8)
    return {"height": height, "roof": roof, "wall": wall, "storey_m": storey_m}


def _canopy(trees: Trees, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The tree canopy (if any) over each point: its cell's tree only, as canopies stay in their cells."""
    n = trees.exists.shape[0]
    i = np.clip(((y - trees.y0) // TREE_CELL_M).astype(np.int64), 0, n - 1)
    j = np.clip(((x - trees.x0) // TREE_CELL_M).astype(np.int64), 0, n - 1)
    cx, cy, r = trees.cx[i, j], trees.cy[i, j], trees.radius[i, j]
    exists = trees.exists[i, j]
    top = np.where(exists, trees.top[i, j], np.float32(0))
    hit = exists & ((x - cx) ** 2 + (y - cy) ** 2 < r * r)
    return {
        "canopy": np.where(hit, top, np.float32(0)),
        "tree_top": top,
        "tree_x": cx,
        "tree_y": cy,
        "tree_r": r,
        "tree_shade": trees.shade[i, j],
    }


def sample(world: World, x: np.ndarray, y: np.ndarray, detail: bool = True) -> Sample:
    """What the world holds at points ``(x, y)`` (metres east/north of the city origin).

    With ``detail=False`` only cover, building, height, storey and canopy fields are filled
    (the rest are None): enough for ray marching, at about two thirds of the cost.
    """
    shape = np.shape(x)
    xf, yf = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    out = _ground(world, xf, yf, detail)
    if world.trees is not None:
        out.update(_canopy(world.trees, xf, yf))
        out["canopy"] = np.where(out["cover"] == Cover.WATER, np.float32(0), out["canopy"])
    else:
        zero = np.zeros(xf.shape, np.float32)
        out.update(canopy=zero, tree_top=zero, tree_x=xf, tree_y=yf, tree_r=zero, tree_shade=zero)
    return Sample(*(np.reshape(out[f], shape) if f in out else None for f in Sample._fields))
