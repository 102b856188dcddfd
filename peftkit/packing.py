"""Packed training batches: each batch's examples share rows instead of being padded to the longest.

    random batch of 32 sentences ──first-fit──▶ rows of the longest example's length
    row:  [ sentence A      | sentence B   | C  | pad ]
    mask: A sees A, B sees B, C sees C (block-diagonal; causal inside blocks for decoders);
          padding sees the row's real tokens, so no attention row is empty (empty rows give NaN)
    positions restart at 0 for every example; labels are unchanged (decoders: the first label of
    each example is -100, so no example predicts the next one's first token)

Why not length-grouped batches: grouping makes every batch a set of similar-length examples
(headlines together, long sentences together), a different training signal than random batches;
on CoNLL-2003 it cost ~1 F1 point after an epoch (docs/speed.md). Packing keeps the
random batch, so the loss and gradient are those of the padded batch, at a fraction of the padding.
Needs a 4-D mask, which transformers passes to SDPA as it is; not for strategies that prepend
virtual tokens to the mask (prefix, prompt). Sequence classification (one label per example, read
from its first token) packs too: the encoder's output is gathered back to one row per example
before the model's pooler and head (peftkit/pooled_packing.py, checked against the padded batch
before training).
"""

from __future__ import annotations

from peftkit.pooled_packing import STARTS
from peftkit.tasks.base import IGNORE

TASKS = {"token-classification": False, "causal-lm": True}  # task -> causal attention
POOLED = {"sequence-classification"}  # one label per example: its first token's row is gathered


def packing_applies(recipe, model) -> bool:
    """True when the recipe asks for packing and task, strategy and attention kernel allow it."""
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return (recipe.train.packing and (recipe.task in TASKS or recipe.task in POOLED)
            and recipe.strategy_impl.packable and attn == "sdpa")


def collator(recipe, pad_id: int) -> "PackingCollator":
    """The packing collator for the recipe's task (packing_applies said yes)."""
    return PackingCollator(pad_id, causal=TASKS.get(recipe.task, False), pooled=recipe.task in POOLED)


def trainer_class(recipe, model, pad_id: int):
    """transformers.Trainer, or a subclass whose training batches are packed when packing applies.
    Evaluation and prediction keep the task's padding collator: their outputs are read per row."""
    from transformers import Trainer

    if not packing_applies(recipe, model):
        return Trainer
    packing = collator(recipe, pad_id)

    class PackedTrainer(Trainer):
        def packs(self) -> bool:
            """Whether this run's training batches are packed (pooled_packing checks first)."""
            return True

        def get_train_dataloader(self):
            if not self.packs():
                return super().get_train_dataloader()
            padded, self.data_collator = self.data_collator, packing
            try:
                return super().get_train_dataloader()
            finally:
                self.data_collator = padded

    if packing.pooled:
        from peftkit.pooled_packing import pooled_trainer

        return pooled_trainer(PackedTrainer, packing)
    return PackedTrainer


class PackingCollator:
    """Packs a list of tokenized examples (input_ids, labels, optional token_type_ids) into rows.
    pooled: one label per example (sequence classification): `labels` stays one per example, in
    the batch's order, and STARTS says where each example's first token sits."""

    def __init__(self, pad_id: int, causal: bool, pooled: bool = False):
        self.pad_id, self.causal, self.pooled = pad_id, causal, pooled

    def __call__(self, features: list[dict]) -> dict:
        import torch

        rows, width = first_fit([len(f["input_ids"]) for f in features])
        shape = (len(rows), width)
        ids = torch.full(shape, self.pad_id, dtype=torch.long)
        labels = None if self.pooled else torch.full(shape, IGNORE, dtype=torch.long)
        positions = torch.zeros(shape, dtype=torch.long)
        segment = torch.full(shape, -1, dtype=torch.long)  # which example a slot holds; -1: padding
        types = torch.zeros(shape, dtype=torch.long) if "token_type_ids" in features[0] else None
        starts = torch.zeros((len(features), 2), dtype=torch.long)
        for r, members in enumerate(rows):
            start = 0
            for s, i in enumerate(members):
                f, end = features[i], start + len(features[i]["input_ids"])
                ids[r, start:end] = torch.as_tensor(f["input_ids"])
                starts[i] = torch.tensor([r, start])
                if labels is not None:
                    labels[r, start:end] = torch.as_tensor(f["labels"])
                    if self.causal:
                        labels[r, start] = IGNORE
                if types is not None:
                    types[r, start:end] = torch.as_tensor(f["token_type_ids"])
                positions[r, start:end] = torch.arange(end - start)
                segment[r, start:end] = s
                start = end
        batch = {"input_ids": ids, "attention_mask": block_mask(segment, self.causal),
                 "position_ids": positions, "labels": labels}
        if self.pooled:
            batch["labels"] = torch.as_tensor([f["labels"] for f in features])
            batch[STARTS] = starts
        if types is not None:
            batch["token_type_ids"] = types
        return batch


def first_fit(lengths: list[int]) -> tuple[list[list[int]], int]:
    """Example indices per row (first-fit decreasing) and the row width (the longest example)."""
    width = max(lengths)
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(width - lengths[i])
    return rows, width


def block_mask(segment, causal: bool):
    """(rows, 1, width, width) bool: a real slot attends to its own example; padding to the row's
    real slots. So the mask's diagonal is True exactly at real tokens (TokenCounter counts them)."""
    import torch

    query, key = segment[:, :, None], segment[:, None, :]
    mask = (query == key) & (query >= 0)
    mask |= (query < 0) & (key >= 0)
    if causal:
        width = segment.shape[1]
        mask &= torch.ones(width, width, dtype=torch.bool).tril()
    return mask[:, None]
