"""The seed's Figure 6 curve: fit ``y = a - b / x^c`` to a metric against training-set size, with honest errors.

``x`` is the training-set size as a fraction of the full train manifest (1 = all of it), so ``a`` is
the metric with unlimited data, ``a - b`` the metric at the full size, and the extrapolations to 2x
and 10x the data are the curve at x = 2 and x = 10. For a metric where lower is better (mean rank)
``b`` comes out negative. The asymptote ``a`` is flagged ``unstable_a`` when its standard error is a
large part of it or the fit sits on a bound: the seed's case, where the points lie on a straight
line in log x and any ``a`` far above them fits as well as another.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import curve_fit

C_BOUNDS = (1e-3, 4.0)  # exponent c: from "almost log-linear" to "saturates within a few doublings"
UNSTABLE_REL_ERR = 0.5  # a's standard error above this fraction of |a| (or of the data's spread) is unstable


def curve(x: np.ndarray | float, a: float, b: float, c: float) -> np.ndarray | float:
    """``a - b / x^c``."""
    return a - b / np.power(x, c)


@dataclass(frozen=True)
class Fit:
    a: float
    b: float
    c: float
    a_err: float
    b_err: float
    c_err: float
    per_doubling: float  # the curve's gain from the largest measured size to twice it
    loglinear_per_doubling: float  # slope of a straight line in log2(x) (the seed's "+0.5 point per doubling")
    at_2x: float
    at_10x: float
    unstable_a: bool
    why_unstable: str
    points: int

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def _why_unstable(popt: np.ndarray, perr: np.ndarray, bounds: tuple[list, list], spread: float) -> str:
    a, a_err = popt[0], perr[0]
    reasons = []
    if not math.isfinite(a_err):
        reasons.append("no standard error (as many parameters as points, or a flat direction)")
    elif a_err > UNSTABLE_REL_ERR * max(abs(a), spread):
        reasons.append(f"standard error of a ({a_err:.3g}) is over {UNSTABLE_REL_ERR:.0%} of |a| ({abs(a):.3g})")
    for k, name in enumerate("abc"):
        lo, hi = bounds[0][k], bounds[1][k]
        width = (hi - lo) if math.isfinite(hi - lo) else max(1.0, abs(popt[k]))
        if (math.isfinite(lo) and popt[k] - lo < 1e-3 * width) or (math.isfinite(hi) and hi - popt[k] < 1e-3 * width):
            reasons.append(f"{name} = {popt[k]:.3g} is on its bound")
    return "; ".join(reasons)


def fit_curve(x: np.ndarray, y: np.ndarray, sigma: np.ndarray | None = None) -> Fit | None:
    """Fit ``y = a - b / x^c`` (scipy ``curve_fit``, bounded c); None with fewer than 3 distinct sizes."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(np.unique(x)) < 3:
        return None
    spread = float(np.ptp(y)) or 1.0
    span = 1e3 * (spread + float(np.max(np.abs(y))) + 1.0)
    bounds = ([-span, -span, C_BOUNDS[0]], [span, span, C_BOUNDS[1]])
    lo, hi = int(np.argmin(x)), int(np.argmax(x))
    # start from the c = 0.5 curve through the smallest and largest points (b < 0 when the metric falls)
    b0 = float(y[hi] - y[lo]) / (x[lo] ** -0.5 - x[hi] ** -0.5)
    p0 = [float(y[hi]) + b0 * x[hi] ** -0.5, b0, 0.5]
    s = None if sigma is None or not np.all(np.asarray(sigma) > 0) else np.asarray(sigma, dtype=float)
    with np.errstate(all="ignore"):
        try:
            popt, pcov = curve_fit(curve, x, y, p0=p0, sigma=s, absolute_sigma=s is not None, bounds=bounds,
                                   maxfev=20000)
        except (RuntimeError, ValueError):
            return None
    perr = np.sqrt(np.clip(np.diag(pcov), 0, None)) if np.all(np.isfinite(pcov)) else np.full(3, np.inf)
    a, b, c = (float(v) for v in popt)
    xmax = float(np.max(x))
    slope = float(np.polyfit(np.log2(x), y, 1)[0])
    why = _why_unstable(popt, perr, bounds, spread)
    return Fit(a=a, b=b, c=c, a_err=float(perr[0]), b_err=float(perr[1]), c_err=float(perr[2]),
               per_doubling=float(curve(2 * xmax, a, b, c) - curve(xmax, a, b, c)), loglinear_per_doubling=slope,
               at_2x=float(curve(2 * xmax, a, b, c)), at_10x=float(curve(10 * xmax, a, b, c)),
               unstable_a=bool(why), why_unstable=why, points=len(x))


def holdout_check(x: np.ndarray, y: np.ndarray) -> dict | None:
    """Fit on every size but the largest and compare its prediction there with the measured mean."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    largest = float(np.max(x))
    small = x < largest
    fit = fit_curve(x[small], y[small])
    if fit is None:
        return None
    predicted = float(curve(largest, fit.a, fit.b, fit.c))
    measured = float(np.mean(y[x == largest]))
    return {"fit": fit.as_dict(), "size": largest, "predicted": predicted, "measured": measured,
            "error": predicted - measured}
