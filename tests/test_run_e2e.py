"""`peftkit run` end to end through the real CLI: run folder contents, and reloading the saved
adapter (or model) reproduces the run's own test metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import tiny_ner_recipe

RESULT_FIELDS = {"test", "metric", "trainable_params", "total_params", "trainable_percent",
                 "train_seconds", "train_tokens_per_second", "peak_memory_mb", "adapter_bytes",
                 "versions", "seed", "strategy", "task", "model", "dataset"}


def run_cli(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "peftkit", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


def evaluate_reloaded(run_dir):
    """Test metrics of the model rebuilt from the run folder alone."""
    from transformers import Trainer, TrainingArguments

    from peftkit.data.readers import load_raw
    from peftkit.rundir import load_run

    model, tokenizer, recipe, labels, task = load_run(run_dir)
    encoded, _ = task.encode(load_raw(recipe, task), tokenizer, recipe, labels)
    args = TrainingArguments(str(run_dir / "eval"), report_to="none", use_cpu=True,
                             per_device_eval_batch_size=recipe.train.eval_batch_size)
    trainer = Trainer(model=model, args=args,
                      data_collator=task.collator(tokenizer),
                      compute_metrics=task.compute_metrics(labels, recipe),
                      preprocess_logits_for_metrics=task.preprocess_logits)
    return trainer.evaluate(encoded["test"], metric_key_prefix="test")


@pytest.mark.parametrize("strategy", [{"name": "lora", "r": 4}, {"name": "full"}], ids=["lora", "full"])
def test_cli_run_writes_a_self_describing_folder_that_reloads(strategy, tiny_bert_dir, write_recipe,
                                                              tmp_path):
    run_dir = tmp_path / "run"
    recipe = write_recipe(tiny_ner_recipe(tiny_bert_dir, run_dir, strategy, learning_rate=1e-2))
    proc = run_cli("run", str(recipe), "train.epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trainable params" in proc.stdout and "test f1" in proc.stdout

    weights = run_dir / ("model" if strategy["name"] == "full" else "adapter")
    assert (weights / ("model.safetensors" if strategy["name"] == "full"
                       else "adapter_model.safetensors")).is_file()
    assert (weights / "tokenizer.json").is_file()
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert saved["train"]["epochs"] == 2.0  # the resolved recipe, overrides applied
    assert saved["model"]["name"] == str(tiny_bert_dir)
    labels = json.loads((run_dir / "labels.json").read_text())
    assert labels[0] == "O" and "B-PER" in labels
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in s for s in steps) and any("eval_f1" in s for s in steps)

    result = json.loads((run_dir / "result.json").read_text())
    assert RESULT_FIELDS <= set(result)
    assert 0 < result["trainable_params"] <= result["total_params"]
    if strategy["name"] == "lora":
        assert result["trainable_percent"] < 50
    else:
        assert result["trainable_params"] == result["total_params"]

    again = evaluate_reloaded(run_dir)
    for key in ("f1", "precision", "recall", "token_accuracy"):
        assert again[f"test_{key}"] == pytest.approx(result["test"][key], abs=1e-9)
    assert again["test_loss"] == pytest.approx(result["test"]["loss"], rel=1e-5)


def test_a_finished_run_is_not_overwritten(tiny_bert_dir, write_recipe, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "result.json").write_text('{"keep": true}')
    recipe = write_recipe(tiny_ner_recipe(tiny_bert_dir, run_dir))
    proc = run_cli("run", str(recipe))
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads((run_dir / "result.json").read_text()) == {"keep": True}


@pytest.mark.slow
def test_real_minilm_lora_run_on_demo_data(tmp_path):
    """The packaged encoder on a slice of the embedded demo set learns something real."""
    proc = run_cli("run", "recipes/lora_ner.yaml", "data.max_train_samples=300",
                   "data.max_eval_samples=100", "data.max_test_samples=100", "train.epochs=2",
                   # 20 steps are too few for learning_rate: auto to search within 15% of the run
                   # (it would fall back to LoRA's default 1e-3): the recipe's measured fixed rate
                   "train.learning_rate=3e-3",
                   f"output.dir={tmp_path / 'run'}", cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["model"] == "minilm-l6" and result["trainable_percent"] < 1.0
    assert result["test"]["f1"] > 0.15  # an untrained head scores ~0
