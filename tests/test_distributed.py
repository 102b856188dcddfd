"""Two CPU processes (DDP over gloo, launched by `peftkit run --nproc 2` through torch's own
launcher) on the tiny BERT: one run folder written once by the main process; test metrics over the
whole test set, equal to a single-process evaluation of the saved adapter; no hang (timeouts).
And, without processes: every strategy gives every trainable parameter a gradient, which is what
DDP's find_unused_parameters=False (Strategy.ddp_find_unused_parameters) relies on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import tiny_ner_recipe

LAUNCH_TIMEOUT = 600  # seconds: a hang (a rank waiting forever) fails the test instead of CI
TEST_SAMPLES, EVAL_BATCH = 10, 4  # 3 test batches over 2 processes: the last round is topped up
#                                  with repeated samples, which the Trainer's gather must drop


def peftkit(*args, launcher=()):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)  # never inherit a launcher's variables from the test runner
    return subprocess.run([sys.executable, "-m", *launcher, "peftkit", *args], capture_output=True,
                          text=True, env=env, timeout=LAUNCH_TIMEOUT)


@pytest.fixture(scope="module")
def ddp_run(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    run_dir = root / "run"
    raw = tiny_ner_recipe(tiny_bert_dir, run_dir, eval_every="no", eval_batch_size=EVAL_BATCH)
    raw["data"]["max_test_samples"] = TEST_SAMPLES
    recipe = root / "recipe.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = peftkit("run", str(recipe), "--nproc", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return root, run_dir, recipe, proc


def test_two_processes_write_one_run_folder_once(ddp_run):
    root, run_dir, recipe, proc = ddp_run
    assert sorted(p.name for p in root.iterdir()) == ["recipe.yaml", "run"]
    assert not list(run_dir.rglob("*.tmp"))
    assert proc.stdout.count("trainable params") == 1  # one summary, from the main process

    result = json.loads((run_dir / "result.json").read_text())
    assert result["world_size"] == 2
    assert result["effective_batch_size"] == 2 * 16  # processes x batch_size x accumulation
    assert result["examples"]["test"] == TEST_SAMPLES

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == sorted(set(steps)) and steps  # each logged step once
    assert sum("train_runtime" in r for r in records) == 1
    assert sum("test_f1" in r for r in records) == 1
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_two_process_metrics_equal_a_single_process_evaluation(ddp_run):
    """The gathered predictions cover the test set exactly once. The loss is the Trainer's mean of
    per-batch losses, and the topped-up last batch's mean includes the repeats, so it matches
    closely but not exactly; the entity and token scores come from the predictions and match."""
    from peftkit.predict import evaluate_folder

    _, run_dir, _, _ = ddp_run
    result = json.loads((run_dir / "result.json").read_text())
    single = evaluate_folder(run_dir)  # rundir.load_run + the run's own evaluation, 1 process
    assert single["examples"] == TEST_SAMPLES
    for key in ("f1", "precision", "recall", "token_accuracy"):
        assert result["test"][key] == pytest.approx(single["test"][key], abs=1e-9), key
    # The loss is a mean of per-batch means, and the distributed sampler deals the examples into
    # other batches than one process does, so it differs by how unevenly the loss falls across
    # examples (a few percent here); before declare_loss_kwargs it was twice the single-process one.
    assert result["test"]["loss"] == pytest.approx(single["test"]["loss"], rel=0.1)


def test_an_error_on_the_main_process_stops_every_process_and_is_printed_once(ddp_run):
    """Launched by torchrun itself: the main process refuses the finished folder, the other rank
    learns it from the main one (no hang at the next collective) and stays quiet."""
    _, run_dir, recipe, _ = ddp_run
    torchrun = ("torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m")
    proc = peftkit("run", str(recipe), launcher=torchrun)
    assert proc.returncode != 0
    assert (proc.stdout + proc.stderr).count("already holds a finished run") == 1
    assert json.loads((run_dir / "result.json").read_text())["world_size"] == 2  # untouched
    # --nproc checks the folder before it launches: the same refusal, without the launcher's report
    quick = peftkit("run", str(recipe), "--nproc", "2")
    assert quick.returncode == 2 and quick.stderr.startswith("error:") and "Traceback" not in quick.stderr


def test_nproc_refuses_to_nest_inside_a_launcher(tiny_bert_dir, write_recipe, tmp_path):
    recipe = write_recipe(tiny_ner_recipe(tiny_bert_dir, tmp_path / "run"))
    proc = subprocess.run([sys.executable, "-m", "peftkit", "run", str(recipe), "--nproc", "2"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "WORLD_SIZE": "2", "RANK": "1"})
    assert proc.returncode == 2 and "leave it out" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_launch_command_uses_torchs_launcher_on_a_free_port():
    from peftkit.launch import launch_command, launch_env

    cmd = launch_command(3, ["run", "r.yaml", "--out", "x"])
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=3" in cmd and cmd[-5:] == ["peftkit", "run", "r.yaml", "--out", "x"]
    assert int(launch_env(1024)["OMP_NUM_THREADS"]) == 1


# ---------------------------------------------------------------- DDP and unused parameters

STRATEGIES = [
    {"name": "full"}, {"name": "lora", "r": 4}, {"name": "lora", "r": 4, "use_dora": True},
    {"name": "adalora", "init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 1, "deltaT": 1},
    {"name": "adapter", "bottleneck_size": 4}, {"name": "ia3"},
    {"name": "prefix", "num_virtual_tokens": 3, "reparameterize": True, "hidden_size": 8},
    {"name": "prompt", "num_virtual_tokens": 3},
]


@pytest.mark.parametrize("settings", STRATEGIES, ids=lambda s: "-".join(map(str, s.values()))[:24])
def test_every_trainable_parameter_gets_a_gradient_unless_the_strategy_says(settings,
                                                                              tiny_bert_dir, tmp_path):
    """DDP with find_unused_parameters=False waits for a gradient of every trainable parameter in
    every step: one that gets none (a masked rank cut from the graph, an unused head, an MLP not
    on the forward path) hangs or fails the step. A strategy that has such parameters must say so
    with ddp_find_unused_parameters = True."""
    import torch

    from peftkit.data.readers import load_raw
    from peftkit.models import load_model, load_tokenizer, source_of
    from peftkit.recipe import build_recipe
    from peftkit.strategies import get_strategy
    from peftkit.strategies.base import ApplyContext
    from peftkit.tasks import get_task

    recipe = build_recipe(tiny_ner_recipe(tiny_bert_dir, tmp_path / "run", settings, max_steps=10),
                          source=None)
    task = get_task(recipe.task)
    raw = load_raw(recipe, task)
    labels = task.label_names(raw, recipe)
    source = source_of(recipe)
    tokenizer = load_tokenizer(source, recipe)
    encoded, _ = task.encode(raw, tokenizer, recipe, labels)
    strategy = get_strategy(recipe.strategy_name)
    ctx = ApplyContext(task=task, head_names=task.head_names, tokenizer=tokenizer, total_steps=10)
    model = strategy.apply(load_model(source, recipe, task, labels), recipe.strategy, ctx)
    batch = task.collator(tokenizer)([encoded["train"][i] for i in range(4)])
    model.train()
    model(**batch).loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused or strategy.ddp_find_unused_parameters, unused
    assert any(p.grad is not None and torch.count_nonzero(p.grad) for p in model.parameters())


def test_bench_nproc_runs_each_variant_through_the_launcher(tiny_bert_dir, tmp_path, monkeypatch):
    """`peftkit bench --nproc 2`: each variant is one `peftkit run --out FOLDER --overwrite` launch
    of a resolved copy of its recipe; the result is read back from the run folder."""
    import yaml

    from peftkit import launch
    from peftkit.bench.runner import run_one
    from peftkit.bench.suite import Variant
    from peftkit.recipe import build_recipe

    recipe = build_recipe(tiny_ner_recipe(tiny_bert_dir, tmp_path / "unused"), source=None)
    calls = []

    def fake_launch(nproc, args):
        calls.append((nproc, args, yaml.safe_load(open(args[1]))))
        folder = tmp_path / "runs" / "lora-r4"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({"metric": "f1", "test": {"f1": 0.5}}))
        return 0

    monkeypatch.setattr(launch, "launch", fake_launch)
    variant = Variant(name="lora-r4", group="lora-r4", seed=None, overrides={}, recipe=recipe)
    assert run_one(variant, tmp_path / "runs" / "lora-r4", nproc=2) == "f1 0.5000"
    (nproc, args, sent), = calls
    assert nproc == 2 and args[0] == "run" and args[2:] == ["--out", str(tmp_path / "runs" / "lora-r4"),
                                                           "--overwrite"]
    assert sent["model"]["name"] == str(tiny_bert_dir) and sent["strategy"]["r"] == 4
    assert not os.path.exists(args[1])  # the temporary recipe is gone


# ---------------------------------------------------------------- example accelerate configs

ACCELERATE_CONFIGS = {"ddp_cpu": "MULTI_GPU", "ddp_gpu": "MULTI_GPU", "fsdp": "FSDP",
                      "deepspeed_zero2": "DEEPSPEED"}


@pytest.mark.parametrize("name", sorted(ACCELERATE_CONFIGS))
def test_example_accelerate_configs_load_with_accelerates_reader(name):
    """recipes/accelerate/*.yaml: read by accelerate's own loader (unknown top-level keys raise);
    every fsdp_/deepspeed_ key is an `accelerate launch` option; each opens with its command."""
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    path = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert config.distributed_type.value == ACCELERATE_CONFIGS[name]
    assert config.num_processes >= 2 and config.mixed_precision == "no"  # train.precision rules
    options = {action.dest for action in launch_command_parser()._actions}
    for key in {**(config.fsdp_config or {}), **(config.deepspeed_config or {})}:
        assert key in options, f"{path.name}: {key} is not an accelerate launch option"
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and f"--config_file recipes/accelerate/{name}.yaml" in first
    if name == "fsdp":
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # gathered saves
