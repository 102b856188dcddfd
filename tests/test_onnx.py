"""peftkit merge --format onnx on tiny BERT runs (token and sequence classification), run by ONNX
Runtime under peftkit predict / eval.

Tolerance: every ONNX logit within 1e-4 + 1e-4 x |logit| of the PyTorch merged model's (float32
kernels that sum in another order differ by ~1e-7 here; a wrong graph by far more). The runs'
saved tensors get noise first, so that the models predict entities and both classes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from peftkit.cli import main
from peftkit.export import merge_run
from peftkit.pipeline import run_recipe
from peftkit.predict import evaluate_folder, load_for_inference
from peftkit.recipe import build_recipe

from conftest import perturb_adapter, tiny_ner_recipe

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ATOL = RTOL = 1e-4
TOKEN, SEQUENCE = "token-classification", "sequence-classification"
TEXTS = {TOKEN: ["Officials in Madrid said the Acme Corp deal stalled .", "John Smith visited Paris .",
                 "Shares of Acme rose 3 percent in London on Monday , traders said ."],
         SEQUENCE: ["a gripping , funny and moving film .", "dull .",
                    "the plot goes nowhere and the actors seem to know it ."]}
VOLATILE = ("runtime", "per_second", "epoch", "model_preparation_time")


def train(model_dir, run_dir: Path, task: str) -> Path:
    raw = tiny_ner_recipe(model_dir, run_dir, {"name": "lora", "r": 4}, max_steps=2, eval_every="no")
    raw["task"] = task
    if task == SEQUENCE:
        raw["data"]["name"] = "demo-sentiment"
    raw["data"]["max_test_samples"] = 16
    run_recipe(build_recipe(raw))
    return perturb_adapter(run_dir)


@pytest.fixture(scope="module")
def pooled_bert_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    """The tiny BERT with a pooler saved: without one, every load of a sequence-classification
    run draws a new random pooler (it is neither in the base nor in a LoRA adapter)."""
    from transformers import BertModel

    folder = shutil.copytree(tiny_bert_dir, tmp_path_factory.mktemp("pooled") / "bert")
    torch.manual_seed(0)
    BertModel.from_pretrained(str(tiny_bert_dir), add_pooling_layer=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tiny_bert_dir, pooled_bert_dir, tmp_path_factory) -> dict:
    """Per task: the run, its merged (safetensors) folder and its ONNX folder (by the CLI)."""
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for task in (TOKEN, SEQUENCE):
        run = train(pooled_bert_dir if task == SEQUENCE else tiny_bert_dir, root / task / "run", task)
        cli = CliRunner().invoke(main, ["merge", str(run), "--format", "onnx",
                                        "--out", str(root / task / "onnx")])
        assert cli.exit_code == 0, cli.output
        out[task] = {"run": run, "onnx": root / task / "onnx",
                     "merged": merge_run(run, root / task / "merged")}
    return out


@pytest.mark.parametrize("task", [TOKEN, SEQUENCE])
def test_onnx_logits_equal_the_merged_models(task, folders):
    onnx, merged = (load_for_inference(folders[task][k]) for k in ("onnx", "merged"))
    assert onnx.kind == "onnx" and type(onnx.model).__name__ == "OnnxModel"
    for texts in (TEXTS[task], TEXTS[task][1:2]):   # other batch sizes and lengths than exported
        enc = merged.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            want = merged.model(**enc).logits
        got = onnx.model(**enc).logits
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    assert want.abs().max() > 0.5  # a model with an output, not zeros that match anything


@pytest.mark.parametrize("task", [TOKEN, SEQUENCE])
def test_labels_travel_with_the_graph(task, folders):
    run, onnx = folders[task]["run"], folders[task]["onnx"]
    labels = json.loads((run / "labels.json").read_text())
    config = json.loads((onnx / "config.json").read_text())
    meta = json.loads((onnx / "peftkit.json").read_text())
    assert [config["id2label"][str(i)] for i in range(len(labels))] == labels
    assert meta["kind"] == "onnx" and meta["labels"] == labels and meta["task"] == task
    assert meta["onnx"]["max_abs_logit_diff"] < ATOL
    assert "model.onnx" in (onnx / "SHA256SUMS").read_text()
    assert load_for_inference(onnx).labels == labels


def predict_cli(folder, texts) -> list[dict]:
    result = CliRunner().invoke(main, ["predict", str(folder), *texts])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_predict_on_the_onnx_folder_answers_as_on_the_run(folders):
    texts = TEXTS[TOKEN]
    by_run = predict_cli(folders[TOKEN]["run"], texts)
    assert any(r["entities"] for r in by_run)
    assert predict_cli(folders[TOKEN]["onnx"], texts) == by_run
    texts = TEXTS[SEQUENCE]
    by_run, by_onnx = (predict_cli(folders[SEQUENCE][k], texts) for k in ("run", "onnx"))
    assert [r["label"] for r in by_onnx] == [r["label"] for r in by_run]
    for a, b in zip(by_onnx, by_run):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)


@pytest.mark.parametrize("task,metric", [(TOKEN, "f1"), (SEQUENCE, "accuracy")])
def test_eval_on_the_onnx_folder_gives_the_runs_metrics(task, metric, folders):
    by_run, by_onnx = (evaluate_folder(folders[task][k]) for k in ("run", "onnx"))
    assert by_onnx["examples"] == by_run["examples"] == 16 and by_onnx["precision"] == "fp32"
    scores = {k: v for k, v in by_onnx["test"].items() if not k.endswith(VOLATILE)}
    want = {k: v for k, v in by_run["test"].items() if not k.endswith(VOLATILE)}
    assert scores[metric] == want[metric] and scores.keys() == want.keys()
    assert scores["loss"] == pytest.approx(want["loss"], abs=1e-4)  # the head's own loss function
    if task == TOKEN:
        assert 0 < scores["f1"] and scores["token_accuracy"] == want["token_accuracy"]


def test_a_changed_or_unsealed_graph_is_refused(folders, tmp_path):
    folder = shutil.copytree(folders[TOKEN]["onnx"], tmp_path / "onnx")
    graph = folder / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF                      # one flipped byte in the weights
    graph.write_bytes(bytes(data))
    bad = CliRunner().invoke(main, ["predict", str(folder), "Paris ."])
    assert bad.exit_code == 2 and "corrupt weight file" in bad.output and "Traceback" not in bad.output
    (folder / "SHA256SUMS").unlink()
    bad = CliRunner().invoke(main, ["eval", str(folder)])
    assert bad.exit_code == 2 and "no SHA256SUMS" in bad.output


# ---------------------------------------------------------------- refused before any model loads

def recipe_only_run(folder: Path, task: str, strategy: dict, data: str) -> Path:
    """A run folder holding only its recipe: merge's checks read nothing else."""
    folder.mkdir(parents=True)
    raw = {"task": task, "model": {"name": "no-such-model"}, "strategy": strategy,
           "data": {"name": data}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(raw))
    return folder


