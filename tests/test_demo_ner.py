"""Tests for the embedded demo NER data set (no model, fast)."""

import subprocess
import os
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from peftkit.data.demo_ner import (
    AMBIGUOUS_NAMES,
    DEFAULT_SIZES,
    DEMO_LABELS,
    demo_ner_dataset,
    generate_demo_ner,
)

SPLITS = ("train", "validation", "test")
ROOT = str(Path(__file__).resolve().parents[1])
SMALL = {"train": 600, "validation": 200, "test": 200}


@pytest.fixture(scope="module")
def data():
    return generate_demo_ner(seed=0)


def _spans(row):
    """[(type, surface)] of the entity spans in one row."""
    spans, current = [], None
    for token, tag in zip(row["tokens"], row["ner_tags"]):
        if tag.startswith("B-"):
            current = [tag[2:], [token]]
            spans.append(current)
        elif tag.startswith("I-"):
            current[1].append(token)
        else:
            current = None
    return [(etype, " ".join(tokens)) for etype, tokens in spans]


def test_labels():
    assert DEMO_LABELS == ["B-LOC", "B-MISC", "B-ORG", "B-PER",
                           "I-LOC", "I-MISC", "I-ORG", "I-PER", "O"]


def test_default_sizes_and_shape(data):
    assert list(data) == list(SPLITS)
    assert {k: len(v) for k, v in data.items()} == DEFAULT_SIZES
    for rows in data.values():
        for row in rows:
            assert set(row) == {"tokens", "ner_tags"}
            assert len(row["tokens"]) == len(row["ner_tags"])
            assert 6 <= len(row["tokens"]) <= 32
            assert all(isinstance(t, str) and t and " " not in t for t in row["tokens"])


def test_custom_sizes():
    out = generate_demo_ner(seed=3, sizes={"train": 7, "test": 0})
    assert [len(out[s]) for s in SPLITS] == [7, DEFAULT_SIZES["validation"], 0]
    with pytest.raises(ValueError):
        generate_demo_ner(sizes={"dev": 5})


def test_deterministic():
    assert generate_demo_ner(seed=1, sizes=SMALL) == generate_demo_ner(seed=1, sizes=SMALL)
    assert generate_demo_ner(seed=1, sizes=SMALL) != generate_demo_ner(seed=2, sizes=SMALL)


def test_deterministic_across_processes():
    code = ("import json; from peftkit.data.demo_ner import generate_demo_ner; "
            "print(json.dumps(generate_demo_ner(5, {'train': 50, 'validation': 5, 'test': 5})))")
    outs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": ROOT}
        outs.append(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                   text=True, check=True, env=env).stdout)
    assert outs[0] == outs[1]


def test_resizing_one_split_leaves_others():
    a = generate_demo_ner(seed=0, sizes=SMALL)
    b = generate_demo_ner(seed=0, sizes={**SMALL, "train": 10})
    assert a["test"] == b["test"] and a["train"][:10] == b["train"]


def test_tags_are_valid_iob2(data):
    for rows in data.values():
        for row in rows:
            previous = "O"
            for tag in row["ner_tags"]:
                assert tag in DEMO_LABELS
                if tag.startswith("I-"):
                    assert previous in (f"B-{tag[2:]}", tag), row
                previous = tag


def test_all_types_in_every_split(data):
    for rows in data.values():
        types = {tag[2:] for row in rows for tag in row["ner_tags"] if tag != "O"}
        assert types == {"PER", "ORG", "LOC", "MISC"}


def test_ambiguous_names_take_several_types(data):
    types = defaultdict(set)
    for row in data["train"]:
        for token, tag in zip(row["tokens"], row["ner_tags"]):
            if tag != "O":
                types[token].add(tag[2:])
    for name in ("Jordan", "Washington", "Paris", "Ford", "Amazon"):
        assert len(types[name]) >= 2, (name, types[name])
    assert all(len(types[name]) >= 2 for name in AMBIGUOUS_NAMES)


def test_ambiguous_fraction(data):
    for rows in data.values():
        share = sum(any(t in AMBIGUOUS_NAMES for t in r["tokens"]) for r in rows) / len(rows)
        assert 0.15 <= share <= 0.3, share


def test_unseen_names_in_eval_splits(data):
    seen = {surface for row in data["train"] for _, surface in _spans(row)}
    for split in ("validation", "test"):
        spans = [s for row in data[split] for s in _spans(row)]
        unseen = [s for s in spans if s[1] not in seen]
        assert len(unseen) / len(spans) > 0.1
        assert {etype for etype, _ in unseen} == {"PER", "ORG", "LOC", "MISC"}


def test_module_import_is_light():
    code = ("import sys, peftkit.data.demo_ner; "
            "print(any(m in sys.modules for m in ('torch', 'datasets', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": ROOT}).stdout.strip()
    assert out == "False"


def test_demo_ner_dataset():
    datasets = pytest.importorskip("datasets")
    dd = demo_ner_dataset(seed=0, sizes={"train": 20, "validation": 5, "test": 5})
    assert isinstance(dd, datasets.DatasetDict)
    assert list(dd) == list(SPLITS)
    assert [dd[s].num_rows for s in SPLITS] == [20, 5, 5]
    for split in SPLITS:
        assert dd[split].column_names == ["tokens", "ner_tags"]
        assert dd[split].features["ner_tags"].feature.dtype == "string"
    assert dd["train"][0] == generate_demo_ner(0, {"train": 1})["train"][0]
