"""Demo panoramas (pipeline/demo/pano_render.py): north-aligned columns, overheads, CVUSA layout."""

from __future__ import annotations

import numpy as np
import pytest

from catalogs import load_demo
from pipeline.config import DemoParams, PanoramasParams
from pipeline.demo.layout import build_cities, city_worlds, union_m
from pipeline.demo.pano_render import SUN, plan_places, render_overhead, render_panorama, write_cvusa
from pipeline.demo.photos import Camera, render
from pipeline.panoramas import DEMO_LICENCE, write_manifests
from pipeline.schemas import MANIFEST, read_table

W, H, VIEW = 256, 64, 8  # a narrow perspective view of VIEW columns spans VIEW * 360 / W degrees


@pytest.fixture(scope="module")
def world_and_places():
    demo = DemoParams()
    cities = build_cities(load_demo(), demo.n_photos, np.random.default_rng([demo.seed, 0xDE70]))
    worlds = city_worlds(cities, demo.seed)
    return worlds, plan_places(worlds, [union_m(c) for c in cities], PanoramasParams(count=6))


def view_at(world, x: float, y: float, bearing: float) -> np.ndarray:
    cam = Camera(x, y, bearing, VIEW, H, VIEW * 360 / W, pitch_deg=0.0)
    return render(world, cam, SUN).astype(float)


def test_panorama_columns_match_views_rendered_at_their_bearings(world_and_places):
    worlds, places = world_and_places
    rows = slice(H // 4, 3 * H // 4)  # where the perspective view's vignette is under 1.5 %
    for q in places[:3]:
        pano = render_panorama(worlds[q.city], q.x, q.y, W, H).astype(float)
        for j in (5, 77, 130, 201):  # column j + VIEW/2 is centred at (j + VIEW/2) * 360 / W degrees from north
            bearing = (j + VIEW / 2) * 360 / W
            view = view_at(worlds[q.city], q.x, q.y, bearing)[rows]
            same = np.abs(view - pano[rows, j:j + VIEW]).mean()
            turned = np.abs(view - np.roll(pano, -W // 4, axis=1)[rows, j:j + VIEW]).mean()  # 90 degrees off
            assert same < 6, (q, j, same)
            assert turned > same + 3, (q, j, same, turned)


def test_column_zero_is_north_for_every_panorama(world_and_places):
    worlds, places = world_and_places
    q = places[0]
    pano = render_panorama(worlds[q.city], q.x, q.y, W, H).astype(float)
    north = view_at(worlds[q.city], q.x, q.y, VIEW / 2 * 360 / W)
    assert np.abs(north[H // 4:3 * H // 4] - pano[H // 4:3 * H // 4, :VIEW]).mean() < 6


def test_overhead_is_north_up_and_centred(world_and_places):
    worlds, places = world_and_places
    q = places[1]
    chip = render_overhead(worlds[q.city], q.x, q.y, 120.0, 64)
    east = render_overhead(worlds[q.city], q.x + 30.0, q.y, 120.0, 64)
    north = render_overhead(worlds[q.city], q.x, q.y + 30.0, 120.0, 64)
    assert chip.shape == (64, 64, 3) and chip.dtype == np.uint8
    shift = 16  # 30 m at 120 m / 64 px
    assert np.abs(chip[8:56, 8 + shift:56].astype(int) - east[8:56, 8:56 - shift]).mean() < 3  # moved east
    assert np.abs(chip[8:56 - shift, 8:56].astype(int) - north[8 + shift:56, 8:56]).mean() < 3  # moved north


def test_demo_panoramas_are_written_in_cvusa_layout_and_become_manifests(tmp_path):
    p = PanoramasParams(count=5, width=64, height=16, overhead_px=24, test_fraction=0.4)
    root = write_cvusa(tmp_path / "pano", p, DemoParams())
    assert len(list((root / "streetview/panos").glob("*.jpg"))) == 5
    assert len(list((root / "bingmap/19").glob("*.jpg"))) == 5
    assert write_manifests(root, tmp_path / "m", DEMO_LICENCE, p.overhead_m) == {"train": 3, "test": 2}
    rows = read_table(tmp_path / "m" / "test.parquet", MANIFEST).to_pylist()
    assert all(r["panorama"] and (r["photo_width"], r["photo_height"], r["chip_px"]) == (64, 16, 24) for r in rows)
    before = sorted((f.name, f.read_bytes()) for f in (root / "streetview/panos").iterdir())
    write_cvusa(tmp_path / "pano", p, DemoParams())  # rerun: the same images
    assert sorted((f.name, f.read_bytes()) for f in (root / "streetview/panos").iterdir()) == before
    bigger = p.model_copy(update={"width": 96})
    write_cvusa(tmp_path / "pano", bigger, DemoParams())  # other params: rendered again, nothing stale
    assert read_table(tmp_path / "m" / "test.parquet", MANIFEST).num_rows == 2
    from PIL import Image
    assert all(Image.open(f).size == (96, 16) for f in (root / "streetview/panos").glob("*.jpg"))
