"""Did the run learn anything? Collapse checks on a model's predictions and its loss (issue 15).

    task.compute_metrics ──▶ metrics carry prediction statistics (health_*: shares of O, of the
                             most common class, of empty / repeated generations)
    every evaluation ──▶ the statistics are logged with the metrics (metrics.jsonl) and checked
                         (peftkit/health_watch.py: result.json health.evaluations)
    end of the run  ──▶ check(test metrics) + check_loss(log history) ──▶ findings (what happened,
                        the fix) ──▶ result.json "health"; `peftkit eval` checks its metrics too

A run that trained but learned nothing useful ends with exit code 3 (docs/errors.md), after its
run folder is complete: the folder is evidence, not something to throw away.

The thresholds are deliberately far from any healthy run (tests/test_health.py checks both sides):
- token classification: the gold labels have entities, but the model tags < 10% as many tokens
  as entities as the gold does, or finds no entity correctly (F1 < 0.01);
- classification: >= 95% of predictions in one class while the gold majority class is <= 85%, or
  predictions no better than chance: Matthews correlation (two classes) within two standard
  errors of 0, else accuracy within two standard errors of always answering the majority class;
- generation: most outputs empty, or one output for most of >= 4 distinct inputs;
- loss: the training loss ends within 2% of where it started, or above it (>= 4 logged values).
Torch-free: it reads numbers, not models.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass

COLLAPSE_EXIT_CODE = 3
PREFIX = "health_"   # metric keys with prediction statistics (not scores: bench tables skip them)


@dataclass
class Finding:
    kind: str        # all-O | no-entity | one-class | chance | empty-output | same-output | flat/rising-loss
    split: str
    what: str        # what happened, with the figures
    fix: str         # what to try, with the exact override where there is one


# ---------------------------------------------------------------- statistics (in compute_metrics)

def token_stats(true_tags: list[list[str]], pred_tags: list[list[str]]) -> dict:
    gold = sum(t != "O" for tags in true_tags for t in tags)
    pred = sum(t != "O" for tags in pred_tags for t in tags)
    n = max(1, sum(len(tags) for tags in true_tags))
    return {f"{PREFIX}gold_entity_share": gold / n, f"{PREFIX}pred_entity_share": pred / n}


def class_stats(true: list[int], pred: list[int]) -> dict:
    n = max(1, len(true))
    return {f"{PREFIX}gold_majority_share": max(Counter(true).values(), default=0) / n,
            f"{PREFIX}pred_majority_share": max(Counter(pred).values(), default=0) / n,
            f"{PREFIX}examples": len(true)}


def generation_stats(predictions: list[str]) -> dict:
    from peftkit.metrics import normalize  # what exact match compares

    n = max(1, len(predictions))
    texts = [normalize(p) for p in predictions]
    return {f"{PREFIX}empty_share": sum(not t for t in texts) / n,
            f"{PREFIX}top_output_share": max(Counter(texts).values(), default=0) / n,
            f"{PREFIX}examples": len(predictions)}


# ---------------------------------------------------------------- checks

def check(metrics: dict, split: str, lr_hint: str = "") -> list[Finding]:
    """Findings from one evaluation's metrics (keys with or without a `split_` prefix)."""
    m = {k.removeprefix(f"{split}_"): v for k, v in metrics.items()}
    fix_lr = lr_hint or "lower train.learning_rate (e.g. 4x) or set train.learning_rate=auto"
    out = []
    gold, pred = m.get(f"{PREFIX}gold_entity_share"), m.get(f"{PREFIX}pred_entity_share")
    if gold is not None and gold > 0:
        if pred < 0.1 * gold:
            out.append(Finding("all-O", split,
                               f"the model tags {pred:.1%} of tokens as entities where the gold "
                               f"labels have {gold:.1%}: it predicts (almost) only O",
                               f"{fix_lr}; with few or rare entities also train longer "
                               "(train.epochs)"))
        elif m.get("f1") is not None and m["f1"] < 0.01:
            out.append(Finding("no-entity", split,
                               f"entity F1 {m['f1']:.4f}: not one entity is found correctly",
                               fix_lr))
    gold_major, pred_major = m.get(f"{PREFIX}gold_majority_share"), m.get(f"{PREFIX}pred_majority_share")
    if gold_major is not None and m.get(f"{PREFIX}examples", 0) >= 20:
        n = m[f"{PREFIX}examples"]
        se = math.sqrt(gold_major * (1 - gold_major) / n)
        if pred_major >= 0.95 and gold_major <= 0.85:
            out.append(Finding("one-class", split,
                               f"{pred_major:.1%} of the predictions are one class, where the most "
                               f"common gold class is {gold_major:.1%} of the examples",
                               f"{fix_lr}; if the training classes are imbalanced, weigh them: "
                               "train.class_weights=balanced"))
        elif (what := no_better_than_chance(m, gold_major, n, se)) is not None:
            out.append(Finding("chance", split, what, f"{fix_lr}, or train longer (train.epochs)"))
    if m.get(f"{PREFIX}empty_share") is not None and m.get(f"{PREFIX}examples", 0) >= 4:
        if m[f"{PREFIX}empty_share"] > 0.5:
            out.append(Finding("empty-output", split,
                               f"{m[f'{PREFIX}empty_share']:.0%} of the generations are empty",
                               f"{fix_lr}, or raise eval.max_new_tokens"))
        elif m[f"{PREFIX}top_output_share"] > 0.5:
            out.append(Finding("same-output", split,
                               f"one text is {m[f'{PREFIX}top_output_share']:.0%} of the generations "
                               "for distinct inputs", fix_lr))
    return out


