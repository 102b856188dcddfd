"""Evaluation reads the split longest example first (peftkit/eval_order.py): every example once,
batches of non-increasing width, and the same metrics as the split's own order."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_ner_recipe
from peftkit.recipe import build_recipe
from peftkit.train import build_trainer

TIMING = ("loss", "runtime", "samples_per_second", "steps_per_second", "preparation_time")


def tiny_trainer(tiny_bert_dir, tmp_path, task, data, probe=False):
    from peftkit.pipeline import build

    raw = tiny_ner_recipe(tiny_bert_dir, tmp_path / "run", eval_batch_size=4)
    raw["task"], raw["data"]["name"] = task, data
    raw["data"]["max_test_samples"] = 24
    parts = build(build_recipe(raw))
    model, _ = parts.fresh_model()
    torch.manual_seed(0)
    with torch.no_grad():  # a head that predicts every class somewhere, so a mismatch would show
        for name, param in model.named_parameters():
            if "classifier" in name and "lora" not in name:
                param.normal_(0.0, 3.0)
    trainer = build_trainer(parts.recipe, model, parts.tokenizer, parts.task, parts.encoded,
                            parts.labels, tmp_path / "run", "fp32", [], probe=probe)
    return trainer, parts.encoded["test"]


@pytest.mark.parametrize("task,data", [("token-classification", "demo-ner"),
                                       ("sequence-classification", "demo-sentiment")])
def test_evaluation_batches_run_longest_first_over_every_example(tiny_bert_dir, tmp_path, task, data):
    trainer, test = tiny_trainer(tiny_bert_dir, tmp_path, task, data)
    lengths = [len(ids) for ids in test["input_ids"]]
    assert len(set(lengths)) > 3  # the split's own order is not sorted already
    assert lengths != sorted(lengths, reverse=True)
    batches = list(trainer.get_eval_dataloader(test).batch_sampler)  # indices, batch by batch
    order = [i for batch in batches for i in batch]
    assert sorted(order) == list(range(len(test)))
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
    widths = [batch["input_ids"].shape[1] for batch in trainer.get_eval_dataloader(test)]
    assert widths == sorted(widths, reverse=True) and widths[0] == max(lengths)


@pytest.mark.parametrize("task,data", [("token-classification", "demo-ner"),
                                       ("sequence-classification", "demo-sentiment")])
def test_metrics_equal_those_of_the_splits_own_order(tiny_bert_dir, tmp_path, task, data):
    trainer, test = tiny_trainer(tiny_bert_dir, tmp_path, task, data)
    longest_first = trainer.evaluate(test, metric_key_prefix="test")
    trainer._get_eval_sampler = lambda dataset: torch.utils.data.SequentialSampler(dataset)
    in_order = trainer.evaluate(test, metric_key_prefix="test")
    scores = {k: v for k, v in in_order.items() if not k.endswith(TIMING)}
    assert 0 < scores.get("test_f1", scores.get("test_accuracy")) < 1, scores
    assert {k: longest_first[k] for k in scores} == pytest.approx(scores, abs=1e-9)


def test_learning_rate_probes_keep_the_splits_order(tiny_bert_dir, tmp_path):
    """lr_search's plain loss is the Trainer's eval_loss, a mean of per-batch means: its probes
    evaluate in the split's own order, as when `auto`'s published picks were measured."""
    trainer, test = tiny_trainer(tiny_bert_dir, tmp_path, "token-classification", "demo-ner",
                                 probe=True)
    order = [i for batch in trainer.get_eval_dataloader(test).batch_sampler for i in batch]
    assert order == list(range(len(test)))
