"""``crossview audit``: the grid around each geotag, the best point and margin, one row per pair, determinism.

The world is made in code: the heat map tests' 500 m tile at 1 m (:func:`tests.test_heatmap.make_tile`)
and a tiny ``timm_contrastive`` model with one branch shared by photos and chips, photos and chips
of the same size. A "photo" that is the very chip cut at a grid point then embeds exactly like that
point's chip (distance 0), so the audit must find that point: the answer is known.
"""

from __future__ import annotations

import argparse
import io
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from PIL import Image

torch = pytest.importorskip("torch")

from pipeline import audit, chipgeom
from pipeline.config import AuditParams, Params, TimmParams, TrainParams
from pipeline.raster import read_chip
from pipeline.schemas import GEOTAG_AUDIT, MANIFEST, read_table, table_from_rows, write_table
from pipeline.train.loop import save_atomic
from pipeline.train.models import build_model
from tests.test_heatmap import EPSG, GSD, make_tile

STEP = 56.25
CENTRE = (600_250.0, 5_000_250.0)  # the tile's centre: every chip of the 5 x 5 grid fits
EDGE = (600_130.0, 5_000_250.0)  # 120 m from the west edge: the two west columns' chips do not fit


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def chip_photo(tile_path: str, x: float, y: float, out) -> str:
    """The 225 m chip at (x, y), cut as the chip stage cuts it, saved as a (lossless) photo."""
    with rasterio.open(tile_path) as src:
        square = chipgeom.ChipSquare(x, y, 225.0, EPSG)
        data, _ = read_chip(src, chipgeom.pixel_window(square, src.transform, GSD))
    Image.fromarray(data.transpose(1, 2, 0)).save(out)
    return str(out)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    tiles = make_tile(root)
    tif = str(root / "tile.tif")
    torch.manual_seed(0)
    params = TrainParams(model="timm_contrastive", timm_contrastive=TimmParams(
        shared=True, embed_dim=16, photo_height=32, photo_width=32, chip_px=32))
    save_atomic({"params": params.model_dump(), "model": build_model(params).state_dict()}, root / "model.pt")
    photos = {
        # taken 112.5 m east and 56.25 m north of its geotag (grid row 1, column 4)
        "moved": chip_photo(tif, CENTRE[0] + 2 * STEP, CENTRE[1] + STEP, root / "moved.png"),
        "right": chip_photo(tif, *CENTRE, root / "right.png"),  # taken at its geotag
        "edge": chip_photo(tif, EDGE[0] + STEP, EDGE[1] - STEP, root / "edge.png"),  # one step south-east
    }
    rows = {
        "train": [{"id": "moved", "split": "train", "photo_uri": photos["moved"], "x_m": CENTRE[0], "y_m": CENTRE[1],
                   "epsg": EPSG}],
        "val": [{"id": "edge", "split": "val", "photo_uri": photos["edge"], "x_m": EDGE[0], "y_m": EDGE[1],
                 "epsg": EPSG}],
        "test": [{"id": "right", "split": "test", "photo_uri": photos["right"], "x_m": CENTRE[0], "y_m": CENTRE[1],
                  "epsg": EPSG}],
    }
    for split, r in rows.items():
        write_table(table_from_rows(r, MANIFEST), root / f"{split}.parquet", MANIFEST)
    return root, tiles


def run(world, out: str, p: AuditParams) -> list[dict]:
    root, tiles = world
    parser = argparse.ArgumentParser(prog="crossview audit")
    audit.configure(parser)
    args = parser.parse_args([*(a for s in ("train", "val", "test") for a in (f"--{s}", str(root / f"{s}.parquet"))),
                              "--model", str(root / "model.pt"), "--tiles", tiles, "--out", str(root / out)])
    assert audit.main(Params(audit=p), args) == 0
    return read_table(root / out, GEOTAG_AUDIT).to_pylist()


def test_the_grid_is_centred_on_the_geotag_north_up_step_apart():
    grid = audit.local_grid(500_000.0, 4_000_000.0, 32631, 5, STEP)
    x, y = grid.centres()
    assert x.shape == y.shape == (5, 5)
    assert (x[2, 2], y[2, 2]) == (500_000.0, 4_000_000.0)  # the centre point is the geotag
    assert np.allclose(np.diff(x, axis=1), STEP) and np.allclose(np.diff(y, axis=0), -STEP)  # row 0 is north
    assert (x[0, 0], y[0, 0]) == (500_000.0 - 2 * STEP, 4_000_000.0 + 2 * STEP)
    assert grid.bounds == (500_000.0 - 2.5 * STEP, 4_000_000.0 - 2.5 * STEP, 500_000.0 + 2.5 * STEP,
                           4_000_000.0 + 2.5 * STEP)


