"""`peftkit plan`: exact parameter counts without weights, the memory arithmetic on cases worked
out by hand, the largest batches as `run` packs them, and the CLI's JSON. No timing here
(benchmarks/plan_check.py compares predictions with measured runs)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from click.testing import CliRunner

from peftkit.plan import memory
from peftkit.plan.batches import largest_eval_batch, largest_training_batch, shape
from tests.conftest import tiny_ner_recipe

MB = 2 ** 20


def parts_for(path):
    from peftkit.pipeline import absolute_paths, build
    from peftkit.recipe import load_recipe

    with contextlib.redirect_stdout(io.StringIO()):
        return build(absolute_paths(load_recipe(str(path))))


def causal_recipe(model_dir, run_dir, strategy):
    return {"task": "causal-lm", "model": {"name": str(model_dir)}, "strategy": strategy,
            "data": {"name": "demo-gen", "max_length": 64, "max_train_samples": 32,
                     "max_eval_samples": 8, "max_test_samples": 8},
            "train": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "precision": "fp32"},
            "output": {"dir": str(run_dir)}}


COUNT_CASES = [
    ("bert", {"name": "lora", "r": 4}),
    ("bert", {"name": "lora", "r": 4, "use_dora": True}),
    ("bert", {"name": "full"}),
    ("bert", {"name": "adapter", "bottleneck_size": 4}),
    ("bert", {"name": "ia3"}),
    ("bert", {"name": "prompt", "num_virtual_tokens": 3}),
    ("llama", {"name": "lora", "r": 4}),
    ("llama", {"name": "prefix", "num_virtual_tokens": 3, "reparameterize": True, "hidden_size": 8}),
    ("llama", {"name": "adalora", "init_r": 6, "target_r": 2, "tinit": 1, "tfinal": 1}),
]


@pytest.mark.parametrize("model,strategy", COUNT_CASES, ids=lambda v: v if isinstance(v, str) else
                         "-".join(str(x) for x in v.values())[:30])
def test_counts_match_the_loaded_model_exactly(model, strategy, tiny_bert_dir, tiny_llama_dir,
                                               write_recipe, tmp_path):
    """The meta-device model with the strategy applied has the real model's parameters."""
    from peftkit.plan import probe
    from peftkit.strategies.base import count_parameters

    if model == "bert":
        raw = tiny_ner_recipe(tiny_bert_dir, tmp_path / "run", strategy)
    else:
        raw = causal_recipe(tiny_llama_dir, tmp_path / "run", strategy)
    parts = parts_for(write_recipe(raw))
    config = probe.load_config(parts)
    counts, _ = probe.count(parts, config, probe.loaded_dtype(config, False))
    real, _ = parts.fresh_model()
    trainable, total = count_parameters(real)
    assert (counts.trainable, counts.total) == (trainable, total)
    assert counts.weight_bytes == sum(p.numel() * p.element_size() for p in real.parameters())


def test_memory_arithmetic_by_hand():
    """1M trainable fp32 parameters: gradients 4 MB, AdamW 8 MB; 1M training logits: two fp32
    gradient buffers, 8 MB; 2M evaluation logits in bf16: 2 + 4 + 4 bytes each, 20 MB."""
    m = memory(baseline_mb=500, weight_bytes=100 * MB, trainable_bytes=4 * MB,
               activation_bytes=50 * MB, logits_numel=MB, eval_logits_numel=2 * MB,
               eval_logit_bytes=2, loading_bytes=80 * MB)
    assert (m.weights, m.gradients, m.optimizer, m.activations) == (100, 4, 8, 50)
    assert (m.logits_backward, m.evaluation, m.loading) == (8, 20, 80)
    assert m.training_step == 8 + 4 + 50 + 8
    assert m.peak == 500 + 100 + 80 and m.phase() == "loading"  # loading outweighs a step here


