"""Speed features stay correct: length-grouped batches cover the data, precision resolves as
documented, bf16 really autocasts and still learns, the CLI starts without torch. No timing here:
benchmarks/throughput.py measures speed."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch

from peftkit import env
from peftkit import train as train_mod
from peftkit.packing import first_fit
from peftkit.recipe import build_recipe
from peftkit.tasks import get_task
from conftest import tiny_ner_recipe

N_EXAMPLES, BATCH = 64, 4


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is fastest, and spares the cores other test runs share."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def marked_dataset(n: int = N_EXAMPLES):
    """Examples of random lengths 3..40 whose second token is the example's index + 5 (a marker)."""
    from datasets import Dataset

    rng = random.Random(0)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for i in range(n):
        length = rng.randint(3, 40)
        rows["input_ids"].append([2, i + 5] + [7] * (length - 3) + [3])
        rows["attention_mask"].append([1] * length)
        rows["labels"].append([-100] + [1] * (length - 2) + [-100])
    return Dataset.from_dict(rows)


def tiny_trainer(tiny_bert_dir, tmp_path, precision="fp32", **train):
    """peftkit's own Trainer (build_trainer) around a tiny BERT and the marked data set."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer, BertConfig

    recipe = build_recipe(tiny_ner_recipe(tiny_bert_dir, tmp_path / "run", batch_size=BATCH,
                                          eval_every="no", logging_steps=1, **train))
    labels = ["O", "B-X"]
    torch.manual_seed(0)
    config = BertConfig(vocab_size=N_EXAMPLES + 8, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, num_labels=len(labels))
    model = AutoModelForTokenClassification.from_config(config)  # room for every marker id
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)  # pads with id 0
    data = {"train": marked_dataset(), "eval": marked_dataset(8)}
    return train_mod.build_trainer(recipe, model, tokenizer, get_task(recipe.task), data, labels,
                                   tmp_path / "run", precision, callbacks=[])


def batches_seen(trainer) -> list[list[int]]:
    """Train, recording each training batch's example indices (from the markers)."""
    seen = []

    def record(module, args, kwargs):
        if not module.training:
            return
        ids, positions = kwargs["input_ids"], kwargs.get("position_ids")
        if positions is None:  # one example per row, its marker second
            seen.append((ids[:, 1] - 5).tolist())
        else:  # packed rows: an example's marker sits at its position 1
            seen.append((ids[positions == 1] - 5).tolist())

    handle = trainer.model.register_forward_pre_hook(record, with_kwargs=True)
    trainer.train()
    handle.remove()
    return seen


@pytest.mark.parametrize("batching", ["grouped", "random", "packed"])
def test_every_example_exactly_once_per_epoch(tiny_bert_dir, tmp_path, batching):
    trainer = tiny_trainer(tiny_bert_dir, tmp_path, epochs=2, group_by_length=batching == "grouped",
                           packing=batching == "packed")
    counter = train_mod.TokenCounter(trainer.model)
    batches = batches_seen(trainer)
    counter.remove()
    per_epoch = -(-N_EXAMPLES // BATCH)
    assert len(batches) == 2 * per_epoch
    epochs = [[i for b in batches[e * per_epoch:(e + 1) * per_epoch] for i in b] for e in range(2)]
    for order in epochs:
        assert sorted(order) == list(range(N_EXAMPLES))
    assert epochs[0] != epochs[1]  # reshuffled each epoch

    lengths = [len(x) for x in marked_dataset()["attention_mask"]]
    real = sum(lengths[i] for b in batches for i in b)
    assert counter.real == real  # the counter sees what trained
    padded_slots = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    if batching == "packed":  # rows as wide as the batch's longest example, fewer rows
        slots = sum(len(first_fit([lengths[i] for i in b])[0]) * max(lengths[i] for i in b)
                    for b in batches)
        assert slots < 0.9 * padded_slots  # the same batches in fewer slots, even 4 at a time
    else:
        slots = padded_slots
    assert counter.slots == slots
    if batching == "random":
        assert counter.padding_fraction > 0.25, counter.padding_fraction
    if batching == "grouped":  # neighbours in a batch have similar lengths
        assert counter.padding_fraction < 0.15, counter.padding_fraction


def test_trainer_uses_the_length_grouped_sampler(tiny_bert_dir, tmp_path):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    trainer = tiny_trainer(tiny_bert_dir, tmp_path, group_by_length=True)
    assert trainer.args.train_sampling_strategy == "group_by_length"
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)


def cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n")
    return path


@pytest.mark.parametrize("flags,expected", [("avx512f avx512_bf16", "bf16"), ("amx_bf16 amx_tile", "bf16"),
                                            ("avx512f", "fp32"), ("", "fp32")])
