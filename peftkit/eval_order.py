"""Evaluation batches of similar length: the evaluation split is read longest example first.

The Trainer evaluates in the split's own order, and each batch is padded to its longest example:
on CoNLL-2003's test set (one-word headlines beside 40-word sentences) most of an evaluation
batch's token slots were padding, and a padded slot costs as much as a real token. Read in order
of length, a batch's examples are nearly the same length. Training batches are not affected
(they stay random draws, packed: docs/speed.md says why grouping them by length costs accuracy).

Every evaluation metric peftkit computes is a sum over examples (entity F1, accuracy, balanced
loss, next-token accuracy), so the order does not change it; the Trainer's `eval_loss` is a
mean of per-batch means, which other batches make slightly different. That is why the
learning-rate search's probes (train.build_trainer(probe=True)) keep the split's own order: their
plain loss is that eval_loss, and `auto`'s published picks were measured with it.

Longest first: the batch that needs the most memory comes first, so a run that cannot evaluate
fails at once.

transformers has no evaluation-only form of this: its length-grouped sampler applies to the
evaluation split only together with training's (`group_by_length`), and groups in random
megabatches. Several processes (a distributed launch) keep the Trainer's own sampler, which
accelerate shards.
"""

from __future__ import annotations

import torch


def longest_first(trainer_cls):
    """A subclass of trainer_cls whose evaluation and prediction read the split longest first."""

    class LongestFirstEval(trainer_cls):
        def _get_eval_sampler(self, eval_dataset):
            order = length_order(eval_dataset) if self.args.world_size == 1 else None
            return super()._get_eval_sampler(eval_dataset) if order is None else FixedOrder(order)

    return LongestFirstEval


class FixedOrder(torch.utils.data.Sampler):
    """The indices of a list, in its order."""

    def __init__(self, order: list[int]):
        self.order = order

    def __iter__(self):
        return iter(self.order)

    def __len__(self):
        return len(self.order)


def length_order(dataset) -> list[int] | None:
    """Indices of `dataset`, longest `input_ids` first (ties in the split's order); None when the
    examples carry no input_ids to measure. The lengths come from the Arrow column (reading the
    ids into Python lists took 10 s for 150,000 examples, Arrow 1 ms)."""
    import numpy as np
    import pyarrow.compute as pc

    names = getattr(dataset, "column_names", None) or []
    if "input_ids" not in names:
        return None
    ids = dataset.with_format("arrow")["input_ids"]  # the selection's rows, in its order
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
    return np.argsort(-lengths, kind="stable").tolist()
