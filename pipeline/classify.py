"""Scene scores and embeddings for every downloaded photo → ``scores`` table + an embedding cache.

The unit of work is a chunk of photos (:func:`score_chunk`): batched inference through a torch
DataLoader (:func:`pipeline.scene.infer.infer`) on torch or, on the CPU, ONNX Runtime
(:mod:`pipeline.scene.onnx`), returning one cache shard: photo id, sha256, the top categories with
probabilities and the float16 embedding. Chunks run through the shared executor (``workers`` at once
on the CPU or a Dask cluster, one at a time on a local GPU); this process writes each shard
atomically to ``<embeddings>/<model key>/part-<hash>.parquet`` as it arrives, so an interrupted run
keeps its finished chunks and a rerun scores only photos (id + sha256) no shard holds yet.

The ``scores`` table is then computed from the cache alone (the indoor vote over the stored top
categories), so it depends only on the downloads, the model and the vote params, never on which
run scored which photo. Changing ``top_k`` / thresholds re-votes without running the backbone.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.config import ClassifyParams, Params, S3Params
from pipeline.embeddings import EmbeddingCache, shard_table
from pipeline.executor import local_paths, run
from pipeline.scene.spec import ModelSpec, model_spec
from pipeline.scene.vote import format_top, vote_top
from pipeline.schemas import DOWNLOADS, SCORES, read_table, table_from_rows, write_table

log = logging.getLogger(__name__)

STORED_TOP = 32  # categories kept per photo in the cache: any top_k up to this re-votes without the backbone
CHUNK_PHOTOS = 1024  # photos per unit of work (one cache shard)

@dataclass(frozen=True)
class Item:
    """One photo to score: id, sha256 of the fetched bytes, store URI of the normalised JPEG."""

    id: str
    sha256: str
    uri: str


@dataclass(frozen=True)
class ChunkResult:
    """What a chunk returns: the shard rows (None when every photo failed) and ``{id: error}``."""

    shard: pa.Table | None
    errors: dict[str, str]


def about(spec: ModelSpec) -> dict:
    """What a cache folder holds, for people reading ``model.json``."""
    return {
        "model": spec.name,
        "key": spec.key,
        "weights": Path(spec.weights).name,
        "preprocess": spec.preprocess.__dict__,
        "embedding": "float16: the classifier head's input (pooled features)",
        "top": "sorted, probability",
    }


def vote_key(spec: ModelSpec) -> str:
    doc = {"vote": spec.vote.__dict__, "labels": spec.labels.sha256}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the unit of work


def score_chunk(
    items: Sequence[Item], *, params: ClassifyParams, s3: S3Params, imagenet_weights: str | None = None
) -> ChunkResult:
    """Run the backbone over ``items``; return the shard rows and the photos that could not be read."""
    from pipeline.device import import_torch, resolve_device  # torch is imported only when there is work
    from pipeline.scene.backbone import cached_backbone
    from pipeline.scene.infer import infer
    from pipeline.scene.onnx import cached_session, resolve_runtime

    torch = import_torch()
    torch.set_num_threads(params.threads)
    spec = model_spec(params, imagenet_weights)
    device = resolve_device(params.device, "classify.device")
    backbone = cached_backbone(spec)
    if resolve_runtime(params.runtime, device) == "onnxruntime":
        backbone = cached_session(backbone, params.threads)
    keep = max(STORED_TOP, spec.vote.top_k)
    rows, errors = [], {}
    outputs = infer(
        backbone,
        [it.uri for it in items],
        s3=s3,
        batch_size=params.batch_size,
        workers=params.loader_workers,
        device=device,
        keep_top=keep,
    )
    for out in outputs:
        item = items[out.index]
        if out.error:
            errors[item.id] = out.error
            continue
        rows.append(
            {
                "id": item.id,
                "sha256": item.sha256,
                "top_index": out.top_index.tolist(),
                "top_prob": out.top_prob.tolist(),
                "embedding": out.embedding,
            }
        )
    return ChunkResult(shard_table(rows, backbone.dim) if rows else None, errors)


# ---------------------------------------------------------------- the core


def ok_items(downloads: pa.Table) -> list[Item]:
    """Downloaded photos (status ok, with a stored file), sorted by id."""
    cols = {c: downloads.column(c).to_pylist() for c in ("id", "sha256", "uri", "status")}
    items = [
        Item(i, s or "", u)
        for i, s, u, st in zip(cols["id"], cols["sha256"], cols["uri"], cols["status"])
        if st == "ok" and u
    ]
    return sorted(items, key=lambda it: it.id)


def score_rows(items: Sequence[Item], spec: ModelSpec, index: dict, errors: dict[str, str]) -> list[dict]:
    """The ``scores`` rows: the vote over each photo's cached top categories, or its error."""
    io, names, vkey = spec.labels.io_array(), spec.labels.names, vote_key(spec)
    rows = []
    for it in items:
        row = {"id": it.id, "sha256": it.sha256, "model": spec.name, "model_key": spec.key, "vote_key": vkey}
        cached = index.get((it.id, it.sha256))
        if cached is None:
            rows.append({**row, "status": "error", "error": errors.get(it.id, "not scored")})
            continue
        v = vote_top(cached[0], cached[1], io, spec.vote)
        rows.append(
            {
                **row,
                "status": "ok",
                "error": "",
                "indoor_score": round(v.indoor_score, 6),
                "indoor_mass": round(v.indoor_mass, 6),
                "outdoor_mass": round(v.outdoor_mass, 6),
                "is_indoor": v.is_indoor,
                "top_categories": format_top(v.top, names),
            }
        )
    return rows