def test_auto_precision_on_cpu(monkeypatch, tmp_path, flags, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(env, "CPUINFO", cpuinfo(tmp_path, flags))
    assert train_mod.resolve_precision("auto") == expected
    assert train_mod.resolve_precision("auto", quantized=True) == "fp32"  # int8 kernels are fp32
    assert train_mod.resolve_precision("fp32") == "fp32"  # an explicit choice is kept
    assert train_mod.resolve_precision("bf16") == "bf16"


def test_auto_precision_without_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(env, "CPUINFO", tmp_path / "missing")
    assert train_mod.resolve_precision("auto") == "fp32"


@pytest.mark.parametrize("bf16_ok,expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_gpu(monkeypatch, tmp_path, bf16_ok, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    monkeypatch.setattr(env, "CPUINFO", cpuinfo(tmp_path, "avx512_bf16"))  # the GPU decides
    assert train_mod.resolve_precision("auto") == expected


def test_padding_multiple_only_on_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_mod.pad_to_multiple("bf16") is None  # on CPU a padded slot costs a full token
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train_mod.pad_to_multiple("bf16") == 8
    assert train_mod.pad_to_multiple("fp32") is None


def test_bf16_autocasts_and_learns(tiny_bert_dir, tmp_path):
    trainer = tiny_trainer(tiny_bert_dir, tmp_path, precision="bf16", epochs=2)
    assert trainer.args.bf16
    dtypes = set()
    query = next(m for n, m in trainer.model.named_modules() if n.endswith("attention.self.query"))
    handle = query.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype) if m.training else None)
    trainer.train()
    handle.remove()
    assert dtypes == {torch.bfloat16}  # the Trainer's CPU bf16 path really runs matmuls in bf16
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights fp32
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert losses[-1] < 0.5 * losses[0]


def test_run_recipe_reports_padding_and_precision(tiny_bert_dir, tmp_path):
    from peftkit.pipeline import run_recipe

    recipe = build_recipe(tiny_ner_recipe(tiny_bert_dir, tmp_path / "run", precision="bf16", epochs=2,
                                          learning_rate=2e-2, num_threads=1))
    result = run_recipe(recipe)
    assert result["precision"] == "bf16"
    assert 0 <= result["train_padding_fraction"] < 0.5
    assert result["train_tokens_per_second"] > 0
    losses = [json.loads(line).get("loss") for line in (tmp_path / "run" / "metrics.jsonl").open()]
    losses = [x for x in losses if x is not None]
    # one batch's loss is noisier than a few steps of the tiny model move it: compare whole epochs
    # (the same 64 examples, reshuffled), which a bf16 run that does not learn cannot pass
    per_epoch = len(losses) // 2
    assert sum(losses[per_epoch:]) < sum(losses[:per_epoch])


HEAVY = ("torch", "transformers", "peft", "datasets")


@pytest.mark.parametrize("argv", [None, ["--help"], ["validate", "--no-data", "{recipe}"]])
def test_cli_start_does_not_import_torch(tmp_path, argv):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: token-classification\nstrategy: {name: lora}\n")
    code = ["import sys", "import peftkit.cli"]
    if argv:
        args = [a.format(recipe=recipe) for a in argv]
        code.append(f"peftkit.cli.main({args!r}, standalone_mode=False)")
    code.append(f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", "\n".join(code)], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("args,training", [
    (["/venv/bin/python", "-m", "peftkit", "run", "r.yaml"], True),
    (["/venv/bin/peftkit", "-q", "bench", "suite.yaml"], True),
    (["/venv/bin/peftkit", "predict", "runs/x", "text"], False),
    (["python", "-m", "pytest", "-k", "run"], False),
    (["vim", "peftkit"], False),
])
def test_other_peftkit_trainings_are_recognised(args, training):
    from peftkit.env import is_training_command

    assert is_training_command(args) is training


def test_a_second_run_on_the_machine_takes_a_share_of_the_cores(tiny_bert_dir, tmp_path, monkeypatch):
    from peftkit import env
    from peftkit.pipeline import run_recipe

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(env, "other_trainings", lambda: 1)
    result = run_recipe(build_recipe(tiny_ner_recipe(tiny_bert_dir, tmp_path / "run")))
    assert result["threads"] == max(1, env.default_threads() // 2)


@pytest.mark.parametrize("compiled", [False, True])
def test_torch_compile_reaches_the_trainer(tiny_bert_dir, tmp_path, compiled):
    """train.torch_compile is the Trainer's own switch (inductor via accelerate); off by default,
    since each new batch shape compiles first (benchmarks/compile_speed.py measures what it pays)."""
    raw = tiny_ner_recipe(tiny_bert_dir, tmp_path)
    if compiled:
        raw["train"]["torch_compile"] = True
    args = train_mod.training_arguments(build_recipe(raw), tmp_path, "fp32")
    assert args.torch_compile is compiled
