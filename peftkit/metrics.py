"""Metrics computed offline (`evaluate.load` fetches metric code from a hub at run time)."""

from __future__ import annotations


def entity_scores(true_tags: list[list[str]], pred_tags: list[list[str]]) -> dict:
    """Entity-level micro precision / recall / F1 (seqeval, strict IOB2) and F1 per entity type."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    report = classification_report(true_tags, pred_tags, mode="strict", scheme=IOB2,
                                   output_dict=True, zero_division=0)
    micro = report["micro avg"]
    out = {"precision": micro["precision"], "recall": micro["recall"], "f1": micro["f1-score"]}
    for name, row in report.items():
        if not name.endswith(" avg"):
            out[f"f1_{name}"] = row["f1-score"]
    correct = sum(t == p for ts, ps in zip(true_tags, pred_tags) for t, p in zip(ts, ps))
    out["token_accuracy"] = correct / max(1, sum(len(ts) for ts in true_tags))
    return out


def classification_scores(true: list[int], pred: list[int], num_labels: int) -> dict:
    """Accuracy, macro-F1 and, for two classes, Matthews correlation."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    out = {"accuracy": float(accuracy_score(true, pred)),
           "macro_f1": float(f1_score(true, pred, average="macro", labels=list(range(num_labels)),
                                      zero_division=0))}
    if num_labels == 2:
        out["mcc"] = float(matthews_corrcoef(true, pred))
    return out