@pytest.mark.parametrize("task,strategy,data,args,says", [
    ("causal-lm", {"name": "lora"}, "demo-gen", [],
     "a causal-lm run cannot be exported to ONNX: generation calls the model once per new token"),
    (TOKEN, {"name": "prefix"}, "demo-ner", [], "a prefix run cannot be merged"),
    (TOKEN, {"name": "lora"}, "demo-ner", ["--dtype", "bfloat16"], "the graph holds float32"),
])
def test_what_cannot_be_exported_is_refused_in_one_line(tmp_path, task, strategy, data, args, says):
    run = recipe_only_run(tmp_path / "run", task, strategy, data)
    cli = CliRunner().invoke(main, ["merge", str(run), "--format", "onnx", "--out",
                                    str(tmp_path / "out"), *args])
    assert cli.exit_code in (1, 2) and says in cli.output, cli.output
    assert "Traceback" not in cli.output and not (tmp_path / "out").exists()


def test_a_missing_extra_names_the_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    run = recipe_only_run(tmp_path / "run", TOKEN, {"name": "lora"}, "demo-ner")
    cli = CliRunner().invoke(main, ["merge", str(run), "--format", "onnx", "--out", str(tmp_path / "o")])
    assert cli.exit_code == 2 and "pip install 'peftkit[onnx]'" in cli.output
    assert "onnxscript" in cli.output


def test_training_from_an_onnx_folder_is_refused(folders, tmp_path, write_recipe):
    raw = tiny_ner_recipe(folders[TOKEN]["onnx"], tmp_path / "run", max_steps=1, eval_every="no")
    cli = CliRunner().invoke(main, ["run", str(write_recipe(raw))])
    assert cli.exit_code == 2 and "holds an ONNX graph" in cli.output, cli.output
    assert "Traceback" not in cli.output
