"""Generate the embedded demo AOI: overhead rasters, Flickr-shaped photo metadata and photos.

Everything comes from ``catalogs/demo_aoi.yaml`` and ``demo.seed``: one procedural city per demo
city (:mod:`.world`), rendered from above into 8-band uint16 EPSG:4326 GeoTIFFs (:mod:`.rasters`)
and from the street into JPEG photos (:mod:`.photos`), with the planted bad cases every rule
exists for (:mod:`.placement`) and Flickr-shaped metadata (:mod:`.flickr`). Output, under --out:

- ``rasters/<tile>.tif`` and ``rasters.yaml`` (a custom raster catalog, URIs relative to it)
- ``flickr/<aoi>.json``: ``{"image_count": N, "images": [<flickr.photos.search records>]}``
- ``photos/<id>.jpg`` (the records' ``url_m``, relative to the demo folder)
- ``truth.csv``: id, aoi, city, case (what the photo is), lat, lon (as recorded), true_lat, true_lon (where
  it was taken: differs for a wrong geotag), bearing_deg, expected (what it must become: ``ok``, or the
  reason that must drop it; ``indoor``, ``relevance`` and ``wrong_location`` are a model's or a curator's call)
- ``stac/catalog.json``: the rasters published as a static STAC catalog (``stac.url`` reads it back, no network)

The folder is built beside the target and renamed into place, so an interrupted run leaves none.
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

from catalogs import load_demo
from pipeline import executor
from pipeline.config import DemoParams, Params
from pipeline.demo import flickr_json
from pipeline.demo.layout import City, build_cities, city_worlds
from pipeline.demo.photos import Camera, encode, random_camera, render
from pipeline.demo.placement import Shot, choose_patches, plan_city, split_cases
from pipeline.demo.rasters import write_tile
from pipeline.demo.scenes import SCENES, render_scene
from pipeline.demo.world import Sun, World
from pipeline.stac_publish import publish as publish_stac
from pipeline.store import write_json

log = logging.getLogger(__name__)

TRUTH_COLUMNS = ("id", "aoi", "city", "case", "lat", "lon", "true_lat", "true_lon", "bearing_deg", "expected")


@dataclass(frozen=True)
class Photo:
    """One demo photo: its plan, camera, Flickr record and what truth.csv says about it."""

    shot: Shot
    camera: Camera
    record: dict
    truth: dict


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the demo stage's arguments."""
    parser.add_argument("--out", default=None, help="folder to write the demo into (default: demo.out in params.yaml)")


def main(params: Params, args: argparse.Namespace) -> int:
    """Generate the demo into --out."""
    generate(Path(args.out or params.demo.out), params.demo, workers=params.workers)
    return 0




def _suns(cities: list[City], rng: np.random.Generator) -> list[Sun]:
    """Late-morning sun, as for a WorldView pass: from the south-east, 50-65 degrees up."""
    return [Sun(round(float(rng.uniform(135, 165)), 1), round(float(rng.uniform(50, 65)), 1)) for _ in cities]


def _recorded_position(case: str, k: int, lat: float, lon: float, rng: np.random.Generator):
    """The coordinates a record carries: the true ones, or the planted bad ones (NaN, empty, missing, out of range)."""
    if case == "nan_coordinates":
        return [("nan", "nan"), ("", ""), (None, None)][k % 3]
    if case == "out_of_range":
        u = float(rng.uniform(0.1, 4.0))
        return [(90.0 + u, lon), (lat, 180.0 + 5 * u), (-90.0 - u, -180.0 - 2 * u)][k % 3]
    return lat, lon


