"""Draw a PNG grid of a few pairs from the manifests: each photo beside its overhead chip.

The pairs are chosen deterministically (evenly spaced through the rows sorted by split, city and
id), so the same manifests give the same picture. A cross marks the chip centre, where the photo
was geotagged; the caption under each pair gives its id, city and split.
"""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from pipeline.config import Params, S3Params
from pipeline.errors import CrossviewError, StageInputError
from pipeline.schemas import MANIFEST, SPLITS, read_table
from pipeline.store import read_bytes

log = logging.getLogger(__name__)

COLUMNS = ["id", "split", "city", "photo_uri", "chip_uri"]
CELL = 256  # each image is fitted into a CELL x CELL square
PAD = 8
CAPTION = 20
PANEL = (2 * CELL + 3 * PAD, CELL + 2 * PAD + CAPTION)  # one pair: photo | chip, caption below
BACKGROUND = (255, 255, 255)
EMPTY = (200, 200, 200)
MARKER = (255, 40, 40)


def read_rows(manifests: str | Path, split: str | None = None) -> list[dict]:
    """The manifest rows (``COLUMNS`` only) of one split or all, sorted by split, city and id."""
    rows = []
    for s in [split] if split else SPLITS:
        path = Path(manifests) / f"{s}.parquet"
        if path.exists():
            rows += read_table(path, MANIFEST, columns=COLUMNS).to_pylist()
    if not rows:
        raise StageInputError(
            f"{manifests}: no manifest rows{f' in split {split}' if split else ''}; run `crossview manifest` first"
        )
    return sorted(
        rows, key=lambda r: (SPLITS.index(r["split"]) if r["split"] in SPLITS else 9, r["city"] or "", r["id"])
    )


def choose(rows: list[dict], n: int) -> list[dict]:
    """``n`` rows evenly spaced through ``rows`` (all of them when there are no more than ``n``)."""
    if len(rows) <= n:
        return list(rows)
    return [rows[(k * len(rows)) // n] for k in range(n)]


def grid_size(n: int, columns: int = 2) -> tuple[int, int]:
    """Pixel size of a grid of ``n`` pairs, ``columns`` pairs per row."""
    cols = max(1, min(n, columns))
    return cols * PANEL[0], -(-n // cols) * PANEL[1]


def _image(uri: str, s3: S3Params) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(read_bytes(uri, s3))) as img:
            return img.convert("RGB")
    except (CrossviewError, OSError, ValueError) as err:
        log.warning("cannot draw %s: %s", uri, err)
        return None


def _fit(img: Image.Image | None) -> Image.Image:
    """The image fitted (aspect kept) and centred in a CELL x CELL square; grey when unreadable."""
    cell = Image.new("RGB", (CELL, CELL), EMPTY if img is None else BACKGROUND)
    if img is not None:
        small = ImageOps.contain(img, (CELL, CELL), Image.Resampling.LANCZOS)
        cell.paste(small, ((CELL - small.width) // 2, (CELL - small.height) // 2))
    return cell


def panel(row: dict, s3: S3Params, font: ImageFont.ImageFont) -> Image.Image:
    """One pair: photo on the left, chip on the right with a cross at its centre, caption below."""
    out = Image.new("RGB", PANEL, BACKGROUND)
    out.paste(_fit(_image(row["photo_uri"], s3)), (PAD, PAD))
    out.paste(_fit(_image(row["chip_uri"], s3)), (2 * PAD + CELL, PAD))
    draw = ImageDraw.Draw(out)
    cx, cy, r = 2 * PAD + CELL + CELL // 2, PAD + CELL // 2, 10
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=MARKER, width=2)
    draw.line((cx - 2 * r, cy, cx + 2 * r, cy), fill=MARKER, width=1)
    draw.line((cx, cy - 2 * r, cx, cy + 2 * r), fill=MARKER, width=1)
    caption = f"{row['id']}  |  {row['city'] or 'unknown city'}  |  {row['split']}"
    draw.text((PAD, 2 * PAD + CELL), caption, fill=(0, 0, 0), font=font)
    return out


def draw_grid(rows: list[dict], s3: S3Params, columns: int = 2) -> Image.Image:
    """A grid of panels, ``columns`` pairs per row, in the order of ``rows``."""
    width, height = grid_size(len(rows), columns)
    grid = Image.new("RGB", (width, height), BACKGROUND)
    cols = width // PANEL[0]
    font = ImageFont.load_default()
    for k, row in enumerate(rows):
        grid.paste(panel(row, s3, font), ((k % cols) * PANEL[0], (k // cols) * PANEL[1]))
    return grid


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifests", required=True, help="folder with train/val/test.parquet")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--n", type=_positive, default=6, help="how many pairs to draw (default 6)")
    parser.add_argument("--split", choices=SPLITS, default=None, help="draw from one split only (default: all)")
    parser.add_argument("--columns", type=_positive, default=2, help="pairs per grid row (default 2)")


def main(params: Params, args: argparse.Namespace) -> int:
    rows = choose(read_rows(args.manifests, args.split), args.n)
    image = draw_grid(rows, params.s3, args.columns)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG", optimize=False)
    log.info("wrote %s: %d pairs, %dx%d px", out, len(rows), image.width, image.height)
    return 0
