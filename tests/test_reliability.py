"""Reliability: interrupted runs resume to the same result, run folders follow clear rules, training
that diverges stops with a message, disk errors name the path, pickled weights are refused."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import peftkit.callbacks
from peftkit.cli import main
from peftkit.errors import PeftkitError, UsageError
from peftkit.resume import checkpoint_to_resume, truncate_metrics
from peftkit.rundir import make_run_dir, prepare, seal_weights
from peftkit.train import disk_errors

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("runtime", "per_second")


def ner_recipe(model: str, **train) -> dict:
    """64 examples, batch 4: 16 steps an epoch, 2 epochs; checkpoints every 5 steps, epoch ends."""
    return {
        "task": "token-classification",
        "model": {"name": model},
        "strategy": {"name": "lora", "r": 4},
        "data": {"name": "demo-ner", "max_length": 32, "max_train_samples": 64,
                 "max_eval_samples": 8, "max_test_samples": 16},
        "train": {"epochs": 2, "batch_size": 4, "learning_rate": 2e-2, "precision": "fp32",
                  "logging_steps": 1, "save_steps": 5, "num_threads": 1, "eval_every": "no",
                  "seed": 7, **train},
        "eval": {"fail_on_collapse": False},  # 32 steps of a tiny model: a pipeline test, not learning
    }


def test_metrics(run_dir: Path) -> dict:
    test = json.loads((run_dir / "result.json").read_text())["test"]
    return {k: v for k, v in test.items() if not k.endswith(TIMING)}


test_metrics.__test__ = False  # a helper, not a test


def loss_steps(run_dir: Path) -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]


def spawn(*args, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "peftkit", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# ---------------------------------------------------------------- resume

def test_run_killed_with_sigkill_resumes_to_identical_metrics(tmp_path, tiny_bert_dir):
    """kill -9 a `python -m peftkit run` in the middle of the second epoch (so data order, RNG,
    optimizer and scheduler all have to come back), resume it, and compare with an uninterrupted
    run made in this process meanwhile (the same numbers across processes, too)."""
    from peftkit.pipeline import run_recipe
    from peftkit.recipe import load_recipe

    recipe_dir, elsewhere = tmp_path / "recipes", tmp_path / "elsewhere"
    recipe_dir.mkdir()
    elsewhere.mkdir()  # the run starts here: the model path must resolve against the recipe
    recipe = recipe_dir / "ner.yaml"
    recipe.write_text(yaml.safe_dump(ner_recipe(os.path.relpath(tiny_bert_dir, recipe_dir))))
    ref_dir, victim_dir = tmp_path / "ref", tmp_path / "victim"

    victim = spawn("run", str(recipe), "--out", str(victim_dir), cwd=elsewhere)
    killer = threading.Thread(target=kill_when, args=(
        victim_dir / "checkpoints" / "checkpoint-20" / "trainer_state.json", victim))
    killer.start()
    run_recipe(load_recipe(recipe), run_dir=ref_dir)  # the uninterrupted run, meanwhile
    killer.join()
    assert victim.returncode == -signal.SIGKILL, victim.communicate()[0]
    assert not (victim_dir / "result.json").exists()

    refused = CliRunner().invoke(main, ["run", str(recipe), "--out", str(victim_dir)])
    assert refused.exit_code == 2 and "interrupted run" in refused.output \
        and "--resume" in refused.output, refused.output
    resumed = CliRunner().invoke(main, ["run", str(recipe), "--out", str(victim_dir), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming from" in resumed.output

    assert test_metrics(victim_dir) == test_metrics(ref_dir)
    assert loss_steps(victim_dir) == loss_steps(ref_dir)  # every step once, same losses
    assert [s for s, _ in loss_steps(victim_dir)] == list(range(1, 33))
    assert run_totals(victim_dir) == run_totals(ref_dir)  # the books cover the whole run


def run_totals(run_dir: Path) -> dict:
    """What result.json says of the whole training (not the timing: that is the machine's)."""
    result = json.loads((run_dir / "result.json").read_text())
    return {k: result[k] for k in ("train_loss", "train_steps", "train_tokens",
                                   "train_padding_fraction")}


def kill_when(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    """SIGKILL `proc` as soon as `path` exists (polled every 10 ms)."""
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()


def signal_at(step: int, signum: int = signal.SIGTERM):
    """A callback that sends this process `signum` when the Trainer reaches `step`."""
    from transformers import TrainerCallback

    class Send(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == step:
                os.kill(os.getpid(), signum)

    return Send()


def test_sigterm_checkpoints_and_adalora_resumes_identically(tmp_path, tiny_bert_dir, monkeypatch):
    """SIGTERM stops after the step with a checkpoint and exit code 143; AdaLoRA's importance
    scores and rank pattern come back with it, so the resumed run ends like an uninterrupted one."""
    from peftkit.pipeline import run_recipe
    from peftkit.recipe import build_recipe

    raw = ner_recipe(str(tiny_bert_dir), epochs=1)
    raw["strategy"] = {"name": "adalora", "init_r": 6, "target_r": 2, "tinit": 2, "tfinal": 4,
                       "deltaT": 2}
    recipe = build_recipe(raw)
    reference = run_recipe(recipe, run_dir=tmp_path / "ref")

    guards = peftkit.callbacks.guard_callbacks
    monkeypatch.setattr(peftkit.callbacks, "guard_callbacks", lambda r: [*guards(r), signal_at(9)])
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(peftkit.callbacks.RunInterrupted) as stopped:
        run_recipe(recipe, run_dir=tmp_path / "run")
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert "--resume" in str(stopped.value)
    assert not (tmp_path / "run" / "result.json").exists()
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-10" / "peftkit_state.pt").is_file()
    assert signal.getsignal(signal.SIGTERM) == before  # peftkit's handler is gone again

    monkeypatch.setattr(peftkit.callbacks, "guard_callbacks", guards)
    resumed = run_recipe(recipe, run_dir=tmp_path / "run", resume=True)
    same = {k: v for k, v in resumed["test"].items() if not k.endswith(TIMING)}
    assert same == {k: v for k, v in reference["test"].items() if not k.endswith(TIMING)}
    assert resumed["adalora"]["ranks"] == reference["adalora"]["ranks"]
    assert loss_steps(tmp_path / "run") == loss_steps(tmp_path / "ref")
    saved = json.loads((tmp_path / "ref" / "adapter" / "adapter_config.json").read_text())
    assert saved["orth_reg_weight"] == recipe.strategy.orth_reg_weight  # zeroed only to evaluate


def test_an_adalora_run_that_pruned_every_rank_says_so(tmp_path, tiny_bert_dir, capsys):
    """Two steps without the orthogonality penalty: the importance scores are still all zero when
    the budget is fixed, peft prunes every rank, and the run says the adapter is empty."""
    from conftest import tiny_ner_recipe
    from peftkit.pipeline import run_recipe
    from peftkit.recipe import build_recipe

    strategy = {"name": "adalora", "init_r": 4, "target_r": 2, "orth_reg_weight": 0.0}
    raw = tiny_ner_recipe(tiny_bert_dir, tmp_path / "run", strategy, max_steps=2, eval_every="no")
    result = run_recipe(build_recipe(raw))
    assert result["adalora"]["budget"] == 0
    assert "adalora pruned every rank" in capsys.readouterr().err  # a warning: stderr, even with -q


# ---------------------------------------------------------------- divergence

def poison_at(step: int):
    """A callback that turns one trainable weight into NaN during optimizer step `step`."""
    import torch
    from transformers import TrainerCallback

    class Poison(TrainerCallback):
        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            if state.global_step + 1 == step:
                with torch.no_grad():
                    next(p for p in model.parameters() if p.requires_grad).fill_(math.nan)

    return Poison()


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny_bert_dir, monkeypatch,
                                                              write_recipe):
    guards = peftkit.callbacks.guard_callbacks
    monkeypatch.setattr(peftkit.callbacks, "guard_callbacks", lambda r: [*guards(r), poison_at(4)])
    raw = ner_recipe(str(tiny_bert_dir), save_steps=2, epochs=1)
    args = ["run", str(write_recipe(raw)), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "diverged at step 4" in result.output and "learning rate" in result.output
    message = result.output[result.output.index("error:"):]
    assert "Traceback" not in result.output and len(message.splitlines()) < 10
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2"]
    assert "checkpoint-2" in result.output
    assert not (tmp_path / "run" / "result.json").exists()
    from safetensors.torch import load_file

    weights = load_file(str(checkpoints / "checkpoint-2" / "adapter_model.safetensors"))
    assert all(bool(t.isfinite().all()) for t in weights.values())


# ---------------------------------------------------------------- run folder rules

def fake_checkpoint(run: Path, step: int, complete: bool = True) -> Path:
    make_run_dir(run)  # marked as peftkit's own, as prepare() leaves every run folder
    folder = run / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    state = '{"global_step": %d}' % step if complete else '{"glob'  # cut short by a kill
    (folder / "optimizer.pt").write_bytes(b"state of step %d" % step)
    (folder / "trainer_state.json").write_text(state)
    if complete:
        seal_weights(folder)  # as CheckpointExtras.on_save leaves every checkpoint
    return folder


def test_finished_run_is_refused_unless_overwrite(tmp_path):
    run = tmp_path / "run"
    make_run_dir(run)
    (run / "result.json").write_text("{}")
    with pytest.raises(UsageError, match="already holds a finished run; pass --overwrite"):
        prepare(run, overwrite=False, resume=False)
    assert prepare(run, overwrite=False, resume=True) == "finished"  # nothing to train
    assert prepare(run, overwrite=True, resume=False) == "new"
    assert [p.name for p in run.iterdir()] == [".peftkit-run"]  # emptied, and marked again


def test_interrupted_run_needs_resume_or_overwrite(tmp_path):
    run = tmp_path / "run"
    fake_checkpoint(run, 5)
    with pytest.raises(UsageError, match=r"interrupted run \(last checkpoint at step 5\).*--resu"):
        prepare(run, overwrite=False, resume=False)
    assert prepare(run, overwrite=False, resume=True) == "resume"
    with pytest.raises(UsageError, match="pass one"):
        prepare(run, overwrite=True, resume=True)


def test_a_folder_that_is_not_a_run_is_never_deleted(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_text("x")
    for overwrite in (False, True):
        with pytest.raises(UsageError, match="not a peftkit run folder"):
            prepare(folder, overwrite=overwrite, resume=False)
    assert (folder / "holiday.jpg").exists()


def test_run_killed_before_its_first_checkpoint_starts_again(tmp_path, capsys):
    run = tmp_path / "run"
    make_run_dir(run)
    (run / "recipe.yaml").write_text("task: token-classification\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    fake_checkpoint(run, 5, complete=False)  # killed while writing it
    assert prepare(run, overwrite=False, resume=True) == "new"
    assert "no checkpoint yet" in capsys.readouterr().out
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()


def test_resume_skips_a_half_written_checkpoint_and_cuts_the_log(tmp_path):
    run = tmp_path / "run"
    fake_checkpoint(run, 5)
    fake_checkpoint(run, 10, complete=False)
    lines = [{"step": s, "loss": 1.0} for s in range(1, 8)] + [{"step": 5, "train_runtime": 1.0}]
    cut_short = '{"step": 8, "lo'
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + cut_short)
    assert checkpoint_to_resume(run) == str(run / "checkpoints" / "checkpoint-5")
    assert not (run / "checkpoints" / "checkpoint-10").exists()
    kept = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert kept == [{"step": s, "loss": 1.0} for s in range(1, 6)]


def test_resume_with_a_changed_recipe_names_the_change(tmp_path):
    from peftkit.recipe import build_recipe
    from peftkit.rundir import write_recipe

    run = tmp_path / "run"
    fake_checkpoint(run, 5)
    write_recipe(run, build_recipe({"train": {"learning_rate": 1e-3}}))
    changed = build_recipe({"train": {"learning_rate": 5e-4, "num_threads": 2}})
    with pytest.raises(UsageError, match=r"train.learning_rate: 0.001 -> 0.0005") as info:
        checkpoint_to_resume(run, changed)
    assert "num_threads" not in str(info.value)  # settings that do not change the result may


def test_truncate_metrics_keeps_lines_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')
    truncate_metrics(path, 2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


# ---------------------------------------------------------------- disk errors

def test_disk_full_names_the_path():
    with pytest.raises(PeftkitError, match=r"cannot write /runs/x/optimizer.pt: no space left"):
        with disk_errors(Path("/runs/x")):
            raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/optimizer.pt")
    with pytest.raises(FileNotFoundError):  # other OS errors are not disguised
        with disk_errors(Path("/runs/x")):
            raise FileNotFoundError(errno.ENOENT, "gone", "/x")


def test_torch_save_failing_on_a_full_disk_is_reported():
    # torch.save reports ENOSPC as a RuntimeError from its zip writer, without errno or path
    with pytest.raises(PeftkitError, match=r"cannot write a checkpoint under /runs/x.*disk full"):
        with disk_errors(Path("/runs/x")):
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter "
                               "failed writing file data/0: file write failed")
    with pytest.raises(RuntimeError, match="shape"):  # other runtime errors are not disguised
        with disk_errors(Path("/runs/x")):
            raise RuntimeError("shape mismatch")


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from peftkit.rundir import atomic_write_text

    target = tmp_path / "result.json"
    target.write_text("old")
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.endswith(".tmp"):
            real(self, "half")
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(PeftkitError, match=r"cannot write .*result.json(.tmp)?: no space left on the device"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_unwritable_output_folder_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PeftkitError, match=r"output folder .*file is a file"):
        prepare(blocker, overwrite=False, resume=False)
    with pytest.raises(PeftkitError, match=r"cannot create run folder .*file/run: Not a directory"):
        prepare(blocker / "run", overwrite=False, resume=False)


# ---------------------------------------------------------------- safe loading

def test_pickled_weights_with_code_are_refused_and_never_run(tmp_path, tiny_bert_dir, write_recipe):
    import shutil

    import torch

    evil = tmp_path / "evil-model"
    shutil.copytree(tiny_bert_dir, evil)
    (evil / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"embeddings.word_embeddings.weight": Payload()}, evil / "pytorch_model.bin")
    result = CliRunner().invoke(main, ["run", str(write_recipe(ner_recipe(str(evil)))),
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "refusing the pickled weights" in result.output, result.output
    assert not marker.exists()


def test_remote_code_runs_only_when_the_recipe_says_so():
    from peftkit.models import hub_kwargs
    from peftkit.models_registry import ModelSource
    from peftkit.recipe import build_recipe

    source = ModelSource("org/model", None, "hub", "org/model")
    default = build_recipe({"model": {"name": "minilm-l6"}})
    assert hub_kwargs(source, default)["trust_remote_code"] is False
    allowed = build_recipe({"model": {"name": "minilm-l6", "trust_remote_code": True}})
    assert hub_kwargs(source, allowed)["trust_remote_code"] is True


# ---------------------------------------------------------------- corrupt checkpoints (issue 17)

@pytest.mark.parametrize("damage", ["truncated", "unsealed"])
def test_resume_falls_back_to_the_newest_verified_checkpoint(tmp_path, capsys, damage):
    run = tmp_path / "run"
    fake_checkpoint(run, 5)
    newest = fake_checkpoint(run, 10)
    if damage == "truncated":
        (newest / "optimizer.pt").write_bytes(b"state")  # a copy cut short, a full disk
    else:
        (newest / "SHA256SUMS").unlink()  # killed after the Trainer's files, before the seal
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n"
                                               for s in range(1, 11)))
    assert checkpoint_to_resume(run) == str(run / "checkpoints" / "checkpoint-5")
    out = capsys.readouterr().out
    assert "not resuming from checkpoint-10" in out and "falling back" in out
    assert not newest.exists()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] \
        == [1, 2, 3, 4, 5]


def test_with_no_trustworthy_checkpoint_the_run_starts_again(tmp_path, capsys):
    run = tmp_path / "run"
    (fake_checkpoint(run, 5) / "optimizer.pt").write_bytes(b"flipped")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    assert checkpoint_to_resume(run) is None
    assert "starting the run again" in capsys.readouterr().out
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()


def test_a_resumed_final_save_does_not_log_the_test_line_twice(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 8, "loss": 1.0}\n{"step": 8, "test_loss": 0.5, "test_f1": 0.2}\n')
    truncate_metrics(path, 8)
    assert path.read_text() == '{"step": 8, "loss": 1.0}\n'


def test_leftovers_of_a_killed_merge_are_cleared_on_the_next_start(tmp_path, capsys):
    from peftkit.export.folder import staged

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    out = tmp_path / "merged"
    partial = tmp_path / f".merged.partial-{dead}"
    (partial / "sub").mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"x" * 1000)
    set_aside = tmp_path / f".merged.old-{dead}"  # killed between publish's two renames
    set_aside.mkdir()
    (set_aside / "peftkit.json").write_text("{}")
    running = tmp_path / f".merged.partial-{os.getppid()}"  # a merge still running: not touched
    running.mkdir()
    mine = tmp_path / ".mine.partial-1"  # another output's name: not touched
    mine.mkdir()
    with staged(out) as tmp:
        assert not partial.exists()
        assert (out / "peftkit.json").is_file()  # the previous result was put back first
        (tmp / "peftkit.json").write_text('{"new": 1}')
    assert (out / "peftkit.json").read_text() == '{"new": 1}'
    assert running.exists() and mine.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".mine.partial-1", f".merged.partial-{os.getppid()}", "merged"])
    assert "removed" in capsys.readouterr().out


