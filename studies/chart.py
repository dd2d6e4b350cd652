"""The studies' charts: the size study in the seed's Figure 6 style, the filter study as bars; CSV rows for DVC plots."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pipeline.store import atomic_file
from pipeline.train.runs import write_csv
from studies.fit import curve

LABELS = {"recall_at_1pct": "top-1 % (recall at 1 % of N)", "recall_at_10": "recall@10", "mean_rank": "mean rank"}


def write_rows(rows: list[dict], path: str | Path) -> None:
    """Rows of equal keys as CSV (a DVC plot)."""
    write_csv(rows, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "crossview", "font.size": 9})
    return plt


def _save(fig, path: str | Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    with atomic_file(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())


def _size_panel(ax, results: dict, metric: str) -> None:
    full = results["full_size"]
    entry = results["fit"][metric]
    means = entry["mean_by_size"]
    xs = np.array([m["fraction"] for m in means]) * full
    ys = np.array([m["mean"] for m in means])
    err = np.array([m["sd"] or 0.0 for m in means])
    pts = results["points"]
    ax.plot([p["size"] for p in pts], [p["metrics"][metric] for p in pts], ".", color="0.6", ms=4, label="runs")
    ax.errorbar(xs, ys, yerr=err if err.any() else None, fmt="o", color="C0", capsize=3, label="mean (± sd)")
    fit = entry["fit"]
    if fit:
        lo = min(m["fraction"] for m in means)
        inside = np.geomspace(lo, 1.0, 60)
        beyond = np.geomspace(1.0, 10.0, 30)
        a, b, c = fit["a"], fit["b"], fit["c"]
        label = f"fit a={a:.3g}" + (f"±{fit['a_err']:.2g}" if fit["a_err"] is not None else "") + \
            f", c={c:.2g}" + (" (a unstable)" if fit["unstable_a"] else "")
        ax.plot(inside * full, curve(inside, a, b, c), "-", color="C1", label=label)
        ax.plot(beyond * full, curve(beyond, a, b, c), ":", color="C1", label="extrapolation to 10×")
    hold = entry["holdout"]
    if hold:
        h = hold["fit"]
        lo = min(m["fraction"] for m in means)
        xs_h = np.geomspace(lo, 1.0, 60)
        ax.plot(xs_h * full, curve(xs_h, h["a"], h["b"], h["c"]), "--", color="C2", lw=1,
                label=f"fit without the largest: predicts {hold['predicted']:.3g} (measured {hold['measured']:.3g})")
    chance = _chance(metric, results["test_pairs"])
    if chance is not None:
        ax.axhline(chance, color="0.5", ls="-.", lw=0.8, label=f"chance ({chance:.3g})")
    ax.set_xscale("log")
    ax.set_xlabel("training pairs (log scale)")
    ax.set_ylabel(LABELS.get(metric, metric))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _chance(metric: str, n: int | None) -> float | None:
    """A random ranking's expected value of ``metric`` over ``n`` test pairs (WITW's conventions)."""
    if not n:
        return None
    return {"mean_rank": (n + 1) / 2, "recall_at_10": min(10, n) / n, "recall_at_1pct": (n // 100) / n}.get(metric)


def size_png(results: dict, metrics: tuple[str, ...], path: str | Path) -> None:
    """One panel per metric: the measured points (error bars over seeds), the fit, its extrapolation dotted, and
    the fit on the smaller sizes only (dashed) against the largest."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.2))
    for ax, metric in zip(np.atleast_1d(axes), metrics, strict=True):
        _size_panel(ax, results, metric)
    b = results["budget"]
    fig.suptitle(f"Test metrics against training-set size ({b['model']}, {b['epochs']} epochs each, "
                 f"seeds {b['seeds']}, N = {results['test_pairs']} test pairs)")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


PERFECT = "perfect "  # prefix of the filter study's demo-truth variants


def variant_label(name: str, none: str = "none") -> str:
    """A filter-study variant's name for people: "indoor off", "all", ``none``, "perfect relevance (demo truth)"."""
    if name.startswith(PERFECT):
        return f"{name} (demo truth)"
    return {"all": "all", "none": none}.get(name, f"{name} off")


def filters_png(rows: list[dict], metric: str, path: str | Path) -> None:
    """Bars per variant: the metric's change against all filters and against a size-matched random set."""
    plt = _pyplot()
    shown = [r for r in rows if r["variant"] != "all" and r["trained"]]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * max(len(shown), 2) + 1.6))
    y = np.arange(len(shown))
    for k, (key, colour, label) in enumerate((("delta_vs_all", "C0", "vs all filters"),
                                              ("delta_vs_size_matched", "C3", "vs size-matched random set"))):
        vals = [r[key][metric]["mean"] if r[key] else 0.0 for r in shown]
        errs = [(r[key][metric]["sd"] or 0.0) if r[key] else 0.0 for r in shown]
        ax.barh(y + (k - 0.5) * 0.38, vals, height=0.36, xerr=errs if any(errs) else None, color=colour,
                label=label, capsize=2)
    ax.set_yticks(y, [f"{variant_label(r['variant'], none='every filter off')} (+{r['added']}/-{r['removed']}, "
                      f"n={r['train_size']})" for r in shown])
    ax.axvline(0, color="k", lw=0.8)
    better = "lower is better" if metric.endswith("rank") else "higher is better"
    ax.set_xlabel(f"change in {LABELS.get(metric, metric)} ({better})\nwith a filter off, or a perfect one on")
    ax.invert_yaxis()
    ax.legend(fontsize=7)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
