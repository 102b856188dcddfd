"""pareto.png: the metric against trainable parameters (log axis), one marker per method with its
95% interval over seeds as error bars, the Pareto frontier of the means drawn as a staircase, every point labelled where its label overlaps nothing.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global state).
"""

from __future__ import annotations

import os
from pathlib import Path

from peftkit.bench import numbers
from peftkit.strategies import all_strategies

SPARE_MARKERS = ["h", "<", ">", "p", "d", "8"]
# Label positions tried in turn, as (dx, dy) in points from the marker, with their alignment.
LABEL_SPOTS = [(9, 7, "left", "bottom"), (9, -7, "left", "top"), (-9, 7, "right", "bottom"),
               (-9, -7, "right", "top"), (0, 11, "center", "bottom"), (0, -11, "center", "top"),
               (13, 0, "left", "center"), (-13, 0, "right", "center")]
RING_POINTS = 8.0  # radius of the ring around frontier points: labels keep clear of it


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point beats, by ascending x.

    A point is beaten when another has no more parameters (x) and no worse a metric (y), and is
    strictly better in one of the two. Equal points do not beat each other.
    """
    sign = 1 if higher_is_better else -1

    def beats(a, b):
        (xa, ya), (xb, yb) = a, b
        return xa <= xb and sign * ya >= sign * yb and (xa < xb or sign * ya > sign * yb)

    front = [i for i, p in enumerate(points) if not any(beats(q, p) for q in points)]
    return sorted(front, key=lambda i: (points[i][0], -sign * points[i][1]))


def plot_pareto(rows: list[dict], path: Path, title: str = "") -> None:
    """Write the plot of the finished rows of `report.summarize` to `path` (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in rows if r["mean"] is not None and r["trainable_params"]]
    if not rows:
        return
    better = numbers.higher_is_better(rows[0]["metric"])
    fig = Figure(figsize=(10, 6.2), dpi=150, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # fixed marker, colour and legend order per method, so that plots of different suites agree
    markers = method_markers()
    known = list(markers)
    methods = sorted(dict.fromkeys(r["method"] for r in rows),
                     key=lambda m: (known.index(m) if m in known else len(known), m))
    spare = iter(SPARE_MARKERS * 3)
    colors = {m: f"C{(known.index(m) if m in known else len(known) + i) % 10}"
              for i, m in enumerate(methods)}
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        # error bars: the 95% interval over seeds (report / stats.ci95), the frontier uses the means
        bars = [r.get("ci95") or 0.0 for r in mine]
        ax.errorbar([r["trainable_params"] for r in mine], [r["mean"] for r in mine],
                    yerr=bars if any(bars) else None, fmt=markers.get(m) or next(spare),
                    color=colors[m], markersize=9, capsize=3, linestyle="none", label=m, zorder=3)

    collapsed = [r for r in rows if r.get("collapsed")]
    if collapsed:  # a red cross over every collapsed run: its number is not the method's
        ax.scatter([r["trainable_params"] for r in collapsed], [r["mean"] for r in collapsed],
                   marker="x", s=220, color="red", linewidths=2.2, zorder=5,
                   label="collapsed (learned nothing useful)")
    points = [(r["trainable_params"], r["mean"]) for r in rows]
    front = pareto_front(points, better)
    draw_front(ax, [points[i] for i in front], better)

    ax.set_xscale("log")
    xs = [p[0] for p in points]
    ax.set_xlim(min(xs) / 3, max(xs) * 3)  # room for the labels at both ends
    ys = [y for r in rows for y in (r["mean"] - (r.get("ci95") or 0), r["mean"] + (r.get("ci95") or 0))]
    pad = (max(ys) - min(ys)) * 0.12 or 0.05
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    ax.xaxis.set_major_formatter(lambda x, _: numbers.human_count(x))
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"test {rows[0]['metric']}")
    ax.set_title(title, fontsize=11)
    add_percent_axis(ax, rows)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.text(0.01, 0.98 if better else 0.02, "better ↖" if better else "better ↙",
            transform=ax.transAxes, ha="left", va="top" if better else "bottom",
            fontsize=9, color="0.4")
    ax.legend(loc="lower right" if better else "upper right", fontsize=9, framealpha=0.9)
    canvas.draw()  # fixes the layout, so label extents below are final
    place_labels(ax, rows, canvas.get_renderer())
    save_png(fig, Path(path))


def method_markers() -> dict[str, str]:
    """method -> marker, in registry order: each strategy declares its own (Strategy.plot_markers)."""
    return {m: marker for s in all_strategies() for m, marker in s.plot_markers.items()}


def add_percent_axis(ax, rows: list[dict]) -> None:
    """Top axis in percent of the model's parameters, when every run has the same model size."""
    totals = [r.get("total_params") for r in rows]
    # totals differ a little (a prompt or a prefix MLP adds parameters); the base model is the least
    if not all(totals) or max(totals) > 1.25 * min(totals):
        return
    total = min(totals)
    top = ax.secondary_xaxis("top", functions=(lambda x: x * 100 / total, lambda p: p * total / 100))
    top.set_xlabel("trainable share of the model's parameters", fontsize=9)
    top.xaxis.set_major_formatter(lambda p, _: f"{p:g}%")


def draw_front(ax, front: list[tuple[float, float]], better: bool) -> None:
    """Staircase through the frontier: what the best method at each parameter budget reaches."""
    if not front:
        return
    xs, ys = zip(*front)
    ax.step(xs, ys, where="post", color="0.35", linestyle="--", linewidth=1.2, zorder=2,
            label="Pareto frontier")
    ax.scatter(xs, ys, s=(2 * RING_POINTS) ** 2, facecolors="none", edgecolors="0.35",
               linewidths=1.0, zorder=2)


def place_labels(ax, rows: list[dict], renderer) -> None:
    """Greedy: each label takes the first spot around its marker that overlaps no other label,
    marker or the axes edge (else the spot with the least overlap)."""
    taken = [marker_box(ax, r["trainable_params"], r["mean"]) for r in rows]
    frame = ax.get_window_extent(renderer)
    for r in sorted(rows, key=lambda r: -r["mean"]):
        best, best_cost = None, None
        for dx, dy, ha, va in LABEL_SPOTS:
            ann = ax.annotate(r["variant"], (r["trainable_params"], r["mean"]), xytext=(dx, dy),
                              textcoords="offset points", ha=ha, va=va, fontsize=8.5, zorder=4,
                              bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                                    "alpha": 0.75},
                              # a faint leader line ties a label to its marker when points crowd
                              arrowprops={"arrowstyle": "-", "color": "0.55", "lw": 0.6,
                                          "shrinkA": 0, "shrinkB": 5})
            ann.set_in_layout(False)
            box = ann.get_window_extent(renderer)
            cost = sum(overlap(box, other) for other in taken) + outside(box, frame)
            if best_cost is None or cost < best_cost:
                if best is not None:
                    best[0].remove()
                best, best_cost = (ann, box), cost
            else:
                ann.remove()
            if cost == 0:
                break
        taken.append(best[1])


def marker_box(ax, x, y):
    from matplotlib.transforms import Bbox

    radius = RING_POINTS * ax.figure.dpi / 72  # points -> display pixels
    px, py = ax.transData.transform((x, y))
    return Bbox.from_extents(px - radius, py - radius, px + radius, py + radius)


def overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def outside(box, frame) -> float:
    """Area of `box` outside the axes, weighted so that clipping is worse than touching a label."""
    inside = overlap(box, frame)
    return 4.0 * (box.width * box.height - inside)


def save_png(fig, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
