"""The Flickr harvest (``source: flickr``): every geotagged, licensed photo in each AOI -> ``photos`` rows.

Entry points for ``search.py``::

    aois = aois_from_params(params)            # flickr.bbox, or each SpaceNet raster's lon/lat bounds
    table = harvest_table(params, aois)        # query, page, persist, de-duplicate -> PHOTOS table

``harvest`` does the work: per AOI, a :class:`~pipeline.flickr.plan.Planner` splits the bbox
until every query is under Flickr's 4,000-result cap, fetches every page through the rate-limited
:class:`~pipeline.flickr.client.FlickrClient` and persists it in ``flickr.state_dir``; the rows
are then built from the persisted pages, so an interrupted run resumes and a rerun costs only
what is new.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from shapely.geometry.base import BaseGeometry
from tqdm import tqdm

from pipeline.config import FlickrParams, Params, S3Params
from pipeline.errors import ConfigError, RasterError, StoreError
from pipeline.flickr.client import (
    Credentials,
    FlickrAPIError,
    FlickrAuthError,
    FlickrClient,
    FlickrRequestError,
    FlickrUnavailableError,
    TokenBucket,
    load_credentials,
)
from pipeline.flickr.plan import (
    Planner,
    Progress,
    fingerprint,
    parse_int,
    snap_bbox,
    upload_range,
)
from pipeline.flickr.state import FINISHED, HarvestState

__all__ = [
    "AOI",
    "Credentials",
    "FlickrAPIError",
    "FlickrAuthError",
    "FlickrClient",
    "FlickrRequestError",
    "FlickrUnavailableError",
    "TokenBucket",
    "aois_from_file",
    "aois_from_params",
    "harvest",
    "harvest_rows",
    "harvest_table",
    "load_credentials",
    "parse_int",
    "raster_bounds_lonlat",
]

log = logging.getLogger(__name__)

BBOX_AOI = "bbox"  # aoi/city recorded for photos of a flickr.bbox harvest


@dataclass(frozen=True)
class AOI:
    """An area to harvest: its catalog name, city and lon/lat bbox (min_lon, min_lat, max_lon, max_lat)."""

    aoi: str
    city: str
    bbox: tuple[float, float, float, float]
    area: BaseGeometry | None = None  # lon/lat polygon (flickr.aoi); photos in the bbox but outside it are skipped


# ---------------------------------------------------------------- AOI bounding boxes


def raster_bounds_lonlat(uri: str, s3: S3Params) -> tuple[float, float, float, float]:
    """The lon/lat bounds of a raster (or of every GeoTIFF under a prefix), reading headers only."""
    import rasterio
    from rasterio.warp import transform_bounds

    from pipeline.raster_uris import resolve
    from pipeline.store import gdal_path, rasterio_env

    try:
        uris = [o.uri for o in resolve(uri, s3)]
    except StoreError as err:
        raise RasterError(f"{err}; or set flickr.bbox") from None
    boxes = []
    with rasterio_env(s3):
        for one in uris:
            try:
                with rasterio.open(gdal_path(one)) as src:
                    if src.crs is None:
                        raise RasterError(f"{one}: the raster has no CRS; set flickr.bbox instead")
                    boxes.append(transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21))
            except rasterio.errors.RasterioIOError as err:
                raise RasterError(f"{one}: cannot read the raster header ({err}); run `crossview catalog` "
                                  "to check the SpaceNet keys, or set flickr.bbox") from None
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def aois_from_file(path: str) -> list[AOI]:
    """One AOI per polygon of a vector file (any CRS): named by its ``aoi``/``name`` column (else the file and
    feature number), city from a ``city`` column (else the name)."""
    from pipeline.vectors import read_polygons, safe_name

    aois = []
    for k, feature in enumerate(read_polygons(path, 4326, "flickr.aoi file")):
        name = safe_name(feature.name or f"{Path(path).stem}_{k + 1}")
        city = feature.city or feature.name or name
        aois.append(AOI(name, city, snap_bbox(feature.geometry.bounds), feature.geometry))
    names = [a.aoi for a in aois]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: two features share the name {max(names, key=names.count)!r}; names must be unique")
    return aois


def aois_from_params(params: Params, sources: Sequence | None = None) -> list[AOI]:
    """``flickr.bbox`` as one AOI, ``flickr.aoi`` as one per polygon, else one per raster catalog row (default:
    SpaceNet)."""
    if params.flickr.bbox is not None and params.flickr.aoi:
        raise ConfigError("flickr.bbox and flickr.aoi are both set: keep one of them")
    if params.flickr.bbox is not None:
        return [AOI(BBOX_AOI, BBOX_AOI, snap_bbox(params.flickr.bbox))]
    if params.flickr.aoi:
        return aois_from_file(params.flickr.aoi)
    if sources is None and params.stac.url:
        from pipeline.stac import raster_sources as stac_sources

        sources = stac_sources(params)
    if sources is None:
        from catalogs import load_spacenet

        sources = load_spacenet()
    aois = []
    for src in sources:
        bbox = raster_bounds_lonlat(src.uri, params.s3)
        log.info("%s (%s): bbox %s", src.aoi, src.city, ", ".join(f"{v:.5f}" for v in bbox))
        aois.append(AOI(src.aoi, src.city, bbox))
    return aois


# ---------------------------------------------------------------- the harvest


def _flickr_params(params: Params | FlickrParams) -> FlickrParams:
    return params.flickr if isinstance(params, Params) else params


def _keep(photo: dict, lo: int, hi: int, min_accuracy: int) -> bool:
    """Only photos uploaded in this run's range (pages of a wider earlier run are reused) and accurate enough."""
    uploaded = parse_int(photo.get("dateupload"), default=lo)
    accuracy = parse_int(photo.get("accuracy"), default=16)
    return lo <= uploaded <= hi and accuracy >= min_accuracy


