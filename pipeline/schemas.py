"""Every table's pyarrow schema, defined once, and the only code that reads and writes tables.

Writes are deterministic (rows sorted by the table's key, fixed writer options, no pandas
metadata) and atomic (temp file + rename), so the same inputs give byte-identical files.
Tables with a place (``GEOMETRY``) are written as GeoParquet 1.1: geometry columns in EPSG:4326,
derived from the table's own columns, appended after the declared ones (pipeline/geoparquet.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import SchemaError, StageInputError
from pipeline.geoparquet import GeoColumn, with_geometry
from pipeline.store import atomic_file

SPLITS = ("train", "val", "test")  # the values of ``split`` (pairs, manifests), in manifest order

PHOTOS = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),  # demo | flickr | custom
        ("aoi", pa.string()),
        ("city", pa.string()),
        ("owner", pa.string()),
        ("owner_name", pa.string()),
        ("title", pa.string()),
        ("licence_id", pa.int32()),
        ("licence", pa.string()),
        ("licence_url", pa.string()),
        ("lat", pa.float64()),
        ("lon", pa.float64()),
        ("accuracy", pa.int32()),  # Flickr geo accuracy 1 (world) .. 16 (street)
        ("context", pa.int32()),  # Flickr geo_context 0 undefined, 1 indoors, 2 outdoors
        ("date_taken", pa.string()),  # as Flickr gives it: local time "YYYY-MM-DD HH:MM:SS"
        ("date_upload_unix", pa.int64()),
        ("url", pa.string()),  # the image to download (http(s), s3:// or a repo-relative path)
        ("url_width", pa.int32()),
        ("url_height", pa.int32()),
        ("page_url", pa.string()),
        ("tags", pa.string()),
        ("query_cell", pa.string()),
    ]
)

DOWNLOADS = pa.schema(
    [
        ("id", pa.string()),
        ("uri", pa.string()),  # store URI of the normalised RGB JPEG; null unless status == ok
        ("sha256", pa.string()),  # of the bytes as fetched
        ("bytes", pa.int64()),
        ("width", pa.int32()),  # after EXIF orientation
        ("height", pa.int32()),
        ("bands", pa.int32()),  # of the image as fetched (1 = grayscale, 4 = CMYK or RGBA)
        ("mode", pa.string()),  # Pillow mode as fetched: RGB, L, CMYK, P, RGBA, ...
        ("exif_orientation", pa.int32()),
        ("duplicate_of", pa.string()),  # smallest id with the same sha256, when not this one
        ("status", pa.string()),  # ok | empty | corrupt | missing | http_error | timeout | no_url | store_error
        ("error", pa.string()),
    ]
)

TILES = pa.schema(
    [
        ("tile_id", pa.string()),
        ("aoi", pa.string()),
        ("city", pa.string()),
        ("uri", pa.string()),  # store URI of the 8-bit RGB UTM COG; null unless status == ok
        ("source_uri", pa.string()),
        ("epsg", pa.int32()),
        ("footprint_wkb", pa.binary()),  # valid-data polygon in the tile's UTM CRS
        ("minx", pa.float64()),
        ("miny", pa.float64()),
        ("maxx", pa.float64()),
        ("maxy", pa.float64()),
        ("gsd_m", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("band_order", pa.string()),
        ("stretch", pa.string()),  # JSON {"method": percentile|passthrough, "percentiles", "bands": [[lo, hi] x3]}
        ("satellite", pa.string()),
        ("licence", pa.string()),
        ("licence_url", pa.string()),
        ("attribution", pa.string()),
        ("sha256", pa.string()),
        ("status", pa.string()),  # ok | error
        ("error", pa.string()),
    ]
)

PAIRS = pa.schema(
    [
        ("id", pa.string()),  # photo id; a photo pairs with at most one tile
        ("aoi", pa.string()),
        ("city", pa.string()),
        ("tile_id", pa.string()),
        ("epsg", pa.int32()),
        ("x_m", pa.float64()),  # photo position in the tile's UTM CRS
        ("y_m", pa.float64()),
        ("split", pa.string()),  # train | val | test; null unless status == paired
        ("status", pa.string()),  # paired | a reason code
        ("reason", pa.string()),  # human-readable detail; empty when paired
    ]
)

CHIPS = pa.schema(
    [
        ("id", pa.string()),
        ("tile_id", pa.string()),
        ("uri", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("nodata_fraction", pa.float64()),
        ("std", pa.float64()),  # pixel standard deviation over valid pixels (uniform chips)
        ("status", pa.string()),  # ok | error
        ("error", pa.string()),
    ]
)

DECISIONS = pa.schema(
    [
        ("id", pa.string()),
        ("filter", pa.string()),
        ("kept", pa.bool_()),
        ("reason", pa.string()),  # empty when kept
        ("score", pa.float64()),
    ]
)

MANIFEST = pa.schema(
    [
        ("id", pa.string()),
        ("split", pa.string()),
        ("aoi", pa.string()),
        ("city", pa.string()),
        ("lat", pa.float64()),
        ("lon", pa.float64()),
        ("epsg", pa.int32()),
        ("x_m", pa.float64()),
        ("y_m", pa.float64()),
        ("photo_uri", pa.string()),
        ("photo_width", pa.int32()),
        ("photo_height", pa.int32()),
        ("photo_sha256", pa.string()),
        ("chip_uri", pa.string()),
        ("chip_edge_m", pa.float64()),
        ("chip_px", pa.int32()),
        ("gsd_m", pa.float64()),
        ("tile_id", pa.string()),
        ("owner", pa.string()),
        ("owner_name", pa.string()),
        ("title", pa.string()),
        ("date_taken", pa.string()),
        ("accuracy", pa.int32()),
        ("photo_licence", pa.string()),
        ("photo_licence_url", pa.string()),
        ("page_url", pa.string()),
        ("overhead_licence", pa.string()),
        ("overhead_licence_url", pa.string()),
        ("overhead_attribution", pa.string()),
        ("satellite", pa.string()),
        ("nodata_fraction", pa.float64()),
        ("panorama", pa.bool_()),  # a north-aligned 360 degree panorama (CVUSA layout / demo panoramas); null: a photo
    ]
)

# One row per downloaded (status ok) photo (classify stage).
SCORES = pa.schema(
    [
        ("id", pa.string()),
        ("sha256", pa.string()),  # of the photo as fetched (downloads.sha256): a changed photo is rescored
        ("model", pa.string()),  # imagenet/tf_efficientnet_lite0 | places365/<arch>
        ("model_key", pa.string()),  # weights + arch + preprocessing; names the embedding cache folder
        ("vote_key", pa.string()),  # top_k, rule, thresholds, IO labels
        ("status", pa.string()),  # ok | error
        ("error", pa.string()),
        ("indoor_score", pa.float64()),  # weighted vote: indoor share of the top-k mass; majority: share not outdoor
        ("indoor_mass", pa.float64()),
        ("outdoor_mass", pa.float64()),
        ("is_indoor", pa.bool_()),
        ("top_categories", pa.string()),  # "name=0.953, name=0.012, ..." (top_k, most probable first)
    ]
)

# One row per photo in ``scores`` (relevance stage).
RELEVANCE = pa.schema(
    [
        ("id", pa.string()),
        ("model_version", pa.string()),  # the head's version (hash of its training inputs)
        ("status", pa.string()),  # scored | skipped | no_embedding
        ("relevance_score", pa.float64()),  # P(relevant), 0..1; null unless scored
        ("is_relevant", pa.bool_()),  # relevance_score >= threshold; null unless scored
        ("threshold", pa.float64()),
        ("note", pa.string()),  # why a photo was not scored
    ]
)

# One row per pair of the evaluated split (evaluate stage).
EVAL_PAIRS = pa.schema(
    [
        ("id", pa.string()),
        ("split", pa.string()),
        ("rank", pa.int32()),  # chips at distance <= the own chip's (WITW: 1-based, ties count against)
        ("distance", pa.float64()),  # model distance photo → own chip: 2 (1 - cos), 0..4 (WITW)
        ("top1_id", pa.string()),  # the pair whose chip came first
        ("top1_distance", pa.float64()),
        ("predicted_bearing_deg", pa.float64()),  # viewing direction at the own chip; null without orientation
    ]
)

GEOTAG_AUDIT = pa.schema(
    [
        ("id", pa.string()),
        ("split", pa.string()),
        ("epsg", pa.int32()),
        ("x_m", pa.float64()),  # the geotag (the grid's centre point), in the pair's UTM CRS
        ("y_m", pa.float64()),
        ("grid_size", pa.int32()),  # points per side
        ("step_m", pa.float64()),
        ("points", pa.int32()),  # grid points with a full chip (scored)
        ("geotag_d", pa.float64()),  # model distance 2 (1 - cos) at the geotag; null without a full chip there
        ("best_d", pa.float64()),  # the smallest distance on the grid
        ("best_x_m", pa.float64()),  # the best point
        ("best_y_m", pa.float64()),
        ("best_tile_id", pa.string()),
        ("best_offset_m", pa.float64()),  # metres from the geotag to the best point
        ("margin", pa.float64()),  # ln(best score / geotag score) = 10 (geotag_d - best_d), >= 0
        ("geotag_rank", pa.int32()),  # grid points at distance <= the geotag's (1 = the geotag is best; ties against)
        ("scores", pa.list_(pa.float64())),  # WITW's exp(10 (1 - d)), row-major from the north-west; NaN: no chip
        ("suspect", pa.bool_()),  # best_offset_m >= audit.suspect_distance_m and margin >= audit.suspect_margin
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "photos": PHOTOS,
    "downloads": DOWNLOADS,
    "tiles": TILES,
    "pairs": PAIRS,
    "chips": CHIPS,
    "decisions": DECISIONS,
    "manifest": MANIFEST,
    "scores": SCORES,
    "relevance": RELEVANCE,
    "eval_pairs": EVAL_PAIRS,
    "geotag_audit": GEOTAG_AUDIT,
}

# Geometry columns written after each table's declared columns (GeoParquet 1.1, EPSG:4326 lon/lat, WKB).
# Stages never build them: write_table derives them from the named columns, and read_table leaves them out.
GEOMETRY: dict[str, tuple[GeoColumn, ...]] = {
    "tiles": (GeoColumn("geometry", "utm_wkb", ("footprint_wkb", "epsg"), "bbox"),),  # valid-data footprint
    "pairs": (GeoColumn("geometry", "utm_point", ("x_m", "y_m", "epsg"), "bbox"),),  # the photo; null without a tile
    "manifest": (
        GeoColumn("geometry", "lonlat_point", ("lon", "lat"), "bbox"),  # the photo
        GeoColumn("chip_footprint", "utm_square", ("x_m", "y_m", "epsg", "chip_edge_m"), "chip_footprint_bbox"),
    ),
}

# Sort keys: rows are written in this order so outputs do not depend on task completion order.
SORT_KEYS: dict[str, list[str]] = {
    "tiles": ["tile_id"],
    "decisions": ["id", "filter"],
}


def table_from_rows(rows: Iterable[Mapping], schema: pa.Schema) -> pa.Table:
    """Build a table from dict rows; missing columns become nulls, extra keys are an error."""
    rows = list(rows)
    names = set(schema.names)
    for i, row in enumerate(rows):
        extra = set(row) - names
        if extra:
            raise SchemaError(f"row {i} has columns not in the schema: {sorted(extra)}")
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    try:
        return pa.table(columns, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise SchemaError(f"rows do not fit the schema: {err}") from None


def sort_rows(table: pa.Table, keys: Sequence[str] = ("id",)) -> pa.Table:
    """``table``'s rows in ascending order of ``keys`` (a stable sort: the order ``write_table`` writes)."""
    if table.num_rows == 0:
        return table
    return table.take(pc.sort_indices(table, sort_keys=[(k, "ascending") for k in keys]))


