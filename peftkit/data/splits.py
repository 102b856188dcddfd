"""A validation split cut from the training data, where the data has none (issue 18: a single
JSONL file passed `validate`, then `run` failed with "no 'validation' split").

Seeded by train.seed, so `run`, `validate`, `eval` and a resumed run cut the same examples; both
parts keep the file's order, so the held-out rows can be found in the file. A held-out example
whose label (class, or NER tag) no training example keeps goes back to training: the task would
refuse a validation label it never trains on (and could not learn it).
"""

from __future__ import annotations

import random
from collections import Counter

from peftkit.errors import DataError


def held_out_count(n: int, size: float) -> int:
    """data.validation_size: a share (< 1) or a number of examples (>= 1)."""
    return max(1, round(n * size)) if size < 1 else int(size)


def hold_out(train, size: float, seed: int, where: str):
    """(train without the held-out rows, the held-out rows, how many went back to training)."""
    n = len(train)
    k = held_out_count(n, size)
    if k >= n:
        raise DataError(f"{where}: {n} training example(s) are too few to hold out {k} for "
                        "evaluation; give an evaluation file (data.validation_file) or lower "
                        "data.validation_size")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held, rest = keep_labels_trained(order[:k], order[k:], label_sets(train))
    if not held:
        raise DataError(f"{where}: no example can be held out for evaluation without taking the "
                        "only examples of a label out of training; give an evaluation file "
                        "(data.validation_file)")
    return (train.select(sorted(rest), keep_in_memory=True),
            train.select(sorted(held), keep_in_memory=True), k - len(held))


def label_sets(ds) -> list[set] | None:
    """The labels each example shows (NER: its tags; classification: its class), in the standard
    columns; None where examples have no labels (causal LM)."""
    if "tags" in ds.column_names:
        return [set(tags) for tags in ds["tags"]]
    if "label" in ds.column_names:
        return [{label} for label in ds["label"]]
    return None


def keep_labels_trained(held: list[int], rest: list[int], labels: list[set] | None):
    if labels is None:
        return held, rest
    counts = Counter(t for i in rest for t in labels[i])
    kept, back = [], []
    for i in held:
        if all(counts[t] for t in labels[i]):
            kept.append(i)
        else:  # its label occurs nowhere in training: train on it instead
            back.append(i)
            counts.update(labels[i])
    return kept, rest + back