class SeenIds:
    """The photo ids a harvest has yielded, ~8 bytes an id (a set of str held ~90).

    Decimal ids (Flickr's) are numbers: the latest ``buffer`` in a set, the rest in one sorted int64
    array that the set is merged into when full (a merge of two sorted runs: linear). Any other id
    (leading zeros, 19 digits or more, not ASCII digits) is kept as it is.
    """

    def __init__(self, buffer: int = 65_536):
        self._sorted = np.zeros(0, np.int64)
        self._recent: set[int] = set()
        self._other: set[str] = set()
        self._buffer = buffer

    @staticmethod
    def _number(pid: str) -> int | None:
        if pid.isascii() and pid.isdigit() and len(pid) < 19 and (pid[0] != "0" or pid == "0"):
            return int(pid)
        return None

    def _has(self, n: int) -> bool:
        if n in self._recent:
            return True
        at = int(np.searchsorted(self._sorted, n))
        return at < len(self._sorted) and int(self._sorted[at]) == n

    def __contains__(self, pid: str) -> bool:
        n = self._number(pid)
        return pid in self._other if n is None else self._has(n)

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent) + len(self._other)

    def add(self, pid: str) -> None:
        n = self._number(pid)
        if n is None:
            self._other.add(pid)
            return
        if self._has(n):
            return
        self._recent.add(n)
        if len(self._recent) >= self._buffer:
            recent = np.sort(np.fromiter(self._recent, np.int64, len(self._recent)))
            self._sorted = np.sort(np.concatenate([self._sorted, recent]), kind="stable")
            self._recent.clear()


def _rows(state: HarvestState, aoi: AOI, lo: int, hi: int, fp: FlickrParams, seen: SeenIds) -> Iterator[dict]:
    from pipeline.photos_io import photo_row_from_flickr

    for cid in sorted(state.cells):
        rec = state.cells[cid]
        if rec.status not in FINISHED or rec.hi < lo or rec.lo > hi:
            continue
        for photo in state.cell_photos(cid):
            pid = str(photo.get("id", ""))
            if pid in seen or not _keep(photo, lo, hi, fp.min_accuracy):
                continue
            row = photo_row_from_flickr(photo, aoi.aoi, aoi.city, None, source="flickr", query_cell=cid, size=fp.size)
            if not _inside(row, aoi):
                continue  # in the AOI's bbox, outside its polygon: not part of this search (another AOI may hold it)
            seen.add(pid)
            yield row


def _inside(row: dict, aoi: AOI) -> bool:
    """Whether the row's position is inside the AOI's polygon (always, for a bbox AOI)."""
    if aoi.area is None:
        return True
    import shapely

    return bool(shapely.covers(aoi.area, shapely.points(row["lon"], row["lat"])))


def _progress_bar(client: FlickrClient) -> tuple[tqdm, Progress]:
    bar = tqdm(desc="flickr search", unit="call", disable=None, leave=False)
    photos = [0]

    def on_page(n: int) -> None:
        photos[0] += n
        bar.n = client.calls
        bar.set_postfix(photos=photos[0], budget=f"{client.budget_left()}/{int(client.params.calls_per_hour)}/h")

    return bar, Progress(on_page=on_page)


def harvest(
    params: Params | FlickrParams,
    aois: Iterable[AOI],
    state_dir: str | Path | None = None,
    *,
    client: FlickrClient | None = None,
    now: Callable[[], float] = time.time,
) -> list[dict]:
    """Harvest every AOI; return ``photos`` rows (source flickr), one per photo id, sorted by id."""
    return sorted(harvest_rows(params, aois, state_dir, client=client, now=now), key=lambda r: r["id"])


def harvest_rows(
    params: Params | FlickrParams,
    aois: Iterable[AOI],
    state_dir: str | Path | None = None,
    *,
    client: FlickrClient | None = None,
    now: Callable[[], float] = time.time,
) -> Iterator[dict]:
    """:func:`harvest`'s rows as they are built from each AOI's persisted pages, in no set order (one per id):
    a caller that sorts them on disk (``search``) keeps only a batch of rows and the ids seen."""
    fp = _flickr_params(params)
    state_dir = Path(state_dir if state_dir is not None else fp.state_dir)
    client = client or FlickrClient(fp)
    lo, hi = upload_range(fp, now)
    bar, progress = _progress_bar(client)
    seen = SeenIds()
    try:
        for aoi in aois:
            state = HarvestState(state_dir, aoi.aoi, fingerprint(fp, aoi.bbox))
            planner = Planner(client, fp, state, progress)
            planner.add_roots(aoi.bbox, lo, hi)
            planner.run(lo, hi)
            count = 0
            for row in _rows(state, aoi, lo, hi, fp, seen):
                count += 1
                yield row
            log.info("%s: %d photos from %d query cells (%d API calls so far)",
                     aoi.aoi, count, len(state.cells), client.calls)
    finally:
        bar.close()


def harvest_table(
    params: Params | FlickrParams, aois: Iterable[AOI], state_dir: str | Path | None = None, **kwargs
) -> pa.Table:
    """:func:`harvest` as a ``PHOTOS`` table."""
    from pipeline.schemas import PHOTOS, table_from_rows

    return table_from_rows(harvest(params, aois, state_dir, **kwargs), PHOTOS)