def test_summarise_finds_the_best_point_its_offset_and_the_margin_on_a_known_grid():
    p = AuditParams(suspect_distance_m=100.0, suspect_margin=2.0)
    d = np.full((5, 5), 1.0)
    d[2, 2] = 0.8  # the geotag
    d[0, 4] = 0.5  # the north-east corner is better by 0.3: margin 3
    d[4, 0] = np.nan  # no chip there
    s = audit.summarise(d, STEP, p)
    assert (s["best_dx"], s["best_dy"]) == (2 * STEP, 2 * STEP)
    assert s["best_offset_m"] == pytest.approx(math.hypot(2 * STEP, 2 * STEP))
    assert s["margin"] == pytest.approx(3.0) and s["geotag_d"] == 0.8 and s["best_d"] == 0.5
    assert s["geotag_rank"] == 2 and s["points"] == 24 and s["suspect"]
    assert s["scores"][4] == pytest.approx(math.exp(10 * 0.5)) and math.isnan(s["scores"][20])
    # a clear margin near the geotag, or a far best point by a hair, is not suspect
    near = d.copy()
    near[0, 4], near[1, 2] = 1.0, 0.5
    assert not audit.summarise(near, STEP, p)["suspect"]
    hair = d.copy()
    hair[0, 4] = 0.79
    assert not audit.summarise(hair, STEP, p)["suspect"]
    # the geotag is best: offset 0, margin 0, rank 1; ties go to the first point in row-major order
    best = np.full((5, 5), 1.0)
    best[2, 2] = best[3, 3] = 0.2
    s = audit.summarise(best, STEP, p)
    assert s["best_offset_m"] == 0.0 and s["margin"] == 0.0 and s["geotag_rank"] == 2 and not s["suspect"]
    # no chip at the geotag: a best point but no margin, never suspect
    s = audit.summarise(np.where(np.eye(5, dtype=bool), np.nan, d), STEP, p)
    assert s["geotag_d"] is None and "margin" not in s and not s["suspect"] and s["points"] == 19


def test_audit_finds_where_each_photo_was_taken_one_row_per_pair(world):
    rows = {r["id"]: r for r in run(world, "audit.parquet", AuditParams(suspect_distance_m=100.0, suspect_margin=0.0))}
    assert sorted(rows) == ["edge", "moved", "right"]  # one row per pair of the three manifests
    assert {i: r["split"] for i, r in rows.items()} == {"edge": "val", "moved": "train", "right": "test"}
    moved = rows["moved"]
    assert (moved["best_x_m"], moved["best_y_m"]) == (CENTRE[0] + 2 * STEP, CENTRE[1] + STEP)
    assert moved["best_offset_m"] == pytest.approx(math.hypot(2 * STEP, STEP))
    assert moved["best_d"] == pytest.approx(0.0, abs=1e-5) and moved["geotag_d"] > 1e-3
    assert moved["margin"] == pytest.approx(10 * (moved["geotag_d"] - moved["best_d"]))
    assert moved["geotag_rank"] > 1 and moved["suspect"] and moved["best_tile_id"] == "T1"
    assert moved["points"] == 25 and moved["scores"][1 * 5 + 4] == max(moved["scores"])
    assert moved["grid_size"] == 5 and moved["step_m"] == STEP and moved["epsg"] == EPSG
    right = rows["right"]
    assert right["best_offset_m"] == 0.0 and right["margin"] == 0.0 and right["geotag_rank"] == 1
    assert not right["suspect"]
    edge = rows["edge"]  # the two west columns have no full chip: NaN, unscored
    assert edge["points"] == 15 and all(math.isnan(edge["scores"][r * 5 + c]) for r in range(5) for c in (0, 1))
    assert (edge["best_x_m"], edge["best_y_m"]) == (EDGE[0] + STEP, EDGE[1] - STEP)
    assert edge["best_offset_m"] == pytest.approx(STEP * math.sqrt(2)) and not edge["suspect"]  # < 100 m


