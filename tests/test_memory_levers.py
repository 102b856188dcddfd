"""Memory levers of full fine-tuning: bitsandbytes' 8-bit AdamW as train.optimizer (the Trainer
builds it), on CPU too. (What each lever saves is measured in benchmarks/memory.py, not here.)"""

from __future__ import annotations

import pytest

from peftkit.recipe import build_recipe
from peftkit.train import OPTIMIZERS, training_arguments
from conftest import tiny_ner_recipe


@pytest.mark.parametrize("choice, optim", [("adamw", "adamw_torch_fused"), ("adamw_8bit", "adamw_bnb_8bit"),
                                           ("paged_adamw_8bit", "paged_adamw_8bit")])
def test_optimizer_choice_reaches_the_trainer(tiny_bert_dir, tmp_path, choice, optim):
    recipe = build_recipe(tiny_ner_recipe(tiny_bert_dir, tmp_path, optimizer=choice))
    assert training_arguments(recipe, tmp_path, "fp32").optim.value == optim == OPTIMIZERS[choice]


def test_full_fine_tuning_trains_with_8bit_adamw(tiny_bert_dir, tmp_path):
    import bitsandbytes as bnb
    from transformers import TrainerCallback

    from peftkit.pipeline import run_recipe

    seen = []

    class Optimizer(TrainerCallback):
        def on_train_end(self, args, state, control, optimizer=None, **kwargs):
            inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
            seen.append((type(inner), {k for s in inner.state.values() for k in s}))

    recipe = build_recipe(tiny_ner_recipe(tiny_bert_dir, tmp_path / "run", {"name": "full"},
                                          optimizer="adamw_8bit", max_steps=2, eval_every="no"))
    result = run_recipe(recipe, callbacks=(Optimizer(),))
    assert result["train_steps"] == 2
    kind, state_keys = seen[0]
    # bitsandbytes' optimizer with its states (8-bit from 4,096 elements on; the tiny BERT's
    # matrices are smaller, and the Trainer keeps embeddings in 32 bits)
    assert issubclass(kind, bnb.optim.optimizer.Optimizer2State) and kind.__module__.startswith("bitsandbytes")
    assert {"state1", "state2"} <= state_keys


def test_freed_memory_is_given_back_before_every_evaluation(tiny_bert_dir, tmp_path, monkeypatch):
    """A causal LM's evaluation maps its logits on top of whatever heap the training steps left
    (peftkit/freed_memory.py): the heap is trimmed before training and before each evaluation."""
    from transformers import TrainerCallback

    from peftkit import freed_memory
    from peftkit.pipeline import run_recipe

    freed_memory.release_freed_memory()  # the real call works on this platform
    events = []
    monkeypatch.setattr(freed_memory, "release_freed_memory", lambda: events.append("release"))

    class Evaluations(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            events.append("train")

        def on_evaluate(self, args, state, control, **kwargs):
            events.append("evaluate")

    recipe = build_recipe(tiny_ner_recipe(tiny_bert_dir, tmp_path / "run", max_steps=4, eval_every="steps",
                                          eval_steps=2))
    run_recipe(recipe, callbacks=(Evaluations(),))
    evaluations = [i for i, e in enumerate(events) if e == "evaluate"]
    assert len(evaluations) >= 3  # steps 2 and 4, then test
    assert all(events[i - 1] == "release" for i in evaluations)
    assert events[events.index("train") + 1] == "release"
