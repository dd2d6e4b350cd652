"""Relevance head: logistic regression on stored embeddings, trained from curator verdicts → model + ``relevance``.

Labels are the latest curator verdict per photo: ``keep`` = relevant (1), ``drop_irrelevant`` = not
(0); other verdicts say nothing about relevance. With at least ``relevance.min_labels`` of them (and
both kinds present) the head is trained on the embeddings the classify stage cached, so retraining
never runs the backbone. Training is deterministic: standardised features, L2-regularised logistic
loss (inverse strength ``c``) with balanced class weights, minimised by L-BFGS from zero; ``seed``
only assigns the cross-validation folds reported in the model file. The model file is JSON and
carries ``version``, a hash of everything it was trained from. With too few labels the file says
``skipped`` and why, and every photo's row in ``relevance`` carries that note.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from scipy.optimize import minimize
from scipy.special import expit

from pipeline.config import Params, RelevanceParams
from pipeline.embeddings import EmbeddingCache
from pipeline.errors import StageInputError
from pipeline.schemas import RELEVANCE, SCORES, read_table, table_from_rows, write_table
from pipeline.store import write_json
from pipeline.verdicts import latest_verdicts

log = logging.getLogger(__name__)

FORMAT = "crossview-relevance-head/1"
RELEVANT, IRRELEVANT = "keep", "drop_irrelevant"
MAX_FOLDS = 5

@dataclass(frozen=True)
class Head:
    """A trained (or skipped) relevance head and what it was trained from."""

    status: str  # trained | skipped
    version: str
    reason: str
    embedding_model_key: str
    threshold: float
    info: dict = field(default_factory=dict)  # label counts, params, cross-validation
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    weights: np.ndarray | None = None
    bias: float = 0.0

    @property
    def trained(self) -> bool:
        return self.status == "trained"

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(relevant) for each row of ``x`` (embeddings)."""
        return expit(((x - self.mean) / self.scale) @ self.weights + self.bias)

    def to_json(self) -> dict:
        doc = {
            "format": FORMAT,
            "status": self.status,
            "version": self.version,
            "reason": self.reason,
            "embedding_model_key": self.embedding_model_key,
            "threshold": self.threshold,
            **self.info,
        }
        if self.trained:
            doc |= {
                "bias": self.bias,
                "mean": self.mean.tolist(),
                "scale": self.scale.tolist(),
                "weights": self.weights.tolist(),
            }
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> Head:
        if doc.get("format") != FORMAT:
            raise StageInputError(
                f"relevance model has format {doc.get('format')!r}, expected {FORMAT}: rerun `crossview relevance`"
            )
        arrays = {k: np.asarray(doc[k], np.float64) for k in ("mean", "scale", "weights") if k in doc}
        info = {k: v for k, v in doc.items() if k in ("labels", "params", "cv")}
        return cls(
            doc["status"],
            doc["version"],
            doc["reason"],
            doc["embedding_model_key"],
            doc["threshold"],
            info,
            bias=float(doc.get("bias", 0.0)),
            **arrays,
        )


def load_head(path: str | Path) -> Head | None:
    """The head saved at ``path``, or None when there is no file."""
    path = Path(path)
    return Head.from_json(json.loads(path.read_text())) if path.exists() else None


# ---------------------------------------------------------------- training (pure numpy/scipy)


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """Weights and bias minimising ``|w|²/2 + c·Σ s_i·logloss_i`` with balanced class weights ``s``."""
    sign = np.where(y > 0, 1.0, -1.0)
    counts = {v: int((y == v).sum()) for v in (0, 1)}
    s = np.array([len(y) / (2.0 * counts[int(v)]) for v in y])

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        margin = sign * (x @ w + b)
        loss = 0.5 * w @ w + c * float(s @ np.logaddexp(0.0, -margin))
        dz = -c * s * sign * expit(-margin)
        return loss, np.concatenate([w + x.T @ dz, [dz.sum()]])

    result = minimize(
        objective, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 2000, "gtol": 1e-7}
    )
    return result.x[:-1], float(result.x[-1])


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    return mean, np.where(scale > 1e-6, scale, 1.0)


