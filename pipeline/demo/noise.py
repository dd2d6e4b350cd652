"""Counter-based randomness: integer hashes of (seed, keys), so a value depends only on where it is asked for.

The demo world, rasters and photos draw per-object and per-pixel randomness from these instead of
a stateful generator: a building, a tree or a sensor-noise sample is the same whichever tile,
strip or photo asks for it, so overlapping tiles agree pixel for pixel.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint32(0x9E3779B1)
_M1 = np.uint32(0x85EBCA6B)
_M2 = np.uint32(0xC2B2AE35)


def _u32(value) -> np.ndarray:
    """Any integer array (negative ones too) as uint32, wrapping modulo 2**32."""
    return np.asarray(value).astype(np.int64).astype(np.uint32)


def _fmix(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser: every input bit flips about half of the output bits."""
    h = h ^ (h >> np.uint32(16))
    h = h * _M1
    h = h ^ (h >> np.uint32(13))
    h = h * _M2
    return h ^ (h >> np.uint32(16))


def hash32(seed: int, *keys) -> np.ndarray:
    """A uint32 hash of a seed and integer keys (arrays broadcast together)."""
    with np.errstate(over="ignore"):
        h = _fmix(np.atleast_1d(_u32(seed)) * _GOLDEN + np.uint32(0x632BE5AB))
        for k in keys:
            h = _fmix(h ^ (_u32(k) * _GOLDEN + np.uint32(0x7F4A7C15)))
    return h


def to_unit(h: np.ndarray) -> np.ndarray:
    """uint32 hashes to float32 in [0, 1)."""
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def uniform(seed: int, *keys) -> np.ndarray:
    """Floats in [0, 1) hashed from a seed and integer keys (float32 keeps the demo's big arrays small)."""
    return to_unit(hash32(seed, *keys))


def draw(h: np.ndarray, salt: int) -> np.ndarray:
    """A further float in [0, 1) from an object's hash ``h``: one mixing round per attribute."""
    return to_unit(_fmix(h ^ np.uint32((salt * 0x27D4EB2F) & 0xFFFFFFFF)))


def value_noise(seed: int, x: np.ndarray, y: np.ndarray, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1): hashed values on a ``cell``-metre lattice, interpolated with a smoothstep."""
    gx, gy = np.asarray(x) / cell, np.asarray(y) / cell
    ix, iy = np.floor(gx), np.floor(gy)
    fx, fy = (gx - ix).astype(np.float32), (gy - iy).astype(np.float32)
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    ix, iy = ix.astype(np.int64), iy.astype(np.int64)
    v00, v10 = uniform(seed, ix, iy), uniform(seed, ix + 1, iy)
    v01, v11 = uniform(seed, ix, iy + 1), uniform(seed, ix + 1, iy + 1)
    return (v00 * (1 - fx) + v10 * fx) * (1 - fy) + (v01 * (1 - fx) + v11 * fx) * fy
