"""``crossview audit``: is each pair's geotag where the trained model places its photo? (the geotag audit)

For every pair of the manifests, the photo is scored with the trained model against chips on a
small grid centred on its geotag: ``audit.grid_size`` x ``audit.grid_size`` points
``audit.step_m`` apart (5 x 5, 56.25 m: the heat map's spacing), each chip cut from the tile COG
exactly as the chip stage cuts them, each point scored with WITW's ``exp(10 (1 - d))``
(:mod:`pipeline.heatmap_score`, the heat map's machinery). One row per pair records the best point,
its offset from the geotag in metres, and the margin ``ln(best score / geotag score) =
10 (d_geotag - d_best)``. A pair is *suspect* when its best point is at least
``audit.suspect_distance_m`` from the geotag with a margin of at least ``audit.suspect_margin``;
the review page queues suspects for a curator, whose ``drop_wrong_location`` verdict removes them
at the next ``dvc repro`` (the filter stage's curator rule).

The model work is batched across pairs: photos are embedded in batches, then every grid chip of
every pair, tile by tile, in batches of ``audit.batch_size`` (cut on every core while the model
embeds). Points whose chip does not lie wholly inside a tile's valid footprint get no score (NaN),
as in the heat map.
"""

from __future__ import annotations

import argparse
import logging
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from pipeline import heatmap_score
from pipeline.config import AuditParams, Params, S3Params
from pipeline.heatmap_score import Grid, Tile
from pipeline.schemas import GEOTAG_AUDIT, SPLITS, table_from_rows, write_table
from pipeline.store import read_bytes

log = logging.getLogger(__name__)

PAIR_COLUMNS = ["id", "split", "epsg", "x_m", "y_m", "photo_uri"]


@dataclass(frozen=True)
class Pair:
    """What the audit needs of a manifest row."""

    id: str
    split: str
    epsg: int
    x_m: float
    y_m: float
    photo_uri: str


def local_grid(x: float, y: float, epsg: int, size: int, step_m: float) -> Grid:
    """The ``size`` x ``size`` grid of ``step_m`` cells whose centre point is (x, y) (``size`` odd)."""
    half = size / 2 * step_m
    return Grid(epsg, x - half, y + half, step_m, size, size)


def summarise(distance: np.ndarray, step_m: float, p: AuditParams) -> dict:
    """A pair's row fields from its grid of model distances (``(size, size)``, NaN: no chip; centre = geotag).

    The best point is the smallest distance (the first in row-major order on a tie); the margin is
    ``10 (d_geotag - d_best)`` (never negative); ``geotag_rank`` counts points at distance <= the
    geotag's (WITW's rank convention: ties count against the geotag).
    """
    size = distance.shape[0]
    c = size // 2
    flat = distance.ravel()
    ok = ~np.isnan(flat)
    row: dict = {"points": int(ok.sum()), "scores": heatmap_score.witw_score(flat).tolist()}
    geotag_d = float(distance[c, c])
    row["geotag_d"] = None if np.isnan(geotag_d) else geotag_d
    if not ok.any():
        return row | {"suspect": False}
    k = int(np.nanargmin(flat))
    r, col = divmod(k, size)
    dx, dy = (col - c) * step_m, (c - r) * step_m
    row |= {"best_k": k, "best_dx": dx, "best_dy": dy, "best_d": float(flat[k]), "best_offset_m": float(np.hypot(dx, dy))}
    if row["geotag_d"] is None:
        return row | {"suspect": False}
    row["margin"] = heatmap_score.SCORE_SCALE * (geotag_d - float(flat[k]))
    row["geotag_rank"] = int((flat[ok] <= geotag_d).sum())
    row["suspect"] = bool(row["best_offset_m"] >= p.suspect_distance_m and row["margin"] >= p.suspect_margin)
    return row


def read_pairs(paths: list[str]) -> list[Pair]:
    """Every pair of the manifests, in file order."""
    out = []
    for path in paths:
        out += [Pair(**r) for r in pq.read_table(path, columns=PAIR_COLUMNS).to_pylist()]
    return out


def _photo_embeddings(model, pairs: list[Pair], batch_size: int, s3: S3Params, device: str) -> list:
    import torch

    from pipeline.train.data import decode, photo_pixels, photo_tensor

    size, out = (model.spec.photo_width, model.spec.photo_height), []
    for b0 in range(0, len(pairs), batch_size):
        batch = [photo_tensor(photo_pixels(decode(read_bytes(p.photo_uri, s3), size), model.spec))
                 for p in pairs[b0 : b0 + batch_size]]
        out += list(model.embed_photo(torch.stack(batch).to(device)))
    return out


