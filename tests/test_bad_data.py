"""Bad input through the CLI: malformed recipes (tests/bad_recipes/) and malformed data files.
Each must exit 2 with one screen naming the file and line, row or column, and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from peftkit.cli import main

BAD_RECIPES = sorted((Path(__file__).parent / "bad_recipes").glob("*.yaml"))


def header(path: Path, key: str) -> list[str]:
    lines = path.read_bytes().decode("utf-8", "replace").splitlines()
    return [line.split(":", 1)[1].strip() for line in lines if line.startswith(f"# {key}:")]


def assert_clean_failure(result, *expected: str) -> str:
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert len(out.splitlines()) <= 25, f"more than one screen:\n{out}"
    for text in expected:
        assert text in out, f"{text!r} not in:\n{out}"
    return out


@pytest.mark.parametrize("path", BAD_RECIPES, ids=lambda p: p.stem)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_recipe_is_refused_with_its_message(path, command, monkeypatch, tmp_path):
    expected = header(path, "expect")
    assert expected, f"{path.name} needs an '# expect:' line"
    overrides = " ".join(header(path, "args")).split()
    monkeypatch.chdir(tmp_path)  # paths must resolve against the recipe file, not the cwd
    if command == "validate":
        args = ["validate", str(path), *[x for o in overrides for x in ("-o", o)]]
    else:
        args = ["run", str(path), *overrides, "--out", str(tmp_path / "run")]
    assert_clean_failure(CliRunner().invoke(main, args), *expected)
    assert not (tmp_path / "run").exists(), "a refused recipe must not create a run folder"


def test_missing_recipe_file(tmp_path):
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "nope.yaml")])
    assert_clean_failure(result, "file not found", "nope.yaml")


# ---------------------------------------------------------------- data files

NER_OK = "EU B-ORG\nrejects O\n\nPeter B-PER\nBlackburn I-PER\n"


@pytest.fixture
def run_data(tmp_path, tiny_bert_dir):
    """run_data(task, files, **data) -> CliRunner result of `peftkit run` on a data folder."""

    def run(task: str, files: dict[str, str | bytes], **data):
        folder = tmp_path / "data"
        folder.mkdir(exist_ok=True)
        for name, content in files.items():
            target = folder / name
            target.write_bytes(content if isinstance(content, bytes) else content.encode())
        recipe = {"task": task, "model": {"name": str(tiny_bert_dir)},
                  "data": {"name": "data", "max_length": 16, **data},
                  "train": {"max_steps": 1, "batch_size": 2, "precision": "fp32", "num_threads": 1},
                  "output": {"dir": str(tmp_path / "run")}}
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return CliRunner().invoke(main, ["run", str(path), "--overwrite"])

    return run


CONLL_CASES = {
    "wrong column count": ("EU B-ORG\nrejects O extra\n", ["validation.txt, line 2", "3 columns"]),
    "one column": ("EU\nrejects O\n", ["validation.txt, line 1", "one column"]),
    "tag not IOB": ("EU B-ORG\nrejects PER\n", ["validation.txt, line 2", "'PER' is not IOB"]),
    "tag never trained": ("EU B-MISC\nrejects O\n", ["never uses", "B-MISC"]),
    "empty file": ("", ["validation.txt: the file is empty"]),
    "no sentences": ("-DOCSTART- -X- O O\n\n\n", ["validation.txt) has no examples",
                                                  "data.eval_split"]),
    "latin-1 byte": (b"EU B-ORG\nr\xe9jects O\n", ["validation.txt, line 2", "0xe9 is not UTF-8",
                                                   "iconv"]),
}


@pytest.mark.parametrize("case", CONLL_CASES)
def test_bad_conll_file(case, run_data):
    content, expected = CONLL_CASES[case]
    result = run_data("token-classification", {"train.txt": NER_OK, "test.txt": NER_OK,
                                               "validation.txt": content})
    assert_clean_failure(result, *expected)


JSONL_CASES = {
    "malformed line": ('{"tokens": ["EU"], "ner_tags": ["O"]}\n{"tokens": ["EU"], "ner_tags": \n',
                       ["validation.jsonl, line 2: not valid JSON"]),
    "not an object": ('["EU", "O"]\n', ["validation.jsonl, line 1: expected a JSON object"]),
    "missing column": ('{"words": ["EU"], "ner_tags": ["O"]}\n',
                       ["column 'tokens' missing", "data.tokens_column"]),
    "length mismatch": ('{"tokens": ["EU"], "ner_tags": ["O"]}\n'
                        '{"tokens": ["EU", "x"], "ner_tags": ["O"]}\n',
                        ["validation.jsonl, row 2", "2 words in 'tokens' but 1 tags"]),
    "numeric tags": ('{"tokens": ["EU"], "ner_tags": [3]}\n', ["row 1", "not a string"]),
    "null tags": ('{"tokens": ["EU"], "ner_tags": ["O"]}\n{"tokens": ["EU"]}\n',
                  ["row 2", "'ner_tags' must be a list of tags"]),
    "non-IOB tag": ('{"tokens": ["EU"], "ner_tags": ["ORG"]}\n',
                    ["row 1", "tag 'ORG' in 'ner_tags' is not IOB"]),
}


@pytest.mark.parametrize("case", JSONL_CASES)
def test_bad_jsonl_ner_file(case, run_data):
    content, expected = JSONL_CASES[case]
    ok = '{"tokens": ["EU", "rejects"], "ner_tags": ["B-ORG", "O"]}\n'
    result = run_data("token-classification", {"train.jsonl": ok, "test.jsonl": ok,
                                               "validation.jsonl": content})
    assert_clean_failure(result, *expected)


TSV_OK = "sentence\tlabel\ngood movie\t1\nbad movie\t0\n"
TSV_CASES = {
    "extra field": ("sentence\tlabel\nok\t1\tx\n", ["dev.tsv, line 2: 3 fields", "header has 2"]),
    "missing field": ("sentence\tlabel\nok\n", ["dev.tsv, line 2: 1 field where"]),
    "empty label": ("sentence\tlabel\nok\t1\nfine\t\n", ["dev.tsv, row 2", "'label' is empty"]),
    "missing column": ("sentence\tlab\nok\t1\n", ["column 'label' missing", "data.label_column"]),
    "label never trained": ("sentence\tlabel\nok\t1\nfine\t2\n",
                            ["dev.tsv: labels ['2'] never occur", "train.tsv"]),
    "latin-1 byte": (b"sentence\tlabel\nd\xe9j\xe0 vu\t1\n", ["dev.tsv, line 2", "not UTF-8"]),
    "empty split": ("sentence\tlabel\n", ["dev.tsv) has no examples"]),
}


@pytest.mark.parametrize("case", TSV_CASES)
def test_bad_sequence_classification_file(case, run_data):
    content, expected = TSV_CASES[case]
    result = run_data("sequence-classification", {"train.tsv": TSV_OK, "test.tsv": TSV_OK,
                                                  "dev.tsv": content})
    assert_clean_failure(result, *expected)


def test_bad_causal_lm_file(run_data, tmp_path):
    ok = 'mr,ref\n"name[A]","A is a pub."\n'
    result = run_data("causal-lm", {"trainset.csv": ok, "testset.csv": ok,
                                    "devset.csv": 'mr,reference\n"name[A]","A."\n'})
    assert_clean_failure(result, "devset.csv: column 'ref' missing", "data.target_column")


def test_utf8_bom_csv_header_is_read(tmp_path):
    from peftkit.data.readers import read_file

    path = tmp_path / "train.csv"
    path.write_bytes(b"\xef\xbb\xbfsentence,label\nok,1\n")
    assert read_file(path).column_names == ["sentence", "label"]


def test_truncation_is_counted_and_reported(tiny_bert_dir, capsys):
    from transformers import AutoTokenizer

    from peftkit.data.readers import load_raw
    from peftkit.pipeline import report_truncation
    from peftkit.recipe import build_recipe
    from peftkit.tasks import get_task

    recipe = build_recipe({"model": {"name": str(tiny_bert_dir)},
                           "data": {"max_length": 8, "max_train_samples": 20,
                                    "max_eval_samples": 5, "max_test_samples": 5}})
    task = get_task(recipe.task)
    raw = load_raw(recipe, task)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    encoded, stats = task.encode(raw, tokenizer, recipe, task.label_names(raw, recipe))
    long = sum(len(tokenizer(t, is_split_into_words=True)["input_ids"]) > 8
               for t in raw["train"]["tokens"])
    assert stats["truncated_train"] == long > 0
    assert len(encoded["train"]) == 20  # truncated, never dropped
    report_truncation(stats, recipe)
    assert f"{long} in train" in capsys.readouterr().out
