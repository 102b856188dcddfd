"""Values checked against the base model at validation, from its config.json and a meta-device
model (no weights loaded), and overrides that used to mean something silently (issue 17, audit
items 7 and 8). Each bad input must exit 2 with one clear line and no traceback."""

from __future__ import annotations

import shutil

import pytest
import yaml
from click.testing import CliRunner

from peftkit.cli import main


@pytest.fixture
def recipe(tmp_path, tiny_bert_dir):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "task": "token-classification", "model": {"name": str(tiny_bert_dir)},
        "strategy": {"name": "lora", "r": 4}, "data": {"name": "demo-ner", "max_length": 32}}))
    return path


def validate(recipe, *overrides):
    result = CliRunner().invoke(main, ["validate", "--no-data", str(recipe), *overrides])
    assert "Traceback" not in result.output
    return result


# (override(s), what the one line must say); the tiny BERT: hidden 32, 2 layers, 128 positions
BAD = [
    (["strategy.r=100000"], "strategy.r: 100000 is larger than the model's hidden size 32"),
    (["strategy.alpha=1e30"], "strategy.alpha: '1e30' is out of range"),
    (["strategy.target_modules=[querry]"], "'querry' matches no module of the model (did you mean 'query'?)"),
    (["strategy.target_modules=nothing.*"], "the pattern 'nothing.*' matches no module"),
    (["strategy.target_modules=[]"], "strategy.target_modules: an empty list names nothing"),
    (["data.labels=[]"], "data.labels: an empty list names nothing"),
    (["data.max_length=100000"], "data.max_length: 100000 is more than the model's 128 positions"),
    (["eval.metric=bleu"], "eval.metric: token-classification reports no 'bleu'"),
    (["train=null"], "would silently reset the whole train section"),
    (["strategy=null"], "would silently reset the whole strategy section"),
    (["strategy.name=adapter", "strategy.leave_out=[0,1]"], "leaves out every one of the model's 2 layers"),
    (["strategy.name=adapter", "strategy.leave_out=[5]"], "strategy.leave_out: [5] are not layers"),
    (["strategy.name=adapter", "strategy.bottleneck_size=64"], "wider than the model's hidden size 32"),
    (["strategy.name=adalora", "strategy.init_r=64", "strategy.target_r=8"], "strategy.init_r: 64 is larger"),
    (["train.batch_size=1e9"], "write an integer as digits"),
]


@pytest.mark.parametrize("overrides,says", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_value_that_does_not_fit_the_model_is_refused_at_validation(recipe, overrides, says):
    result = validate(recipe, *overrides)
    assert result.exit_code == 2, result.output
    assert says in result.output


def test_values_that_fit_pass(recipe):
    result = validate(recipe, "strategy.r=32", "strategy.target_modules=[query,value]",
                      "data.max_length=128", "eval.metric=f1_PER")
    assert result.exit_code == 0, result.output


def test_switching_strategy_from_the_command_line_replaces_the_section(recipe):
    assert validate(recipe, "strategy.name=full").exit_code == 0
    result = validate(recipe, "strategy.name=ia3", "strategy.target_modules=[query]")
    assert result.exit_code == 0, result.output  # the new section's keys apply on top


def test_a_bench_with_a_metric_its_task_lacks_is_refused_before_running(tmp_path, recipe):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"base": str(recipe), "variants": [
        {"name": "a", "eval": {"metric": "accuracy"}}]}))
    result = CliRunner().invoke(main, ["bench", str(suite), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2, result.output
    assert "reports no 'accuracy'" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("damage,says", [
    ("config", "config.json cannot be read as JSON"),
    ("weights", "has a config.json but no weight file"),
    ("gguf", "is not a GGUF file"),
    ("file", "is a file, not a model folder"),
])
def test_a_damaged_model_folder_is_named_at_validation(tmp_path, recipe, tiny_bert_dir, damage, says):
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    if damage == "config":
        (model / "config.json").write_text("{bad json")
    elif damage == "weights":
        (model / "model.safetensors").unlink()
    elif damage == "gguf":
        model = tmp_path / "m.gguf"
        model.write_bytes(b"\x00garbage" * 100)
    else:
        model = model / "tokenizer.json"
    result = validate(recipe, f"model.name={model}")
    assert result.exit_code == 2, result.output
    assert says in result.output


def test_random_bytes_are_called_binary_not_latin_1(tmp_path, recipe):
    import random

    data = tmp_path / "noise.conll"
    rng = random.Random(0)
    data.write_bytes(bytes(rng.randrange(256) for _ in range(3000)))
    result = CliRunner().invoke(main, ["validate", str(recipe), f"data.name={data}"])
    assert result.exit_code == 2, result.output
    assert "a binary file, not text" in result.output and "Latin-1" not in result.output
