"""User vector files (GeoPackage, Shapefile, GeoJSON, FlatGeobuf, GeoParquet; any CRS) -> shapely geometries.

The one reader for every place a geometry is asked for: deny areas, AOIs / search areas and custom
photo tables whose positions are point geometries. Files are read with geopandas (pyogrio, GDAL)
and re-projected to the CRS the caller works in; a file that cannot be used is one
``CatalogError`` line naming the file and what to do.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from pipeline.errors import CatalogError

log = logging.getLogger(__name__)

# Suffixes read as vector files (``.json`` only where a caller accepts GeoJSON; ``.zip`` a zipped Shapefile).
VECTOR_SUFFIXES = (".gpkg", ".shp", ".geojson", ".json", ".fgb", ".parquet", ".geoparquet", ".gml", ".kml", ".zip")
PARQUET_SUFFIXES = (".parquet", ".geoparquet", ".pq")
POLYGONAL = ("Polygon", "MultiPolygon")
SEGMENT_M = 100.0  # projected edges are densified to this before re-projection to lon/lat
NAME_COLUMNS = ("aoi", "name", "id", "label")


def is_vector_file(text: str | Path | None) -> bool:
    """Whether ``text`` names an existing file with a vector suffix (as opposed to WKT or YAML)."""
    if text is None:
        return False
    path = Path(str(text))
    return path.suffix.lower() in VECTOR_SUFFIXES and path.is_file()


def is_geoparquet(path: str | Path) -> bool:
    """Whether a Parquet file carries GeoParquet ``geo`` metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError):
        return False  # not Parquet at all: the plain-Parquet reader reports it
    return b"geo" in meta


def read_vector(path: str | Path, what: str = "vector file"):
    """A GeoDataFrame of every feature in ``path``, with its CRS; CatalogError naming the file on failure."""
    import geopandas as gpd

    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"{path}: {what} not found")
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            frame = gpd.read_parquet(path)
        else:
            frame = gpd.read_file(path, engine="pyogrio")
    except Exception as err:  # noqa: BLE001 - GDAL, pyarrow and geopandas raise many types; all become one line
        reason = " ".join(str(err).split())[:200]
        raise CatalogError(
            f"{path}: cannot read the {what} ({type(err).__name__}: {reason}); use a GeoPackage, Shapefile, "
            "GeoJSON, FlatGeobuf or GeoParquet file"
        ) from None
    if frame.crs is None:
        raise CatalogError(
            f"{path}: the {what} has no CRS; save it with one (a Shapefile needs its .prj; GeoJSON is always lon/lat)"
        )
    return frame


def _densified(frame):
    """Geometries of a projected frame with edges split every ``SEGMENT_M`` metres (lon/lat frames unchanged)."""
    if not frame.crs.is_projected:
        return frame.geometry.values
    unit = frame.crs.axis_info[0].unit_conversion_factor or 1.0
    return shapely.segmentize(np.asarray(frame.geometry.values, dtype=object), SEGMENT_M / unit)


def geometries(frame, epsg: int) -> np.ndarray:
    """The frame's geometries (shapely, None where missing) in ``EPSG:epsg`` (x/y = lon/lat for 4326)."""
    import geopandas as gpd

    dense = gpd.GeoSeries(_densified(frame), crs=frame.crs)
    return np.asarray(dense.to_crs(epsg).values, dtype=object)


@dataclass(frozen=True)
class Feature:
    """One polygonal feature: a label for messages and reasons, its name and city columns, its geometry."""

    label: str
    name: str
    city: str
    geometry: BaseGeometry


def _column_text(frame, names: tuple[str, ...], row: int) -> str:
    for name in names:
        if name in frame.columns:
            value = frame[name].iloc[row]
            if value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value).strip():
                return str(value).strip()
    return ""


def read_polygons(path: str | Path, epsg: int = 4326, what: str = "area file") -> list[Feature]:
    """Every feature of a polygon file in ``EPSG:epsg``; a point or line feature is an error naming it."""
    frame = read_vector(path, what)
    geoms = geometries(frame, epsg)
    features = []
    for k, geom in enumerate(geoms):
        if geom is None or geom.is_empty:
            log.warning("%s: feature %d has no geometry; skipped", path, k + 1)
            continue
        if geom.geom_type not in POLYGONAL:
            raise CatalogError(f"{path}: feature {k + 1} is a {geom.geom_type}; the {what} must hold polygons")
        name = _column_text(frame, NAME_COLUMNS, k)
        label = f"{name!r} ({Path(path).name} feature {k + 1})" if name else f"{Path(path).name} feature {k + 1}"
        features.append(Feature(label, name, _column_text(frame, ("city",), k), shapely.make_valid(geom)))
    if not features:
        raise CatalogError(f"{path}: the {what} holds no polygon")
    return features


def read_area(path: str | Path, epsg: int | None = 4326, what: str = "area file") -> BaseGeometry:
    """The union of every polygon in a vector file, in ``EPSG:epsg`` (None: no CRS to convert to, an error)."""
    if epsg is None:
        raise CatalogError(f"{path}: a vector file carries its own CRS; say which CRS to work in (lonlat or EPSG:n)")
    return shapely.union_all([f.geometry for f in read_polygons(path, epsg, what)])


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A name usable in file names and ids: anything but letters, digits, '.', '_' and '-' becomes '_'."""
    return _UNSAFE.sub("_", text).strip("_") or "area"


def point_records(path: str | Path, what: str = "photo table") -> tuple[list[dict], list[str]]:
    """A vector/GeoParquet table's rows (attributes only) with ``lon``/``lat`` from its point geometry.

    Missing or empty geometries give NaN (the pair stage records ``bad_coordinates``); a row whose
    geometry is not a point is an error naming the rows.
    """
    frame = read_vector(path, what)
    geoms = geometries(frame, 4326)
    kinds = np.array([None if g is None or g.is_empty else g.geom_type for g in geoms], dtype=object)
    bad = [k + 1 for k, t in enumerate(kinds) if t not in (None, "Point")]
    if bad:
        shown = ", ".join(str(k) for k in bad[:20]) + (" ..." if len(bad) > 20 else "")
        raise CatalogError(f"{path}: rows {shown} are not points; a photo's position must be a point geometry")
    columns = [c for c in frame.columns if c != frame.geometry.name]
    records = frame[columns].to_dict("records")
    for record, geom in zip(records, geoms, strict=True):
        empty = geom is None or geom.is_empty
        record["lon"], record["lat"] = (math.nan, math.nan) if empty else (geom.x, geom.y)
    return records, [*columns, "lon", "lat"]
