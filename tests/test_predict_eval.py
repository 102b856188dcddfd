"""peftkit predict and peftkit eval on run, export and merged folders.

Predictions are checked against a model whose output we set by hand: a one-layer BERT whose
encoder is switched off (zero weights, so each position sees only its own word embedding) and
whose classifier maps chosen words to chosen tags.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from peftkit.cli import main
from peftkit.errors import DataError
from peftkit.export import export_adapter, merge_run
from peftkit.pipeline import run_recipe
from peftkit.predict import evaluate_folder
from peftkit.recipe import build_recipe
from peftkit.rundir import seal_weights

from conftest import perturb_adapter, tiny_ner_recipe

WORD_TAGS = {"john": "B-PER", "smith": "I-PER", "paris": "B-LOC", "france": "B-LOC"}
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORD_TAGS, "visited", "lives", "in", ",", "."]
TEXT = "John  Smith visited Paris, France."
EXPECTED = [{"type": "PER", "start": 0, "end": 11, "text": "John  Smith"},
            {"type": "LOC", "start": 20, "end": 25, "text": "Paris"},
            {"type": "LOC", "start": 27, "end": 33, "text": "France"}]
VOLATILE = ("runtime", "per_second", "epoch", "model_preparation_time")


def train(model_dir, run_dir: Path, strategy: dict) -> Path:
    raw = tiny_ner_recipe(model_dir, run_dir, strategy, max_steps=2, eval_every="no")
    raw["data"]["max_test_samples"] = 8
    run_recipe(build_recipe(raw))
    return run_dir


def stable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith(VOLATILE)}


@pytest.fixture(scope="module")
def word_bert_dir(tmp_path_factory) -> Path:
    """A one-layer BERT with a word-level vocabulary: one token per word of the test sentence."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("word-bert")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True)
    tok.save_pretrained(folder)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def set_known_weights(run_dir: Path) -> None:
    """Every weight zero, LayerNorms identity, so hidden(word) = LayerNorm(embedding(word));
    word w gets a spike in dimension tag_id(w) and the classifier reads tag j off dimension j."""
    labels = json.loads((run_dir / "labels.json").read_text())
    path = run_dir / "model" / "model.safetensors"
    state = load_file(str(path))
    state = {k: (torch.ones_like(v) if k.endswith("LayerNorm.weight") else torch.zeros_like(v))
             if v.is_floating_point() else v for k, v in state.items()}
    emb, weight, bias = (state["bert.embeddings.word_embeddings.weight"], state["classifier.weight"],
                         state["classifier.bias"])
    bias[labels.index("O")] = 0.5           # a word without a spike: all-zero hidden state -> O
    for word, tag in WORD_TAGS.items():
        j = labels.index(tag)
        emb[VOCAB.index(word), j] = 10.0     # LayerNorm turns it into about +5.6 at j, -0.2 elsewhere
        weight[j, j] = 1.0
    save_file(state, str(path), metadata={"format": "pt"})
    seal_weights(path.parent)  # changed on purpose: its SHA-256 line too


@pytest.fixture(scope="module")
def known_run(word_bert_dir, tmp_path_factory) -> Path:
    run = train(word_bert_dir, tmp_path_factory.mktemp("known") / "run", {"name": "full"})
    set_known_weights(run)
    return run


def predict_cli(folder, *args, input=None) -> list[dict]:
    result = CliRunner().invoke(main, ["predict", str(folder), *args], input=input)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_predict_entity_spans_on_a_known_model(known_run, tmp_path):
    assert predict_cli(known_run, TEXT) == [{"text": TEXT, "entities": EXPECTED}]
    merged = merge_run(known_run, tmp_path / "merged")
    assert predict_cli(merged, TEXT, "visited .") == [{"text": TEXT, "entities": EXPECTED},
                                                       {"text": "visited .", "entities": []}]


def test_predict_reads_stdin_and_files(known_run, tmp_path):
    expected = [{"text": TEXT, "entities": EXPECTED}, {"text": "Paris", "entities": [EXPECTED[1] | {
        "start": 0, "end": 5}]}]
    assert predict_cli(known_run, input=f"{TEXT}\n\nParis\n") == expected
    (tmp_path / "in.txt").write_text(f"{TEXT}\nParis\n")
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": TEXT}) + "\n" + json.dumps("Paris") + "\n")
    assert predict_cli(known_run, "--input", str(tmp_path / "in.txt")) == expected
    assert predict_cli(known_run, "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl")) == []
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == expected
    bad = CliRunner().invoke(main, ["predict", str(tmp_path)], input=TEXT)
    assert bad.exit_code == 2 and "neither a peftkit run folder" in bad.output


# ---------------------------------------------------------------- predictions of the other folders

@pytest.fixture(scope="module")
def lora_run(tiny_bert_dir, tmp_path_factory) -> Path:
    return train(tiny_bert_dir, tmp_path_factory.mktemp("lora") / "run", {"name": "lora", "r": 4})


def perturbed_copy(run: Path, dest: Path) -> Path:
    """The run with noise on every saved tensor (LoRA and head), so that it predicts entities."""
    shutil.copytree(run, dest)
    return perturb_adapter(dest)