ROW_GROUP_ROWS = 256_000  # rows per Parquet row group, for every table
PARQUET_OPTIONS = {"compression": "zstd", "write_statistics": True}


def conform(table: pa.Table, schema: pa.Schema, path: str | Path) -> pa.Table:
    """``table`` with exactly ``schema``'s columns and types, or a SchemaError naming ``path``."""
    if table.schema != schema:
        try:
            table = table.select(schema.names).cast(schema)
        except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise SchemaError(f"{path}: table does not match its schema: {err}") from None
    return table


def write_table(table: pa.Table, path: str | Path, schema: pa.Schema, sort_by: Sequence[str] | None = None) -> None:
    """Validate against ``schema``, sort, and write Parquet atomically and deterministically."""
    table = sort_rows(conform(table, schema, path), sort_by if sort_by is not None else ["id"])
    geometry = GEOMETRY.get(schema_name(schema) or "")
    table = with_geometry(table, geometry) if geometry else table.replace_schema_metadata(None)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS, **PARQUET_OPTIONS)


# The stage (``crossview STAGE``) that writes each table, for error messages that say what to rerun.
WRITTEN_BY: dict[str, str] = {
    "photos": "search",
    "downloads": "download",
    "tiles": "tiles",
    "pairs": "pair",
    "chips": "chip",
    "decisions": "filter",
    "manifest": "manifest",
    "scores": "classify",
    "relevance": "relevance",
    "eval_pairs": "evaluate",
    "geotag_audit": "audit",
}


