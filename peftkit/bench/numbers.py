"""How bench tables and plots read a metric and print a count (shared by report, compare, plot)."""

from __future__ import annotations

LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "wer", "cer", "ter")


def higher_is_better(metric: str | None) -> bool:
    return not (metric or "").lower().endswith(LOWER_IS_BETTER)


def human_count(n) -> str:
    """77193 -> 77.2K; 999600 -> 1M (not 1e+03K)."""
    if n is None:
        return "–"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div * 0.9995:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"
