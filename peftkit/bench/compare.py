"""`peftkit bench --compare DIR_A DIR_B`: how two result sets differ, variant by variant.

Variants are matched by name (seeds averaged first, as in results.md). Typical uses: the same
suite before and after a code change, on two machines, or with and without 8-bit loading.
"""

from __future__ import annotations

import json
from pathlib import Path

from peftkit.bench.numbers import higher_is_better, human_count
from peftkit.bench.report import markdown_table, metric_text, seconds, summarize
from peftkit.errors import UsageError


def load_records(path: str | Path) -> list[dict]:
    """Records of a bench folder (or of a results.json given directly)."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"{path}: no results.json here; pass a folder written by `peftkit bench` "
                         "(its --out) or the results.json inside it")
    try:
        records = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{file}: not a readable results file ({exc})") from None
    if not isinstance(records, list):
        raise UsageError(f"{file}: expected a list of run records, as `peftkit bench` writes")
    return records


def compare_dirs(a: str | Path, b: str | Path) -> str:
    """A table of per-variant differences (B minus A) and a one-line verdict."""
    rows_a = {r["variant"]: r for r in summarize(load_records(a))}
    rows_b = {r["variant"]: r for r in summarize(load_records(b))}
    names = list(rows_a) + [n for n in rows_b if n not in rows_a]
    metric = next((r["metric"] for r in [*rows_a.values(), *rows_b.values()] if r["mean"] is not None),
                  "metric")
    head = ["variant", f"{metric} A", f"{metric} B", "Δ (B−A)", "trainable A → B",
            "train time A", "train time B", "time Δ"]
    body, deltas = [], []
    for name in names:
        ra, rb = rows_a.get(name), rows_b.get(name)
        delta = diff(ra, rb, "mean")
        if delta is not None:
            deltas.append(delta)
        body.append([name, value(ra), value(rb), "–" if delta is None else f"{delta:+.4f}",
                     params(ra, rb), seconds(get(ra, "train_seconds")),
                     seconds(get(rb, "train_seconds")), time_change(ra, rb)])
    lines = [f"A: {a}", f"B: {b}", "", markdown_table(head, body, right=set(range(1, len(head)))), ""]
    lines.append(verdict(deltas, metric, only_a=[n for n in rows_a if n not in rows_b],
                         only_b=[n for n in rows_b if n not in rows_a]))
    return "\n".join(lines)


def get(row: dict | None, key: str):
    return None if row is None else row.get(key)


def value(row: dict | None) -> str:
    if row is None:
        return "not in set"
    return "failed" if row["mean"] is None else metric_text(row["mean"], row.get("ci95"))


def diff(ra, rb, key):
    va, vb = get(ra, key), get(rb, key)
    return vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None


def params(ra, rb) -> str:
    pa, pb = get(ra, "trainable_params"), get(rb, "trainable_params")
    if pa is None or pb is None:
        return human_count(pa if pb is None else pb)
    return human_count(pa) if round(pa) == round(pb) else f"{human_count(pa)} → {human_count(pb)}"


def time_change(ra, rb) -> str:
    ta, tb = get(ra, "train_seconds"), get(rb, "train_seconds")
    if not ta or tb is None:
        return "–"
    return f"{100 * (tb - ta) / ta:+.0f}%"


def verdict(deltas: list[float], metric: str, only_a: list[str], only_b: list[str]) -> str:
    parts = []
    if deltas:
        sign = 1 if higher_is_better(metric) else -1
        up = sum(sign * d > 0 for d in deltas)
        down = sum(sign * d < 0 for d in deltas)
        parts.append(f"{len(deltas)} variants in both: B better on {up}, worse on {down}, "
                     f"mean Δ {metric} {sum(deltas) / len(deltas):+.4f}")
    else:
        parts.append("no variant finished in both sets")
    if only_a:
        parts.append(f"only in A: {', '.join(only_a)}")
    if only_b:
        parts.append(f"only in B: {', '.join(only_b)}")
    return "; ".join(parts)
