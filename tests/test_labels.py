"""Label checks (peftkit/data/labels.py): typo-looking tags warn, `data.labels` turns any other label
into an error naming its file and line, and `peftkit validate` shows the distribution per split."""

from __future__ import annotations

import json

import yaml
from click.testing import CliRunner

from peftkit.cli import main
from peftkit.data.labels import problems


def test_a_rare_tag_next_to_a_frequent_similar_one_looks_like_a_typo():
    dist = {"train": {"O": 5000, "B-PER": 300, "I-PER": 200, "B-PRE": 2},
            "test": {"O": 900, "B-PER": 40, "I-PER": 30}}
    found = problems(dist)
    assert any("'B-PRE'" in w and "'B-PER'" in w and "typo" in w for w in found)


def test_i_without_b_and_a_tag_in_one_split_only_warn():
    dist = {"train": {"O": 900, "B-LOC": 50, "I-LOC": 20, "I-ORG": 30},
            "test": {"O": 90, "B-LOC": 5, "I-LOC": 2}}
    found = problems(dist)
    assert any("'I-ORG'" in w and "without any 'B-ORG'" in w for w in found)
    assert any("'I-ORG'" in w and "only in train" in w for w in found)


def test_ordinary_conll_like_labels_give_no_warning():
    dist = {"train": {"O": 170000, "B-LOC": 7140, "B-PER": 6600, "I-PER": 4528, "I-LOC": 1157,
                      "B-MISC": 3438, "I-MISC": 1155},
            "validation": {"O": 42000, "B-LOC": 1837, "B-PER": 1842, "I-PER": 1307, "I-LOC": 257,
                           "B-MISC": 922, "I-MISC": 346}}
    assert problems(dist) == []
    assert problems({"train": {"positive": 500, "negative": 480},
                     "test": {"positive": 50, "negative": 50}}) == []


def conll_folder(tmp_path, bad_tag: str):
    folder = tmp_path / "ner"
    folder.mkdir()
    good = "John B-PER\nSmith I-PER\nlives O\nin O\nParis B-LOC\n\n"
    (folder / "train.txt").write_text(good * 5 + f"Bob B-PER\nvisits O\nRome {bad_tag}\n\n" + good)
    (folder / "validation.txt").write_text(good)
    (folder / "test.txt").write_text(good)
    return folder


def test_declared_labels_reject_an_unknown_tag_with_file_and_line(tmp_path):
    folder = conll_folder(tmp_path, "B-LOCC")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "token-classification",
                                      "data": {"name": str(folder), "labels": ["PER", "LOC"]}}))
    out = CliRunner().invoke(main, ["validate", str(recipe)])
    assert out.exit_code == 2, out.output
    assert f"{folder / 'train.txt'}, line 33" in out.output  # 5 sentences of 6 lines, then line 3
    assert "'B-LOCC'" in out.output and "did you mean 'B-LOC'" in out.output
    assert "Traceback" not in out.output


def test_declared_class_labels_reject_an_unknown_class_with_its_line(tmp_path):
    folder = tmp_path / "cls"
    folder.mkdir()
    rows = [{"sentence": f"text {i}", "label": "positive" if i % 2 else "negative"} for i in range(8)]
    rows[5]["label"] = "postive"
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for split in ("validation", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "sequence-classification",
                                      "data": {"name": str(folder), "labels": ["negative", "positive"]}}))
    out = CliRunner().invoke(main, ["validate", str(recipe)])
    assert out.exit_code == 2 and f"{folder / 'train.jsonl'}, line 6" in out.output, out.output


def test_validate_shows_the_label_distribution_per_split_and_warnings(tmp_path):
    folder = conll_folder(tmp_path, "B-LCO")  # a typo of the frequent B-LOC, undeclared: a warning
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "token-classification", "data": {"name": str(folder)}}))
    out = CliRunner().invoke(main, ["validate", str(recipe)])
    assert out.exit_code == 0, out.output
    assert "labels train: O" in out.output and "labels test:" in out.output
    assert "warning: label 'B-LCO'" in out.output
    quick = CliRunner().invoke(main, ["validate", "--no-data", str(recipe)])
    assert quick.exit_code == 0 and "labels" not in quick.output
