"""Recipe loading and validation: every shipped recipe is valid; bad ones name the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from peftkit.cli import main
from peftkit.errors import RecipeError
from peftkit.recipe import build_recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_every_shipped_recipe_validates_and_opens_with_its_command(path):
    if "accelerate" in path.parts:
        pytest.skip("accelerate launcher configs are not recipes")
    load_recipe(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and "peftkit" in first, f"{path} must open with its command"


def problems_of(raw: dict, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        build_recipe(raw, list(overrides))
    return info.value.problems


def test_unknown_key_gives_dotted_path_and_did_you_mean():
    (p,) = problems_of({"train": {"learning_rat": 1e-3}})
    assert p.startswith("train.learning_rat: unknown key") and "did you mean 'learning_rate'" in p


def test_misspelt_section():
    (p,) = problems_of({"trian": {"epochs": 1}})
    assert p.startswith("trian: unknown key") and "'train'" in p


def test_all_problems_reported_at_once():
    probs = problems_of({"train": {"epochs": "three", "learning_rate": -1, "precision": "fp8"},
                         "strategy": {"name": "lora", "rank": 4}})
    joined = "\n".join(probs)
    assert len(probs) == 4
    assert "train.epochs: expected a number, got 'three'" in joined
    assert "train.learning_rate: -1 is out of range; allowed > 0" in joined
    assert "train.precision: 'fp8' is not allowed; choose one of auto, fp32, bf16, fp16" in joined
    assert "strategy.rank: unknown key" in joined


def test_strategy_keys_are_checked_against_that_strategy():
    (p,) = problems_of({"strategy": {"name": "full", "r": 8}})
    assert p.startswith("strategy.r: unknown key")
    (p,) = problems_of({"strategy": {"name": "lorra"}})
    assert "did you mean 'lora'" in p


def test_overrides_are_parsed_as_yaml_and_checked():
    recipe = build_recipe({}, ["strategy.r=16", "train.epochs=1", "train.report_to=[tensorboard]"])
    assert recipe.strategy.r == 16 and recipe.train.epochs == 1.0
    assert recipe.train.report_to == ["tensorboard"]
    assert "train.batch_size: expected an integer" in problems_of({}, ["train.batch_size=big"])[0]
    assert "expected dotted.key=value" in problems_of({}, ["train.epochs"])[0]


def test_scientific_notation_learning_rate_reads_as_float():
    assert build_recipe({"train": {"learning_rate": "5e-4"}}).train.learning_rate == 5e-4


def test_full_with_quantized_base_is_rejected():
    (p,) = problems_of({"strategy": "full", "model": {"quantization": "8bit"}})
    assert "full cannot train a 8bit base" in p


def test_unknown_model_lists_aliases(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (p,) = problems_of({"model": {"name": "no-such-model-xyz"}})
    assert p.startswith("model.name:") and "minilm-l6" in p and "smollm2-135m" in p


def test_missing_data_folder(tmp_path):
    (p,) = problems_of({"data": {"name": str(tmp_path / "nope")}})
    assert p.startswith("data.name:") and "does not exist" in p


def test_resolved_recipe_round_trips():
    recipe = build_recipe({"strategy": {"name": "lora", "r": 4}}, ["train.epochs=2"])
    again = build_recipe(recipe.to_dict())
    assert again.to_dict() == recipe.to_dict()


def test_relative_paths_resolve_against_the_recipe_file(tmp_path, tiny_bert_dir, monkeypatch):
    import shutil

    shutil.copytree(tiny_bert_dir, tmp_path / "models" / "tiny")
    (tmp_path / "recipes").mkdir()
    path = tmp_path / "recipes" / "r.yaml"
    path.write_text("model: {name: ../models/tiny}\n")
    monkeypatch.chdir("/")
    assert load_recipe(path).resolve_path("../models/tiny") == tmp_path / "recipes" / "../models/tiny"


BAD = {
    "unknown key": ("train: {epocs: 1}\n", "train.epocs: unknown key (did you mean 'epochs'?)"),
    "bad yaml": ("train: {epochs: 1\n", "invalid YAML"),
    "not a mapping": ("- a\n- b\n", "top level must be a mapping"),
    "wrong type": ("train: {batch_size: 2.5}\n", "train.batch_size: expected an integer"),
    "negative lr": ("train: {learning_rate: -0.1}\n", "train.learning_rate: -0.1 is out of range"),
    "bad task": ("task: ner\n", "task: 'ner' is not allowed"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_cli_validate_bad_recipe_exit_2_no_traceback(case, tmp_path):
    text, expected = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert expected in result.output
    assert "Traceback" not in result.output and len(result.output.splitlines()) < 25


def test_cli_run_bad_recipe_exits_2_before_loading_anything(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("strategy: {name: lora, r: 0}\n")
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 2 and "strategy.r: 0 is out of range; allowed >= 1" in result.output


def test_model_and_data_are_resolved_once_per_run(monkeypatch):
    """Validation looks model.name and data.name up; the run's later steps reuse what it found."""
    from peftkit import models_registry, pipeline
    from peftkit.data import registry
    from peftkit.data.readers import role_sources
    from peftkit.models import source_of

    calls = {"model": 0, "data": 0}

    def counting(kind, fn):
        def wrapped(*args, **kwargs):
            calls[kind] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models_registry, "resolve_model", counting("model", models_registry.resolve_model))
    monkeypatch.setattr(registry, "resolve_data", counting("data", registry.resolve_data))
    recipe = build_recipe({"task": "token-classification", "model": {"name": "org/some-encoder"},
                           "data": {"name": "demo-ner"}, "strategy": {"name": "lora"}}, source=None)
    run = pipeline.absolute_paths(recipe)
    assert source_of(run).kind == "hub" and role_sources(run)["train"] == "demo-ner:train"
    assert calls == {"model": 1, "data": 1}
    assert run.strategy_impl is recipe.strategy_impl


def test_report_to_knows_every_integration_the_trainer_has():
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    from peftkit.integrations import REPORTERS

    assert set(REPORTERS) == set(INTEGRATION_TO_CALLBACK)


def test_report_to_an_integration_that_is_not_installed_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    (p,) = problems_of({"train": {"report_to": ["wandb"]}})
    assert p == ("train.report_to: wandb is not installed here; pip install 'peftkit[wandb]', "
                 "or leave wandb out")
    assert build_recipe({"train": {"report_to": ["kubeflow"]}})  # no package: an env variable
