"""GeoParquet 1.1 for the tables that have a place: WKB geometry columns derived from a table's own
columns, and the ``geo`` file metadata, both byte-deterministic.

Every geometry column is in EPSG:4326 with lon/lat (x/y) order, as GeoParquet requires of WKB
coordinates. A UTM column cannot be a GeoParquet geometry column here because one table mixes UTM
zones; the UTM values stay in their own columns (``x_m``, ``y_m``, ``footprint_wkb`` + ``epsg``)
and the geometry columns are appended after them, so a reader that ignores geometry sees the
columns it always saw, in the same order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Literal

import numpy as np
import pyarrow as pa
import shapely

from pipeline.geo import transformer

GEO_VERSION = "1.1.0"
GEO_EPSG = 4326
SEGMENT_M = 250.0  # footprint edges are densified to this before re-projection, so curved edges stay close

BBOX_TYPE = pa.struct([(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")])

Kind = Literal["lonlat_point", "utm_point", "utm_square", "utm_wkb"]


@dataclass(frozen=True)
class GeoColumn:
    """A geometry column appended to a table and how it is derived from the table's columns.

    ``lonlat_point``: (lon, lat); ``utm_point``: (x, y, epsg); ``utm_square``: (x, y, epsg, edge), the
    axis-aligned square of side ``edge`` metres around (x, y) in that UTM zone; ``utm_wkb``: (wkb, epsg),
    a WKB geometry in that zone. A row with a null or non-finite input gets a null geometry.
    """

    name: str
    kind: Kind
    sources: tuple[str, ...]
    bbox: str = ""  # the GeoParquet 1.1 bbox covering column (per-row bounds, so readers can skip row groups)

    @property
    def fields(self) -> list[pa.Field]:
        """The WKB column and, when named, its bbox covering column."""
        return [pa.field(self.name, pa.binary()), *([pa.field(self.bbox, BBOX_TYPE)] if self.bbox else [])]


@lru_cache(maxsize=1)
def crs_projjson() -> dict:
    """PROJJSON of EPSG:4326 (what geopandas, GDAL and QGIS read back as EPSG:4326)."""
    from pyproj import CRS

    return CRS.from_epsg(GEO_EPSG).to_json_dict()


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return table[name].to_numpy(zero_copy_only=False).astype(float)


def _epsg(table: pa.Table, name: str) -> np.ndarray:
    return table[name].fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)


def _apply(fwd, xy: np.ndarray) -> np.ndarray:
    return np.column_stack(fwd.transform(xy[:, 0], xy[:, 1]))


def _to_lonlat(geoms: np.ndarray, epsg: np.ndarray) -> np.ndarray:
    """Re-project each geometry from its row's EPSG code to lon/lat; one transformer per zone."""
    out = np.full(len(geoms), None, dtype=object)
    for code in np.unique(epsg[epsg > 0]):
        rows = np.flatnonzero((epsg == code) & ~shapely.is_missing(geoms))
        if len(rows):
            fwd = transformer(int(code), GEO_EPSG)
            out[rows] = shapely.transform(geoms[rows], partial(_apply, fwd))
    return out


