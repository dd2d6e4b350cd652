"""Ray marching for the demo's ground photos: what each image column's line of sight meets.

One ray per column leaves the camera along the column's azimuth and steps through the world
(``STEPS``, finer near the camera) in chunks; a ray stops at its first building, whose distance
is then refined by bisection. Near the camera, changes of land cover between two steps are
bisected too, so kerbs and lawn edges do not show the step size as a staircase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.demo.palette import Cover
from pipeline.demo.world import World, sample

STEPS = np.array([0.4 + 0.6 * k + 0.0125 * k * k for k in range(100)])  # 0.4 m .. ~184 m
MAX_DIST_M = 150.0
NEAR_M = 30.0  # land-cover edges closer than this are located by bisection
CHUNK = 16
BISECT = 5
TREE_SLOTS = 2
TREE_FIELDS = ("tree_top", "tree_x", "tree_y", "tree_r", "tree_shade")
HIT_FIELDS = ("height", "wall", "roof", "wall_nx", "wall_ny", "wall_t", "storey_m", "building")


@dataclass(frozen=True)
class Rays:
    """Per-column ray geometry and what each ray met."""

    x0: float
    y0: float
    dx: np.ndarray  # (W,) unit direction, east
    dy: np.ndarray  # (W,) north
    cos_off: np.ndarray  # (W,) cosine of the angle from the optical axis
    cover: np.ndarray  # (K, W) land cover at each step (0 behind the first building)
    edge: np.ndarray  # (K, W) distance where cover changes between step k-1 and k
    hit_d: np.ndarray  # (W,) distance to the first building, inf if none within reach
    hit: dict  # HIT_FIELDS at the refined hit point, (W,) each
    trees: list  # per slot (nearest first): {"k": step where the ray meets the tree or -1, TREE_FIELDS...}

    def cover_at(self, dist: np.ndarray) -> np.ndarray:
        """Land cover where each column's ray has travelled ``dist`` (rows, W); 0 past the reach."""
        k = np.clip(np.searchsorted(STEPS, dist), 1, len(STEPS) - 1)
        col = np.arange(self.dx.size)[None, :]
        before, after = self.cover[k - 1, col], self.cover[k, col]
        cover = np.where((dist < self.edge[k, col]) | (after == Cover.ROOF), before, after)
        return np.where(dist <= STEPS[-1], cover, 0)


def march(world: World, x: float, y: float, bearing_deg: float, width: int, hfov_deg: float,
          panoramic: bool = False) -> Rays:
    """Cast one ray per image column from (x, y) and record what each meets.

    ``panoramic``: a cylindrical 360 degree image instead of a perspective one; column ``j`` looks
    along ``bearing_deg + (j + 0.5) * 360 / width`` and is its own optical axis.
    """
    if panoramic:
        off = np.zeros(width)
        az = math.radians(bearing_deg) + (np.arange(width) + 0.5) * (2 * math.pi / width)
    else:
        f = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
        off = np.arctan((np.arange(width) + 0.5 - width / 2) / f)
        az = math.radians(bearing_deg) + off
    dx, dy = np.sin(az), np.cos(az)
    k_all = len(STEPS)
    cover = np.zeros((k_all, width), np.uint8)
    first = np.full(width, -1)
    trees = [{"k": np.full(width, -1), **{n: np.zeros(width) for n in TREE_FIELDS}} for _ in range(TREE_SLOTS)]
    active = np.arange(width)
    for k0 in range(0, k_all, CHUNK):
        d = STEPS[k0 : k0 + CHUNK, None]
        s = sample(world, x + d * dx[active], y + d * dy[active], detail=False)
        cover[k0 : k0 + CHUNK, active] = s.cover
        _record_trees(s, x, y, dx[active], dy[active], active, k0, trees)
        building = s.height > 0
        hit = building.any(axis=0)
        first[active[hit]] = k0 + np.argmax(building[:, hit], axis=0)
        active = active[~hit]
        if active.size == 0 or STEPS[min(k0 + CHUNK, k_all) - 1] > MAX_DIST_M:
            break
    cover[(first >= 0)[None, :] & (np.arange(k_all)[:, None] > first[None, :])] = 0  # unseen, behind
    hit_d, hit, edge = _refine(world, x, y, dx, dy, first, cover)
    return Rays(x, y, dx, dy, np.cos(off), cover, edge, hit_d, hit, trees)


