"""`crossview panoramas`: a CVUSA-format folder (or the demo's rendered panoramas) -> panorama manifests.

A CVUSA-format folder holds ``splits/train-19zl.csv`` and ``splits/val-19zl.csv`` (no header;
``bingmap/19/N.jpg,streetview/panos/N.jpg,<third column>``, paths relative to the folder), the
overhead images and the north-aligned panoramas. Its rows become manifest rows (MANIFEST schema,
``panorama`` true, ``photo_width``/``photo_height`` the panorama's size, ``chip_px`` the overhead's),
``train-19zl.csv`` -> ``train.parquet`` and ``val-19zl.csv`` -> ``test.parquet`` (CVUSA's evaluation
split), so training and evaluation read them like any manifest; ``train.panorama_step`` then says
which of the seed's Figure-4 changes the loader applies. With no ``--cvusa`` and no
``panoramas.cvusa`` param, the demo's panoramas are rendered into ``--demo-out`` first.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
from pathlib import Path

from PIL import Image

from pipeline.config import Params
from pipeline.errors import StageInputError
from pipeline.schemas import MANIFEST, table_from_rows, write_table

log = logging.getLogger(__name__)

SPLIT_FILES = {"train": "train-19zl.csv", "test": "val-19zl.csv"}
CVUSA_LICENCE = "CVUSA terms (distributed on request by its authors; research use)"
DEMO_LICENCE = "synthetic (crossview demo; no rights reserved)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the panoramas command's arguments."""
    parser.add_argument("--cvusa", default=None, help="CVUSA-format folder (default: panoramas.cvusa, else the demo's)")
    parser.add_argument("--demo-out", default="data/panoramas", help="where the demo panoramas are rendered")
    parser.add_argument("--out", required=True, help="folder for train.parquet and test.parquet")


def _split_lines(path: Path) -> list[tuple[str, str]]:
    """(overhead, panorama) relative paths of a CVUSA split CSV."""
    if not path.exists():
        raise StageInputError(f"{path} not found: a CVUSA-format folder has splits/{path.name} "
                              f"(or {path.name} beside bingmap/ and streetview/)")
    out = []
    with path.open(newline="") as fh:
        for n, row in enumerate(csv.reader(fh), start=1):
            if not row:
                continue
            if len(row) < 2:
                raise StageInputError(f"{path}:{n}: expected 'bingmap/19/N.jpg,streetview/panos/N.jpg,...'")
            out.append((row[0].strip(), row[1].strip()))
    return out


def split_file(root: Path, name: str) -> Path:
    """A split CSV under ``splits/`` (CVUSA's release) or beside the data (WITW's code expects it there)."""
    return root / "splits" / name if (root / "splits" / name).exists() else root / name


def manifest_rows(root: str | Path, split: str, licence: str, overhead_m: float | None) -> list[dict]:
    """MANIFEST rows (panorama rows) of one split of a CVUSA-format folder."""
    root = Path(root)
    rows = []
    for overhead, pano in _split_lines(split_file(root, SPLIT_FILES[split])):
        pano_path, chip_path = root / pano, root / overhead
        for path in (pano_path, chip_path):
            if not path.is_file():
                raise StageInputError(f"{path} (named in {SPLIT_FILES[split]}) does not exist: fix the split file "
                                      "or the folder (panoramas.cvusa)")
        with Image.open(pano_path) as im:
            width, height = im.size
        with Image.open(chip_path) as im:
            chip_px = im.size[0]
        rows.append({
            "id": f"{split}-{Path(pano).stem}", "split": split, "aoi": "cvusa", "city": root.name,
            "photo_uri": pano_path.as_posix(), "photo_width": width, "photo_height": height,
            "photo_sha256": hashlib.sha256(pano_path.read_bytes()).hexdigest(),
            "chip_uri": chip_path.as_posix(), "chip_px": chip_px, "chip_edge_m": overhead_m,
            "photo_licence": licence, "overhead_licence": licence, "panorama": True,
        })
    return rows


def write_manifests(root: str | Path, out: str | Path, licence: str = CVUSA_LICENCE,
                    overhead_m: float | None = None) -> dict[str, int]:
    """``out/train.parquet`` and ``out/test.parquet`` from a CVUSA-format folder; rows per split."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLIT_FILES:
        rows = manifest_rows(root, split, licence, overhead_m)
        write_table(table_from_rows(rows, MANIFEST), out / f"{split}.parquet", MANIFEST)
        counts[split] = len(rows)
    log.info("panorama manifests from %s: %s -> %s", root, counts, out)
    return counts


def main(params: Params, args: argparse.Namespace) -> int:
    """Read (or render, then read) the panorama source and write its manifests."""
    p = params.panoramas
    root = args.cvusa or p.cvusa
    if root:
        write_manifests(root, args.out)
        return 0
    from pipeline.demo.pano_render import write_cvusa

    write_manifests(write_cvusa(args.demo_out, p, params.demo, params.workers), args.out, DEMO_LICENCE, p.overhead_m)
    return 0
