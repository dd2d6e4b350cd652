"""Render a demo ground photo: a crude street-level perspective view of the world from a camera.

The rays (:mod:`pipeline.demo.rays`) say what each image column sees; the picture is then
composed in layers, each computed only where it shows: sky (a gradient, clouds on hazy days),
the far city on the horizon, the ground under each line of sight (coloured from the same
spectra as the overhead tiles), the facade of the first building (height from its distance,
wall colour lit by the sun, windows; a pitched roof shows its tiles or slate above the eaves,
in the colour the overhead tiles show), the first two trees in front (ellipsoid canopies on
trunks), and aerial haze. The same camera always gives the same pixels.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from pipeline.demo.noise import hash32, to_unit, value_noise
from pipeline.demo.palette import COVER_SPECTRA, ROOF_PITCHED, ROOFS, WALLS, Cover, rgb_of
from pipeline.demo.rays import STEPS, Rays, march
from pipeline.demo.world import Sun, World

EYE_M = 1.7
PITCH_M = 2.5  # the pitched part of a pitched roof (world.py adds it above the top storey)
GLASS = np.array([0.045, 0.06, 0.08], np.float32)
TRUNK = np.array([0.07, 0.05, 0.035], np.float32)
LEAVES = np.array([0.045, 0.085, 0.03], np.float32)
SKIES = (  # (horizon, zenith) in linear units: clear, hazy, overcast
    ((0.34, 0.38, 0.42), (0.10, 0.18, 0.36)),
    ((0.40, 0.41, 0.42), (0.20, 0.26, 0.36)),
    ((0.33, 0.335, 0.34), (0.24, 0.245, 0.26)),
)


@dataclass(frozen=True)
class Camera:
    """Where a photo is taken from and how: metres in the city frame, bearing clockwise from north."""

    x: float
    y: float
    bearing_deg: float
    width: int = 500
    height: int = 375
    hfov_deg: float = 70.0
    pitch_deg: float = 2.0
    sky: int = 0  # index into SKIES
    exposure: float = 2.4
    panoramic: bool = False  # a cylindrical 360 degree panorama: column 0 starts at bearing_deg, no vignette

    @property
    def focal_px(self) -> float:
        """Focal length in pixels (a panorama's: its width over 2 pi)."""
        if self.panoramic:
            return self.width / (2 * math.pi)
        return (self.width / 2) / math.tan(math.radians(self.hfov_deg) / 2)


_EXTRA = ("far_ground", "skyline", "glass", "trunk", "leaves")  # palette order after the land covers


class _Canvas:
    """The picture as palette indices, a brightness per pixel and a depth per pixel, painted in layers."""

    def __init__(self, cam: Camera, t: np.ndarray, az: np.ndarray) -> None:
        h, w = cam.height, cam.width
        horizon, zenith = (np.array(c, np.float32) for c in SKIES[cam.sky])
        a = np.clip(t * 2.2, 0, 1).astype(np.float32)[:, None]
        self.haze = horizon
        # palette: one sky colour per row, the fixed colours, one lit wall and one roof colour per column
        fixed = np.concatenate([rgb_of(COVER_SPECTRA), [horizon * 0.8, horizon * np.float32([0.78, 0.8, 0.85])],
                                [GLASS, TRUNK, LEAVES]])
        water = rgb_of(COVER_SPECTRA[Cover.WATER])
        fixed[Cover.WATER] = 0.5 * water + 0.5 * horizon
        self.fixed0, self.wall0, self.roof0 = h, h + len(fixed), h + len(fixed) + w
        sky = horizon * (1 - a) + zenith * a
        self.palette = np.concatenate([sky, fixed, np.zeros((2 * w, 3), np.float32)]).astype(np.float32)
        self.index = np.broadcast_to(np.arange(h, dtype=np.int32)[:, None], (h, w)).copy()
        self.shade = np.ones((h, w), np.float32)
        if cam.sky == 1:
            clouds = value_noise(11, az[None, :] * 12.0, t[:, None] * 20.0, 1.0)
            clouds = 0.65 * clouds + 0.35 * value_noise(12, az[None, :] * 36.0, t[:, None] * 60.0, 1.0)
            self.shade += 0.5 * np.clip(clouds - 0.5, 0, 1) * (t[:, None] > 0)
        self.depth = np.full((h, w), np.inf, np.float32)

    def colour(self, name: str) -> int:
        """Palette index of a fixed colour other than a land cover (see ``_EXTRA``)."""
        return self.fixed0 + len(COVER_SPECTRA) + _EXTRA.index(name)

    def paint(self, mask: np.ndarray, index, shade=1.0, depth=None, cols=slice(None), rows=slice(None)) -> None:
        """Set palette index, brightness and depth where ``mask`` (over ``rows`` x ``cols``) holds."""
        for target, value in ((self.index, index), (self.shade, shade), (self.depth, depth)):
            if value is not None:
                part = target[rows]
                part[:, cols] = np.where(mask, value, part[:, cols])


def _ground(world: World, rays: Rays, t: np.ndarray, cv: _Canvas) -> None:
    """Paint the ground where each below-horizon row's line of sight meets it."""
    rows = slice(int(np.argmax(t < 0)), t.size)
    z = (EYE_M / -t[rows]).astype(np.float32)[:, None]
    dist = z / rays.cos_off[None, :].astype(np.float32)
    cover = rays.cover_at(dist)
    seen = cover > 0
    gx, gy = rays.x0 + dist * rays.dx, rays.y0 + dist * rays.dy
    grain = 0.8 + 0.4 * value_noise(world.seed + 7, np.where(seen, gx, 0.0), np.where(seen, gy, 0.0), 1.3)
    far = ~seen & (dist > STEPS[-1]) & ~np.isfinite(rays.hit_d)[None, :]  # beyond the rays' reach
    index = np.where(far, cv.colour("far_ground"), cv.fixed0 + cover.astype(np.int32))
    cv.paint(seen | far, index, grain, np.where(far, np.float32(600.0), z), rows=rows)


def _skyline(world: World, rays: Rays, t: np.ndarray, az: np.ndarray, cv: _Canvas) -> None:
    """Paint the far city on the horizon where no near building blocks the view."""
    rise = 0.004 + 0.035 * value_noise(world.seed + 5, np.floor(az * 60.0), np.zeros_like(az), 1.0)
    mask = (t[:, None] >= 0) & (t[:, None] < rise[None, :]) & ~np.isfinite(rays.hit_d)[None, :]
    cv.paint(mask, cv.colour("skyline"), 1.0)


def _facades(rays: Rays, t: np.ndarray, sun: Sun, cv: _Canvas) -> None:
    """Paint each column's first building: lit wall colour, windows, a darker cornice."""
    cols = np.flatnonzero(np.isfinite(rays.hit_d))
    h = {n: v[cols] for n, v in rays.hit.items()}
    z_facade = (rays.hit_d[cols] * rays.cos_off[cols]).astype(np.float32)
    sx, sy = sun.toward
    lit = np.clip(h["wall_nx"] * sx + h["wall_ny"] * sy, 0, 1) * math.cos(math.radians(sun.elevation))
    cv.palette[cv.wall0 + cols] = WALLS[h["wall"]] * (0.5 + 0.5 * lit)[:, None]
    cv.palette[cv.roof0 + cols] = rgb_of(ROOFS[h["roof"]]) * (0.75 + 0.35 * lit)[:, None]
    spacing = 2.6 + 1.2 * to_unit(hash32(5, h["building"]))
    col_in = _frac(h["wall_t"] / spacing) - 0.5
    col_in = np.abs(col_in) < 0.2
    shop_col = np.abs(_frac(h["wall_t"] / 5.0) - 0.5) < 0.38
    zw = EYE_M + t.astype(np.float32)[:, None] * z_facade[None, :]
    floor = zw / np.maximum(h["storey_m"], 2.5)[None, :]
    frac = _frac(floor)
    upper = col_in[None, :] & (frac > 0.3) & (frac < 0.8) & (floor > 1.0)
    windows = upper | (shop_col[None, :] & (floor > 0.1) & (floor < 0.75))
    index = np.where(windows, cv.colour("glass"), (cv.wall0 + cols)[None, :])
    shade = np.where(zw > h["height"][None, :] - 0.45, np.float32(0.7), np.float32(1.0))
    roof = ROOF_PITCHED[h["roof"]][None, :] & (zw > h["height"][None, :] - PITCH_M)
    index = np.where(roof, (cv.roof0 + cols)[None, :], index)
    shade = np.where(roof, np.float32(1.0), shade)
    wall = (zw >= 0) & (zw <= h["height"][None, :])
    cv.paint(wall, index, shade, z_facade[None, :], cols)


def _frac(x: np.ndarray) -> np.ndarray:
    """Fractional part (faster than ``x % 1.0``)."""
    return x - np.floor(x)


def _trees(rays: Rays, t: np.ndarray, cv: _Canvas) -> None:
    """Paint the trees each ray meets, farthest first, in front of what is behind them."""
    for slot in reversed(rays.trees):
        _tree(rays, slot, t, cv)


def _tree(rays: Rays, slot: dict, t: np.ndarray, cv: _Canvas) -> None:
    """Paint one tree per column (one slot of ``rays.trees``): an ellipsoid canopy on a trunk."""
    cols = np.flatnonzero(slot["k"] >= 0)
    tr = {n: v[cols] for n, v in slot.items()}
    rx, ry = tr["tree_x"] - rays.x0, tr["tree_y"] - rays.y0
    lateral = np.abs(rx * rays.dy[cols] - ry * rays.dx[cols])
    z_tree = np.maximum((rx * rays.dx[cols] + ry * rays.dy[cols]) * rays.cos_off[cols], 0.5).astype(np.float32)
    top, radius = tr["tree_top"], np.maximum(tr["tree_r"], 0.5)
    crown_lo = 0.38 * top
    half = (top - crown_lo) / 2 * np.sqrt(np.clip(1 - (lateral / radius) ** 2, 0, 1))
    z = EYE_M + t[:, None] * z_tree[None, :]
    crown = np.abs(z - (crown_lo + top) / 2) < half
    trunk = (lateral < 0.16) & (z >= 0) & (z <= crown_lo + 0.2)
    rows = np.flatnonzero((crown | trunk).any(axis=1))
    if rows.size == 0:
        return
    band = slice(rows[0], rows[-1] + 1)  # only the rows a tree reaches get texture
    crown, trunk, z = crown[band], trunk[band], z[band]
    leaf = 0.7 + 0.6 * value_noise(3, lateral[None, :] * 3.0 + tr["tree_x"][None, :], z * 3.0, 1.0)
    shade = np.where(trunk, np.float32(1.0), leaf * (tr["tree_shade"] * (1.1 - 0.4 * lateral / radius))[None, :])
    index = np.where(trunk, cv.colour("trunk"), cv.colour("leaves"))
    mask = (crown | trunk) & (z_tree[None, :] < cv.depth[band][:, cols])
    cv.paint(mask, index, shade, z_tree[None, :], cols, band)


def render(world: World, cam: Camera, sun: Sun) -> np.ndarray:
    """The photo (height, width, 3) uint8 seen by ``cam`` in ``world`` under ``sun``."""
    rays = march(world, cam.x, cam.y, cam.bearing_deg, cam.width, cam.hfov_deg, cam.panoramic)
    f = cam.focal_px
    horizon = cam.height / 2 + f * math.tan(math.radians(cam.pitch_deg))
    t = (horizon - (np.arange(cam.height) + 0.5)) / f  # tangent of each row's elevation
    if cam.panoramic:
        az = math.radians(cam.bearing_deg) + (np.arange(cam.width) + 0.5) * (2 * math.pi / cam.width)
    else:
        az = math.radians(cam.bearing_deg) + np.arctan((np.arange(cam.width) + 0.5 - cam.width / 2) / f)
    cv = _Canvas(cam, t, az)
    _skyline(world, rays, t, az, cv)
    _ground(world, rays, t, cv)
    _facades(rays, t, sun, cv)
    _trees(rays, t, cv)
    fog = np.where(np.isfinite(cv.depth), 1 - np.exp(-np.minimum(cv.depth, 1e4) / 420.0), 0).astype(np.float32)
    lens = np.float32(1.0) if cam.panoramic else _vignette(cam.height, cam.width)
    gain = lens * np.float32(cam.exposure * 4095)
    img = cv.palette[cv.index] * (cv.shade * (1 - fog) * gain)[..., None] + cv.haze * (fog * gain)[..., None]
    return _GAMMA[np.clip(img, 0, 4095).astype(np.int32)]


@lru_cache(maxsize=8)
def _vignette(height: int, width: int) -> np.ndarray:
    """A gentle lens fall-off toward the corners."""
    yy, xx = np.mgrid[0:height, 0:width]
    r2 = ((xx - width / 2) / (width / 2)) ** 2 + ((yy - height / 2) / (height / 2)) ** 2
    return (1 - 0.12 * r2).astype(np.float32)


_GAMMA = (np.linspace(0, 1, 4096) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)



def random_camera(x: float, y: float, bearing_deg: float, rng: np.random.Generator) -> Camera:
    """A phone or compact camera held at eye height: Flickr's 500 px size, landscape or portrait."""
    size = [(500, 375), (500, 333), (375, 500)][int(rng.choice(3, p=[0.78, 0.1, 0.12]))]
    hfov = rng.uniform(58.0, 78.0) * (0.75 if size[0] < size[1] else 1.0)
    return Camera(x, y, bearing_deg, size[0], size[1], round(float(hfov), 1), round(float(rng.uniform(0.0, 6.0)), 1),
                  int(rng.choice(3, p=[0.5, 0.3, 0.2])), round(float(rng.uniform(2.2, 2.7)), 2))


def encode(rgb: np.ndarray, case: str, quality: int = 88) -> bytes:
    """The photo file for a planted case: JPEG (RGB, grayscale or CMYK), truncated, or empty."""
    if case == "zero_byte":
        return b""
    image = Image.fromarray(rgb)
    if case == "single_band":
        image = image.convert("L")
    elif case == "cmyk":
        image = image.convert("CMYK")
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    data = buf.getvalue()
    return data[: int(len(data) * 0.4)] if case == "truncated" else data
