"""8-bit and 4-bit bases through bitsandbytes, on CPU with the tiny models of conftest.py.

What matters: the base's Linear layers really are quantized and the head is not; training through
the pipeline lowers the loss and moves only the strategy's own parameters; memory shrinks while the
parameter counts stay those of the fp32 model; impossible set-ups fail early with a clear message.
"""

from __future__ import annotations

import json

import pytest
import torch

from peftkit import quantization
from peftkit.errors import PeftkitError, RecipeError
from peftkit.models import load_model, source_of
from peftkit.pipeline import run_recipe
from peftkit.recipe import build_recipe, load_recipe
from peftkit.rundir import load_run
from peftkit.strategies import get_strategy
from peftkit.strategies.base import ApplyContext, count_parameters
from peftkit.tasks import get_task

from conftest import tiny_ner_recipe

bnb = pytest.importorskip("bitsandbytes")
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
QUANT_LINEAR = {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}


def cpu_can(mode):
    """4-bit may lack a CPU backend elsewhere; here the real probe decides, as the pipeline does."""
    return torch.cuda.is_available() or quantization.probe_cpu(mode) is None


def recipe_for(model_dir, tmp_path, mode="8bit", strategy=None, **train):
    raw = tiny_ner_recipe(model_dir, tmp_path / "run", strategy, **train)
    raw["model"]["quantization"] = mode
    return build_recipe(raw)


def load(model_dir, tmp_path, mode, strategy=None, labels=LABELS):
    """(base model, recipe) as the pipeline loads them."""
    recipe = recipe_for(model_dir, tmp_path, mode, strategy)
    task = get_task(recipe.task)
    return load_model(source_of(recipe), recipe, task, labels), recipe


def with_strategy(model, recipe, quantized):
    task = get_task(recipe.task)
    ctx = ApplyContext(task=task, head_names=task.head_names, quantized=quantized, total_steps=8)
    return get_strategy(recipe.strategy_name).apply(model, recipe.strategy, ctx)


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_base_linears_quantized_head_and_embeddings_full_precision(tiny_bert_dir, tmp_path, mode):
    if not cpu_can(mode):
        pytest.skip(f"no {mode} backend on this machine")
    model, _ = load(tiny_bert_dir, tmp_path, mode)
    kinds = {name: type(m).__name__ for name, m in model.named_modules()}
    encoder_linears = [n for n in kinds if ".encoder.layer." in n and n.endswith(("query", "dense"))]
    assert encoder_linears and all(kinds[n] == QUANT_LINEAR[mode] for n in encoder_linears)
    assert kinds["classifier"] == "Linear" and model.classifier.weight.dtype == torch.float32
    emb = model.get_input_embeddings()
    assert type(emb).__name__ == "Embedding" and emb.weight.dtype == torch.float32


def test_memory_below_fp32_and_parameter_counts_equal(tiny_bert_dir, tmp_path):
    modes = ["none", "8bit"] + (["4bit"] if cpu_can("4bit") else [])
    memory, counts = {}, {}
    for mode in modes:
        base, recipe = load(tiny_bert_dir, tmp_path, mode)
        memory[mode] = quantization.memory_footprint(base)
        counts[mode] = count_parameters(with_strategy(base, recipe, mode != "none"))
    assert memory["8bit"] < memory["none"]
    if "4bit" in memory:
        assert memory["4bit"] < memory["8bit"]
    for mode in modes:
        assert counts[mode] == counts["none"], mode  # packed 4-bit weights counted unpacked


