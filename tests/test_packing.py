"""Packed batches train on exactly what the padded batch would: same per-token outputs, same loss."""

from __future__ import annotations

import random

import pytest
import torch

from peftkit.packing import PackingCollator, first_fit, packing_applies, trainer_class
from peftkit.recipe import build_recipe
from conftest import tiny_ner_recipe

VOCAB = 60


def examples(n: int, causal: bool) -> list[dict]:
    """Random lengths 3..20; token classification labels per token, causal-LM a 2-token prompt."""
    rng = random.Random(0)
    out = []
    for _ in range(n):
        ids = [rng.randrange(5, VOCAB) for _ in range(rng.randint(3, 20))]
        if causal:
            out.append({"input_ids": ids, "labels": [-100, -100] + ids[2:]})
        else:
            out.append({"input_ids": ids, "labels": [rng.randrange(3) for _ in ids],
                        "token_type_ids": [0] * len(ids)})
    return out


def tiny_model(causal: bool):
    from transformers import (AutoModelForCausalLM, AutoModelForTokenClassification, BertConfig,
                              LlamaConfig)

    torch.manual_seed(0)
    if causal:
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64)
        return AutoModelForCausalLM.from_config(config).eval()
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=3)
    return AutoModelForTokenClassification.from_config(config).eval()


def padded(features: list[dict]) -> dict:
    """The ordinary right-padded batch of the same examples."""
    width = max(len(f["input_ids"]) for f in features)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for f in features:
        pad = width - len(f["input_ids"])
        batch["input_ids"].append(f["input_ids"] + [0] * pad)
        batch["attention_mask"].append([1] * len(f["input_ids"]) + [0] * pad)
        batch["labels"].append(f["labels"] + [-100] * pad)
    return {k: torch.tensor(v) for k, v in batch.items()}


@pytest.mark.parametrize("causal", [False, True], ids=["bert-token-cls", "llama-causal-lm"])
def test_packed_batch_matches_padded_batch(causal):
    model, features = tiny_model(causal), examples(12, causal)
    packed = PackingCollator(pad_id=0, causal=causal)(features)
    rows, _ = first_fit([len(f["input_ids"]) for f in features])
    assert packed["input_ids"].shape[0] == len(rows) < len(features)  # examples really share rows
    with torch.no_grad():
        out_packed, out_padded = model(**packed), model(**padded(features))
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            n = len(features[i]["input_ids"])
            torch.testing.assert_close(out_packed.logits[r, start:start + n], out_padded.logits[i, :n],
                                       atol=1e-5, rtol=1e-4)
            start += n
    # the same labelled tokens, so the same mean loss (decoders: no example predicts the next's first)
    torch.testing.assert_close(out_packed.loss, out_padded.loss, atol=1e-5, rtol=1e-5)


def test_padding_slots_attend_somewhere():
    """A padding slot whose attention row is all False would give NaN in SDPA."""
    mask = PackingCollator(pad_id=0, causal=True)(examples(5, True))["attention_mask"]
    assert mask.shape[1] == 1 and mask.any(dim=-1).all()


@pytest.mark.parametrize("task,strategy,expected", [
    ("token-classification", "lora", True), ("token-classification", "adapter", True),
    ("token-classification", "prefix", False), ("token-classification", "prompt", False),
    ("sequence-classification", "lora", False)])
def test_packing_applies_where_the_mask_can_be_4d(tiny_bert_dir, tmp_path, task, strategy, expected):
    raw = tiny_ner_recipe(tiny_bert_dir, tmp_path, {"name": strategy})
    raw["task"] = task
    if task == "sequence-classification":
        raw["data"]["name"] = "demo-sentiment"
    recipe = build_recipe(raw)
    model = tiny_model(causal=False)
    assert packing_applies(recipe, model) is expected
    assert (trainer_class(recipe, model, 0).__name__ == "PackedTrainer") is expected
    model.config._attn_implementation = "eager"  # eager attention is left with padded batches
    assert not packing_applies(recipe, model)
    recipe.train.packing = False
    model.config._attn_implementation = "sdpa"
    assert not packing_applies(recipe, model)
