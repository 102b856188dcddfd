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


def generation_scores(predictions: list[str], references: list[list[str]]) -> dict:
    """Exact match, corpus BLEU (sacrebleu) and ROUGE-L F1, each against all references of an input.

    E2E-style data has several references per input: BLEU takes them as reference streams (None
    where an input has fewer), ROUGE-L keeps the best-matching reference, exact match any of them.
    """
    import sacrebleu
    from rouge_score import rouge_scorer

    if not predictions:
        return {"exact_match": 0.0, "bleu": 0.0, "rougeL": 0.0}
    width = max(len(refs) for refs in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    bleu = sacrebleu.corpus_bleu(predictions, streams).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score_multi(refs, pred)["rougeL"].fmeasure for pred, refs in zip(predictions, references)]
    exact = [normalize(pred) in {normalize(r) for r in refs} for pred, refs in zip(predictions, references)]
    n = len(predictions)
    return {"exact_match": 100.0 * sum(exact) / n, "bleu": bleu, "rougeL": 100.0 * sum(rouge) / n}


def normalize(text: str) -> str:
    return " ".join(text.split())
