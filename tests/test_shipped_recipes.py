"""The shipped recipes as package data: listed, found by name, copied out; an empty recipe file
is refused; `validate` takes overrides the way `run` does."""

from __future__ import annotations

import zipfile

import pytest
from click.testing import CliRunner

from peftkit import shipped_recipes
from peftkit.cli import main
from peftkit.errors import RecipeError
from peftkit.recipe import build_recipe, load_recipe, read_yaml


def test_every_shipped_recipe_is_listed_with_a_description_and_validates():
    names = shipped_recipes.names()
    assert {"lora_ner", "conll2003/lora", "sst2/full", "e2e/prefix"} <= set(names)
    out = CliRunner().invoke(main, ["recipes"]).output.splitlines()
    assert len(out) == len(names)
    for name, line in zip(names, out):
        assert line.startswith(name) and len(line.split(None, 1)[1]) > 20, line
        build_recipe(read_yaml(str(shipped_recipes.path_of(name))), check_paths=False)


def test_copy_writes_the_recipe_and_refuses_to_replace_a_file(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["recipes", "copy", "conll2003/lora", str(tmp_path)])
    assert res.exit_code == 0, res.output
    copied = tmp_path / "lora.yaml"
    assert copied.read_text() == shipped_recipes.path_of("conll2003/lora").read_text()
    again = runner.invoke(main, ["recipes", "copy", "conll2003/lora", str(copied)])
    assert again.exit_code == 2 and "--force" in again.output and "Traceback" not in again.output
    typo = runner.invoke(main, ["recipes", "copy", "lora_nerr"])
    assert typo.exit_code == 2 and "did you mean lora_ner" in typo.output


def test_a_shipped_recipe_runs_by_name_when_no_such_file_is_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("lora_ner", ["train.epochs=1"])
    assert recipe.source.endswith("peftkit/recipes/lora_ner.yaml") and recipe.train.epochs == 1


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_an_empty_recipe_file_is_an_error(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert "the recipe is empty" in str(info.value) and "peftkit recipes copy" in str(info.value)
    res = CliRunner().invoke(main, ["run", str(path)])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_validate_takes_overrides_as_run_does(tmp_path):
    path = shipped_recipes.path_of("lora_ner")
    runner = CliRunner()
    ok = runner.invoke(main, ["validate", "--no-data", str(path), "train.epochs=1"])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(main, ["validate", "--no-data", str(path), "train.epochs=-1"])
    assert bad.exit_code == 2 and "train.epochs" in bad.output
    old_style = runner.invoke(main, ["validate", "--no-data", str(path), "-o", "train.epochs=-1"])
    assert old_style.exit_code == 2


def test_the_wheel_ships_the_recipes(tmp_path):
    """Built as pip would build it: the recipes are inside, so `peftkit recipes` works outside
    the repository."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(root)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("peftkit-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    for name in shipped_recipes.names():
        assert f"peftkit/recipes/{name}.yaml" in inside, name


def test_the_key_reference_matches_the_schema():
    from pathlib import Path

    from peftkit.recipe_reference import reference

    doc = Path(__file__).resolve().parents[1] / "docs" / "recipe.md"
    assert doc.read_text() == reference(), "regenerate: python -m peftkit.recipe_reference > docs/recipe.md"
    assert "| `early_stopping_patience` |" in doc.read_text()
