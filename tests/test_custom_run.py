"""Bring-your-own data through a real `dvc repro`: the README's required columns are enough, paths in a
catalog resolve against the catalog's folder, and a run where no photo is usable still completes.

Real rasters and photos from ``../shared/realdata`` are copied into the temp repo (never into the project).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from pyproj import Transformer

from pipeline.schemas import PHOTOS, table_from_rows, write_table
from tests.conftest import repo_copy, sh

ROTTERDAM = "spacenet_rotterdam_rgb_uint8_utm31n.tif"  # 900 m square, EPSG:32631, 3 bands
ATLANTA = "spacenet_atlanta_pan_uint16_utm16n.tif"  # 450 m square, EPSG:32616, 1 band uint16
OUTDOOR = ["outdoor_building_cannon_01.jpg", "outdoor_landscape_01.jpg", "outdoor_park_01.jpg",
           "outdoor_square_church_01.jpg", "outdoor_street_01.jpg", "outdoor_street_02.jpg"]  # fmt: skip
SPLITS = ("train", "val", "test")


def lonlat(epsg: int, x: float, y: float) -> tuple[float, float]:
    return Transformer.from_crs(epsg, 4326, always_xy=True).transform(x, y)


def set_custom_params(root: Path) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["source"] = "custom"
    params["custom"] = {"rasters": "my/rasters.yaml", "photos": "my/photos.csv"}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def write_catalogs(root: Path, realdata: Path, photos: list[tuple[str, str, float, float]]) -> None:
    """``my/rasters.yaml`` and ``my/photos.csv`` with only the README's required columns; paths relative to ``my/``."""
    my = root / "my"
    (my / "rasters").mkdir(parents=True)
    (my / "photos").mkdir()
    for name in (ROTTERDAM, ATLANTA):
        shutil.copy(realdata / "rasters" / name, my / "rasters" / name)
    (my / "rasters.yaml").write_text(
        f"- {{aoi: rotterdam, city: Rotterdam, uri: rasters/{ROTTERDAM}, band_order: [1, 2, 3], "
        "satellite: WorldView-2, licence: CC BY-SA 4.0, attribution: SpaceNet and Maxar}\n"
        f"- {{aoi: atlanta, city: Atlanta, uri: rasters/{ATLANTA}, band_order: [1, 1, 1], "
        "satellite: WorldView-2, licence: CC-BY-SA-4.0, attribution: SpaceNet and Maxar}\n"
    )
    lines = ["id,lat,lon,image,owner,licence"]
    for photo_id, image, lon, lat in photos:
        if (realdata / "photos" / image).exists():
            shutil.copy(realdata / "photos" / image, my / "photos" / image)
        lines.append(f"{photo_id},{lat:.7f},{lon:.7f},photos/{image},owner_{photo_id},CC BY 4.0")
    (my / "photos.csv").write_text("\n".join(lines) + "\n")


def manifest_rows(root: Path) -> list[dict]:
    return [r for s in SPLITS for r in pq.read_table(root / "manifests" / f"{s}.parquet").to_pylist()]


@pytest.mark.slow
def test_custom_run_with_only_the_required_columns_reaches_the_manifests(tmp_path, realdata):
    root = repo_copy(tmp_path / "repo")
    photos = [(f"r{k}", OUTDOOR[k], *lonlat(32631, 592500 + 100 * k, 5749650)) for k in range(len(OUTDOOR))]
    photos.append(("a0", OUTDOOR[0], *lonlat(32616, 733826, 3724914)))
    write_catalogs(root, realdata, photos)
    set_custom_params(root)
    sh(["dvc", "repro", "manifest"], root)

    rows = {r["id"]: r for r in manifest_rows(root)}
    decisions = pq.read_table(root / "tables" / "decisions.parquet").to_pylist()
    dropped = {d["id"]: d["reason"] for d in decisions if not d["kept"]}
    assert set(rows) | set(dropped) == {p[0] for p in photos}  # every photo: a manifest row or a reason
    assert not any(r.startswith("licence") for r in dropped.values()), dropped
    assert len(rows) >= 4, dropped  # the indoor vote may still call one of the real outdoor photos indoor
    for row in rows.values():
        assert row["photo_licence_url"] == "https://creativecommons.org/licenses/by/4.0/"
        assert row["overhead_licence"] == "CC BY-SA 4.0"
        assert row["overhead_licence_url"] == "https://creativecommons.org/licenses/by-sa/4.0/"
        assert row["owner"] == f"owner_{row['id']}" and row["page_url"] is None
    tiles = pq.read_table(root / "tables" / "tiles.parquet").to_pylist()
    assert {t["aoi"]: t["status"] for t in tiles} == {"rotterdam": "ok", "atlanta": "ok"}


