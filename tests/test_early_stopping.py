"""train.early_stopping_patience: training stops after N evaluations without a better validation
score and the run ends with the best checkpoint's weights (saved, tested, recorded).

The validation scores are scripted (the tiny model's real F1 moves too little to be predictable),
so the test checks peftkit's wiring: which evaluation was best, when training stopped, and that
the saved weights are the ones trained up to the best evaluation, not the last."""

from __future__ import annotations

import pytest
import torch

import peftkit.callbacks
from conftest import tiny_ner_recipe
from peftkit.errors import RecipeError
from peftkit.pipeline import run_recipe
from peftkit.recipe import build_recipe
from peftkit.rundir import load_run
from peftkit.tasks.token_classification import TokenClassification

SCRIPTED_F1 = [0.30, 0.50, 0.45, 0.40, 0.60, 0.70]  # best at the 2nd evaluation, then 2 worse


def scripted_metrics(monkeypatch):
    real = TokenClassification.compute_metrics
    scores = iter(SCRIPTED_F1)

    def compute_metrics(self, labels, recipe):
        compute = real(self, labels, recipe)
        return lambda pred: {**compute(pred), "f1": next(scores)}

    monkeypatch.setattr(TokenClassification, "compute_metrics", compute_metrics)


SENTENCES = ["John Smith visited Paris , France .", "Shares of Acme rose 3 percent in London ."]


def logits_at_every_evaluation(monkeypatch) -> list[torch.Tensor]:
    """A callback that records the model's logits on two fixed sentences at every evaluation."""
    from transformers import TrainerCallback

    seen: list[torch.Tensor] = []

    class Snapshot(TrainerCallback):
        def on_evaluate(self, args, state, control, model=None, processing_class=None, **kwargs):
            seen.append(logits(model, processing_class))

    guards = peftkit.callbacks.guard_callbacks
    monkeypatch.setattr(peftkit.callbacks, "guard_callbacks", lambda r: [*guards(r), Snapshot()])
    return seen


def logits(model, tokenizer) -> torch.Tensor:
    training = model.training
    model.eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt").to(model.device)
    with torch.no_grad():
        out = model(**batch).logits.float().cpu()
    model.train(training)
    return out


@pytest.mark.parametrize("strategy", [{"name": "lora", "r": 4},
                                      {"name": "adapter", "placement": "houlsby"}],
                         ids=["lora", "adapter"])
def test_training_stops_and_the_best_checkpoint_is_what_the_run_keeps(tiny_bert_dir, tmp_path,
                                                                    monkeypatch, strategy):
    scripted_metrics(monkeypatch)
    seen = logits_at_every_evaluation(monkeypatch)
    raw = tiny_ner_recipe(tiny_bert_dir, tmp_path / "run", strategy, epochs=6,
                          learning_rate=2e-2, early_stopping_patience=2)
    result = run_recipe(build_recipe(raw))

    steps_per_epoch = 64 // 16
    assert result["early_stopping"] == {"patience": 2, "metric": "f1", "best_value": 0.5,
                                        "best_step": 2 * steps_per_epoch, "stopped_early": True}
    assert result["train_steps"] == 4 * steps_per_epoch  # 2 evaluations after the best, then stop
    model, tokenizer, *_ = load_run(tmp_path / "run")
    reloaded = logits(model, tokenizer)
    best, last = seen[1], seen[3]
    assert torch.allclose(reloaded, best, atol=1e-5)
    assert not torch.allclose(reloaded, last, atol=1e-3)  # the last epoch's weights are not kept


def test_early_stopping_needs_evaluations(tiny_bert_dir, tmp_path):
    raw = tiny_ner_recipe(tiny_bert_dir, tmp_path / "run", early_stopping_patience=2,
                          eval_every="no")
    with pytest.raises(RecipeError) as info:
        build_recipe(raw)
    assert any("train.eval_every: epoch" in p for p in info.value.problems)
