"""The short table printed at the end of a run."""

from __future__ import annotations

import click


def format_summary(result: dict) -> str:
    test = result["test"]
    metric = result["metric"]
    rows = [
        ("run folder", result["run_dir"]),
        ("task / strategy", f"{result['task']} / {result['strategy']}"),
        ("model", f"{result['model']} ({base_precision(result)}, trained in {result['precision']})"),
        (f"test {metric}", fmt(test.get(metric))),
    ]
    rows += [(f"  {k}", fmt(v)) for k, v in test.items()
             if k != metric and isinstance(v, float) and not k.endswith(("runtime", "per_second"))]
    rows += [
        ("trainable params", f"{result['trainable_params']:,} of {result['total_params']:,} "
                             f"({result['trainable_percent']:.3f}%)"),
        ("train time", f"{result['train_seconds']:.1f} s, {result['train_steps']} steps, "
                       f"{result['train_tokens_per_second']:.0f} tokens/s"),
        ("peak memory", f"{result['peak_memory_mb']:.0f} MB"),
    ]
    if "lr_search" in result:
        search = result["lr_search"]
        rows.append(("learning rate", f"{result['learning_rate']:g} (auto: {search['method']}, "
                                      f"{len(search['probes'])} probes, {search['seconds']:.0f} s)"))
    health = result.get("health") or {}
    if health:
        rows.append(("health", health["status"] if health["status"] == "ok" else
                     "COLLAPSED: " + "; ".join(f["kind"] for f in health["findings"])))
    if "adapter_bytes" in result:
        rows.append(("saved weights", f"{result['adapter_bytes'] / 2**20:.2f} MB"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def base_precision(result: dict) -> str:
    """How the base's weights were held: `none` says nothing to a newcomer."""
    q = result.get("quantization", "none")
    return "full-precision base" if q == "none" else f"{q} quantized base"


def fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_summary(result: dict) -> None:
    click.echo("\n" + format_summary(result))