def _record_trees(s, x: float, y: float, dx, dy, active: np.ndarray, k0: int, trees: list) -> None:
    """Record, per column, the first trees (up to ``TREE_SLOTS``) whose canopy the ray crosses before a building.

    A canopy lies wholly inside its grid cell, so a ray crossing it has a step in that cell; the
    test is the tree centre's distance from the ray, which no step size can miss. The second
    tree is drawn where the first does not cover it (above or below its crown).
    """
    lateral = np.abs((s.tree_x - x) * dy - (s.tree_y - y) * dx)
    crosses = (s.tree_top > 0) & (lateral < s.tree_r) & (np.cumsum(s.height > 0, axis=0) == 0)
    for slot, tr in enumerate(trees):
        want = crosses & (tr["k"][active] < 0)[None, :]
        if slot:
            prev = trees[slot - 1]
            other = (s.tree_x != prev["tree_x"][active][None, :]) | (s.tree_y != prev["tree_y"][active][None, :])
            want &= (prev["k"][active] >= 0)[None, :] & other
        found = want.any(axis=0)
        if not found.any():
            continue
        cols = active[found]
        k = np.argmax(want[:, found], axis=0)
        tr["k"][cols] = k0 + k
        for name in TREE_FIELDS:
            tr[name][cols] = getattr(s, name)[k, found]


def _refine(world: World, x, y, dx, dy, first: np.ndarray, cover: np.ndarray) -> tuple[np.ndarray, dict, np.ndarray]:
    """Bisect, all at once, each ray's building hit and its near land-cover changes between steps.

    Returns the distance to each column's building (inf if none), the building's fields at the
    hit, and for every step the distance where the cover changes from the step before (or the
    step before itself where it does not, or is not refined).
    """
    cols = np.flatnonzero(first >= 0)
    near = STEPS <= NEAR_M
    change = np.zeros(cover.shape, bool)
    change[1:] = (cover[1:] != cover[:-1]) & (cover[1:] > 0) & (cover[:-1] > 0) & near[1:, None]
    k, ecol = np.nonzero(change)
    ray = np.r_[cols, ecol]
    lo = np.r_[np.where(first[cols] > 0, STEPS[np.maximum(first[cols] - 1, 0)], 0.0), STEPS[k - 1]]
    hi = np.r_[STEPS[first[cols]], STEPS[k]]
    before = np.r_[np.zeros(cols.size, np.uint8), cover[k - 1, ecol]]
    is_hit = np.arange(ray.size) < cols.size
    for _ in range(BISECT):  # keep: hi on the far side (building / new cover), lo on the near side
        mid = (lo + hi) / 2
        s = sample(world, x + mid * dx[ray], y + mid * dy[ray], detail=False)
        far = np.where(is_hit, s.height > 0, s.cover != before)
        hi, lo = np.where(far, mid, hi), np.where(far, lo, mid)
    s = sample(world, x + hi[: cols.size] * dx[cols], y + hi[: cols.size] * dy[cols])
    hit_d = np.full(dx.size, np.inf)
    hit_d[cols] = hi[: cols.size]
    hit = {n: np.zeros(dx.size, getattr(s, n).dtype) for n in HIT_FIELDS}
    for n in HIT_FIELDS:
        hit[n][cols] = getattr(s, n)
    edge = np.broadcast_to(np.r_[0.0, STEPS[:-1]][:, None], cover.shape).copy()
    edge[k, ecol] = hi[cols.size :]
    return hit_d, hit, edge
