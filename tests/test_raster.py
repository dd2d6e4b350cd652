"""Raster primitives: stretch, re-projection, COG writing, footprint (synthetic fixtures made below)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.transform import from_origin
from rasterio.warp import reproject
from rasterio.warp import transform as warp_points
from scipy import ndimage
from shapely.geometry import Point

from pipeline.errors import RasterError
from pipeline.raster import (
    PASSTHROUGH,
    Stretch,
    apply_stretch,
    band_subset_path,
    block_windows,
    compute_stretch,
    footprint,
    overview_shape,
    read_overview,
    source_window,
    target_epsg,
    target_grid,
    valid_pixels,
    warp_block,
    warped_blocks,
    write_cog,
)
from pipeline.store import sha256_file

# Rotterdam-ish origin; 4e-6 x 3e-6 degrees is about 0.28 x 0.33 m there.
ORIGIN = (4.4600, 51.9200)
PIXEL_DEG = (4e-6, 3e-6)


def write_multispectral(
    path: Path,
    *,
    width: int = 800,
    height: int = 700,
    count: int = 8,
    corner: int = 200,
    patch: tuple[int, int, int, int] = (400, 430, 500, 530),
    nodata: int | None = 0,
    seed: int = 0,
) -> Path:
    """A SpaceNet PS-MS-like GeoTIFF: uint16 bands in EPSG:4326, nodata 0 in the top-left corner and a patch.

    Band b holds a smooth gradient plus noise in roughly [200 b, 200 b + 3000]; ``patch`` is
    (row0, row1, col0, col1). Deterministic for a given seed.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    data = np.empty((count, height, width), dtype=np.uint16)
    for b in range(count):
        smooth = 1500 + 1200 * np.sin(rows / 60.0 + b) * np.cos(cols / 45.0)
        data[b] = np.clip(smooth + 200 * b + rng.normal(0, 80, (height, width)), 1, 65535).astype(np.uint16)
    data[:, :corner, :corner] = 0
    r0, r1, c0, c1 = patch
    data[:, r0:r1, c0:c1] = 0
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": "uint16",
        "crs": "EPSG:4326",
        "transform": from_origin(ORIGIN[0], ORIGIN[1], *PIXEL_DEG),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def convert_with_primitives(
    src_path: str, out: str, bands: list[int], gsd_m: float = 0.3, block_px: int = 256, compress: str = "deflate"
):
    """Compose the primitives the way the tiles stage does (one windowed pass); return the stretch used."""
    unique = list(dict.fromkeys(bands))
    pick = [unique.index(b) for b in bands]
    with rasterio.open(band_subset_path(src_path, unique)) as src:
        data, valid = read_overview(src, 1024)
        stretch = PASSTHROUGH if src.dtypes[0] == "uint8" else compute_stretch(data[pick], valid, (2, 98))
        grid = target_grid(src, target_epsg(src), gsd_m)
        blocks = warped_blocks(src, grid, "lanczos", block_px, lambda d, ok: apply_stretch(d[pick], ok, stretch))
        write_cog(blocks, grid, out, compress, {"CROSSVIEW_KEY": "test"})
    return stretch


