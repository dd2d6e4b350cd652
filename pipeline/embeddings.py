"""The embedding cache: float16 photo embeddings and top categories in Parquet shards, keyed by photo id + sha256.

``<root>/<model key>/part-<hash>.parquet``, each shard written atomically by the classify stage
as its chunks finish; the relevance stage (and ``crossview inspect``) read embeddings back
without running the backbone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store import atomic_file, write_json


def shard_schema(dim: int) -> pa.Schema:
    """Schema of an embedding cache shard for ``dim``-dimensional embeddings."""
    return pa.schema(
        [
            ("id", pa.string()),
            ("sha256", pa.string()),
            ("top_index", pa.list_(pa.int32())),
            ("top_prob", pa.list_(pa.float32())),
            ("embedding", pa.list_(pa.float16(), dim)),
        ]
    )


def shard_table(rows: list[dict], dim: int) -> pa.Table:
    """A shard from rows of id, sha256, top_index, top_prob and a numpy embedding."""
    schema = shard_schema(dim)
    emb = np.stack([r["embedding"] for r in rows]).astype(np.float16).ravel()
    columns = {
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "sha256": pa.array([r["sha256"] for r in rows], pa.string()),
        "top_index": pa.array([r["top_index"] for r in rows], schema.field("top_index").type),
        "top_prob": pa.array([r["top_prob"] for r in rows], schema.field("top_prob").type),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb, pa.float16()), dim),
    }
    return pa.table(columns, schema=schema)


class EmbeddingCache:
    """``<root>/<model key>/part-*.parquet``: shards keyed by (photo id, sha256), written atomically."""

    def __init__(self, root: str | Path, key: str, about: dict | None = None) -> None:
        self.dir = Path(root) / key
        self.about = about  # written once as model.json beside the shards, for people

    def shards(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.parquet")) if self.dir.is_dir() else []

    def write(self, shard: pa.Table) -> Path:
        """Write one shard (name = hash of its keys) atomically; return its path."""
        self.describe()
        keys = "\n".join(f"{i}:{s}" for i, s in zip(shard.column("id").to_pylist(), shard.column("sha256").to_pylist()))
        path = self.dir / f"part-{hashlib.sha256(keys.encode()).hexdigest()[:16]}.parquet"
        with atomic_file(path) as tmp:
            pq.write_table(shard, tmp, compression="zstd")
        return path

    def describe(self) -> None:
        """Create the cache folder and write ``model.json`` (what model the shards come from) once."""
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "model.json"
        if self.about and not meta.exists():
            write_json(self.about, meta, sort_keys=True)

    def index(self, min_top: int) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
        """``{(id, sha256): (top_index, top_prob)}`` over all shards (first shard wins; short top lists skipped)."""
        out: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        for path in self.shards():
            t = pq.read_table(path, columns=["id", "sha256", "top_index", "top_prob"])
            for i, s, ti, tp in zip(*(t.column(c).to_pylist() for c in t.column_names)):
                if len(ti) >= min_top and (i, s) not in out:
                    out[(i, s)] = (ti, tp)
        return out

    def embeddings(self, keys: Iterable[tuple[str, str]]) -> tuple[list[tuple[str, str]], np.ndarray]:
        """The float32 embeddings of ``keys`` found in the cache (shard by shard, bounded memory per shard)."""
        wanted: set[tuple[str, str]] = set(keys)
        found: list[tuple[str, str]] = []
        parts = []
        for path in self.shards():
            t = pq.read_table(path, columns=["id", "sha256"])
            keys_here = list(zip(t.column("id").to_pylist(), t.column("sha256").to_pylist()))
            take = [k for k, key in enumerate(keys_here) if key in wanted]
            if not take:
                continue
            column = pq.read_table(path, columns=["embedding"]).column("embedding").combine_chunks()
            emb = column.flatten().to_numpy(zero_copy_only=False).reshape(len(keys_here), -1)
            parts.append(emb[take].astype(np.float32))
            for k in take:
                found.append(keys_here[k])
                wanted.discard(keys_here[k])
        matrix = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        return found, matrix
