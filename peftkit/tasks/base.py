"""The surface every task provides to the pipeline.

    raw DatasetDict ──label_names──▶ labels ──encode──▶ tokenized DatasetDict ──collator──▶ batches
    Trainer.predict ──compute_metrics──▶ {"f1": ..., ...}          predict(texts) ──▶ JSON records
"""

from __future__ import annotations


class Task:
    name: str = ""
    auto_class: str = ""            # transformers Auto class of the model with this task's head
    peft_task_type: str = ""        # peft TaskType name
    head_names: list[str] = ["classifier", "score"]
    default_metric: str = ""
    columns: tuple[str, ...] = ()   # columns the readers must provide

    def label_names(self, raw, recipe) -> list[str] | None:
        """The label list (index = class id), or None for tasks without labels."""
        return None

    def encode(self, raw, tokenizer, recipe, labels) -> tuple[object, dict]:
        """Tokenize every split; returns (encoded DatasetDict, stats such as truncated counts)."""
        raise NotImplementedError

    def collator(self, tokenizer, pad_to_multiple_of: int | None = None):
        raise NotImplementedError

    def compute_metrics(self, labels, recipe):
        """A function (EvalPrediction) -> dict for the Trainer."""
        raise NotImplementedError

    def preprocess_logits(self, logits, labels):
        """Reduce logits before the Trainer gathers them (argmax keeps eval memory small)."""
        if isinstance(logits, tuple):
            logits = logits[0]
        return logits.argmax(dim=-1)

    def evaluate(self, trainer, dataset, recipe, labels, prefix: str) -> dict:
        """Metrics on one encoded split, keys prefixed (e.g. test_f1)."""
        return trainer.evaluate(dataset, metric_key_prefix=prefix)

    def predict(self, model, tokenizer, texts: list[str], labels, recipe) -> list[dict]:
        raise NotImplementedError


def tokenize_splits(raw, encode_batch):
    """Map `encode_batch` over every split; it marks each example `truncated` (counted, then dropped)."""
    encoded = raw.map(encode_batch, batched=True, remove_columns=list(raw["train"].column_names),
                      desc="tokenizing")
    stats = {f"truncated_{split}": int(sum(encoded[split]["truncated"])) for split in encoded}
    return encoded.remove_columns("truncated"), stats
