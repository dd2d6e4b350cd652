"""Photo bytes → what they are (full decode, mode, bands, EXIF orientation, sha256) and a normalised RGB JPEG.

Pure functions over bytes, shared by the download stage, the filters and ``crossview inspect``.
A file counts as decodable only after a full ``load()``: ``Image.open`` reads the header alone,
so a truncated JPEG opens fine and fails later. Files are recognised by their content, never by
their name: a JPEG named ``.heic`` is a JPEG, and HEIC/HEIF photos (phones) decode through
pillow-heif when it is installed (a dependency of the package).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps

from pipeline.errors import describe

try:  # HEIC/HEIF photos from phones; without pillow-heif they are recorded as "corrupt: ... HEIC ..."
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_SUPPORT = True
except ImportError:  # pragma: no cover - pillow-heif is a dependency; only a broken install lacks it
    HEIF_SUPPORT = False

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


def _sniff(data: bytes) -> str:
    """What bytes no decoder recognised look like, in words, for the recorded reason."""
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in head:
        return "an HTML/XML page, not an image (the server sent an error or login page: check the URL)"
    if head[:1] in (b"{", b"["):
        return "JSON text, not an image (the server sent an API answer: check the URL)"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypmsf1", b"ftyphevc", b"ftypavif"):
        if not HEIF_SUPPORT:
            return "a HEIC/HEIF photo and pillow-heif is not installed (pip install pillow-heif)"
        return "a HEIC/HEIF photo that libheif cannot decode (convert it to JPEG)"
    return "not an image file: its content is no format crossview reads (JPEG, PNG, TIFF, WebP, GIF, BMP, HEIC)"


class TooLargeError(ValueError):
    """An image whose header claims more than twice ``Image.MAX_IMAGE_PIXELS`` (a decompression bomb)."""


def _decode(data: bytes, validate_only: bool = False) -> tuple[Image.Image, tuple[int, int]]:
    """Open and fully decode; return the image and its full size. Any decoder failure propagates.

    ``validate_only`` lets a JPEG decode at 1/8 scale (Pillow's ``draft``): every byte of the
    entropy-coded data is still read, so truncation and corruption fail the same way, but the
    inverse DCT runs on 8x8 fewer pixels (about 2.5x faster on photos).
    """
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise TooLargeError(
            f"the header claims more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels (a decompression bomb or a "
            "huge scan): resize the image"
        ) from None
    size = im.size  # between 1x and 2x MAX_IMAGE_PIXELS Pillow only warns: a 108 MP phone photo is real
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
        what = _sniff(data) if isinstance(err, Image.UnidentifiedImageError) else describe(err)
        return ImageInfo("corrupt", digest, len(data), error=what)
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