def test_peak_takes_the_largest_phase_over_the_optimizer_state():
    """AdamW's states stay during evaluation; gradients do not (freed after each step)."""
    eval_heavy = memory(baseline_mb=0, weight_bytes=0, trainable_bytes=40 * MB,
                        activation_bytes=10 * MB, logits_numel=0, eval_logits_numel=10 * MB,
                        eval_logit_bytes=4, loading_bytes=0)
    # training: 40 + 80 + 10 = 130; evaluation: 80 (AdamW) + 10M fp32 logits x (4 + 4: their
    # log_softmax; no upcast copy) = 160
    assert eval_heavy.peak == 160 and eval_heavy.phase() == "evaluation"
    full = memory(baseline_mb=300, weight_bytes=90 * MB, trainable_bytes=90 * MB,
                  activation_bytes=100 * MB, logits_numel=0, eval_logits_numel=0,
                  eval_logit_bytes=4, loading_bytes=90 * MB)
    # full fine-tuning: weights 90, gradients 90, AdamW 180 (16 bytes per parameter in all)
    assert full.peak == 300 + 90 + 90 + 180 + 100 and full.phase() == "training"


def test_largest_batch_is_packed_as_the_collator_packs():
    """Lengths 10, 6, 4, 3 packed first-fit into rows as wide as the longest: [10] [6 4] [3]."""
    assert (shape([0, 1, 2, 3], [10, 6, 4, 3], packed=True).rows,
            shape([0, 1, 2, 3], [10, 6, 4, 3], packed=True).width) == (3, 10)
    assert shape([0, 1, 2, 3], [10, 6, 4, 3], packed=False).slots == 40
    lengths = [5] * 30 + [50]
    big = largest_training_batch(lengths, batch_size=4, batches=100, packed=False, seed=0)
    assert 30 in big.indices and big.width == 50 and big.rows == 4
    ev = largest_eval_batch([3, 3, 9, 2, 2], batch_size=2)  # in order: [3 3] [9 2] [2]
    assert (ev.rows, ev.width, ev.indices) == (2, 9, [2, 3])


def test_eight_bit_weights_count_one_byte_and_keep_the_head(tiny_bert_dir, write_recipe, tmp_path):
    """Tiny BERT, 2 layers, hidden 32, intermediate 64: q, k, v, o (4 x 32 x 32) + 32 x 64 + 64 x 32
    = 8,192 Linear weights per layer, 224 output rows; the classifier stays fp32."""
    from peftkit.plan import probe

    parts = parts_for(write_recipe(tiny_ner_recipe(tiny_bert_dir, tmp_path / "r")))
    config = probe.load_config(parts)
    meta = probe.build(parts, config, probe.loaded_dtype(config, False), "meta")
    assert probe.quantized_linears(meta, parts.task) == (2 * 8192, 2 * 224)


def test_probe_scales_one_and_two_layers_to_the_full_depth(tiny_bert_dir, write_recipe, tmp_path):
    """Saved activations of a 4-layer copy equal 1 layer + 3 x the second layer's."""
    from peftkit.plan import probe

    parts = parts_for(write_recipe(tiny_ner_recipe(tiny_bert_dir, tmp_path / "r")))
    config = probe.with_layers(probe.load_config(parts), 4)
    dtype = probe.loaded_dtype(config, False)
    features = [parts.encoded["train"][i] for i in range(8)]
    full, one = probe.activations(parts, config, dtype, features, "fp32")
    direct = probe.forward(parts, config, dtype, features, "fp32")
    assert full.saved_bytes == direct.saved_bytes
    assert full.allocated_bytes >= full.saved_bytes > one.saved_bytes > 0
    assert one.logits_last == len(parts.labels)


