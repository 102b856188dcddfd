"""The surface every task provides to the pipeline.

    raw DatasetDict ──label_names──▶ labels ──encode──▶ tokenized DatasetDict ──collator──▶ batches
    Trainer.predict ──compute_metrics──▶ {"f1": ..., ...}          predict(texts) ──▶ JSON records
"""

from __future__ import annotations

from pathlib import Path

IGNORE = -100  # the label the loss skips (sub-tokens, prompts, padding): torch's ignore_index


class Task:
    name: str = ""
    auto_class: str = ""            # transformers Auto class of the model with this task's head
    peft_task_type: str = ""        # peft TaskType name
    head_names: list[str] = ["classifier", "score"]
    default_metric: str = ""
    metric_names: tuple[str, ...] = ()     # what its test evaluation reports (eval.metric picks one)
    metric_prefixes: tuple[str, ...] = ()  # families with a name per label (f1_PER)
    # (validation metric, higher is better) that early stopping follows and its best checkpoint
    # is chosen by: one the Trainer's evaluation computes during training
    selection_metric: tuple[str, bool] = ("loss", False)
    columns: tuple[str, ...] = ()   # columns the readers must provide
    # train.class_weights: auto turns on sqrt weights when the training split's largest class
    # outnumbers its smallest this many times (None: never; see auto_class_weights)
    auto_balance_ratio: float | None = 4.0
    generates: bool = False         # continues prompts (`peftkit serve`'s OpenAI endpoints)
    # `peftkit merge --format onnx`: one forward pass from token ids to this task's logits is the
    # whole model, so torch.onnx.export's graph is all an ONNX Runtime user needs; and why not
    exports_onnx: bool = False
    onnx_refusal: str = "its model is not one forward pass from token ids to logits"
    # libraries its metrics import when a run scores (peftkit.metrics): `peftkit plan` imports
    # them too, so that its baseline memory is the run's
    metric_modules: tuple[str, ...] = ()
    gguf: bool = False              # a plain decoder LM that llama.cpp runs (--format gguf)

    def check_metric(self, metric: str | None, problems: list[str]) -> None:
        """eval.metric must be one this task reports (issue 17: `bleu` for NER printed None)."""
        if metric is None or metric in self.metric_names or metric.startswith(self.metric_prefixes):
            return
        import difflib

        close = difflib.get_close_matches(metric, self.metric_names, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        families = "".join(f", {p}<label>" for p in self.metric_prefixes)
        problems.append(f"eval.metric: {self.name} reports no {metric!r}{hint}; choose one of "
                        f"{', '.join(self.metric_names)}{families}, or leave it out for "
                        f"{self.default_metric}")

    def label_names(self, raw, recipe) -> list[str] | None:
        """The label list (index = class id), or None for tasks without labels."""
        return None

    def encode(self, raw, tokenizer, recipe, labels) -> tuple[object, dict]:
        """Tokenize every split; returns (encoded DatasetDict, stats such as truncated counts)."""
        raise NotImplementedError

    def collator(self, tokenizer, pad_to_multiple_of: int | None = None):
        raise NotImplementedError

    def training_loss(self):
        """The loss of a training batch, computed by the task instead of the model's forward
        (train.with_task_loss: called with the model, its unwrapped self, inputs, labels and
        num_items_in_batch, it returns the loss or None for the model's own); None: the model's."""
        return None

    def compute_metrics(self, labels, recipe):
        """A function (EvalPrediction) -> dict for the Trainer."""
        raise NotImplementedError

    def preprocess_logits(self, logits, labels):
        """Reduce logits before the Trainer gathers them (argmax keeps eval memory small)."""
        if isinstance(logits, tuple):
            logits = logits[0]
        return logits.argmax(dim=-1)

    def probe_metrics(self):
        """(compute_metrics, preprocess_logits) of a learning-rate probe (peftkit/lr_search.py):
        the held-back loss averaged over gold classes, so that the rare classes (entities on a
        mostly-O set, the minority of an imbalanced one) weigh as much as the frequent one. A
        model that learned only the majority class has a low plain loss and a high balanced one."""
        return balanced_loss, gold_nll

    def label_prior(self, train, n_labels: int) -> list[float]:
        """Each label's share of the (encoded) training split's gold labels, add-one smoothed: the
        bias a new head starts from (models.init_head_bias)."""
        counts = [1] * n_labels
        for gold in train["labels"]:
            for label in (gold if isinstance(gold, list) else [gold]):
                if label != IGNORE:
                    counts[label] += 1
        return [c / sum(counts) for c in counts]

    def auto_class_weights(self, prior: list[float], weights: str = "sqrt") -> str:
        """train.class_weights: auto resolved on the training split's label prior: `weights` (the
        strategy's Strategy.lopsided_class_weights) when the classes are this lopsided, else
        "none". Measured on SST-2 with 900 positive / 100 negative training sentences
        (benchmarks/RESULTS.md#robustness): without weights prompt tuning predicted one class for
        every test sentence (0.509); with full inverse-frequency weights ("balanced") most
        strategies gained 4-10 points but DoRA and Houlsby adapters flipped to predicting the
        minority class for every sentence; the square root is the half-way weight."""
        if self.auto_balance_ratio is None or len(prior) < 2:
            return "none"
        return weights if max(prior) >= self.auto_balance_ratio * min(prior) else "none"

    def evaluate(self, trainer, dataset, recipe, labels, prefix: str, out_dir: Path) -> dict:
        """Metrics on one encoded split, keys prefixed (e.g. test_f1); files a task writes beside
        them (causal-lm: the generations) go into `out_dir`, the run folder."""
        return trainer.evaluate(dataset, metric_key_prefix=prefix)

    def logits_loss(self, logits, labels, config):
        """The loss the task's transformers head computes from its logits (transformers'
        LOSS_MAPPING), for models that return logits alone: an ONNX Runtime session under
        `peftkit eval` (export/onnx_runtime.py). `config`: the model's config (num_labels)."""
        raise NotImplementedError

    def predict(self, model, tokenizer, texts: list[str], labels, recipe,
                adapter_names: list[str] | None = None) -> list[dict]:
        """One JSON record per text. `adapter_names` (one per text): peft's mixed-adapter batch,
        each text through its own adapter in the same forward pass (`peftkit serve`)."""
        raise NotImplementedError

    def predict_settings(self, recipe) -> tuple:
        """The recipe values predict() reads: `peftkit serve` puts texts for different runs in
        one forward pass only when these are equal."""
        return (recipe.data.max_length,)


def length_batches(texts: list[str], max_count: int, slack: float = 1.25) -> list[list[int]]:
    """Indices of `texts` in batches of similar length (characters standing in for tokens): a
    padded batch costs its longest row times its size, so one long text among short ones made
    a 32-text batch of CoNLL sentences slower than the texts one by one. Sorted by length, a
    batch closes when padding would exceed `slack` times its real length, or at max_count."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches, current, chars = [], [], 0
    for i in order:
        size = len(texts[i]) + 1
        if current and (len(current) >= max_count or size * (len(current) + 1) > slack * (chars + size)):
            batches.append(current)
            current, chars = [], 0
        current.append(i)
        chars += size
    return batches + [current] if current else batches


def batch_names(adapter_names: list[str] | None, idx: list[int]) -> dict:
    """The forward pass's `adapter_names` argument for the texts at `idx` (none: no argument)."""
    return {} if adapter_names is None else {"adapter_names": [adapter_names[i] for i in idx]}


def tokenize_splits(raw, encode_batch):
    """Map `encode_batch` over every split; it marks each example `truncated` (counted, then dropped)."""
    encoded = raw.map(encode_batch, batched=True, remove_columns=list(raw["train"].column_names),
                      desc="tokenizing")
    stats = {f"truncated_{split}": int(sum(encoded[split]["truncated"])) for split in encoded}
    return encoded.remove_columns("truncated"), stats


def gold_nll(logits, labels):
    """Per-position -log p(gold label); 0 where the label is ignored (sub-tokens, padding)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    logits = logits[..., -labels.shape[-1]:, :] if logits.dim() == 3 else logits  # virtual tokens
    logp = logits.float().log_softmax(-1)
    nll = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return nll.masked_fill(labels == IGNORE, 0.0)


def balanced_loss(pred) -> dict:
    """The mean over gold classes of each class's mean loss (EvalPrediction of gold_nll)."""
    import numpy as np

    nll, gold = np.asarray(pred.predictions, dtype=float), np.asarray(pred.label_ids)
    keep = gold != IGNORE
    per_class = [nll[keep & (gold == c)].mean() for c in np.unique(gold[keep])]
    return {"balanced_loss": float(np.mean(per_class)) if per_class else float("nan")}