def _fit(x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    mean, scale = _standardise(x)
    w, b = fit_logistic((x - mean) / scale, y, c)
    return mean, scale, w, b


def cross_validate(x: np.ndarray, y: np.ndarray, params: RelevanceParams) -> dict:
    """Stratified k-fold accuracy (k ≤ 5, folds drawn with ``seed``); empty when a class has < 2 labels."""
    k = min(MAX_FOLDS, int((y == 0).sum()), int((y == 1).sum()))
    if k < 2:
        return {}
    rng = np.random.default_rng(params.seed)
    fold = np.empty(len(y), np.int64)
    for v in (0, 1):
        where = np.flatnonzero(y == v)
        fold[rng.permutation(where)] = np.arange(len(where)) % k
    correct = np.zeros(len(y), bool)
    for f in range(k):
        test = fold == f
        mean, scale, w, b = _fit(x[~test], y[~test], params.c)
        p = expit(((x[test] - mean) / scale) @ w + b)
        correct[test] = (p >= params.threshold) == (y[test] == 1)
    recall = [float(correct[y == v].mean()) for v in (0, 1)]
    return {"folds": k, "accuracy": round(float(correct.mean()), 6), "balanced_accuracy": round(sum(recall) / 2, 6)}


def inputs_version(
    keys: list[tuple[str, str]], y: np.ndarray, x: np.ndarray, model_key: str, params: RelevanceParams
) -> str:
    """Hash of everything a head is trained from: labelled photos, their embeddings, the params."""
    digest = hashlib.sha256(FORMAT.encode())
    digest.update(
        json.dumps(
            {
                "model_key": model_key,
                "params": params.model_dump(),
                "labels": [[i, s, int(v)] for (i, s), v in zip(keys, y)],
            },
            sort_keys=True,
        ).encode()
    )
    digest.update(np.ascontiguousarray(x, np.float32).tobytes())
    return digest.hexdigest()[:16]


def train_head(
    keys: list[tuple[str, str]], x: np.ndarray, y: np.ndarray, model_key: str, params: RelevanceParams
) -> Head:
    """Train on labelled embeddings (rows sorted by id), or return a skipped head saying why."""
    version = inputs_version(keys, y, x, model_key, params)
    n_rel, n_irr = int((y == 1).sum()), int((y == 0).sum())
    info = {"labels": {"total": len(y), RELEVANT: n_rel, IRRELEVANT: n_irr}, "params": params.model_dump()}
    if len(y) < params.min_labels:
        reason = f"skipped: {len(y)} labels < min_labels {params.min_labels}"
    elif min(n_rel, n_irr) == 0:
        reason = f"skipped: {len(y)} labels but none {'drop_irrelevant' if n_irr == 0 else 'keep'}; need both"
    else:
        mean, scale, w, b = _fit(x, y, params.c)
        info["cv"] = cross_validate(x, y, params)
        return Head(
            "trained", version, f"trained on {len(y)} labels", model_key, params.threshold, info, mean, scale, w, b
        )
    return Head("skipped", version, reason, model_key, params.threshold, info)


# ---------------------------------------------------------------- the stage


def labelled(verdicts_path: str | Path) -> dict[str, int]:
    """``{photo id: 1 relevant / 0 irrelevant}`` from the latest verdict per photo."""
    values = {RELEVANT: 1, IRRELEVANT: 0}
    return {i: values[v.verdict] for i, v in latest_verdicts(verdicts_path).items() if v.verdict in values}


def _model_key(scores: pa.Table) -> str:
    keys = {
        k for k, st in zip(scores.column("model_key").to_pylist(), scores.column("status").to_pylist()) if st == "ok"
    }
    if len(keys) > 1:
        raise StageInputError(f"scores table mixes model keys {sorted(keys)}: rerun `crossview classify`")
    return keys.pop() if keys else ""


def train(scores: pa.Table, labels: dict[str, int], cache_root: str | Path, params: RelevanceParams) -> Head:
    """Train a head on the cached embeddings of the labelled, scored photos."""
    model_key = _model_key(scores)
    ok = [(i, s) for i, s, st in zip(*(scores.column(c).to_pylist() for c in ("id", "sha256", "status"))) if st == "ok"]
    wanted = sorted(k for k in ok if k[0] in labels)
    found, x = EmbeddingCache(cache_root, model_key).embeddings(wanted) if wanted else ([], np.zeros((0, 0)))
    order = sorted(range(len(found)), key=lambda k: found[k])
    keys = [found[k] for k in order]
    x = x[order] if len(order) else np.zeros((0, 0), np.float32)
    y = np.array([labels[i] for i, _ in keys], np.int64)
    if len(found) < len(wanted):
        log.warning(
            "relevance: %d labelled photos have no cached embedding (rerun `crossview classify`)",
            len(wanted) - len(found),
        )
    return train_head(keys, x.astype(np.float64), y, model_key, params)


def score(scores: pa.Table, head: Head, cache_root: str | Path) -> pa.Table:
    """The ``relevance`` rows: one per photo of ``scores``, scored when the head is trained."""
    ids, shas, status, errors = (scores.column(c).to_pylist() for c in ("id", "sha256", "status", "error"))
    base = {"model_version": head.version, "threshold": head.threshold}
    rows: dict[str, dict] = {}
    for i, st, err in zip(ids, status, errors):
        if not head.trained:
            rows[i] = {**base, "id": i, "status": "skipped", "note": head.reason}
        else:
            why = f"not classified: {err}" if st != "ok" else "no embedding in the cache (rerun `crossview classify`)"
            rows[i] = {**base, "id": i, "status": "no_embedding", "note": why}
    if head.trained:
        keys = [(i, s) for i, s, st in zip(ids, shas, status) if st == "ok"]
        found, x = EmbeddingCache(cache_root, head.embedding_model_key).embeddings(keys)
        if found:
            for (i, _), p in zip(found, head.predict(x.astype(np.float64))):
                p = round(float(p), 6)
                rows[i] |= {"status": "scored", "note": "", "relevance_score": p, "is_relevant": p >= head.threshold}
    return table_from_rows(rows.values(), RELEVANCE)


def write_head(head: Head, path: str | Path) -> None:
    """Write the model file atomically with a stable layout."""
    write_json(head.to_json(), path, indent=1, sort_keys=True)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scores", required=True, help="scores table (Parquet) from `crossview classify`")
    parser.add_argument("--embeddings", required=True, help="embedding cache folder from `crossview classify`")
    parser.add_argument("--verdicts", default=None, help="curator verdicts CSV (default: filter.verdicts)")
    parser.add_argument("--model", required=True, help="relevance model file to write (JSON)")
    parser.add_argument("--out", required=True, help="relevance table to write (Parquet)")


def main(params: Params, args: argparse.Namespace) -> int:
    scores = read_table(args.scores, SCORES, columns=["id", "sha256", "model_key", "status", "error"])
    labels = labelled(args.verdicts or params.filter.verdicts)
    head = train(scores, labels, args.embeddings, params.relevance)
    write_head(head, args.model)
    table = score(scores, head, args.embeddings)
    write_table(table, args.out, RELEVANCE)
    log.info(
        "relevance: head %s (%s, version %s); %d photos -> %s",
        head.status,
        head.reason,
        head.version,
        table.num_rows,
        args.out,
    )
    return 0