def no_better_than_chance(m: dict, gold_major: float, n: int, se: float) -> str | None:
    """What says the predictions are no better than chance, or None. Matthews correlation where
    it was computed (two classes): it is 0 for any guess, however the classes are balanced, and
    stays fair to a model trained with class weights, which trades accuracy on an imbalanced split
    for the minority class (on a 90/10 split such a model can score under the 0.90 of always
    answering the majority and still have MCC 0.35). Otherwise accuracy against always answering
    the most common class. Both within two standard errors (MCC's is 1/sqrt(n) with no association)."""
    if m.get("mcc") is not None:
        if m["mcc"] < 2 / math.sqrt(n):
            return (f"Matthews correlation {m['mcc']:.4f}: the predictions agree with the labels "
                    "no better than chance")
        return None
    if m.get("accuracy") is not None and m["accuracy"] < gold_major + 2 * se:
        return (f"accuracy {m['accuracy']:.4f} is no better than always answering the most common "
                f"class ({gold_major:.4f})")
    return None


def check_loss(losses: list[float], split: str = "train") -> list[Finding]:
    """A training loss that never moved: the optimizer did nothing useful."""
    losses = [x for x in losses if isinstance(x, (int, float)) and math.isfinite(x)]
    if len(losses) < 4:
        return []
    tail = losses[-max(1, len(losses) // 4):]
    start, end = losses[0], sum(tail) / len(tail)
    if start > 0 and end > 1.02 * start:
        return [Finding("rising-loss", split,
                        f"the training loss rose ({start:.4f} at the start, {end:.4f} at the end)",
                        "lower train.learning_rate (e.g. 10x) or set train.learning_rate=auto")]
    if start > 0 and end > 0.98 * start:
        return [Finding("flat-loss", split,
                        f"the training loss stayed flat ({start:.4f} at the start, {end:.4f} at the "
                        "end)", "raise train.learning_rate (e.g. 4x) or set "
                        "train.learning_rate=auto; check that the labels match the inputs")]
    return []


def report(findings: list[Finding], checked: dict) -> dict:
    """The `health` record of result.json."""
    return {"status": "collapsed" if findings else "ok",
            "findings": [asdict(f) for f in findings], "checked": checked}


def is_collapsed(result: dict) -> bool:
    """A result.json record (or peftkit eval report) whose health check found a collapse."""
    return (result.get("health") or {}).get("status") == "collapsed"


def split_metrics(metrics: dict, split: str, lr_hint: str = "", losses=()) -> tuple[dict, dict]:
    """(the scores without the prediction statistics, the health record) of one evaluation."""
    stats = {k.removeprefix(f"{split}_"): v for k, v in metrics.items() if PREFIX in k}
    scores = {k: v for k, v in metrics.items() if PREFIX not in k}
    findings = check(metrics, split, lr_hint) + check_loss(list(losses))
    return scores, report(findings, stats)


def warning_text(findings: list[dict], head: str = "the run trained but learned nothing useful",
                 run: bool = True) -> str:
    """The red block printed after a collapsed run (run=False: after `peftkit eval`, which records
    nothing and keeps its exit code)."""
    lines = [f"WARNING: {head}:"]
    for f in findings:
        lines += [f"  - {f['split']}: {f['what']}", f"    fix: {f['fix']}"]
    if run:
        lines.append(f"  (result.json records health; exit code {COLLAPSE_EXIT_CODE}: docs/errors.md)")
    return "\n".join(lines)
