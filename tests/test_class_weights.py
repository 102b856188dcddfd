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


def test_sqrt_weights_are_inverse_square_roots_that_average_one():
    w = balanced_weights([0.9, 0.1], power=0.5)
    assert w[1] / w[0] == pytest.approx(3.0)                      # sqrt(0.9 / 0.1)
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


def test_auto_weighs_classes_only_when_the_task_says_they_are_lopsided():
    from peftkit.tasks import get_task

    seq, ner = get_task("sequence-classification"), get_task("token-classification")
    assert seq.auto_class_weights([0.9, 0.1]) == "sqrt"
    assert seq.auto_class_weights([0.8, 0.2]) == "sqrt"            # 4x: the threshold itself
    assert seq.auto_class_weights([0.55, 0.45]) == "none"
    assert seq.auto_class_weights([0.3, 0.3, 0.25, 0.15]) == "none"  # 2x
    assert ner.auto_class_weights([0.95, 0.01, 0.04]) == "none"     # O always dominates NER
    assert seq.auto_class_weights([0.9, 0.1], "balanced") == "balanced"  # the strategy's strength
    assert seq.auto_class_weights([0.55, 0.45], "balanced") == "none"


@pytest.mark.parametrize("strategy,expected", [({"name": "lora", "r": 4}, "sqrt"),
                                               ({"name": "prompt", "num_virtual_tokens": 4}, "balanced")])
def test_auto_weighs_lopsided_classes_as_strongly_as_the_strategy_needs(tiny_bert_dir, tmp_path,
                                                                        strategy, expected):
    """Prompt tuning predicted one class at 90/10 with sqrt weights (RESULTS.md#robustness)."""
    from peftkit.pipeline import settle_class_weights
    from peftkit.tasks import get_task

    raw = tiny_ner_recipe(tiny_bert_dir, tmp_path / "run", strategy=strategy)
    raw["task"], raw["data"] = "sequence-classification", {"name": "demo-sentiment"}
    recipe = build_recipe(raw)
    task = get_task("sequence-classification")
    assert settle_class_weights(recipe, task, [0.9, 0.1]).train.class_weights == expected
    assert settle_class_weights(recipe, task, [0.5, 0.5]).train.class_weights == "none"


def write_split(path, n_pos: int, n_neg: int) -> None:
    import json

    rows = [{"text": f"good film number {i}", "label": "positive"} for i in range(n_pos)]
    rows += [{"text": f"bad film number {i}", "label": "negative"} for i in range(n_neg)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("counts,expected", [((36, 4), "sqrt"), ((20, 20), "none")])
def test_auto_is_settled_on_the_training_split_and_reaches_the_loss(tiny_bert_dir, tmp_path,
                                                                     counts, expected):
    from peftkit.pipeline import build

    data = tmp_path / "data"
    data.mkdir()
    write_split(data / "train.jsonl", *counts)
    for split in ("validation", "test"):
        write_split(data / f"{split}.jsonl", 4, 4)
    raw = tiny_ner_recipe(tiny_bert_dir, tmp_path / "run")   # class_weights left at its default
    raw["task"] = "sequence-classification"
    raw["data"] = {"name": str(data), "max_length": 16}
    parts = build(build_recipe(raw))
    assert parts.recipe.train.class_weights == expected
    assert parts.data_stats["class_weights"] == expected
    model, _ = parts.fresh_model()
    trainer = build_trainer(parts.recipe, model, parts.tokenizer, parts.task, parts.encoded,
                            parts.labels, tmp_path / "run", "fp32", [])
    assert (trainer.compute_loss_func is not None) == (expected != "none")
