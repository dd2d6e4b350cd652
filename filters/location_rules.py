"""Rules on where a photo is: its coordinates, the deny list, what the pair stage found, and the density limit."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from catalogs import load_deny_list
from filters.base import Tables, by_id, column, decisions_table
from pipeline.config import FilterParams
from pipeline.errors import CatalogError
from pipeline.neighbours import DensityLimit
from pipeline.schemas import DECISIONS, SPLITS
from pipeline.vectors import read_polygons

log = logging.getLogger(__name__)

# Pair statuses that have their own filter; every other non-paired status is a pairing drop.
OWN_FILTER = {"bad_coordinates": "coordinates", "split_buffer": "split_buffer"}


def _pair_status_rule(tables: Tables, name: str, status: str) -> pa.Table:
    """Judge every pair: dropped when its status is ``status``, with the pair's reason."""
    out = []
    for i, r in by_id(tables.pairs, ["status", "reason"]).items():
        if r["status"] == status:
            out.append((i, False, f"{status}: {r['reason']}" if r["reason"] else status, None))
        else:
            out.append((i, True, "", None))
    return decisions_table(name, out)


def coordinates(tables: Tables, params: FilterParams) -> pa.Table:
    """Drop photos whose coordinates the pair stage found unusable (NaN, out of range)."""
    return _pair_status_rule(tables, "coordinates", "bad_coordinates")


def density(places: Iterable[pa.Table], params: FilterParams) -> Iterator[pa.Table]:
    """WITW's density limit among the candidates (the photos every other filter kept), per UTM zone.

    In a seeded order, a candidate is kept unless an earlier kept one is closer than
    ``filter.density_m``; the reason names that kept photo, which is therefore in the manifest.
    ``places``: the candidates' id, epsg, x_m, y_m, id-sorted parts in id order; the decisions come a
    strip at a time (:class:`~pipeline.neighbours.DensityLimit`: memory does not grow with the photos).
    """
    with DensityLimit(params.density_m, params.density_seed) as limit:
        for part in places:
            limit.add(part["id"].combine_chunks(), *(part[c].to_numpy(zero_copy_only=False) for c in ("epsg", "x_m", "y_m")))
        for results in limit.results():
            yield density_decisions(results, params)


def density_decisions(results: pa.Table, params: FilterParams) -> pa.Table:
    """DECISIONS rows of the density limit's results (``pipeline.neighbours.SWEEP_OUT``), in their order."""
    kept = results["kept"].to_numpy(zero_copy_only=False)
    dist = results["distance"].to_numpy()
    limit = f"density limit {params.density_m:g} m"
    names = iter(pc.filter(results["neighbour_id"], pc.invert(results["kept"])).to_pylist())
    reasons = ["" if k else f"density: {d:.2f} m from kept photo {next(names)} ({limit})"
               for k, d in zip(kept.tolist(), dist.tolist(), strict=True)]  # fmt: skip
    return pa.table({
        "id": results["id"], "filter": pa.array(np.full(len(kept), "density", object), pa.string()),
        "kept": results["kept"], "reason": pa.array(reasons, pa.string()),
        "score": pa.array(dist, pa.float64(), mask=kept),
    }, schema=DECISIONS)  # fmt: skip


def split_buffer(tables: Tables, params: FilterParams) -> pa.Table:
    """Drop photos in the buffer the pair stage leaves between split blocks."""
    return _pair_status_rule(tables, "split_buffer", "split_buffer")


def pairing(tables: Tables, params: FilterParams) -> pa.Table:
    """Drop photos without a usable pair: outside every tile, too near a tile edge, not downloaded.

    Judges every photo, so one with no pair row at all (or a pair status no other filter knows)
    is dropped here rather than lost.
    """
    pairs = by_id(tables.pairs, ["status", "reason", "split"])
    out = []
    for i in column(tables.photos, "id"):
        r = pairs.get(i)
        if r is None:
            out.append((i, False, "not_paired: no row in the pairs table (rerun `crossview pair`)", None))
        elif r["status"] == "paired":
            ok = r["split"] in SPLITS
            out.append((i, ok, "" if ok else f"no_split: paired but split is {r['split']!r}", None))
        elif r["status"] in OWN_FILTER:
            out.append((i, True, "", None))  # dropped by its own filter
        else:
            status = r["status"] or "unknown_status"
            out.append((i, False, f"{status}: {r['reason']}" if r["reason"] else status, None))
    return decisions_table("pairing", out)


def _polygons(wkts: tuple[str, ...], path: str) -> list:
    """The deny list's WKT polygons (EPSG:4326), in order."""
    polys = []
    for k, wkt in enumerate(wkts):
        try:
            geom = shapely.from_wkt(wkt)
        except shapely.errors.GEOSException as err:
            raise CatalogError(
                f"{path}: polygon {k + 1} is not valid WKT ({err}); use lon lat order, EPSG:4326"
            ) from None
        if geom.geom_type not in ("Polygon", "MultiPolygon"):
            raise CatalogError(f"{path}: polygon {k + 1} is a {geom.geom_type}, not a Polygon or MultiPolygon")
        polys.append(geom)
    return polys


def _in_polygons(tables: Tables, polys: list) -> dict[str, int]:
    """``{photo id: 1-based index of the first deny polygon containing it}`` (boundary counts)."""
    if not polys:
        return {}
    ids, lats, lons = (column(tables.photos, c) for c in ("id", "lat", "lon"))
    keep = [k for k, (lat, lon) in enumerate(zip(lats, lons, strict=True)) if _finite(lat) and _finite(lon)]
    points = shapely.points([lons[k] for k in keep], [lats[k] for k in keep])
    hits = shapely.STRtree(polys).query(points, predicate="intersects")
    found: dict[str, int] = {}
    for p, g in sorted(zip(hits[0].tolist(), hits[1].tolist(), strict=True)):
        found.setdefault(ids[keep[p]], g + 1)
    return found


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def deny_list(tables: Tables, params: FilterParams) -> pa.Table:
    """Drop photos whose id or owner is on the deny list, or whose geotag lies in a deny polygon."""
    deny = load_deny_list(params.deny_list)
    polys = _polygons(deny.polygons_wkt, params.deny_list)
    labels = [f"polygon {k + 1}" for k in range(len(polys))]
    for path in deny.polygon_files:  # vector files, any CRS: compared in lon/lat like the WKT ones
        features = read_polygons(path, 4326, "deny area file")
        polys += [f.geometry for f in features]
        labels += [f"polygon {f.label}" for f in features]
    in_poly = _in_polygons(tables, polys)
    out = []
    for i, r in by_id(tables.photos, ["owner"]).items():
        why = []
        if i in deny.ids:
            why.append(f"photo id {i}")
        if r["owner"] in deny.owners:
            why.append(f"owner {r['owner']}")
        if i in in_poly:
            why.append(f"inside {labels[in_poly[i] - 1]}")
        reason = f"deny_list: {', '.join(why)} ({params.deny_list})" if why else ""
        out.append((i, not why, reason, None))
    return decisions_table("deny_list", out)