def overflow_gradients():
    """A callback that makes the gradients' norm overflow (finite values, infinite norm), as an
    absurd LoRA alpha did: clipping then zeroes every update and the weights never go NaN."""
    from transformers import TrainerCallback

    class Overflow(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            for p in model.parameters():
                if p.requires_grad:
                    p.register_hook(lambda g: g * 3e38)

    return Overflow()


def test_gradients_that_stay_infinite_stop_the_run(tmp_path, tiny_bert_dir, monkeypatch,
                                                   write_recipe):
    guards = peftkit.callbacks.guard_callbacks
    monkeypatch.setattr(peftkit.callbacks, "guard_callbacks",
                        lambda r: [*guards(r), overflow_gradients()])
    raw = ner_recipe(str(tiny_bert_dir), epochs=1, save_steps=100)
    result = CliRunner().invoke(main, ["run", str(write_recipe(raw)), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "diverged at step 3" in result.output and "gradient norm was inf" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r" / "result.json").exists()


# ---------------------------------------------------------------- kills during the final save

# Run in a child process: `python -c KILLER <cut point> run ...` SIGKILLs itself at that point of
# the final save (after training and the test evaluation), a real kill -9 at an exact place.
KILLER = """
import os, signal, sys
point = sys.argv.pop(1)
import peftkit.pipeline as pipeline, peftkit.rundir as rundir

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def kill_if(test, real):
    return lambda *a, **k: die() if test(*a) else real(*a, **k)

if point == "weights-unsealed":  # adapter.tmp written, SHA256SUMS not yet
    rundir.weight_files.seal = kill_if(lambda f, m: str(f).endswith(".tmp"), rundir.weight_files.seal)
if point == "before-labels":     # adapter/ in place, labels.json not yet
    rundir.write_json = kill_if(lambda p, d: p.name == "labels.json", rundir.write_json)
if point == "before-card":       # labels written, adapter config / model card not yet
    pipeline.describe_run_weights = die
if point == "result-unrenamed":  # result.json.tmp written, not yet renamed
    os.replace = kill_if(lambda s, d: str(d).endswith("result.json"), os.replace)
from peftkit.cli import main
main(args=sys.argv[1:])
"""
# what describes the machine at the time rather than the run: `plan` is re-estimated when a run
# resumes (free memory, this process's resident memory, a timed matmul)
TIMING_KEYS = ("train_seconds", "train_tokens_per_second", "peak_memory_mb", "run_dir", "test", "plan")


def stable_result(run_dir: Path) -> dict:
    result = json.loads((run_dir / "result.json").read_text())
    return {k: v for k, v in result.items() if k not in TIMING_KEYS}


def folder_files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                  if p.is_file() and "checkpoints" not in p.parts and p.name not in ("run.log",))


@pytest.mark.parametrize("point", ["weights-unsealed", "before-labels", "before-card",
                                   "result-unrenamed"])
def test_a_kill_at_any_point_of_the_final_save_resumes_to_the_same_files(
        tmp_path, tiny_bert_dir, point, reference_run):
    recipe, ref = reference_run
    victim = tmp_path / "victim"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    killed = subprocess.run([sys.executable, "-c", KILLER, point, "run", str(recipe), "--out",
                             str(victim)], env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert not (victim / "result.json").exists()
    resumed = CliRunner().invoke(main, ["run", str(recipe), "--out", str(victim), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert stable_result(victim) == stable_result(ref)
    assert test_metrics(victim) == test_metrics(ref)
    assert folder_files(victim) == folder_files(ref)
    assert (victim / "adapter" / "SHA256SUMS").read_text() == (ref / "adapter" / "SHA256SUMS").read_text()
    lines = [json.loads(x) for x in (victim / "metrics.jsonl").read_text().splitlines()]
    assert sum("test_f1" in r for r in lines) == 1  # the test line once, not twice
    assert loss_steps(victim) == loss_steps(ref)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_bert_dir):
    """One uninterrupted run (16 steps) that every cut point is compared with."""
    from peftkit.pipeline import run_recipe
    from peftkit.recipe import load_recipe

    where = tmp_path_factory.mktemp("final-save")
    recipe = where / "ner.yaml"
    recipe.write_text(yaml.safe_dump(ner_recipe(str(tiny_bert_dir), epochs=1)))
    run_recipe(load_recipe(recipe), run_dir=where / "ref")
    return recipe, where / "ref"


# ---------------------------------------------------------------- a full disk anywhere

NO_SPACE = "no space left on the device. Free some space"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 64 KB tmpfs where this machine lets the test mount one (root in a container)."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here; the simulated ENOSPC tests below cover the messages")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)  # lazy: a log file may be open


def test_a_real_full_disk_during_checkpoints_gives_the_documented_line(small_tmpfs, tiny_bert_dir,
                                                                      write_recipe):
    recipe = write_recipe(ner_recipe(str(tiny_bert_dir), epochs=1))
    result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(small_tmpfs / "run")])
    assert result.exit_code == 1, result.output
    assert NO_SPACE in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("where", ["weights", "result"])
def test_a_full_disk_during_the_final_save_gives_the_documented_line(tmp_path, tiny_bert_dir,
                                                                     write_recipe, monkeypatch,
                                                                     where):
    import peftkit.rundir as rundir

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "weights":
        monkeypatch.setattr(rundir.weight_files, "seal", full)
    else:
        real = os.replace
        monkeypatch.setattr(rundir.os, "replace", lambda s, d: full() if str(d).endswith(
            "result.json") else real(s, d))
    recipe = write_recipe(ner_recipe(str(tiny_bert_dir), epochs=1, save_steps=100))
    result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert NO_SPACE in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "adapter.tmp").exists()  # nothing half-written left to fill it


def test_tokenizers_reporting_a_full_disk_is_the_documented_line():
    with pytest.raises(PeftkitError, match=NO_SPACE):
        with disk_errors(Path("/runs/x")):
            raise Exception("No space left on device (os error 28)")  # tokenizers' own words
