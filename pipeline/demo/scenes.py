"""The demo's photos that show no street: indoor rooms, close-ups of things, portraits.

Flickr's geotagged photos include many that a cross-view dataset must not keep: rooms (the
indoor rule exists for them) and close-ups and portraits (the relevance rule and the curators
exist for them). Each is drawn here in flat shapes from the photo's own seed, at the camera's size,
so the same photo always gets the same pixels:

* ``indoor_view``: a room in one-point perspective (floor boards, walls, ceiling, a lamp) with a
  bookcase or a window on the back wall and a table in front;
* ``close_up``: a plate of food, a cup or a flower seen from close by, filling the frame;
* ``portrait``: a head and shoulders in front of a blurred background.
"""

from __future__ import annotations

import numpy as np

SCENES = ("indoor_view", "close_up", "portrait")


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates scaled to [-1, 1] across the width (y grows downwards)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    s = w / 2
    return (xx + 0.5 - s) / s, (yy + 0.5 - h / 2) / s


def _paint(img: np.ndarray, mask: np.ndarray, colour) -> None:
    img[mask] = np.asarray(colour, np.float32)


def _room(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A room in one-point perspective: ceiling, two side walls, floor boards, back wall with a bookcase or window."""
    x, y = _grid(h, w)
    img = np.zeros((h, w, 3), np.float32)
    cx, cy = rng.uniform(-0.2, 0.2), rng.uniform(-0.15, 0.05)
    bw, bh = rng.uniform(0.35, 0.55), rng.uniform(0.25, 0.4)  # back wall half-sizes
    wall = rng.uniform(0.55, 0.9, 3) * np.array([1.0, 0.95, 0.85])
    u, v = (x - cx) / bw, (y - cy) / bh  # back wall is |u|, |v| <= 1
    back = (np.abs(u) <= 1) & (np.abs(v) <= 1)
    ceiling = (v < -1) & (np.abs(u) <= -v)
    floor = (v > 1) & (np.abs(u) <= v)
    _paint(img, np.ones((h, w), bool), wall * 0.8)  # side walls, darker
    _paint(img, ceiling, [0.92, 0.92, 0.9])
    boards = np.floor((u / np.maximum(v, 1e-3)) * 8) % 2 == 0  # planks converge on the vanishing point
    wood = np.array([0.55, 0.36, 0.2]) * rng.uniform(0.8, 1.2)
    _paint(img, floor & boards, wood)
    _paint(img, floor & ~boards, wood * 0.85)
    _paint(img, back, wall)
    if rng.random() < 0.6:  # a bookcase: shelves of coloured spines
        case = back & (np.abs(u - 0.3) < 0.55) & (v > -0.8) & (v < 1)
        _paint(img, case, [0.35, 0.22, 0.12])
        shelf_v = (v + 0.8) / 1.8 * 4
        spine = np.floor((u + 1) * 40).astype(np.int64)
        colours = rng.uniform(0.1, 0.9, (200, 3))
        books = case & (shelf_v % 1 > 0.15) & (np.abs(u - 0.3) < 0.5)
        img[books] = colours[(spine[books] + 37 * np.floor(shelf_v[books]).astype(np.int64)) % 200]
    else:  # a window with a frame and a sill
        win = back & (np.abs(u + 0.2) < 0.45) & (np.abs(v + 0.15) < 0.55)
        _paint(img, win, [0.7, 0.82, 0.95])
        _paint(img, win & ((np.abs(u + 0.2) < 0.03) | (np.abs(v + 0.15) < 0.03)), [0.95, 0.95, 0.95])
    table = (np.abs(x - cx) < 0.5) & (y > cy + bh * 1.6) & (y < cy + bh * 1.9)
    legs = (np.abs(np.abs(x - cx) - 0.45) < 0.03) & (y >= cy + bh * 1.9) & (y < cy + bh * 2.9)
    _paint(img, table | legs, wood * 0.6)
    lamp = ((x - cx) ** 2 / 0.02 + (y - (cy - bh * 1.5)) ** 2 / 0.004) < 1
    _paint(img, lamp, [1.0, 0.95, 0.75])
    light = 1.15 - 0.35 * np.hypot(x - cx, y - cy)  # the lamp lights the middle of the room
    return img * light[..., None]


def _close_up(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A plate of food, a cup or a flower filling the frame."""
    x, y = _grid(h, w)
    img = np.empty((h, w, 3), np.float32)
    kind = rng.integers(3)
    ground = rng.uniform(0.2, 0.7, 3)
    _paint(img, np.ones((h, w), bool), ground)
    r = np.hypot(x, y)
    if kind == 0:  # a plate of food
        _paint(img, r < 0.62, [0.93, 0.93, 0.9])
        for _ in range(int(rng.integers(5, 10))):
            px, py, pr = rng.uniform(-0.35, 0.35), rng.uniform(-0.3, 0.3), rng.uniform(0.06, 0.16)
            _paint(img, np.hypot(x - px, y - py) < pr, rng.uniform([0.4, 0.1, 0.0], [0.95, 0.7, 0.3]))
    elif kind == 1:  # a cup of coffee, from above
        _paint(img, r < 0.55, [0.95, 0.95, 0.93])
        _paint(img, r < 0.42, [0.3, 0.18, 0.08])
        _paint(img, (np.abs(y) < 0.07) & (x > 0.5) & (x < 0.8), [0.95, 0.95, 0.93])
    else:  # a flower
        angle = np.arctan2(y, x)
        petals = r < 0.45 + 0.25 * np.cos(int(rng.integers(5, 9)) * angle)
        _paint(img, petals, rng.uniform([0.6, 0.1, 0.2], [1.0, 0.9, 0.9]))
        _paint(img, r < 0.15, [0.9, 0.7, 0.1])
    return img


def _portrait(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Head and shoulders of a person in front of a soft background."""
    x, y = _grid(h, w)
    y = y * (w / h) * 0.75 if h > w else y  # portrait frames: keep the head in the upper half
    back = rng.uniform(0.3, 0.8, 3)
    img = back * (1 - 0.25 * (y[..., None] + 1)) * np.ones((h, w, 3), np.float32)
    skin = np.array([0.85, 0.64, 0.52]) * rng.uniform(0.45, 1.1)
    shirt = rng.uniform(0.05, 0.8, 3)
    _paint(img, (y > 0.35) & (np.abs(x) < 0.25 + 0.7 * (y - 0.35)), shirt)
    _paint(img, (np.abs(x) < 0.1) & (y > 0.15) & (y < 0.5), skin * 0.9)  # neck
    face = (x / 0.28) ** 2 + ((y + 0.1) / 0.36) ** 2 < 1
    hair = ((x / 0.31) ** 2 + ((y + 0.2) / 0.38) ** 2 < 1) & ~(face & (y > -0.3))
    _paint(img, hair, rng.uniform(0.02, 0.45) * np.array([1.0, 0.8, 0.6]))
    _paint(img, face & ~hair, skin)
    for ex in (-0.1, 0.1):
        _paint(img, ((x - ex) / 0.045) ** 2 + ((y + 0.14) / 0.025) ** 2 < 1, [0.1, 0.08, 0.06])
    _paint(img, (np.abs(x) < 0.08) & (np.abs(y - 0.08) < 0.015), [0.6, 0.25, 0.25])  # mouth
    return img


def render_scene(case: str, width: int, height: int, seed: int) -> np.ndarray:
    """The (height, width, 3) uint8 photo of a planted non-street ``case``, from ``seed``."""
    rng = np.random.default_rng([seed, SCENES.index(case)])
    draw = {"indoor_view": _room, "close_up": _close_up, "portrait": _portrait}[case]
    img = draw(rng, height, width)
    img = img + rng.normal(0, 0.015, img.shape)  # sensor noise: no two photos alike
    return (np.clip(img, 0, 1) ** (1 / 1.2) * 255 + 0.5).astype(np.uint8)
