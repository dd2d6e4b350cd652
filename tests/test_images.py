"""images: full-decode inspection and normalisation to an upright RGB JPEG, on the real photos."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from pipeline.images import BACKGROUND_RGB, inspect_image, normalise


def read(realdata, name: str) -> bytes:
    return (realdata / "photos" / name).read_bytes()


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


# name -> (status, mode, bands, width, height, exif orientation), as documented in realdata/PROVENANCE.md
EXPECTED = {
    "bad_empty_01.jpg": ("empty", None, None, None, None, None),
    "bad_truncated_01.jpg": ("corrupt", None, None, None, None, None),
    "indoor_coffee_table_01.jpg": ("ok", "RGB", 3, 600, 400, None),
    "indoor_room_01.jpg": ("ok", "RGB", 3, 896, 600, 1),
    "indoor_shop_counter_01.jpg": ("ok", "RGB", 3, 672, 512, 1),
    "irrelevant_cat_01.jpg": ("ok", "RGB", 3, 451, 300, None),
    "irrelevant_portrait_01.jpg": ("ok", "RGB", 3, 512, 600, None),
    "outdoor_building_cannon_01.jpg": ("ok", "RGB", 3, 800, 600, 1),
    "outdoor_landscape_01.jpg": ("ok", "RGB", 3, 640, 480, 1),
    "outdoor_park_01.jpg": ("ok", "RGB", 3, 640, 480, 1),
    "outdoor_square_church_01.jpg": ("ok", "RGB", 3, 640, 480, 1),
    "outdoor_street_01.jpg": ("ok", "RGB", 3, 640, 480, 1),
    "outdoor_street_02.jpg": ("ok", "RGB", 3, 640, 480, 1),
    "special_cmyk_01.jpg": ("ok", "CMYK", 4, 640, 480, 1),
    "special_exif_orientation_01.jpg": ("ok", "RGB", 3, 600, 450, 6),  # stored 450x600
    "special_grayscale_01.jpg": ("ok", "L", 1, 512, 512, None),
    "special_png_alpha_01.png": ("ok", "RGBA", 4, 400, 300, 1),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_real_photo_is_classified(realdata, name):
    data = read(realdata, name)
    info = inspect_image(data)
    got = (info.status, info.mode, info.bands, info.width, info.height, info.exif_orientation)
    assert got == EXPECTED[name]
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.bytes == len(data)
    if info.status == "ok":
        assert info.error == ""
        out = decode(normalise(data))
        assert out.format == "JPEG" and out.mode == "RGB" and out.size == (info.width, info.height)


def test_truncated_jpeg_is_corrupt_although_its_header_reads(realdata):
    data = read(realdata, "bad_truncated_01.jpg")
    assert Image.open(io.BytesIO(data)).size == (640, 480)  # a header read alone would accept it
    info = inspect_image(data)
    assert info.status == "corrupt" and "truncated" in info.error


def test_non_image_bytes_are_corrupt():
    info = inspect_image(b"<html><body>Service unavailable</body></html>")
    assert info.status == "corrupt" and "HTML" in info.error and "not an image" in info.error
    assert "0x" not in info.error  # no memory address: the same bytes give the same row in every run
    assert inspect_image(b"<html>" + b" " * 64).error == info.error
    assert inspect_image(b"").status == "empty"


def test_orientation_6_is_applied(realdata):
    data = read(realdata, "special_exif_orientation_01.jpg")
    stored = decode(data)
    upright = decode(normalise(data))
    assert stored.size == (450, 600) and upright.size == (600, 450)
    assert upright.getexif().get(0x0112) is None  # no orientation left to apply twice
    # orientation 6: display = stored rotated 90 degrees clockwise
    expected = np.asarray(stored.transpose(Image.Transpose.ROTATE_270).convert("L"), dtype=float)
    got = np.asarray(upright.convert("L"), dtype=float)
    assert np.abs(got - expected).mean() < 6


def test_grayscale_is_expanded_to_rgb(realdata):
    data = read(realdata, "special_grayscale_01.jpg")
    rgb = np.asarray(decode(normalise(data)), dtype=int)
    gray = np.asarray(decode(data), dtype=int)
    assert rgb.shape == (512, 512, 3)
    assert np.abs(rgb[..., 0] - rgb[..., 2]).max() <= 2
    assert np.abs(rgb[..., 1] - gray).mean() < 3


def test_cmyk_is_converted_not_inverted(realdata):
    data = read(realdata, "special_cmyk_01.jpg")
    reference = np.asarray(decode(data).convert("RGB"), dtype=float)
    got = np.asarray(decode(normalise(data)), dtype=float)
    assert got.shape == reference.shape
    assert np.abs(got - reference).mean() < 4


def test_png_alpha_is_composited_over_grey(realdata):
    data = read(realdata, "special_png_alpha_01.png")
    source = np.asarray(decode(data), dtype=float)
    got = np.asarray(decode(normalise(data)), dtype=float)
    transparent = source[..., 3] == 0
    opaque = source[..., 3] == 255
    assert transparent.any() and opaque.any()
    assert np.abs(got[transparent] - np.array(BACKGROUND_RGB)).mean() < 3  # the top sixth is grey now
    assert np.abs(got[opaque] - source[opaque][:, :3]).mean() < 6  # opaque pixels unchanged


def test_palette_and_16bit_inputs_are_normalised():
    palette = Image.new("P", (8, 8))
    palette.putpalette([255, 0, 0] * 256)
    buf = io.BytesIO()
    palette.save(buf, "PNG")
    assert inspect_image(buf.getvalue()).mode == "P"
    assert decode(normalise(buf.getvalue())).getpixel((4, 4))[0] > 240
    deep = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    buf = io.BytesIO()
    deep.save(buf, "PNG")
    assert inspect_image(buf.getvalue()).bands == 1
    assert decode(normalise(buf.getvalue())).getpixel((4, 4))[0] > 250  # scaled, not clipped to black


def test_normalise_is_deterministic_and_uses_quality(realdata):
    data = read(realdata, "outdoor_street_01.jpg")
    assert normalise(data, 90) == normalise(data, 90)
    assert len(normalise(data, 60)) < len(normalise(data, 95))


def test_upright_rgb_jpegs_are_stored_as_fetched_and_others_normalised(realdata):
    from pipeline.images import storable

    photos = realdata / "photos"
    street = (photos / "outdoor_street_01.jpg").read_bytes()
    assert storable(street, inspect_image(street)) == street
    for name in ("special_cmyk_01.jpg", "special_exif_orientation_01.jpg", "special_png_alpha_01.png",
                 "special_grayscale_01.jpg"):
        data = (photos / name).read_bytes()
        out = storable(data, inspect_image(data))
        assert out != data
        info = inspect_image(out)
        assert (info.format, info.mode, info.exif_orientation) == ("JPEG", "RGB", None)