def trained_run(monkeypatch, recipe):
    """run_recipe, keeping the model it trained, its state before training and the names of the
    parameters the strategy left trainable."""
    strategy = get_strategy(recipe.strategy_name)
    original, seen = strategy.apply, {}

    def apply(model, cfg, ctx):
        model = original(model, cfg, ctx)
        seen["model"] = model
        seen["before"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seen["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}
        return model

    monkeypatch.setattr(strategy, "apply", apply)
    result = run_recipe(recipe)
    return result, seen["model"], seen["before"], seen["trainable"]


def losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def changed_keys(model, before):
    after = model.state_dict()
    return {k for k, v in before.items() if not torch.equal(v, after[k].to(v.device))}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_on_8bit_base_trains_only_adapter(tiny_bert_dir, tmp_path, monkeypatch, checkpointing):
    recipe = recipe_for(tiny_bert_dir, tmp_path, "8bit", epochs=2, eval_every="no",
                        gradient_checkpointing=checkpointing)
    result, model, before, _ = trained_run(monkeypatch, recipe)
    assert model.get_base_model().is_activation_checkpointing == checkpointing

    loss = losses(tmp_path / "run")
    assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3, loss
    changed = changed_keys(model, before)
    assert any("lora_B" in k for k in changed)  # B starts at zero: training moved it
    assert all("lora_" in k or "modules_to_save" in k for k in changed), sorted(changed)
    quantized_weights = [k for k, v in before.items() if v.dtype == torch.int8]
    assert quantized_weights and not set(quantized_weights) & changed

    assert result["quantization"] == "8bit" and result["precision"] == "fp32"
    assert result["model_memory_mb"] == pytest.approx(quantization.memory_footprint(model) / 2**20)
    labels = json.loads((tmp_path / "run" / "labels.json").read_text())
    fp32, fp32_recipe = load(tiny_bert_dir, tmp_path, "none", labels=labels)
    expected = count_parameters(with_strategy(fp32, fp32_recipe, False))
    assert (result["trainable_params"], result["total_params"]) == expected
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["model_memory_mb"] < quantization.memory_footprint(fp32) / 2**20


# prefix without its MLP: the prefixes themselves train (the MLP is folded away after training)
OTHER_STRATEGIES = [{"name": "adapter"}, {"name": "prefix", "reparameterize": False},
                    {"name": "ia3"}, {"name": "adalora"}, {"name": "prompt"}]


@pytest.mark.parametrize("settings", OTHER_STRATEGIES, ids=[s["name"] for s in OTHER_STRATEGIES])
def test_every_strategy_trains_on_8bit_base(tiny_bert_dir, tmp_path, monkeypatch, settings):
    """peft's methods and peftkit's own adapter/prefix modules on top of Linear8bitLt layers."""
    recipe = recipe_for(tiny_bert_dir, tmp_path, "8bit", settings, max_steps=3, eval_every="no")
    result, model, before, trainable = trained_run(monkeypatch, recipe)
    assert result["quantization"] == "8bit" and result["trainable_params"] > 0
    assert any(type(m).__name__ == "Linear8bitLt" for m in model.modules())
    after = model.state_dict()
    frozen = [k for k in before if k in after and k not in trainable]
    assert [k for k in frozen if before[k].dtype == torch.int8]  # the quantized base is there...
    assert all(torch.equal(before[k], after[k]) for k in frozen)  # ...and nothing frozen moved
    moved = [k for k in trainable if k in after and not torch.equal(before[k], after[k])]
    assert [k for k in moved if "classifier" not in k], "only the head trained"

    reloaded, tokenizer, *_ = load_run(tmp_path / "run")  # the saved adapter on a fresh 8-bit base
    batch = tokenizer(["john smith flew to paris"], return_tensors="pt").to(next(model.parameters()).device)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, atol=1e-4, rtol=0)


def test_causal_lm_head_and_embeddings_stay_full_precision(tiny_llama_dir, tmp_path):
    raw = tiny_ner_recipe(tiny_llama_dir, tmp_path / "run")
    raw["model"]["quantization"] = "8bit"
    recipe = build_recipe({**raw, "task": "causal-lm"}, check_paths=False)  # no data is read
    model = load_model(source_of(recipe), recipe, get_task("causal-lm"), None)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear8bitLt"
    assert type(model.lm_head).__name__ == "Linear" and model.lm_head.weight.dtype == torch.float32
    assert model.get_input_embeddings().weight.dtype == torch.float32


def test_packed_4bit_weights_count_as_unpacked():
    layer = bnb.nn.Linear4bit(37, 13, quant_type="nf4").to("cpu")  # 481 weights: odd, packs to 241
    assert count_parameters(layer) == (13, 481 + 13)  # (trainable bias, weight + bias)


def test_full_with_quantized_base_rejected_at_validation(tiny_bert_dir, tmp_path, write_recipe):
    raw = tiny_ner_recipe(tiny_bert_dir, tmp_path / "run", {"name": "full"})
    raw["model"]["quantization"] = "8bit"
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(raw))
    assert "strategy.name: full cannot train a 8bit base" in str(err.value)
    assert "model.quantization: none" in str(err.value)  # the message names the fix


def test_gguf_base_with_quantization_rejected_at_validation(tiny_bert_dir, tmp_path, write_recipe):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")  # resolving the name is all validation does
    raw = tiny_ner_recipe(tmp_path / "model.gguf", tmp_path / "run")
    raw["model"]["quantization"] = "4bit"
    with pytest.raises(RecipeError, match=r"model.quantization: 4bit cannot quantize .*GGUF file"):
        load_recipe(write_recipe(raw))


def test_missing_cpu_backend_fails_before_loading(tiny_bert_dir, tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("the CPU backend is only probed without a GPU")
    monkeypatch.setattr(quantization, "probe_cpu", lambda mode: "RuntimeError: no kernel")

    def must_not_load(*args, **kwargs):
        raise AssertionError("weights were loaded before the backend was checked")

    monkeypatch.setattr("transformers.AutoModelForTokenClassification.from_pretrained", must_not_load)
    with pytest.raises(PeftkitError, match=r"model.quantization: 4bit cannot run on this machine.*"
                                           r"no working CPU 4bit backend \(RuntimeError: no kernel\)"):
        load(tiny_bert_dir, tmp_path, "4bit")


def test_missing_bitsandbytes_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)  # import raises ImportError
    with pytest.raises(PeftkitError, match="needs bitsandbytes.*pip install -U bitsandbytes"):
        quantization.check_backend("8bit")


def test_cpu_probe_passes_for_8bit_here():
    """DESIGN.md: bitsandbytes runs Linear8bitLt forward and backward on this CPU."""
    if torch.cuda.is_available():
        pytest.skip("CPU only")
    assert quantization.probe_cpu("8bit") is None


# ---------------------------------------------------------------- GPU (skipped without CUDA)

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_gpu_lora_on_quantized_base(tiny_bert_dir, tmp_path, monkeypatch, mode):
    recipe = recipe_for(tiny_bert_dir, tmp_path, mode, epochs=2, eval_every="no", precision="auto")
    result, model, before, _ = trained_run(monkeypatch, recipe)
    assert next(p for p in model.parameters() if p.requires_grad).is_cuda
    assert any(type(m).__name__ == QUANT_LINEAR[mode] for m in model.modules())
    loss = losses(tmp_path / "run")
    assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3, loss
    assert all("lora_" in k or "modules_to_save" in k for k in changed_keys(model, before))