def schema_name(schema: pa.Schema) -> str | None:
    """The ``SCHEMAS`` name of ``schema``, or None for a schema declared elsewhere."""
    return next((n for n, s in SCHEMAS.items() if s.equals(schema)), None)


def file_schema(schema: pa.Schema) -> pa.Schema:
    """The columns a file written with ``schema`` holds: the declared ones, then any geometry columns."""
    extra = GEOMETRY.get(schema_name(schema) or "", ())
    return pa.schema([*schema, *(f for c in extra for f in c.fields)])


def written_by(schema: pa.Schema) -> str:
    """``crossview STAGE`` for the stage that writes tables of ``schema`` (or a generic hint)."""
    name = schema_name(schema)
    return f"`crossview {WRITTEN_BY[name]}`" if name in WRITTEN_BY else "the stage that writes it"


def check_file(path: str | Path, schema: pa.Schema, geometry: bool = True) -> Path:
    """``path`` if it is a Parquet file written with ``schema`` (and its geometry columns, unless
    ``geometry`` is False); else a one-line error naming the file and the stage that writes it."""
    path = Path(path)
    writer = written_by(schema)
    if not path.exists():
        raise StageInputError(f"{path} does not exist: run {writer} first (`dvc repro` runs it)")
    try:
        found = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise unreadable(path, schema, err) from None
    if not found.remove_metadata().equals(file_schema(schema) if geometry else schema.remove_metadata()):
        raise SchemaError(f"{path}: schema differs from the declared one; rerun {writer}")
    return path


def unreadable(path: str | Path, schema: pa.Schema, err: Exception) -> SchemaError:
    """The error for a table file that cannot be read: what failed and what to do."""
    reason = " ".join(str(err).split())[:200]
    return SchemaError(f"{path} cannot be read as Parquet ({reason}): delete it and rerun {written_by(schema)}")


def read_table(path: str | Path, schema: pa.Schema, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a table written by :func:`write_table`, checking its schema; a missing or unreadable file is a
    one-line error naming the file and the stage that writes it."""
    path = check_file(path, schema)
    try:  # geometry columns are for GIS readers; stages get exactly the declared columns
        table = pq.read_table(path, columns=list(columns) if columns else schema.names)
    except (pa.ArrowException, OSError) as err:
        raise unreadable(path, schema, err) from None
    return table.replace_schema_metadata(None)