def test_run_export_and_merged_folders_predict_alike(lora_run, tmp_path):
    texts = ["Officials in Madrid said the Acme Corp deal stalled .", TEXT]
    from peftkit.predict import load_for_inference, predict_texts

    lora_run = perturbed_copy(lora_run, tmp_path / "run")
    by_run = predict_texts(lora_run, texts)
    assert any(r["entities"] for r in by_run)
    merged = merge_run(lora_run, tmp_path / "merged")
    exported = export_adapter(lora_run, tmp_path / "export")
    assert predict_texts(merged, texts) == by_run == predict_texts(exported, texts)
    assert load_for_inference(merged).kind == "merged"
    assert load_for_inference(exported).kind == "adapter"


# ---------------------------------------------------------------- evaluation

def test_eval_reproduces_the_runs_own_test_metrics(lora_run, tmp_path):
    result = json.loads((lora_run / "result.json").read_text())
    cli = CliRunner().invoke(main, ["eval", str(lora_run), "--json"])
    assert cli.exit_code == 0, cli.output
    report = json.loads(cli.stdout[cli.stdout.index("{"):])
    assert report["split"] == "test" and report["examples"] == 8
    assert stable(report["test"]) == stable(result["test"])  # exactly: same data, batches, precision
    merged = merge_run(lora_run, tmp_path / "merged")
    again = evaluate_folder(merged)["test"]
    assert again["f1"] == result["test"]["f1"]
    assert again["token_accuracy"] == result["test"]["token_accuracy"]
    assert again["loss"] == pytest.approx(result["test"]["loss"], abs=1e-5)


def write_conll(folder: Path, rows) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in rows:
        lines += [f"{tok} {tag}" for tok, tag in zip(row["tokens"], row["ner_tags"])] + [""]
    (folder / "test.txt").write_text("\n".join(lines))
    return folder


def test_eval_on_another_data_folder_and_split(lora_run, tmp_path):
    from peftkit.data.demo_ner import demo_ner_dataset

    rows = demo_ner_dataset()["test"].select(range(8))
    folder = write_conll(tmp_path / "data", rows)   # the run's 8 test sentences, as a CoNLL file
    report = evaluate_folder(lora_run, data=str(folder), split="test")
    result = json.loads((lora_run / "result.json").read_text())
    assert report["data"] == str(folder) and report["examples"] == 8
    assert stable(report["test"]) == stable(result["test"])
    assert evaluate_folder(lora_run, data=str(folder), split="test", max_samples=3)["examples"] == 3


def test_eval_of_a_run_scored_on_held_out_training_data_scores_the_same_examples(tiny_bert_dir, tmp_path):
    from peftkit.data.readers import load_raw
    from peftkit.predict import eval_recipe
    from peftkit.tasks import get_task

    raw = tiny_ner_recipe(tiny_bert_dir, tmp_path / "run")
    raw["data"].update(eval_split=None, test_split=None, validation_size=10)
    recipe = build_recipe(raw)
    task = get_task(recipe.task)
    again = eval_recipe(recipe)  # both splits null: the run scored the part held out of train
    assert load_raw(again, task)["test"].to_list() == load_raw(recipe, task)["test"].to_list()
    assert len(load_raw(again, task)["test"]) == 10
    assert again.data.final_split_name == "train (the held-out part)"
    assert eval_recipe(recipe, data="demo-ner").data.test_split == "test"  # other data: its test split


def test_eval_names_tags_the_model_never_learned(lora_run, tmp_path):
    unknown = {"tokens": ["Acme", "Corp"], "ner_tags": ["B-COMPANY", "I-COMPANY"]}
    folder = write_conll(tmp_path / "data", [unknown])
    with pytest.raises(DataError, match="B-COMPANY"):
        evaluate_folder(lora_run, data=str(folder))
    cli = CliRunner().invoke(main, ["eval", str(lora_run), "--data", str(folder)])
    assert cli.exit_code == 2 and "not trained on" in cli.output and "Traceback" not in cli.output


@pytest.mark.parametrize("text,words", [
    ("Follow @jdoe at https://x.com/a?b=1. Great #NLP day!",
     ["Follow", "@jdoe", "at", "https://x.com/a?b=1", ".", "Great", "#NLP", "day", "!"]),
    ("Mail a.b+c@mail.co.uk, in the U.S. at 3.5 o'clock (www.site.org)",
     ["Mail", "a.b+c@mail.co.uk", ",", "in", "the", "U.S.", "at", "3.5", "o'clock", "(",
      "www.site.org", ")"]),
])
def test_raw_text_is_split_the_way_ner_corpora_are(text, words):
    from peftkit.tasks.token_classification import WORD

    assert [m.group() for m in WORD.finditer(text)] == words


def test_predict_in_batches_gives_what_one_text_at_a_time_gives(known_run, monkeypatch):
    import peftkit.tasks.token_classification as tc

    texts = [TEXT, "visited .", TEXT + " " + TEXT, "x"]
    together = predict_cli(known_run, *texts)
    monkeypatch.setattr(tc, "PREDICT_BATCH", 1)
    assert predict_cli(known_run, *texts) == together
    assert together[0] == {"text": TEXT, "entities": EXPECTED}
