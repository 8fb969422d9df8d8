"""Points of a Weibull probability plot: the fitted line and a band from its intervals.

On Weibull paper (x = ln t, y = ln(-ln(1 - F(t)))) a Weibull life is a straight line of
slope beta. The band is the envelope of the lines through the corners of the beta and
eta intervals: conservative (wider than a joint likelihood band), and labelled so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def _y(t: float, beta: float, eta: float) -> float:
    return beta * (math.log(t) - math.log(eta))


def weibull_plot(
    fit: Mapping[str, Any],
    points: int = 40,
    data: Sequence[Mapping[str, float]] = (),
) -> dict[str, Any] | None:
    """``{x, line, lower, upper, data}`` over ln(t) from eta/100 to eta*3 (widened to the
    data), or None when the fit has no finite beta and eta. ``data``: the failures'
    plotting positions (``{"days", "F"}``); ``data`` in the result holds their
    ln(-ln(1 - F)) at their own x and None elsewhere, so one x axis carries all series."""
    beta, eta = fit.get("beta"), fit.get("eta")
    if not beta or not eta or not math.isfinite(beta) or not math.isfinite(eta) or eta <= 0:
        return None
    lo_t, hi_t = eta / 100.0, eta * 3.0
    ts = [lo_t * (hi_t / lo_t) ** (k / (points - 1)) for k in range(points)]
    observed = sorted(
        (float(p["days"]), math.log(-math.log(1.0 - float(p["F"]))))
        for p in data
        if float(p["days"]) > 0 and 0.0 < float(p["F"]) < 1.0
    )
    merged = sorted([(t, None) for t in ts] + observed, key=lambda row: row[0])
    ts = [t for t, _y_obs in merged]
    corners = [
        (b, e)
        for b in (fit.get("beta_ci") or [None, None])
        for e in (fit.get("eta_ci") or [None, None])
        if b and e and math.isfinite(b) and math.isfinite(e) and e > 0
    ]
    line = [_y(t, beta, eta) for t in ts]
    pairs = list(zip(ts, line, strict=True))
    lower = [min((_y(t, b, e) for b, e in corners), default=y) for t, y in pairs]
    upper = [max((_y(t, b, e) for b, e in corners), default=y) for t, y in pairs]
    return {
        "x": [math.log(t) for t in ts],
        "line": line,
        "lower": lower,
        "upper": upper,
        "data": [y_obs for _t, y_obs in merged],
        "axes": {"x": "ln(days in service)", "y": "ln(-ln(1 - F))"},
        "band": "envelope of the beta and eta interval corners (conservative)",
    }
