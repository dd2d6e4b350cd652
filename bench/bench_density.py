"""Benchmark: the density limit (grid neighbour pairs, parallel greedy rounds) vs WITW's naive loop.

WITW's ``limit_density.py`` walks the photos of an AOI in random order and computes the haversine
distance from each photo to every photo kept so far (``dfao.append(row)`` copies the kept frame on
each keep), keeping it when the minimum is >= the threshold: O(n * k) distance evaluations for k
kept photos. The baseline here does the same per-photo work with numpy (a vectorised haversine over
all kept photos, and ``np.append``'s copy on each keep), which is faster than WITW's pandas
``iterrows`` + ``DataFrame.append``, so the ratio is a lower bound. At 100k photos the baseline is
timed on prefixes of the same random order and extrapolated with a fitted cost model
``t = a * photos + b * distance evaluations`` (the evaluation count of the full run is exact: it is the
sum over photos of the kept count before them, known from our result).

Usage: ``python bench/bench_density.py [--n 100000] [--big 1000000] [--prefixes 2000,5000,10000,20000]``
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.geo import transformer
from pipeline.neighbours import DensityLimit, density_limit, seeded_order

log = logging.getLogger("bench_density")
EPSG, X0, Y0 = 32631, 440_000.0, 5_400_000.0  # a 20 km square of UTM 31N (Paris)


def photos(n: int, seed: int = 0) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Flickr-like positions: 40 % spread over the city, 50 % around 2,000 landmarks, 10 % exact repeats."""
    rng = np.random.default_rng(seed)
    n_u, n_c = int(n * 0.4), int(n * 0.5)
    spread = rng.uniform(0, 20_000, (n_u, 2))
    marks = rng.uniform(0, 20_000, (2_000, 2))
    around = marks[rng.integers(0, len(marks), n_c)] + rng.normal(0, 40, (n_c, 2))
    base = np.r_[spread, around]
    repeats = base[rng.integers(0, len(base), n - len(base))]
    pts = np.r_[base, repeats][rng.permutation(n)]
    ids = pa.array([f"{51_000_000_000 + i}" for i in range(n)])
    return ids, X0 + pts[:, 0], Y0 + pts[:, 1]


def haversine(lat1, lon1, lat2, lon2, radius=6.371e6):
    """WITW's haversine (from CosmiQ solaris), degrees in, metres out."""
    lat1, lon1, lat2, lon2 = map(np.radians, (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * radius * np.arcsin(np.sqrt(a))


def naive(lat: np.ndarray, lon: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """WITW limit_density: compare each photo, in order, with every photo kept so far."""
    kept_lat, kept_lon, kept = np.zeros(0), np.zeros(0), np.zeros(len(lat), bool)
    for i in order:
        d = haversine(lat[i], lon[i], kept_lat, kept_lon)
        if (d.min() if len(d) else np.inf) >= threshold:
            kept_lat, kept_lon = np.append(kept_lat, lat[i]), np.append(kept_lon, lon[i])  # copies, as append did
            kept[i] = True
    return kept


def evaluations(kept_in_order: np.ndarray) -> int:
    """Distance evaluations the naive loop makes: the kept count before each photo, summed."""
    before = np.cumsum(kept_in_order) - kept_in_order
    return int(before.sum())


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def timed_cpu(fn, *args):
    """(result, wall seconds, CPU seconds of this process)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - t, time.process_time() - c


def streamed_limit(ids: pa.Array, x: np.ndarray, y: np.ndarray, density_m: float) -> np.ndarray:
    """Kept flags by :class:`DensityLimit`, as the filter stage runs it (parts of 16,384 photos in id order)."""
    order = pc.sort_indices(ids).to_numpy()
    kept = np.zeros(len(x), bool)
    with DensityLimit(density_m, 0) as limit:
        for a in range(0, len(x), 16_384):
            part = order[a : a + 16_384]
            limit.add(ids.take(pa.array(part)), np.full(len(part), EPSG), x[part], y[part])
        for results in limit.results():
            kept[order[results["row"].to_numpy()]] = results["kept"].to_numpy(zero_copy_only=False)
    return kept


def load() -> str:
    """The 1/5/15-minute load averages (the machine is shared: timings depend on them)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--prefixes", default="2000,5000,10000,20000")
    ap.add_argument("--density-m", type=float, default=10.0)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    ids, x, y = photos(a.big, seed=1)
    runs = [timed_cpu(density_limit, ids, x, y, a.density_m, 0) for _ in range(3)]
    (kept_big, _, _), big, big_cpu = min(runs, key=lambda r: r[1])
    log.info("ours  at %d photos: %.2f s wall (best of 3; %.2f s CPU), %d kept (target < 1 s); load %s",
             a.big, big, big_cpu, int(kept_big.sum()), load())
    streamed = [timed_cpu(streamed_limit, ids, x, y, a.density_m) for _ in range(3)]
    kept_streamed, stream, stream_cpu = min(streamed, key=lambda r: r[1])
    log.info("the filter stage's form (DensityLimit: added in parts, sorted on disk, swept in strips) at %d photos: "
             "%.2f s wall (best of 3; %.2f s CPU), same kept set: %s", a.big, stream, stream_cpu,
             bool(np.array_equal(kept_streamed, kept_big)))
    ids, x, y = photos(a.n)
    (kept, _, _), ours = timed(density_limit, ids, x, y, a.density_m, 0)
    ours = min(ours, *(timed(density_limit, ids, x, y, a.density_m, 0)[1] for _ in range(2)))
    order = seeded_order(ids, 0)
    total_evals = evaluations(kept[order])
    lon, lat = transformer(EPSG, 4326).transform(x, y)
    rows, times = [], []
    for m in (int(p) for p in a.prefixes.split(",")):
        sub = order[:m]
        k_naive, t = timed(naive, lat, lon, sub, a.density_m)
        k_ours = density_limit(ids.take(sub), x[sub], y[sub], a.density_m, 0)[0]
        agree = (k_naive[sub] == k_ours).mean()
        rows.append((m, evaluations(k_naive[sub])))
        times.append(t)
        log.info("naive on the first %6d photos of the order: %7.2f s, %11d distance evaluations, agrees with ours on %.4f%%",
                 m, t, rows[-1][1], 100 * agree)
    coef, *_ = np.linalg.lstsq(np.array(rows, float), np.array(times), rcond=None)
    naive_full = float(coef @ [a.n, total_evals])
    log.info("cost model: %.2f us per photo + %.2f ns per distance evaluation", coef[0] * 1e6, coef[1] * 1e9)
    log.info("naive at %d photos: %.1f s (EXTRAPOLATED from the prefixes above; %d evaluations, %d kept)",
             a.n, naive_full, total_evals, int(kept.sum()))
    log.info("ours  at %d photos: %.3f s (measured, best of 3)", a.n, ours)
    log.info("%d photos: %.2f s wall, %.2f s CPU (target < 1 s); speed-up at %d photos vs the naive loop: %.0fx "
             "(target >= 1000x)", a.big, big, big_cpu, a.n, naive_full / ours)

if __name__ == "__main__":
    main()