def test_the_table_is_byte_identical_on_a_rerun_and_thresholds_only_move_the_flag(world):
    p = AuditParams(suspect_distance_m=100.0, suspect_margin=0.0)
    run(world, "a.parquet", p)
    run(world, "b.parquet", p)
    root = world[0]
    assert (root / "a.parquet").read_bytes() == (root / "b.parquet").read_bytes()
    strict = run(world, "c.parquet", AuditParams(suspect_distance_m=100.0, suspect_margin=1e6))
    assert not any(r["suspect"] for r in strict)
    loose, tight = pq.read_table(root / "a.parquet"), pq.read_table(root / "c.parquet")
    assert [n for n in loose.column_names if str(loose[n].to_pylist()) != str(tight[n].to_pylist())] == ["suspect"]


def test_grid_size_must_be_odd():
    with pytest.raises(ValueError, match="odd"):
        AuditParams(grid_size=4)


# ---------------------------------------------------------------- the review page's suspect-location queue

SUSPECTS = {  # id -> (best point's offset east, north in grid steps, margin); the others are not suspect
    "100001": (2, 1, 3.5),
    "100004": (-2, -2, 6.0),
    "100005": (0, 2, 2.5),
}


def make_audit_review_data(root) -> list[str]:
    """The review tests' tables (:func:`tests.test_review_api.make_review_data`) plus a real tile and a
    ``geotag_audit`` table over the paired photos; returns the suspect ids, clearest (largest margin) first."""
    from tests.test_review_api import make_review_data

    ids = make_review_data(root)
    make_tile(root / "tables")  # tables/tile.tif and tables/tiles.parquet (tile T1)
    chips = pq.read_table(root / "tables/chips.parquet", columns=["id"])["id"].to_pylist()
    rows = []
    for i in chips:
        gx, gy, margin = SUSPECTS.get(i, (0, 0, 0.0))
        d = np.full(25, 1.0)
        d[(2 - gy) * 5 + 2 + gx] = 1.0 - margin / 10
        rows.append({"id": i, "split": "train", "epsg": EPSG, "x_m": CENTRE[0], "y_m": CENTRE[1], "grid_size": 5,
                     "step_m": STEP, "points": 25, "geotag_d": 1.0, "best_d": float(d.min()),
                     "best_x_m": CENTRE[0] + gx * STEP, "best_y_m": CENTRE[1] + gy * STEP, "best_tile_id": "T1",
                     "best_offset_m": math.hypot(gx, gy) * STEP, "margin": margin,
                     "geotag_rank": 2 if margin else 1, "scores": np.exp(10 * (1 - d)).tolist(),
                     "suspect": i in SUSPECTS})
    write_table(table_from_rows(rows, GEOTAG_AUDIT), root / "tables/geotag_audit.parquet", GEOTAG_AUDIT)
    assert set(SUSPECTS) <= set(chips) <= set(ids)
    return sorted(SUSPECTS, key=lambda i: -SUSPECTS[i][2])


def test_the_review_queue_lists_suspects_with_the_best_chip_and_the_heat_map(tmp_path):
    from starlette.testclient import TestClient

    from pipeline.review import make_app

    order = make_audit_review_data(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    app = make_app(Params(), "tables", None, "erin", root=tmp_path)
    client = TestClient(app, base_url="http://127.0.0.1")
    page = client.get("/api/queue?queue=suspect_location").json()
    assert [it["id"] for it in page["items"]] == order == ["100004", "100001", "100005"]
    first = page["items"][0]["audit"]
    assert first["offset_m"] == pytest.approx(2 * math.sqrt(2) * STEP, abs=0.1) and first["direction"] == "SW"
    assert first["margin"] == 6.0 and first["suspect"]
    best = client.get(first["best_chip"])  # the 225 m chip at (-112.5, -112.5) m, cut from the tile
    assert best.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(best.content)).size == (225, 225)
    heat = client.get(first["heat"])
    im = Image.open(io.BytesIO(heat.content)).convert("RGB")
    assert heat.headers["content-type"] == "image/png" and im.size == (5 * 24, 5 * 24)
    assert im.getpixel((2 * 24, 2 * 24 + 10)) == (255, 255, 255)  # the geotag's outline (centre cell)
    assert im.getpixel((0 * 24 + 3, 4 * 24 + 10)) == (255, 0, 0)  # the best point's (south-west corner)
    html = client.get("/?queue=suspect_location").text
    assert html.count('class="audit"') == 3 and "best point 159 m SW of the geotag" in html
    saved = client.post("/api/verdicts", json={"ids": ["100004"], "verdict": "drop_wrong_location"}).json()
    assert saved["rows"][0]["verdict"] == "drop_wrong_location"
    assert "100004,drop_wrong_location,erin" in (tmp_path / "review/verdicts.csv").read_text()
