"""A validation split cut from the training data, where the data has none (issue 18: a single
JSONL file passed `validate`, then `run` failed with "no 'validation' split").

Seeded by train.seed, so `run`, `validate`, `eval` and a resumed run cut the same examples; both
parts keep the file's order, so the held-out rows can be found in the file.
"""

from __future__ import annotations

import random

from peftkit.errors import DataError


def held_out_count(n: int, size: float) -> int:
    """data.validation_size: a share (< 1) or a number of examples (>= 1)."""
    return max(1, round(n * size)) if size < 1 else int(size)


def hold_out(train, size: float, seed: int, where: str):
    """(train without the held-out rows, the held-out rows)."""
    n = len(train)
    k = held_out_count(n, size)
    if k >= n:
        raise DataError(f"{where}: {n} training example(s) are too few to hold out {k} for "
                        "evaluation; give an evaluation file (data.validation_file) or lower "
                        "data.validation_size")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held, rest = sorted(order[:k]), sorted(order[k:])
    return train.select(rest, keep_in_memory=True), train.select(held, keep_in_memory=True)