@pytest.mark.slow
def test_custom_run_where_no_photo_is_usable_completes_with_empty_manifests(tmp_path, realdata):
    root = repo_copy(tmp_path / "repo")
    x, y = 592700, 5749650
    photos = [
        ("empty", "bad_empty_01.jpg", *lonlat(32631, x, y)),
        ("truncated", "bad_truncated_01.jpg", *lonlat(32631, x + 100, y)),
        ("missing", "no_such_photo.jpg", *lonlat(32631, x + 200, y)),
    ]
    write_catalogs(root, realdata, photos)
    set_custom_params(root)
    sh(["dvc", "repro", "manifest"], root)

    assert manifest_rows(root) == []
    funnel = json.loads((root / "reports" / "funnel.json").read_text())
    assert (funnel["found"], funnel["kept"], funnel["removed"]["download"]) == (3, 0, 3)
    counts = json.loads((root / "reports" / "counts.json").read_text())
    assert counts["rows"]["total"] == 0 and counts["photos_found"] == 3
    assert (root / "data" / "embeddings").is_dir()

    # Training then stops with one clear line; every dataset stage before it has completed.
    proc = subprocess.run(["dvc", "repro"], cwd=root, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "crossview train: error:" in out and "training needs at least 2" in out and "Traceback" not in out
    status = subprocess.run(["dvc", "status", "manifest"], cwd=root, capture_output=True, text=True).stdout
    assert "up to date" in status or not status.strip(), status


INDOOR = ["indoor_coffee_table_01.jpg", "indoor_room_01.jpg", "indoor_shop_counter_01.jpg"]


@pytest.mark.slow
def test_an_indoor_photo_3_m_from_an_outdoor_one_does_not_cost_it_its_place(tmp_path, realdata):
    """Issue 12's case: six outdoor photos, each with an indoor photo 3 m away, on a real SpaceNet raster."""
    from PIL import Image

    root = repo_copy(tmp_path / "repo")
    photos = [(f"o{k}", OUTDOOR[k], *lonlat(32631, 592500 + 100 * k, 5749650)) for k in range(6)]
    photos += [(f"i{k}", f"indoor_{k}.jpg", *lonlat(32631, 592503 + 100 * k, 5749650)) for k in range(6)]
    write_catalogs(root, realdata, photos)
    for k in range(6):  # three real rooms, then the same rooms re-encoded (distinct files, the same rooms)
        room = Image.open(realdata / "photos" / INDOOR[k % 3]).convert("RGB")
        room.save(root / "my" / "photos" / f"indoor_{k}.jpg", quality=95 if k < 3 else 85)
    set_custom_params(root)
    sh(["dvc", "repro", "manifest"], root)

    rows = {r["id"] for r in manifest_rows(root)}
    decisions = pq.read_table(root / "tables" / "decisions.parquet").to_pylist()
    dropped = {d["id"]: d["reason"] for d in decisions if not d["kept"]}
    assert {f"i{k}" for k in range(6)} <= set(dropped), dropped  # the rooms go (as indoor)
    assert rows == {f"o{k}" for k in range(6)}, dropped  # and every outdoor photo stays
    assert not any(r.startswith("density") for r in dropped.values()), dropped


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_a_corrupt_or_missing_input_table_is_one_line_naming_the_file_and_its_stage(tmp_path, capsys, damage):
    from pipeline.cli import main as cli

    table = tmp_path / "photos.parquet"
    if damage == "truncated":
        write_table(table_from_rows([{"id": "p1", "lat": 1.0, "lon": 2.0}], PHOTOS), table, PHOTOS)
        table.write_bytes(table.read_bytes()[:-40])
    elif damage == "garbage":
        table.write_bytes(b"<html>not a parquet file</html>")
    code = cli(["download", "--photos", str(table), "--out", str(tmp_path / "downloads.parquet")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(table) in err and "crossview search" in err, err
