"""Photo bytes → what they are (full decode, mode, bands, EXIF orientation, sha256) and a normalised RGB JPEG.

Pure functions over bytes, shared by the download stage, the filters and ``crossview inspect``.
A file counts as decodable only after a full ``load()``: ``Image.open`` reads the header alone,
so a truncated JPEG opens fine and fails later.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps

from pipeline.errors import describe

BACKGROUND_RGB = (128, 128, 128)  # neutral grey under transparent pixels
_TRANSPOSED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
_HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA", "P"})


@dataclass(frozen=True)
class ImageInfo:
    """What a photo file is; ``status`` is ``ok``, ``empty`` or ``corrupt`` (with ``error``)."""

    status: str
    sha256: str
    bytes: int
    error: str = ""
    format: str | None = None
    mode: str | None = None
    bands: int | None = None
    width: int | None = None  # after EXIF orientation
    height: int | None = None
    exif_orientation: int | None = None


def _orientation(im: Image.Image) -> int | None:
    try:
        value = im.getexif().get(ExifTags.Base.Orientation)
        return int(value) if value is not None else None
    except Exception:  # noqa: BLE001 - a malformed EXIF block does not make the pixels unusable
        return None


def _decode(data: bytes, validate_only: bool = False) -> tuple[Image.Image, tuple[int, int]]:
    """Open and fully decode; return the image and its full size. Any decoder failure propagates.

    ``validate_only`` lets a JPEG decode at 1/8 scale (Pillow's ``draft``): every byte of the
    entropy-coded data is still read, so truncation and corruption fail the same way, but the
    inverse DCT runs on 8x8 fewer pixels (about 2.5x faster on photos).
    """
    im = Image.open(io.BytesIO(data))
    size = im.size
    if validate_only and im.format == "JPEG":
        im.draft(None, (max(1, im.width // 8), max(1, im.height // 8)))
    im.load()
    return im, size


def inspect_image(data: bytes) -> ImageInfo:
    """Fully decode ``data`` and describe it; failures come back as ``empty`` / ``corrupt``, never raised."""
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return ImageInfo("empty", digest, 0, error="0 bytes")
    try:
        im, (width, height) = _decode(data, validate_only=True)
    except Exception as err:  # noqa: BLE001 - untrusted bytes: every decoder failure means "corrupt"
        return ImageInfo("corrupt", digest, len(data), error=describe(err))
    with im:
        orientation = _orientation(im)
        if orientation in _TRANSPOSED:
            width, height = height, width
        return ImageInfo(
            "ok", digest, len(data), format=im.format, mode=im.mode, bands=len(im.getbands()),
            width=width, height=height, exif_orientation=orientation,
        )


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit grayscale → 8-bit L, scaled (not clipped) when values exceed 255."""
    arr = np.asarray(im, dtype=np.float64)
    top = float(arr.max()) if arr.size else 0.0
    if top > 255:
        arr = arr * (255.0 / (65535.0 if top <= 65535 else top))
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB: alpha composited over grey, CMYK/palette/grayscale converted."""
    if im.mode in _HIGH_BIT_MODES:
        im = _to_8bit(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND_RGB, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def normalise(data: bytes, quality: int = 95) -> bytes:
    """Decode ``data`` and re-encode as an upright RGB JPEG (no EXIF); same input gives the same bytes."""
    im, _ = _decode(data)
    with im:
        icc = im.info.get("icc_profile") if im.mode == "RGB" else None  # a CMYK/gray profile would lie about RGB
        upright = ImageOps.exif_transpose(im)
        rgb = to_rgb(upright)
    out = io.BytesIO()
    options = {"quality": quality, "optimize": False, "progressive": False}
    if icc:
        options["icc_profile"] = icc
    rgb.save(out, format="JPEG", **options)
    return out.getvalue()


def needs_normalising(info: ImageInfo) -> bool:
    """Whether a decodable photo must be re-encoded: anything but an upright RGB JPEG."""
    return not (info.format == "JPEG" and info.mode == "RGB" and info.exif_orientation in (None, 1))


def storable(data: bytes, info: ImageInfo, quality: int = 95) -> bytes:
    """The bytes to store for a decodable photo: the original when it already is an upright RGB JPEG
    (no second decode, no generation loss), else :func:`normalise`."""
    return normalise(data, quality) if needs_normalising(info) else data
