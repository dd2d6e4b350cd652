"""``crossview inspect PATH...``: every photo-level rule over image files or folders, one row per image.

It runs exactly the stages' code on the files: the download stage's unit of work
(:func:`pipeline.download.process_one`: full decode, checks, upright RGB JPEG) into a temporary
store, the classify stage's core (:func:`pipeline.classify.classify`), the relevance head saved by
``crossview relevance`` when it is trained on the same model's embeddings, and then the photo
filters of the registry plus the indoor and relevance filters. Prints ``file, kept, reasons,
indoor_score, relevance_score, top_categories`` as a table, CSV or JSON.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from pipeline.config import Params
from pipeline.errors import StageInputError

log = logging.getLogger(__name__)

# The registry's filters that judge the file itself (run as the filter stage runs them, with the same params):
# a CDN placeholder among the files given (filter.placeholder_copies copies of one sha256) drops every copy.
PHOTO_RULES = ("download", "single_band", "colour_mode", "too_small", "placeholder_image", "duplicate_image")
COLUMNS = ("file", "kept", "reasons", "indoor_score", "relevance_score", "top_categories")


@dataclasses.dataclass(frozen=True)
class PhotoTables:
    """What the photo-level filters read (the filter stage's ``Tables`` plus the model tables)."""

    photos: pa.Table
    downloads: pa.Table
    pairs: pa.Table
    chips: pa.Table
    scores: pa.Table | None
    relevance: pa.Table | None
    shared_bytes: None = None  # whole tables: counts across photos come from them (``filters.base.Tables``)


def image_files(paths: Sequence[str]) -> list[str]:
    """Files named directly, plus every file under named folders (recursively, sorted, no hidden files).

    Every file is listed, whatever its name: what it is comes from its content (a JPEG named
    ``.heic`` is a JPEG, a phone's HEIC photo decodes, a text file gets the reason why it is unusable).
    """
    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file())
            shown = [f for f in found if not any(part.startswith(".") for part in f.relative_to(path).parts)]
            if len(shown) < len(found):
                log.info("%s: %d hidden files skipped", path, len(found) - len(shown))
            out.extend(str(f) for f in shown)
        elif path.is_file():
            out.append(str(path))
        else:
            raise StageInputError(f"{p}: no such file or folder")
    return out


def _downloads(files: Sequence[str], ids: Sequence[str], params: Params, store_root: str) -> pa.Table:
    from pipeline.download import Context, mark_duplicates, process_one
    from pipeline.schemas import DOWNLOADS, table_from_rows

    ctx = Context(store_root, params.s3, params.download)
    rows = [process_one((i, f), ctx) for i, f in zip(ids, files)]
    return table_from_rows(mark_duplicates(rows), DOWNLOADS)


def _relevance(scores: pa.Table, head_path: str | None, cache: str) -> tuple[pa.Table | None, str]:
    """Relevance rows from the saved head when it is trained on this model's embeddings, else (None, why)."""
    from pipeline import relevance

    head = relevance.load_head(head_path) if head_path else None
    if head is None:
        return None, "no relevance model"
    if not head.trained:
        return None, f"relevance head {head.reason}"
    keys = set(scores.column("model_key").to_pylist())
    if keys and keys != {head.embedding_model_key}:
        return (
            None,
            f"relevance head was trained on embeddings of model key {head.embedding_model_key}, not {sorted(keys)}",
        )
    return relevance.score(scores, head, cache), ""


def _decisions(tables: PhotoTables, params: Params) -> pa.Table:
    from filters import REGISTRY
    from filters.indoor_rules import indoor
    from filters.relevance_rules import relevance

    registry = {f.name: f.fn for f in REGISTRY}
    missing = [name for name in PHOTO_RULES if name not in registry]
    if missing:
        log.warning("photo rules not in filters.REGISTRY (skipped): %s", ", ".join(missing))
    fns = [registry[name] for name in PHOTO_RULES if name in registry]
    fns += [registry.get("indoor", indoor), registry.get("relevance", relevance)]
    return pa.concat_tables([fn(tables, params.filter) for fn in fns])


def inspect_files(files: Sequence[str], params: Params, head_path: str | None = None) -> list[dict]:
    """One result row per file (in the given order), judged by every photo-level rule."""
    from pipeline.classify import classify
    from pipeline.schemas import CHIPS, PAIRS

    ids = [f"f{k:06d}" for k in range(len(files))]
    params = params.model_copy(update={"scheduler": ""})  # temporary local files: never sent to a cluster
    with tempfile.TemporaryDirectory(prefix="crossview-inspect-") as tmp:
        downloads = _downloads(files, ids, params, f"{tmp}/store")
        scores, _ = classify(downloads, params, f"{tmp}/embeddings")
        relevance, why = _relevance(scores, head_path, f"{tmp}/embeddings")
    if why:
        log.info("relevance not applied: %s", why)
    tables = PhotoTables(_photos(ids), downloads, PAIRS.empty_table(), CHIPS.empty_table(), scores, relevance)
    return _rows(files, ids, _decisions(tables, params), scores, relevance)


def _photos(ids: Sequence[str]) -> pa.Table:
    from pipeline.schemas import PHOTOS, table_from_rows

    return table_from_rows(({"id": i} for i in ids), PHOTOS)


def _column_map(table: pa.Table | None, column: str) -> dict:
    if table is None:
        return {}
    return dict(zip(table.column("id").to_pylist(), table.column(column).to_pylist()))


def _rows(
    files: Sequence[str], ids: Sequence[str], decisions: pa.Table, scores: pa.Table, relevance: pa.Table | None
) -> list[dict]:
    reasons: dict[str, list[str]] = {i: [] for i in ids}
    for i, kept, reason in zip(*(decisions.column(c).to_pylist() for c in ("id", "kept", "reason"))):
        if not kept:
            reasons[i].append(reason)
    indoor, top = _column_map(scores, "indoor_score"), _column_map(scores, "top_categories")
    rel = _column_map(relevance, "relevance_score")
    return [
        {
            "file": f,
            "kept": not reasons[i],
            "reasons": ";".join(reasons[i]),
            "indoor_score": indoor.get(i),
            "relevance_score": rel.get(i),
            "top_categories": top.get(i) or "",
        }
        for f, i in zip(files, ids)
    ]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def render(rows: Sequence[dict], fmt: str) -> str:
    """Rows as an aligned text table, CSV or JSON."""
    if fmt == "json":
        return json.dumps(list(rows), indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows([_cell(r[c]) for c in COLUMNS] for r in rows)
        return out.getvalue()
    cells = [list(COLUMNS)] + [[_cell(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(COLUMNS) - 1)]
    lines = ["  ".join([*(v.ljust(w) for v, w in zip(row[:-1], widths)), row[-1]]).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    parser.add_argument(
        "--relevance-model",
        default="models/relevance.json",
        help="relevance head from `crossview relevance` (used when trained; default: %(default)s)",
    )


def main(params: Params, args: argparse.Namespace) -> int:
    files = image_files(args.paths)
    if not files:
        raise StageInputError(f"no files under {', '.join(args.paths)}")
    rows = inspect_files(files, params, args.relevance_model)
    sys.stdout.write(render(rows, args.format))
    return 0