def _cell(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else f"{value:.6f}"


def _photos(cities: list[City], shots: list[Shot], seed: int, rng: np.random.Generator) -> list[Photo]:
    """Flickr records, cameras and truth rows for every planned shot."""
    uploads, ids = flickr_json.upload_times_and_ids(rng, len(shots))
    pool = flickr_json.owners(rng)
    owners = flickr_json.pick_owners(rng, pool, len(shots))
    seen: dict[str, int] = {}
    out = []
    for shot, upload, photo_id, owner in zip(shots, uploads, ids, owners):
        city = cities[shot.city]
        camera = random_camera(shot.x, shot.y, shot.bearing_deg, rng)
        if shot.case == "denied_owner":
            owner = flickr_json.Owner(*flickr_json.DENIED_OWNER)
        true_lon, true_lat = (round(float(v), 6) for v in city.frame.lonlat(shot.x, shot.y))
        lon, lat = (round(float(v), 6) for v in city.frame.lonlat(*(shot.geotag or (shot.x, shot.y))))
        k = seen[shot.case] = seen.get(shot.case, -1) + 1
        rec_lat, rec_lon = _recorded_position(shot.case, k, lat, lon, rng)
        accuracy = int(rng.integers(6, 12)) if shot.case == "low_accuracy" else 16
        place = flickr_json.place(seed, city.index, *(shot.geotag or (shot.x, shot.y)))  # Flickr places the geotag
        size = (camera.width, camera.height)
        where = (rec_lat, rec_lon, accuracy)
        rec = flickr_json.record(rng, photo_id, owner, int(upload), city.name, place, size, where)
        truth = {"id": photo_id, "aoi": city.aoi, "city": city.name, "case": shot.case, "lat": _cell(rec_lat),
                 "lon": _cell(rec_lon), "true_lat": _cell(true_lat), "true_lon": _cell(true_lon),
                 "bearing_deg": f"{shot.bearing_deg:.1f}", "expected": shot.expected}
        out.append(Photo(shot, camera, rec, truth))
    for p in out:  # an ordinary photo with a near duplicate beside it may lose to it too
        if p.shot.partner is not None:
            out[p.shot.partner].truth["expected"] = "density_pair"
    return out


def plan_demo(cfg: dict, demo: DemoParams) -> tuple[list[City], list[World], list[Sun], list[Photo]]:
    """Cities (tiles with nodata), worlds, suns and every photo (placed, with metadata), from the seed; no files."""
    rng = np.random.default_rng([demo.seed, 0xDE70])
    cities = build_cities(cfg, demo.n_photos, rng)
    worlds = city_worlds(cities, demo.seed)
    cities = [choose_patches(c, w, rng) for c, w in zip(cities, worlds)]
    per_city = split_cases(dict(cfg.get("cases") or {}), cities, dict(cfg.get("rates") or {}))
    shots: list[Shot] = []
    for city, world in zip(cities, worlds):
        planned = plan_city(city, world, per_city[city.index], rng)
        offset = len(shots)
        shots += [s if s.partner is None else replace(s, partner=s.partner + offset) for s in planned]
    return cities, worlds, _suns(cities, rng), _photos(cities, shots, demo.seed, rng)


def _write_rasters(root: Path, cfg: dict, cities, worlds, suns, workers: int) -> list[dict]:
    """Render every tile into root/rasters/ and return the raster catalog entries."""
    (root / "rasters").mkdir(parents=True)
    meta = {"SATELLITE": str(cfg["satellite"]), "LICENCE": str(cfg["licence"]), "ATTRIBUTION": str(cfg["attribution"])}
    jobs = [(c, w, s, t) for c, w, s in zip(cities, worlds, suns) for t in c.tiles]
    list(executor.run(lambda j: write_tile(root / "rasters" / f"{j[3].name}.tif", j[1], j[0], j[3], j[2], meta),
                      jobs, workers=workers, batch_size=len(jobs)))
    return [
        {"aoi": c.aoi, "city": c.name, "uri": f"rasters/{t.name}.tif",
         "band_order": [int(b) for b in cfg["band_order"]], "satellite": str(cfg["satellite"]),
         "licence": str(cfg["licence"]), "licence_url": str(cfg["licence_url"]), "attribution": str(cfg["attribution"])}
        for c, _, _, t in jobs
    ]


def _write_photos(root: Path, photos: list[Photo], worlds, suns, workers: int) -> None:
    """Render and encode every photo into root/photos/<id>.jpg."""
    (root / "photos").mkdir(parents=True)

    def one(p: Photo) -> bytes:
        if p.shot.case in SCENES:
            return encode(render_scene(p.shot.case, p.camera.width, p.camera.height, int(p.truth["id"]) % 2**32),
                          p.shot.case)
        return encode(render(worlds[p.shot.city], p.camera, suns[p.shot.city]), p.shot.case)

    for p, data in zip(photos, executor.run(one, photos, workers=workers, desc="demo photos")):
        (root / "photos" / f"{p.truth['id']}.jpg").write_bytes(data)


def _write_metadata(root: Path, cities: list[City], photos: list[Photo], rasters: list[dict]) -> None:
    """The per-AOI Flickr files, truth.csv and rasters.yaml."""
    (root / "flickr").mkdir(parents=True)
    for city in cities:
        recs = [p.record for p in photos if p.shot.city == city.index]
        recs.sort(key=lambda r: (-int(r["dateupload"]), r["id"]))  # the API's default: newest first
        write_json({"image_count": len(recs), "images": recs}, root / "flickr" / f"{city.aoi}.json", sort_keys=True)
    with (root / "truth.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, TRUTH_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted((p.truth for p in photos), key=lambda t: t["id"]))
    (root / "rasters.yaml").write_text(yaml.safe_dump(rasters, sort_keys=False))


def generate(out: str | Path, demo: DemoParams, workers: int = 2) -> Path:
    """Build the whole demo folder at ``out`` (replacing it) from ``demo.seed`` and the demo catalog."""
    start = time.perf_counter()
    out = Path(out)
    cfg = load_demo()
    cities, worlds, suns, photos = plan_demo(cfg, demo)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        rasters = _write_rasters(tmp, cfg, cities, worlds, suns, workers)
        _write_photos(tmp, photos, worlds, suns, workers)
        _write_metadata(tmp, cities, photos, rasters)
        acquired = datetime.fromisoformat(str(cfg["acquired"]))
        publish_stac(rasters, tmp, tmp / "stac", acquired, "crossview demo rasters")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    planted = sum(p.shot.case != "normal" for p in photos)
    log.info("demo: %d cities, %d tiles, %d photos (%d planted cases) -> %s in %.1f s", len(cities),
             len(rasters), len(photos), planted, out, time.perf_counter() - start)
    return out