def _points(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Points where both coordinates are finite, None elsewhere."""
    ok = np.isfinite(x) & np.isfinite(y)
    out = np.full(len(x), None, dtype=object)
    out[ok] = shapely.points(x[ok], y[ok])
    return out


def _lonlat_point(table: pa.Table, lon: str, lat: str) -> np.ndarray:
    return _points(_floats(table, lon), _floats(table, lat))


def _utm_point(table: pa.Table, x: str, y: str, epsg: str) -> np.ndarray:
    xs, ys, codes = _floats(table, x), _floats(table, y), _epsg(table, epsg)
    lon, lat = np.full(len(xs), np.nan), np.full(len(xs), np.nan)
    for code in np.unique(codes[codes > 0]):  # coordinates first, points once: far cheaper than moving points
        rows = np.flatnonzero(codes == code)
        lon[rows], lat[rows] = transformer(int(code), GEO_EPSG).transform(xs[rows], ys[rows])
    return _points(lon, lat)


def _utm_square(table: pa.Table, x: str, y: str, epsg: str, edge: str) -> np.ndarray:
    xs, ys, codes, half = _floats(table, x), _floats(table, y), _epsg(table, epsg), _floats(table, edge) / 2
    ok = np.isfinite(xs) & np.isfinite(ys) & np.isfinite(half) & (half > 0) & (codes > 0)
    boxes = np.full(len(xs), None, dtype=object)
    boxes[ok] = shapely.box(xs[ok] - half[ok], ys[ok] - half[ok], xs[ok] + half[ok], ys[ok] + half[ok], ccw=True)
    return _to_lonlat(boxes, np.where(ok, codes, 0))


def _utm_wkb(table: pa.Table, wkb: str, epsg: str) -> np.ndarray:
    geoms = shapely.from_wkb(np.asarray(table[wkb].to_pylist(), dtype=object))
    codes = _epsg(table, epsg)
    geoms = np.where(shapely.is_missing(geoms), None, shapely.segmentize(geoms, SEGMENT_M))
    return _to_lonlat(geoms, codes)


_TYPE_NAMES = {0: "Point", 1: "LineString", 3: "Polygon", 4: "MultiPoint", 5: "MultiLineString", 6: "MultiPolygon",
               7: "GeometryCollection"}  # shapely type ids -> GeoParquet geometry_types names

_BUILDERS = {"lonlat_point": _lonlat_point, "utm_point": _utm_point, "utm_square": _utm_square, "utm_wkb": _utm_wkb}


def derive(table: pa.Table, column: GeoColumn) -> np.ndarray:
    """The column's geometries (shapely, None where an input is missing), in EPSG:4326 lon/lat."""
    if table.num_rows == 0:
        return np.empty(0, dtype=object)
    return _BUILDERS[column.kind](table, *column.sources)


def column_metadata(geoms: np.ndarray) -> dict:
    """GeoParquet column metadata: WKB, the geometry types present, EPSG:4326 PROJJSON and the bbox."""
    present = geoms[~shapely.is_missing(geoms)] if len(geoms) else geoms
    meta = {
        "encoding": "WKB",
        "geometry_types": sorted({_TYPE_NAMES[t] for t in np.unique(shapely.get_type_id(present)).tolist()}),
        "crs": crs_projjson(),
    }
    if len(present):
        meta["bbox"] = [float(v) for v in shapely.total_bounds(present)]
    return meta


def bbox_array(geoms: np.ndarray) -> pa.StructArray:
    """Per-row (xmin, ymin, xmax, ymax) structs; null where the geometry is."""
    bounds = shapely.bounds(geoms).reshape(-1, 4) if len(geoms) else np.empty((0, 4))
    missing = pa.array(shapely.is_missing(geoms) if len(geoms) else np.empty(0, bool))
    arrays = [pa.array(bounds[:, k], pa.float64()) for k in range(4)]
    return pa.StructArray.from_arrays(arrays, fields=list(BBOX_TYPE), mask=missing)


def append_geometry(table: pa.Table, columns: tuple[GeoColumn, ...]) -> tuple[pa.Table, dict[str, dict]]:
    """``table`` with the geometry columns appended (WKB + bbox covering), and each one's column metadata."""
    metas = {}
    for column in columns:
        geoms = derive(table, column)
        metas[column.name] = column_metadata(geoms)
        wkb = shapely.to_wkb(geoms, output_dimension=2, byte_order=1, flavor="iso") if len(geoms) else []
        table = table.append_column(column.fields[0], pa.array(list(wkb), pa.binary()))
        if column.bbox:
            table = table.append_column(column.fields[1], bbox_array(geoms))
    return table, metas


def merge_metadata(a: dict, b: dict) -> dict:
    """The column metadata of two parts of one column: the union of their types, the bbox around both."""
    out = {**a, "geometry_types": sorted(set(a["geometry_types"]) | set(b["geometry_types"]))}
    boxes = [m["bbox"] for m in (a, b) if "bbox" in m]
    if boxes:
        out["bbox"] = [min(x[0] for x in boxes), min(x[1] for x in boxes), max(x[2] for x in boxes),
                       max(x[3] for x in boxes)]  # fmt: skip
    return out


def geo_text(columns: tuple[GeoColumn, ...], metas: dict[str, dict]) -> str:
    """The ``geo`` schema metadata (GeoParquet 1.1) for ``columns`` with their column metadata."""
    meta = {"version": GEO_VERSION, "primary_column": columns[0].name, "columns": {}}
    for column in columns:
        meta["columns"][column.name] = dict(metas[column.name])
        if column.bbox:
            meta["columns"][column.name]["covering"] = {"bbox": {k: [column.bbox, k] for k in BBOX_TYPE.names}}
    return json.dumps(meta, sort_keys=True, separators=(",", ":"))


def with_geometry(table: pa.Table, columns: tuple[GeoColumn, ...]) -> pa.Table:
    """``table`` with the geometry columns appended (WKB + bbox covering) and only the ``geo`` schema metadata."""
    table, metas = append_geometry(table, columns)
    return table.replace_schema_metadata({"geo": geo_text(columns, metas)})
