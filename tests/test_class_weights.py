"""train.class_weights: balanced — the loss weighs each class by the inverse of its training
frequency, through the Trainer's compute_loss_func, and matches a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_ner_recipe
from peftkit.errors import RecipeError
from peftkit.recipe import build_recipe
from peftkit.train import balanced_weights, build_trainer, weighted_loss


def test_balanced_weights_are_inverse_frequencies_that_average_one():
    w = balanced_weights([0.9, 0.1])
    assert w == pytest.approx([1 / 1.8, 5.0])
    assert 0.9 * w[0] + 0.1 * w[1] == pytest.approx(1.0)


def test_the_weighted_loss_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, -100])  # the third is ignored
    loss = weighted_loss([0.5, 4.0])({"logits": logits}, labels)
    nll0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    nll1 = -math.log(math.e / (math.e + 1))
    assert loss.item() == pytest.approx((0.5 * nll0 + 4.0 * nll1) / 2)
    # under gradient accumulation / several processes the Trainer's item count divides instead
    assert weighted_loss([0.5, 4.0])({"logits": logits}, labels, num_items_in_batch=4).item() \
        == pytest.approx((0.5 * nll0 + 4.0 * nll1) / 4)


@pytest.mark.parametrize("task,data", [("sequence-classification", "demo-sentiment"),
                                       ("token-classification", "demo-ner")])
def test_the_trainer_trains_on_the_weighted_loss(tiny_bert_dir, tmp_path, task, data):
    from peftkit.pipeline import build

    raw = tiny_ner_recipe(tiny_bert_dir, tmp_path / "run", class_weights="balanced")
    raw["task"], raw["data"]["name"] = task, data
    recipe = build_recipe(raw)
    parts = build(recipe)
    model, _ = parts.fresh_model()
    trainer = build_trainer(recipe, model, parts.tokenizer, parts.task, parts.encoded, parts.labels,
                            tmp_path / "run", "fp32", [])
    weights = balanced_weights(parts.task.label_prior(parts.encoded["train"], len(parts.labels)))
    batch = trainer.data_collator([parts.encoded["train"][i] for i in range(8)])
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    flat = logits.reshape(-1, logits.shape[-1])
    nll = torch.nn.functional.cross_entropy(flat, batch["labels"].reshape(-1), reduction="none",
                                            ignore_index=-100)
    gold = batch["labels"].reshape(-1)
    keep = gold != -100
    expected = (torch.tensor(weights)[gold[keep]] * nll[keep]).sum() / keep.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_class_weights_are_refused_for_causal_lm(tiny_bert_dir, tmp_path):
    raw = tiny_ner_recipe(tiny_bert_dir, tmp_path / "run", class_weights="balanced")
    raw["task"], raw["data"]["name"] = "causal-lm", "demo-gen"
    with pytest.raises(RecipeError) as info:
        build_recipe(raw)
    assert any(p.startswith("train.class_weights:") for p in info.value.problems)
