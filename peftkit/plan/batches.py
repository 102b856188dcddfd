"""The largest batches a run will see, from the encoded examples' lengths.

Memory follows the largest batch, not the average one. Training batches are random (the
Trainer's seeded shuffle); each is padded to its longest example, and where packing applies
(peftkit.packing) its examples share rows of that width (first-fit, as the collator packs).
Evaluation batches are the split in order. Both are computed here with the same rules, over as
many training batches as the run will take (at most one shuffled epoch).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from peftkit.packing import first_fit


@dataclass
class Batch:
    indices: list[int]   # examples in the batch (into the split)
    rows: int            # rows of the tensor the model sees
    width: int           # tokens per row

    @property
    def slots(self) -> int:
        return self.rows * self.width

    def record(self, size: int) -> dict:
        return {"examples": size, "rows": self.rows, "width": self.width}


def shape(indices: list[int], lengths: list[int], packed: bool) -> Batch:
    sizes = [lengths[i] for i in indices]
    if packed:
        rows, width = first_fit(sizes)
        return Batch(indices, len(rows), width)
    return Batch(indices, len(sizes), max(sizes))


def largest_training_batch(lengths: list[int], batch_size: int, batches: int, packed: bool,
                           seed: int) -> Batch:
    """The batch with the most token slots among `batches` seeded random batches (the run's
    steps, at most an epoch: later epochs reshuffle the same examples)."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)][:max(1, batches)]
    return max((shape(c, lengths, packed) for c in chunks), key=lambda b: (b.slots, b.width))


def largest_eval_batch(lengths: list[int], batch_size: int) -> Batch:
    """Evaluation keeps the split's order and pads each batch to its longest example."""
    chunks = [list(range(i, min(i + batch_size, len(lengths))))
              for i in range(0, len(lengths), batch_size)]
    return max((shape(c, lengths, False) for c in chunks), key=lambda b: (b.slots, b.width))