def concurrent_chunks(params: Params) -> int:
    """How many chunks run at once: ``workers`` on a cluster or on the CPU, one at a time on a local GPU.

    On the CPU each chunk is a lane that decodes and runs the network in its own thread (both release
    the GIL), so ``workers`` lanes of ``classify.threads`` compute threads keep the cores busy without
    the hand-off of a decode process; a local GPU is fed by one chunk's DataLoader workers instead.
    """
    if params.scheduler or params.workers == 1:
        return params.workers
    from pipeline.device import resolve_device

    return params.workers if resolve_device(params.classify.device, "classify.device") == "cpu" else 1


@dataclass(frozen=True)
class Summary:
    photos: int
    scored: int  # ran through the backbone in this run
    reused: int
    errors: int


def classify(
    downloads: pa.Table, params: Params, cache_root: str | Path, imagenet_weights: str | None = None
) -> tuple[pa.Table, Summary]:
    """Score every downloaded photo not in the cache, then build the ``scores`` table from the cache."""
    spec = model_spec(params.classify, imagenet_weights)
    cache = EmbeddingCache(cache_root, spec.key, about(spec))
    items = ok_items(downloads)
    index = cache.index(spec.vote.top_k)
    todo = [it for it in items if (it.id, it.sha256) not in index]
    log.info(
        "classify: %d photos, %d in the cache (%s), %d to score",
        len(items),
        len(items) - len(todo),
        cache.dir,
        len(todo),
    )
    errors: dict[str, str] = {}
    if todo:
        lanes = concurrent_chunks(params)
        size = min(CHUNK_PHOTOS, -(-len(todo) // lanes))
        chunks = [todo[k : k + size] for k in range(0, len(todo), size)]
        store_s3 = params.s3.model_copy(update={"anonymous": False})  # the store is written with credentials
        work = functools.partial(score_chunk, params=params.classify, s3=store_s3, imagenet_weights=imagenet_weights)
        reach = local_paths(it.uri for it in todo)
        for result in run(
            work, chunks, scheduler=params.scheduler, workers=lanes, desc="classify", batch_size=lanes, reach=reach
        ):
            if result.shard is not None:
                cache.write(result.shard)
            errors.update(result.errors)
        index = cache.index(spec.vote.top_k)
    cache.describe()  # the cache folder exists (a DVC output) even when there was nothing to score
    rows = score_rows(items, spec, index, errors)
    failed = sum(r["status"] != "ok" for r in rows)
    summary = Summary(len(items), len(todo) - len(errors), len(items) - len(todo), failed)
    return table_from_rows(rows, SCORES), summary


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--downloads", required=True, help="downloads table to read (Parquet)")
    parser.add_argument("--out", required=True, help="scores table to write (Parquet)")
    parser.add_argument("--embeddings", required=True, help="embedding cache folder (one subfolder per model key)")


def main(params: Params, args: argparse.Namespace) -> int:
    downloads = read_table(args.downloads, DOWNLOADS, columns=["id", "sha256", "uri", "status"])
    table, summary = classify(downloads, params, args.embeddings)
    write_table(table, args.out, SCORES)
    indoor = table.column("is_indoor").to_pylist().count(True)
    log.info(
        "classify: %d photos (%d scored now, %d reused, %d errors), %d indoor -> %s",
        summary.photos,
        summary.scored,
        summary.reused,
        summary.errors,
        indoor,
        args.out,
    )
    return 0
