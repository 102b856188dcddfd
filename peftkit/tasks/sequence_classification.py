"""Sequence classification: one sentence (SST-2) or a sentence pair (MNLI-style) -> one class.

    text [, text_pair], label ──tokenizer──▶ input_ids (pair: [CLS] a [SEP] b [SEP]) ──▶ head ──▶ class
Labels are integers 0..N-1 (named by data.label_names, else "0".."N-1") or strings (sorted).
"""

from __future__ import annotations

from peftkit.errors import DataError
from peftkit.tasks.base import Task, batch_names, length_batches, tokenize_splits


class SequenceClassification(Task):
    name = "sequence-classification"
    auto_class = "AutoModelForSequenceClassification"
    metric_modules = ("sklearn.metrics",)
    peft_task_type = "SEQ_CLS"
    default_metric = "accuracy"
    metric_names = ("accuracy", "macro_f1", "mcc", "loss")
    selection_metric = ("accuracy", True)    # computed at every evaluation
    columns = ("text", "label")
    exports_onnx = True

    def label_names(self, raw, recipe) -> list[str]:
        feature_names = getattr(raw["train"].features["label"], "names", None)  # hub ClassLabel
        if feature_names:
            return list(feature_names)
        values = {split: set(raw[split]["label"]) for split in raw}
        given = getattr(recipe.data, "label_names", None)
        names = names_from_values(values, given)
        declared = recipe.data.labels
        if declared and set(names) <= set(declared):  # the declared order (ids) and set
            return list(declared)
        return names

    def encode(self, raw, tokenizer, recipe, labels):
        label_id = {name: i for i, name in enumerate(labels)}
        max_length = recipe.data.max_length

        def encode_batch(batch):
            texts = [t.strip() for t in batch["text"]]
            pairs = [t.strip() for t in batch["text_pair"]] if "text_pair" in batch else None
            full = tokenizer(texts, pairs)  # lengths before truncation, for the truncation count
            enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
            enc["labels"] = [label_id[label_key(v, labels)] for v in batch["label"]]
            enc["truncated"] = [len(ids) > max_length for ids in full["input_ids"]]
            return enc

        return tokenize_splits(raw, encode_batch)

    def collator(self, tokenizer, pad_to_multiple_of=None):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def predict_settings(self, recipe) -> tuple:
        return (recipe.data.max_length, bool(recipe.data.text_pair_column),
                recipe.train.eval_batch_size)

    def compute_metrics(self, labels, recipe):
        from peftkit.health import class_stats
        from peftkit.metrics import classification_scores

        def compute(pred):
            preds = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
            true, predicted = [int(x) for x in pred.label_ids], [int(x) for x in preds]
            return {**classification_scores(true, predicted, len(labels)), **class_stats(true, predicted)}

        return compute

    def logits_loss(self, logits, labels, config):
        from transformers.loss.loss_utils import LOSS_MAPPING

        return LOSS_MAPPING["ForSequenceClassification"](labels, logits, config)

    def predict(self, model, tokenizer, texts, labels, recipe, adapter_names=None):
        """One record per text; with a text_pair column, a tab separates the two texts."""
        import torch

        model.eval()
        out: list[dict] = [{}] * len(texts)
        for idx in length_batches(texts, recipe.train.eval_batch_size):
            chunk = [texts[i] for i in idx]
            firsts, pairs = split_pairs(chunk, bool(recipe.data.text_pair_column))
            enc = tokenizer(firsts, pairs, truncation=True, max_length=recipe.data.max_length,
                            padding=True, return_tensors="pt")
            with torch.no_grad():
                logits = model(**{k: v.to(model.device) for k, v in enc.items()},
                               **batch_names(adapter_names, idx)).logits
            probs = logits.float().softmax(-1).cpu()
            for i, text, p in zip(idx, chunk, probs):
                out[i] = {"text": text, "label": labels[int(p.argmax())],
                          "probabilities": {name: round(float(x), 6) for name, x in zip(labels, p)}}
        return out


def names_from_values(values: dict[str, set], given: list[str] | None) -> list[str]:
    """Label list from the label values of every split (train decides; others must fit)."""
    train = values["train"]
    if all(isinstance(v, str) for v in train):
        names = sorted(train)
        for split, seen in values.items():
            unseen = seen - set(names)
            if unseen:
                raise DataError(f"data split {split!r} has labels the training split never uses: "
                                f"{sorted(unseen)[:10]}; the model cannot learn them")
        return names
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in train):
        kinds = sorted({type(v).__name__ for v in train})
        raise DataError(f"data: labels must be integers 0..N-1 or strings, found {', '.join(kinds)}")
    bad = sorted(v for seen in values.values() for v in seen if not isinstance(v, int) or v < 0)
    if bad:
        raise DataError(f"data: label {bad[0]!r} is not a class id 0..N-1 (unlabelled test split? "
                        "GLUE test files carry -1: evaluate on the validation split instead)")
    n = max(max(seen) for seen in values.values() if seen) + 1
    if given:
        if len(given) < n:
            raise DataError(f"data.label_names: {len(given)} names, but labels go up to {n - 1}")
        return list(given)
    return [str(i) for i in range(n)]


def label_key(value, labels: list[str]) -> str:
    return value if isinstance(value, str) else labels[value]


def split_pairs(texts: list[str], pairs: bool):
    if not pairs:
        return texts, None
    split = [t.split("\t", 1) for t in texts]
    return [s[0] for s in split], [s[1] if len(s) > 1 else "" for s in split]


TASK = SequenceClassification()