def grid_distances(model, pairs: list[Pair], tiles: list[Tile], p: AuditParams, edge_m: float,
                   s3: S3Params | None = None, device: str = "cpu") -> tuple[np.ndarray, list[Tile | None]]:
    """Model distance at every grid point of every pair, ``(len(pairs), size, size)`` (NaN where no full chip),
    and each point's tile (pair-major, row-major)."""
    import rasterio
    import torch

    from pipeline.store import gdal_path, rasterio_env
    from pipeline.threads import cpu_threads, ordered_map

    s3, n = s3 or S3Params(), p.grid_size**2
    xs, ys = np.zeros(len(pairs) * n), np.zeros(len(pairs) * n)
    for i, pair in enumerate(pairs):
        gx, gy = local_grid(pair.x_m, pair.y_m, pair.epsg, p.grid_size, p.step_m).centres()
        xs[i * n : (i + 1) * n], ys[i * n : (i + 1) * n] = gx.ravel(), gy.ravel()
    owners: list[Tile | None] = [None] * len(xs)
    epsg = np.repeat([pair.epsg for pair in pairs], n)
    for code in sorted(set(epsg.tolist())):
        where = np.flatnonzero(epsg == code)
        for k, tile in zip(where, heatmap_score.assign_tiles(xs[where], ys[where], code, edge_m, tiles), strict=True):
            owners[k] = tile
    dist = np.full(len(xs), np.nan)
    with torch.no_grad():
        photos = _photo_embeddings(model, pairs, p.batch_size, s3, device)
        for tile in sorted({t for t in owners if t is not None}, key=lambda t: t.tile_id):
            todo = np.array([k for k, t in enumerate(owners) if t is tile])
            batches = [todo[b0 : b0 + p.batch_size] for b0 in range(0, len(todo), p.batch_size)]

            def cut(src, batch: np.ndarray, tile: Tile = tile):  # pair by pair: its chips overlap, read once
                groups = np.split(batch, np.flatnonzero(np.diff(batch // n)) + 1)
                return torch.cat([heatmap_score.chip_inputs(src, tile, xs[g], ys[g], edge_m, model.spec)
                                  for g in groups])

            with rasterio_env(s3), ExitStack() as stack:  # chips are cut on every core while the model embeds
                handles = [stack.enter_context(rasterio.open(gdal_path(tile.uri))) for _ in range(cpu_threads())]
                for batch, inputs in zip(batches, ordered_map(cut, batches, handles), strict=True):
                    chips = model.embed_chip(inputs.to(device))
                    owner_pair = batch // n
                    for i in np.unique(owner_pair):
                        mine = owner_pair == i
                        d, _ = model.distances(photos[i][None], chips[torch.from_numpy(mine)])
                        dist[batch[mine]] = d[0].double().cpu().numpy()
            log.info("audit: tile %s: %d chips scored", tile.tile_id, len(todo))
    return dist.reshape(len(pairs), p.grid_size, p.grid_size), owners


def audit_rows(pairs: list[Pair], distances: np.ndarray, owners: list[Tile | None], p: AuditParams) -> list[dict]:
    """One ``geotag_audit`` row per pair from its grid of distances and the tile of each grid point."""
    n, rows = p.grid_size**2, []
    for i, pair in enumerate(pairs):
        s = summarise(distances[i], p.step_m, p)
        row = {"id": pair.id, "split": pair.split, "epsg": pair.epsg, "x_m": pair.x_m, "y_m": pair.y_m,
               "grid_size": p.grid_size, "step_m": p.step_m}
        k, dx, dy = s.pop("best_k", None), s.pop("best_dx", None), s.pop("best_dy", None)
        if k is not None:
            tile = owners[i * n + k]
            row |= {"best_x_m": pair.x_m + dx, "best_y_m": pair.y_m + dy, "best_tile_id": tile and tile.tile_id}
        rows.append(row | s)
    return rows


def audit(model, pairs: list[Pair], tiles: list[Tile], p: AuditParams, edge_m: float,
          s3: S3Params | None = None, device: str = "cpu") -> list[dict]:
    """The audit's core: manifest pairs and tiles in, ``geotag_audit`` rows out."""
    if not pairs:
        return []
    distances, owners = grid_distances(model, pairs, tiles, p, edge_m, s3, device)
    return audit_rows(pairs, distances, owners, p)


def configure(parser: argparse.ArgumentParser) -> None:
    for split in SPLITS:
        parser.add_argument(f"--{split}", required=True, help=f"the {split} manifest")
    parser.add_argument("--model", required=True, help="the trained model (models/geoloc/model.pt)")
    parser.add_argument("--tiles", required=True, help="tiles table")
    parser.add_argument("--out", required=True, help="output table (tables/geotag_audit.parquet)")


def main(params: Params, args: argparse.Namespace) -> int:
    import torch

    from pipeline.device import resolve_device
    from pipeline.train.loop import load_model

    p = params.audit
    device = resolve_device(p.device, "audit.device")
    if device == "cpu":
        torch.set_num_threads(p.threads)
    model, _ = load_model(args.model, device)
    pairs = read_pairs([getattr(args, split) for split in SPLITS])
    rows = audit(model, pairs, heatmap_score.load_tiles(args.tiles), p, params.chip.edge_m, params.s3, device)
    write_table(table_from_rows(rows, GEOTAG_AUDIT), args.out, GEOTAG_AUDIT)
    log.info("audit: %d pairs, %d suspect (best point >= %.0f m from the geotag, margin >= %.2f) -> %s",
             len(rows), sum(r["suspect"] for r in rows), p.suspect_distance_m, p.suspect_margin, args.out)
    return 0