@pytest.mark.parametrize("strategy,completion_only", [
    ({"name": "lora", "r": 4}, True),
    ({"name": "prompt", "num_virtual_tokens": 3}, True),
    # AdaLoRA with its regulariser adds to the model's loss: the run keeps the model's full logits
    ({"name": "adalora", "init_r": 6, "target_r": 2, "tinit": 1, "tfinal": 1,
      "orth_reg_weight": 0.1}, False),
])
def test_causal_probe_counts_the_logits_the_training_loss_holds(strategy, completion_only,
                                                                tiny_llama_dir, write_recipe, tmp_path):
    """The run's loss computes the output layer on completion positions only
    (tasks/completion_loss.py): the probe counts those logits. Evaluation keeps the model's own
    forward: every position's logits (virtual tokens included) and the key/value cache."""
    from peftkit.plan import probe

    parts = parts_for(write_recipe(causal_recipe(tiny_llama_dir, tmp_path / "r", strategy)))
    config = probe.load_config(parts)
    features = [parts.encoded["train"][i] for i in range(4)]
    dtype = probe.loaded_dtype(config, False)
    fwd = probe.forward(parts, config, dtype, features, "fp32")
    batch = probe.collate(parts, probe.apply_strategy(parts, probe.build(parts, config, dtype, "cpu")),
                          features)  # packed where the run packs
    rows, width = batch["labels"].shape
    virtual = strategy.get("num_virtual_tokens", 0) if strategy["name"] == "prompt" else 0
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert fwd.logits_last == config.vocab_size
    assert fwd.logits_numel == (labelled if completion_only else rows * (width + virtual)) * config.vocab_size
    row = probe.eval_row(parts, config, dtype, features[0], "fp32")
    length = len(features[0]["input_ids"])
    assert row.logits_numel == (length + virtual) * config.vocab_size
    # keys and values: 2 x layers x kv heads x positions x head dim, fp32 (prompt tuning's virtual
    # tokens are positions too)
    head_dim = config.hidden_size // config.num_attention_heads
    assert row.other_bytes == (2 * config.num_hidden_layers * config.num_key_value_heads
                               * (length + virtual) * head_dim * 4)


def test_plan_json_and_advice(tiny_bert_dir, write_recipe, tmp_path):
    from peftkit.cli import main

    path = write_recipe(tiny_ner_recipe(tiny_bert_dir, tmp_path / "r"))
    out = CliRunner().invoke(main, ["plan", str(path), "train.batch_size=8", "--json"])
    assert out.exit_code == 0, out.output
    record = json.loads(out.output[out.output.index("{"):])
    assert record["peak_memory_mb"] > record["memory_mb"]["baseline"] > 0
    assert record["seconds_per_epoch"] > 0 and record["train_batch"]["examples"] == 8
    assert record["steps_per_epoch"] == 8  # 64 examples / 8
    text = CliRunner().invoke(main, ["plan", str(path)])
    assert text.exit_code == 0 and "peak memory" in text.output


def test_advice_names_overrides_that_validate(tiny_bert_dir, write_recipe, tmp_path):
    """A plan that does not fit suggests a smaller batch and 8-bit, except where the strategy
    refuses a quantized base (full fine-tuning: its own check, not a name)."""
    from peftkit.plan import advice, make_plan

    for strategy, eight_bit in (({"name": "lora", "r": 4}, True), ({"name": "full"}, False)):
        parts = parts_for(write_recipe(tiny_ner_recipe(tiny_bert_dir, tmp_path / "r", strategy)))
        plan = make_plan(parts)
        plan.available_mb = 1.0
        tips = advice(plan, parts.recipe)
        assert any(t.startswith("train.batch_size=8 ") for t in tips)
        assert ("model.quantization=8bit" in tips) is eight_bit


def test_probe_frees_what_autograd_saved_once_it_has_counted_it():
    """The probe's pack hook must not hand autograd the tensor itself: an op that saves its own
    output (softmax, SiLU) then holds it from its own graph node, a cycle that outlives the probe
    (SmolLM2: ~700 MB kept alive through the whole training run)."""
    import gc
    import weakref

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from peftkit.plan.probe import Storages

    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64)).train()
    saved, refs = Storages({p.untyped_storage().data_ptr() for p in model.parameters()}), []

    def pack(t):
        refs.append(weakref.ref(t))
        return saved.add(t)

    with torch.autograd.graph.saved_tensors_hooks(pack, saved.get):
        out = model(input_ids=torch.randint(0, 64, (2, 9)))
    assert saved.bytes > 0 and saved.get(0) is refs[0]()  # counted, and kept while counting
    del out, model
    saved.release()
    gc.collect()
    assert refs and all(r() is None for r in refs)
