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
    ("sequence-classification", "lora", True), ("sequence-classification", "prompt", False)])
def test_packing_applies_where_the_mask_can_be_4d(tiny_bert_dir, tmp_path, task, strategy, expected):
    raw = tiny_ner_recipe(tiny_bert_dir, tmp_path, {"name": strategy})
    raw["task"] = task
    if task == "sequence-classification":
        raw["data"]["name"] = "demo-sentiment"
    recipe = build_recipe(raw)
    model = tiny_model(causal=False)
    assert packing_applies(recipe, model) is expected
    packed = "PooledPackedTrainer" if task == "sequence-classification" else "PackedTrainer"
    assert (trainer_class(recipe, model, 0).__name__ == packed) is expected
    model.config._attn_implementation = "eager"  # eager attention is left with padded batches
    assert not packing_applies(recipe, model)
    recipe.train.packing = False
    model.config._attn_implementation = "sdpa"
    assert not packing_applies(recipe, model)


# ---------------------------------------------------------------- sequence classification

def sentences(n: int) -> list[dict]:
    """[CLS]-first sentences of random lengths 2..20 with one label each (and token types)."""
    rng = random.Random(1)
    out = []
    for _ in range(n):
        ids = [2] + [rng.randrange(5, VOCAB) for _ in range(rng.randint(1, 19))]
        out.append({"input_ids": ids, "token_type_ids": [0] * len(ids), "labels": rng.randrange(3)})
    return out


def tiny_classifier(dropout: float = 0.1):
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=3, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    return AutoModelForSequenceClassification.from_config(config)


def padded_classification(features: list[dict]) -> dict:
    width = max(len(f["input_ids"]) for f in features)
    pad = [width - len(f["input_ids"]) for f in features]
    return {"input_ids": torch.tensor([f["input_ids"] + [0] * p for f, p in zip(features, pad)]),
            "token_type_ids": torch.tensor([f["token_type_ids"] + [0] * p for f, p in zip(features, pad)]),
            "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * p
                                            for f, p in zip(features, pad)]),
            "labels": torch.tensor([f["labels"] for f in features])}


@pytest.mark.parametrize("wrap", ["full", "lora"])
def test_pooled_packed_batch_gives_the_padded_loss_and_gradients(wrap):
    """Sequence classification: several sentences share a row, each keeps its own label, and the
    loss and every gradient are the padded batch's (dropout off so both see the same function)."""
    from peftkit.pooled_packing import forward_packed

    model, features = tiny_classifier(dropout=0.0), sentences(16)
    if wrap == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["query", "value"],
                                                 task_type="SEQ_CLS"))
    packed = PackingCollator(pad_id=0, causal=False, pooled=True)(features)
    assert packed["input_ids"].shape[0] < len(features)  # examples really share rows
    assert packed["labels"].tolist() == [f["labels"] for f in features]
    grads = []
    for run in (lambda: forward_packed(model, packed), lambda: model(**padded_classification(features))):
        model.zero_grad()
        out = run()
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        grads[-1]["loss"], grads[-1]["logits"] = out.loss.detach(), out.logits.detach()
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_pooled_packing_is_checked_before_it_is_trusted():
    """A model whose head does not read the first token (Llama pools the last one) or logits that
    differ are refused with a reason; a BERT classifier passes."""
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    from peftkit.pooled_packing import mismatch

    packing, features = PackingCollator(pad_id=0, causal=False, pooled=True), sentences(8)
    bert = tiny_classifier()
    assert mismatch(bert, features, packing, padded_classification) is None
    assert bert.training  # restored after the check's eval-mode forward
    llama = AutoModelForSequenceClassification.from_config(LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, num_labels=3, pad_token_id=0))
    assert "no encoder" in mismatch(llama, features, packing, padded_classification)
    shuffled = lambda f: padded_classification(f[::-1])  # noqa: E731 - other rows, other logits
    assert "AssertionError" in mismatch(bert, features, packing, shuffled)


def test_sequence_classification_run_trains_on_packed_rows(tiny_bert_dir, tmp_path):
    """A real run trains on packed rows: less padding than the same run padded, and the plan
    (printed before training) probes the packed batch too."""
    from peftkit.pipeline import run_recipe

    def run(packing: bool):
        raw = tiny_ner_recipe(tiny_bert_dir, tmp_path / f"run-{packing}", {"name": "lora", "r": 4},
                              epochs=2, learning_rate=2e-2, packing=packing, num_threads=1)
        raw["task"] = "sequence-classification"
        raw["data"] = {"name": "demo-sentiment", "max_length": 48}
        return run_recipe(build_recipe(raw))

    packed, padded = run(True), run(False)
    assert packed["train_padding_fraction"] < padded["train_padding_fraction"]
    assert packed["plan"] and packed["plan"]["peak_memory_mb"] > 0
