"""Demo panoramas: north-aligned 360 degree street views and the overhead image centred on each, in CVUSA's layout.

Places are drawn (seeded) where a person can stand in the demo's cities, the same procedural
worlds the demo stage renders its photos and rasters from. Each place gets a cylindrical
panorama (:class:`~pipeline.demo.photos.Camera` with ``panoramic``): column ``j`` looks along
``(j + 0.5) * 360 / width`` degrees from north, so column 0 starts at north for every panorama;
and a north-up overhead image (same reflectances, roof and tree shading and building shadows as
the demo's rasters, in RGB) centred on it. Written as CVUSA is distributed: ``bingmap/19/<n>.jpg``,
``streetview/panos/<n>.jpg`` and ``splits/train-19zl.csv`` / ``splits/val-19zl.csv``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from catalogs import load_demo
from pipeline import executor
from pipeline.config import DemoParams, PanoramasParams
from pipeline.demo.layout import build_cities, city_worlds, union_m
from pipeline.demo.palette import rgb_of, to_srgb
from pipeline.demo.photos import Camera, render
from pipeline.demo.placement import outdoors
from pipeline.demo.rasters import BLUR_PX, SHADOW_M, _reflectance, _shadows
from pipeline.demo.world import Sun, World, sample

log = logging.getLogger(__name__)

SUN = Sun(150.0, 58.0)
SPLITS = {"train": "train-19zl.csv", "test": "val-19zl.csv"}
KEY_FILE = "render_key.json"  # the params the images were rendered with; finished images are reused only under the same


@dataclass(frozen=True)
class Place:
    """One panorama's place: its number (file name), city, metres in the city frame, split."""

    number: int
    city: int
    x: float
    y: float
    split: str


def plan_places(worlds: list[World], boxes: list[tuple[float, float, float, float]], p: PanoramasParams
                ) -> list[Place]:
    """``p.count`` places where a person can stand, spread over the cities, each with its split."""
    rng = np.random.default_rng([p.seed, 0xBA40])
    places: list[Place] = []
    for k, (world, (x0, y0, x1, y1)) in enumerate(zip(worlds, boxes)):
        want = p.count // len(worlds) + (k < p.count % len(worlds))
        x, y = rng.uniform(x0, x1, 40 * want + 200), rng.uniform(y0, y1, 40 * want + 200)
        ok = outdoors(world, x, y)
        places += [Place(0, k, float(a), float(b), "") for a, b in zip(x[ok][:want], y[ok][:want])]
    test = set(rng.choice(len(places), size=max(1, round(p.test_fraction * len(places))), replace=False).tolist())
    return [Place(1_000_000 + i, q.city, q.x, q.y, "test" if i in test else "train") for i, q in enumerate(places)]


def render_panorama(world: World, x: float, y: float, width: int, height: int, sun: Sun = SUN) -> np.ndarray:
    """The north-aligned 360 degree panorama (height, width, 3) uint8 seen from (x, y)."""
    return render(world, Camera(x, y, 0.0, width, height, 360.0, pitch_deg=0.0, panoramic=True), sun)


def render_overhead(world: World, x: float, y: float, side_m: float, px: int, sun: Sun = SUN) -> np.ndarray:
    """The north-up overhead RGB image (px, px, 3) uint8 of ``side_m`` metres centred on (x, y)."""
    gsd = side_m / px
    margin = math.ceil(SHADOW_M / gsd)
    k = np.arange(-margin, px + margin) + 0.5 - px / 2
    gx, gy = np.meshgrid(x + k * gsd, y - k * gsd)  # rows run north to south
    s = sample(world, gx, gy)
    refl = _reflectance(world, s, gx, gy, sun)
    shade = _shadows(s.height, np.maximum(s.height, s.canopy), sun, (gsd, gsd))
    refl = np.where(shade[..., None], refl * 0.3 + np.float32(0.008), refl)
    refl = gaussian_filter(refl, sigma=(BLUR_PX, BLUR_PX, 0), truncate=3.0)[margin:-margin, margin:-margin]
    return to_srgb(rgb_of(refl))


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def write_cvusa(out: str | Path, p: PanoramasParams, demo: DemoParams, workers: int = 1) -> Path:
    """Render ``p.count`` demo panoramas and overheads into ``out`` in CVUSA's layout; return ``out``."""
    out = Path(out)
    cities = build_cities(load_demo(), demo.n_photos, np.random.default_rng([demo.seed, 0xDE70]))
    worlds = city_worlds(cities, demo.seed)
    places = plan_places(worlds, [union_m(c) for c in cities], p)
    key = json.dumps({"panoramas": p.model_dump(), "demo_seed": demo.seed, "n_photos": demo.n_photos}, sort_keys=True)
    if (out / KEY_FILE).exists() and (out / KEY_FILE).read_text() != key:
        shutil.rmtree(out)  # other places or sizes: nothing rendered before can be reused
    for sub in ("bingmap/19", "streetview/panos", "splits"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / KEY_FILE).write_text(key)

    def one(q: Place) -> None:
        pano, chip = out / f"streetview/panos/{q.number}.jpg", out / f"bingmap/19/{q.number}.jpg"
        if not pano.exists():  # written last: a rerun after an interruption skips finished places
            chip.write_bytes(_jpeg(render_overhead(worlds[q.city], q.x, q.y, p.overhead_m, p.overhead_px)))
            tmp = pano.with_suffix(".partial")
            tmp.write_bytes(_jpeg(render_panorama(worlds[q.city], q.x, q.y, p.width, p.height)))
            tmp.rename(pano)

    list(executor.run(one, places, workers=workers, desc="demo panoramas"))
    for split, name in SPLITS.items():
        lines = [f"bingmap/19/{q.number}.jpg,streetview/panos/{q.number}.jpg,streetview/panos/{q.number}.jpg"
                 for q in places if q.split == split]
        (out / "splits" / name).write_text("".join(line + "\n" for line in lines))
    log.info("demo panoramas: %d (%d test) -> %s", len(places), sum(q.split == "test" for q in places), out)
    return out
