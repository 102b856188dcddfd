"""Token classification (NER): words + IOB2 tags, first sub-token labelled (as run_ner.py does)."""

from __future__ import annotations

import re

from peftkit.errors import DataError
from peftkit.tasks.base import IGNORE, Task, batch_names, length_batches, tokenize_splits

# Raw text split into words the way NER corpora are tokenized: URLs, e-mail addresses, @handles
# and #hashtags stay whole (social-media sets label them as one token), a trailing full stop or
# comma is not part of a URL, abbreviations keep their dots (U.S.), words their inner
# hyphens / apostrophes / dots (o'clock, 3.5),
# every other punctuation mark is a word of its own.
WORD = re.compile(r"(?:https?://|www\.)\S+?(?=[.,;:!?)\]]*(?:\s|$))|[\w.+-]+@\w+(?:\.\w+)+"
                  r"|[@#]\w+|(?:[A-Za-z]\.){2,}|\w+(?:[-'.]\w+)*|[^\w\s]")
PREDICT_BATCH = 32  # texts per forward pass in predict


class TokenClassification(Task):
    name = "token-classification"
    auto_class = "AutoModelForTokenClassification"
    metric_modules = ("seqeval.metrics", "seqeval.scheme")
    peft_task_type = "TOKEN_CLS"
    default_metric = "f1"
    metric_names = ("precision", "recall", "f1", "token_accuracy", "loss")
    metric_prefixes = ("f1_",)
    selection_metric = ("f1", True)    # computed at every evaluation
    columns = ("tokens", "tags")
    # O outnumbers every entity tag in any NER set; weighing tags by inverse frequency would trade
    # precision for recall everywhere. The head prior and the search's balanced loss cover collapse.
    auto_balance_ratio = None
    exports_onnx = True

    def label_names(self, raw, recipe) -> list[str]:
        seen = {t for tags in raw["train"]["tags"] for t in tags}
        if recipe.data.labels:  # declared: checked against the data before this (data/labels.py)
            from peftkit.data.labels import declared_set

            seen |= declared_set(recipe.data.labels, self.name)
        labels = ["O"] + sorted(seen - {"O"}, key=lambda t: (t[2:], t[:1]))
        for split in raw:
            unseen = {t for tags in raw[split]["tags"] for t in tags} - seen
            if unseen:
                raise DataError(f"data split {split!r} has tags the training split never uses: "
                                f"{sorted(unseen)}; the model cannot learn them. Add training "
                                "examples with these tags or fix the tags.")
        return labels

    def encode(self, raw, tokenizer, recipe, labels):
        label_id = {name: i for i, name in enumerate(labels)}
        max_length = recipe.data.max_length

        def encode_batch(batch):
            enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True,
                            max_length=max_length)
            enc["labels"], enc["truncated"] = [], []
            for i, tags in enumerate(batch["tags"]):
                word_ids = enc.word_ids(i)
                enc["labels"].append(align_labels(word_ids, [label_id[t] for t in tags]))
                kept = max((w for w in word_ids if w is not None), default=-1) + 1
                enc["truncated"].append(kept < len(tags))
            return enc

        return tokenize_splits(raw, encode_batch)

    def collator(self, tokenizer, pad_to_multiple_of=None):
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def compute_metrics(self, labels, recipe):
        from peftkit.health import token_stats
        from peftkit.metrics import entity_scores

        def compute(pred):
            true_tags, pred_tags = to_tag_sequences(pred.predictions, pred.label_ids, labels)
            return {**entity_scores(true_tags, pred_tags), **token_stats(true_tags, pred_tags)}

        return compute

    def logits_loss(self, logits, labels, config):
        from transformers.loss.loss_utils import LOSS_MAPPING

        return LOSS_MAPPING["ForTokenClassification"](logits, labels, config)

    def predict(self, model, tokenizer, texts, labels, recipe, adapter_names=None):
        import torch

        out: list[dict] = [{}] * len(texts)
        model.eval()
        for idx in length_batches(texts, PREDICT_BATCH):
            batch = [texts[i] for i in idx]
            spans = [[(m.group(), m.start(), m.end()) for m in WORD.finditer(t)] for t in batch]
            words = [[w for w, _, _ in s] or [""] for s in spans]
            enc = tokenizer(words, is_split_into_words=True, truncation=True, padding=True,
                            max_length=recipe.data.max_length, return_tensors="pt")
            with torch.no_grad():
                logits = model(**{k: v.to(model.device) for k, v in enc.items()},
                               **batch_names(adapter_names, idx)).logits
            for i, text in enumerate(batch):
                tags = word_tags(enc.word_ids(i), logits[i], len(spans[i]), labels)
                out[idx[i]] = {"text": text, "entities": entities_from_tags(text, spans[i], tags)}
        return out


def word_tags(word_ids: list[int | None], logits, n_words: int, labels: list[str]) -> list[str]:
    """Each word's tag from its first sub-token (as trained: align_labels); words cut off by
    max_length stay O."""
    tags, previous = ["O"] * n_words, None
    for pos, w in enumerate(word_ids):
        if w is not None and w < n_words and w != previous:
            tags[w] = labels[int(logits[pos].argmax())]
        previous = w
    return tags


def align_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Label the first sub-token of each word; later sub-tokens and special tokens get IGNORE."""
    aligned, previous = [], None
    for w in word_ids:
        aligned.append(IGNORE if w is None or w == previous else word_labels[w])
        previous = w
    return aligned


def to_tag_sequences(pred_ids, label_ids, labels: list[str]):
    """Drop IGNORE positions and map ids to tag strings, sentence by sentence."""
    true_tags, pred_tags = [], []
    for preds, golds in zip(pred_ids, label_ids):
        keep = [(p, g) for p, g in zip(preds, golds) if g != IGNORE]
        true_tags.append([labels[g] for _, g in keep])
        pred_tags.append([labels[p] for p, _ in keep])
    return true_tags, pred_tags


def entities_from_tags(text: str, spans, tags: list[str]) -> list[dict]:
    """Group IOB2 tags into entities with type, text and character offsets."""
    entities, current = [], None
    for (_, start, end), tag in zip(spans, tags):
        kind = tag[2:] if tag != "O" else None
        if current and (tag.startswith("B-") or kind != current["type"]):
            entities.append(current)
            current = None
        if kind and current is None:
            current = {"type": kind, "start": start, "end": end}
        elif current:
            current["end"] = end
    if current:
        entities.append(current)
    for e in entities:
        e["text"] = text[e["start"]:e["end"]]
    return entities


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """IOB1 starts an entity with I- unless it follows one of the same type; IOB2 always uses B-."""
    out = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-"):
            prev = out[i - 1] if i else "O"
            if prev == "O" or prev[2:] != tag[2:]:
                tag = "B-" + tag[2:]
        out.append(tag)
    return out


def is_iob1(tag_lists) -> bool:
    """True when some entity starts with I- (which IOB2 forbids)."""
    for tags in tag_lists:
        prev = "O"
        for tag in tags:
            if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
                return True
            prev = tag
    return False


TASK = TokenClassification()
