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