@pytest.fixture(scope="module")
def cog(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("raster")
    src = write_multispectral(base / "ms.tif")
    out = base / "out.tif"
    convert_with_primitives(str(src), str(out), [5, 3, 2])
    return src, out


def test_stretch_puts_about_two_percent_of_valid_pixels_at_1_and_at_255():
    rng = np.random.default_rng(1)
    band = rng.integers(100, 10_000, size=(1, 400, 500)).astype(np.uint16)
    band[0, :50, :] = 0  # nodata rows must not move the percentiles
    valid = band[0] != 0
    stretch = compute_stretch(band, valid, (2, 98))
    low, high = stretch.bands[0]
    assert low == pytest.approx(np.percentile(band[0][valid], 2))
    assert high == pytest.approx(np.percentile(band[0][valid], 98))
    out = apply_stretch(band, valid, stretch)[0]
    counts = np.bincount(out[valid], minlength=256)
    assert counts[0] == 0  # valid data never becomes nodata
    assert counts[1] / valid.sum() == pytest.approx(0.02, abs=0.003)
    assert counts[255] / valid.sum() == pytest.approx(0.02, abs=0.003)
    assert (out[~valid] == 0).all()
    assert Stretch.from_json(stretch.to_json()) == stretch


def test_stretch_of_a_band_without_valid_pixels_is_an_error():
    data = np.zeros((3, 10, 10), dtype=np.uint16)
    with pytest.raises(RasterError, match="no valid"):
        compute_stretch(data, np.ones((10, 10), bool), (2, 98))


def test_uint8_passthrough_keeps_values_and_lifts_valid_zeros_to_one():
    data = np.array([[[0, 5, 255]]] * 3, dtype=np.uint8)
    valid = np.array([[True, True, False]])
    out = apply_stretch(data, valid, PASSTHROUGH)
    assert out[:, 0, :].tolist() == [[1, 5, 0]] * 3


def test_overview_shape_caps_the_longer_side_and_never_upsamples():
    assert overview_shape(20_000, 10_000, 1024) == (1024, 512)
    assert overview_shape(300, 200, 1024) == (300, 200)
    windows = list(block_windows(1000, 600, 512))
    assert len(windows) == 4 and windows[-1].width == 488 and windows[-1].height == 88


def test_overview_validity_excludes_nodata_corner(cog):
    src_path, _ = cog
    with rasterio.open(src_path) as src:
        data, valid = read_overview(src, 200)
    assert data.shape == (8, 175, 200)
    assert not valid[:40, :40].any()
    assert valid[-40:, -40:].all()


def test_reprojected_cog_is_utm_at_gsd_with_nodata_masked(cog):
    _, out = cog
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 32631  # UTM zone of 4.46 E, northern hemisphere
        assert ds.res == pytest.approx((0.3, 0.3))
        for edge in (ds.transform.c, ds.transform.f):  # target-aligned: pixel edges on multiples of gsd
            assert edge / 0.3 == pytest.approx(round(edge / 0.3), abs=1e-6)
        assert ds.count == 3 and ds.dtypes == ("uint8",) * 3 and ds.nodata == 0
        data = ds.read()
        mask = ds.dataset_mask()
    # top-left corner of the source is nodata: the same place in UTM is 0 in every band and masked
    corner_x, corner_y = warp_points(
        "EPSG:4326", "EPSG:32631", [ORIGIN[0] + 50 * PIXEL_DEG[0]], [ORIGIN[1] - 50 * PIXEL_DEG[1]]
    )
    with rasterio.open(out) as ds:
        row, col = ds.index(corner_x[0], corner_y[0])
    assert (data[:, row, col] == 0).all() and mask[row, col] == 0
    valid = mask > 0
    assert valid.mean() > 0.6
    assert (data[:, valid] >= 1).all()  # valid data is 1..255
    assert ((data == 0).all(axis=0) == ~valid).all()


@pytest.mark.parametrize(("gsd_m", "resampling"), [(0.3, "lanczos"), (1.2, "lanczos"), (0.3, "cubic"), (0.6, "bilinear")])
def test_each_block_is_warped_as_from_the_whole_source(tmp_path, gsd_m, resampling):
    """A block warped from its source window (the kernel's reach) equals the same warp of the whole source.

    Interior blocks (window inside the source, all valid) are warped without masks, the others with
    them; each against the whole 8-bit source warped by the same path. 1.2 m shrinks the source 4x,
    so GDAL widens its kernel 4x and so must the window.
    """
    src_path = write_multispectral(tmp_path / "ms.tif", width=900, height=800, corner=150, patch=(0, 0, 0, 0))
    with rasterio.open(band_subset_path(str(src_path), [5, 3, 2])) as src:
        grid = target_grid(src, target_epsg(src), gsd_m)
        stretch = compute_stretch(*read_overview(src, 256), (2, 98))
        to_8bit = functools.partial(apply_stretch, stretch=stretch)
        data = src.read()
        whole = to_8bit(data, valid_pixels(src, data))
        kinds = {True: 0, False: 0}
        for window in block_windows(grid.width, grid.height, 64 if gsd_m > 1 else 128):
            area, inside = source_window(src, grid, window, resampling)
            interior = inside and bool(whole[:, area.row_off : area.row_off + area.height,
                                             area.col_off : area.col_off + area.width].all())  # fmt: skip
            kinds[interior] += 1
            h, w = int(window.height), int(window.width)
            want = np.zeros((3 if interior else 4, h, w), np.uint8)
            masks = {} if interior else {"src_nodata": 0, "dst_alpha": 4, "UNIFIED_SRC_NODATA": "YES"}
            reproject(whole, want, src_transform=src.transform, src_crs=src.crs, dst_crs=CRS.from_epsg(grid.epsg),
                      dst_transform=grid.transform * grid.transform.translation(window.col_off, window.row_off),
                      resampling=Resampling[resampling], init_dest_nodata=False, **masks)  # fmt: skip
            rgb = np.maximum(want[:3], 1) * (True if interior else want[3] >= 128)
            assert np.array_equal(warp_block(src, grid, window, resampling, to_8bit), rgb), window
    assert kinds[True] >= 3 and kinds[False] >= 3  # both paths ran


def test_valid_warped_pixels_are_never_0_where_the_kernel_undershoots(tmp_path):
    """Lanczos rings below 1 beside a bright edge; a valid pixel must still be 1..255 in every band."""
    src_path = write_multispectral(tmp_path / "ms.tif", width=400, height=400, corner=0, patch=(0, 0, 0, 0))
    with rasterio.open(src_path, "r+") as ds:
        data = ds.read()
        data[:, :, ::7] = 60_000  # bright lines every 7 px: dark pixels beside them undershoot
        ds.write(data)
    with rasterio.open(band_subset_path(str(src_path), [5, 3, 2])) as src:
        grid = target_grid(src, target_epsg(src), 0.3)
        stretch = compute_stretch(*read_overview(src, 400), (2, 98))
        blocks = list(warped_blocks(src, grid, "lanczos", 128, functools.partial(apply_stretch, stretch=stretch)))
    inner = [rgb for w, rgb in blocks if rgb.any(axis=0).all()]
    assert inner and all((rgb >= 1).all() for rgb in inner)
    assert any((rgb == 1).mean() > 0.05 for rgb in inner)  # the undershoot was there, and lifted to 1


def test_cog_is_tiled_with_overviews_and_cog_layout(cog):
    _, out = cog
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.profile["tiled"] and ds.block_shapes[0] == (512, 512)
        assert ds.overviews(1), "COG has no overviews"
        assert ds.tags()["CROSSVIEW_KEY"] == "test"
        assert ds.compression.name.lower() == "deflate"
    assert not list(out.parent.glob("*.raw.tif")), "temp GeoTIFF left behind"


def test_footprint_excludes_nodata_corner_and_sits_inside_valid_data(cog):
    _, out = cog
    fp = footprint(str(out), 256)
    corner_x, corner_y = warp_points(
        "EPSG:4326", "EPSG:32631", [ORIGIN[0] + 50 * PIXEL_DEG[0]], [ORIGIN[1] - 50 * PIXEL_DEG[1]]
    )
    assert not fp.contains(Point(corner_x[0], corner_y[0]))
    far_x, far_y = warp_points(
        "EPSG:4326", "EPSG:32631", [ORIGIN[0] + 700 * PIXEL_DEG[0]], [ORIGIN[1] - 650 * PIXEL_DEG[1]]
    )
    assert fp.contains(Point(far_x[0], far_y[0]))
    # conservative: no pixel of the outer nodata (connected to the image edge) lies inside the
    # footprint; the interior patch does (holes are filled; chips deal with interior gaps)
    with rasterio.open(out) as ds:
        mask = ds.dataset_mask()
        transform = ds.transform
    labels, _ = ndimage.label(mask == 0)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outer = np.isin(labels, edge[edge > 0])
    inner = (mask == 0) & ~outer
    for region, want_inside in ((outer, False), (inner, True)):
        rows, cols = np.nonzero(region)
        xs, ys = rasterio.transform.xy(transform, rows, cols)
        inside = shapely.contains_xy(fp, np.asarray(xs), np.asarray(ys))
        assert inside.all() if want_inside else not inside.any()
    assert inner.sum() > 500  # the interior patch is really there
    assert fp.area > 0.8 * (mask > 0).sum() * 0.09


def test_band_order_repeating_one_band_gives_gray_rgb(tmp_path):
    src = write_multispectral(tmp_path / "pan.tif", width=300, height=300, count=1, corner=50, patch=(0, 0, 0, 0))
    out = tmp_path / "gray.tif"
    stretch = convert_with_primitives(str(src), str(out), [1, 1, 1])
    assert stretch.bands[0] == stretch.bands[1] == stretch.bands[2]
    with rasterio.open(out) as ds:
        r, g, b = ds.read()
    assert (r == g).all() and (g == b).all() and r.max() == 255


def test_target_grid_refuses_absurd_sizes_naming_the_param(cog):
    src_path, _ = cog
    with rasterio.open(src_path) as src, pytest.raises(RasterError, match="tiles.gsd_m"):
        target_grid(src, 32631, 0.0001)
    with rasterio.open(src_path) as src:
        assert target_epsg(src, 32632) == 32632


def test_cog_bytes_are_deterministic(cog, tmp_path):
    src_path, out = cog
    again = tmp_path / "again.tif"
    convert_with_primitives(str(src_path), str(again), [5, 3, 2])
    assert sha256_file(again) == sha256_file(out)


def test_jpeg_cog_carries_validity_as_an_internal_mask(cog, tmp_path):
    src_path, _ = cog
    out = tmp_path / "jpeg.tif"
    convert_with_primitives(str(src_path), str(out), [5, 3, 2], compress="jpeg")
    with rasterio.open(out) as ds:
        assert ds.count == 3 and ds.nodata is None and ds.compression.name.lower() == "jpeg"
        assert MaskFlags.per_dataset in ds.mask_flag_enums[0]
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        mask = ds.dataset_mask()
    assert mask[0, 0] == 0 and 0.6 < (mask > 0).mean() < 0.95
    assert not footprint(str(out), 256).is_empty
