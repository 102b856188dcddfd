"""Which differences in a bench table the seeds support (issue 16).

    seeds' metrics ─▶ mean ± t(0.975, n-1) · sd / √n        (95% confidence interval of the mean)
    rows ─▶ Pareto frontier of the means ─▶ a row whose interval overlaps the interval of the
            frontier point at its parameter budget is "not distinguishable" from that point

Overlapping intervals are a conservative reading (two means can differ significantly while their
95% intervals touch), which is the side a benchmark table should err on.
"""

from __future__ import annotations

import math
import statistics

from peftkit.bench.plot import pareto_front


def ci95(values: list[float]) -> float | None:
    """Half-width of the 95% t interval of the mean; None for fewer than two values."""
    if len(values) < 2:
        return None
    from scipy.stats import t  # only when there is something to compute: report imports stay light

    return float(t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def overlaps(a: dict, b: dict) -> bool:
    """The two rows' intervals (mean ± ci95; a single run is a point) share a value."""
    return abs(a["mean"] - b["mean"]) <= (a.get("ci95") or 0.0) + (b.get("ci95") or 0.0)


def mark_frontier(rows: list[dict], higher_is_better: bool) -> None:
    """Set row["frontier"] (on the Pareto frontier of the means) and row["near"] (the frontier
    point it cannot be told apart from, or None) on every row with a mean and a parameter count."""
    placed = [r for r in rows if r.get("mean") is not None and r.get("trainable_params")]
    front_idx = pareto_front([(r["trainable_params"], r["mean"]) for r in placed], higher_is_better)
    front = [placed[i] for i in front_idx]   # ascending parameters, each better than the last
    for row in rows:
        row["frontier"], row["near"] = row in front, None
    for row in placed:
        if row["frontier"]:
            continue
        # the staircase at this budget: the best frontier point with no more parameters
        budget = [f for f in front if f["trainable_params"] <= row["trainable_params"]]
        reference = budget[-1] if budget else front[0]
        if overlaps(row, reference):
            row["near"] = reference["variant"]
