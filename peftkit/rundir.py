"""The run folder: its names, the rules for a folder that already exists, its checkpoints, and
writes that are never half-done. Every other module asks here.

    run/
      recipe.yaml     the resolved recipe (every default filled in)
      adapter/        peft adapter folder, peftkit's own adapter format, or model/ for full
      labels.json     class names in id order (null for causal-lm)
      metrics.jsonl   every log line of training and evaluation
      result.json     final metrics, parameter counts, speed, memory, versions
      lr_search.json  learning_rate: auto's choice, reused by --resume (peftkit/lr_search.py)
      checkpoints/    Trainer checkpoints (resume)

A run folder is in one of these states; the rule for each needs no prompt (`prepare`):

    state          no flag                  --resume                      --overwrite
    missing/empty  new run                  new run (note)                new run
    started        new run (stale logs      new run (note: no checkpoint  delete, new run
    (no checkpoint) removed)                yet)
    interrupted    refuse: pass --resume    continue from the newest      delete, new run
    (checkpoints)  or --overwrite           complete checkpoint (peftkit/resume.py)
    finished       refuse: pass --overwrite nothing to do: print the      delete, new run
    (result.json)                           saved result
    not a run      refuse (never deleted, even with --overwrite)

A checkpoint is complete once the Trainer has written its trainer_state.json (its last file).
Torch-free at import time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from peftkit.errors import PeftkitError, UsageError

RESULT, RECIPE, LABELS, METRICS = "result.json", "recipe.yaml", "labels.json", "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LOG = "run.log"  # what the libraries said (tables, warnings, raw Trainer logs): peftkit.output
LR_SEARCH, LR_SEARCH_TMP = "lr_search.json", "lr_search.tmp"  # the second: probes' scratch folder
ADAPTER_DIR, MODEL_DIR = "adapter", "model"  # the weights: a strategy's result, or a whole model
WEIGHTS_TMP = (f"{ADAPTER_DIR}.tmp", f"{MODEL_DIR}.tmp")  # weights being written (save_weights)
BENCH_ERROR, BENCH_VARIANT = "error.json", "variant.json"  # peftkit bench: a failed run, its settings
RUN_MARKERS = (RESULT, RECIPE, METRICS, CHECKPOINTS, LABELS, ADAPTER_DIR, MODEL_DIR, *WEIGHTS_TMP,
               BENCH_ERROR, BENCH_VARIANT)
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def default_run_dir(recipe) -> Path:
    if recipe.output.dir:
        return Path(os.path.expanduser(recipe.output.dir))
    stem = Path(recipe.source).stem if recipe.source else "run"
    return Path("runs") / stem


# ---------------------------------------------------------------- folder rules

def prepare(run_dir: Path, overwrite: bool, resume: bool) -> str:
    """Apply the table above; returns "new", "resume" or "finished" (nothing to train)."""
    run_dir = Path(run_dir)
    if overwrite and resume:
        raise UsageError("--overwrite starts the run again and --resume continues it: pass one")
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"output folder {run_dir} is a file; set output.dir or --out to a folder")
    state = folder_state(run_dir)
    if state == "foreign":
        raise UsageError(f"output folder {run_dir} is not empty and is not a peftkit run folder "
                         f"(no {RECIPE}); choose another output.dir or --out. peftkit never "
                         "deletes it, not even with --overwrite")
    if state == "finished" and not (overwrite or resume):
        raise UsageError(f"{run_dir} already holds a finished run; pass --overwrite to replace it, "
                         "or set output.dir (or --out) to another folder")
    if state == "interrupted" and not (overwrite or resume):
        step = checkpoint_step(complete_checkpoints(run_dir)[-1])
        raise UsageError(f"{run_dir} holds an interrupted run (last checkpoint at step {step}) and "
                         "no result; pass --resume to continue it or --overwrite to start again")
    if overwrite and state != "missing":
        remove(run_dir)
    elif state == "finished":
        return "finished"
    elif state == "started" or (resume and state == "missing"):
        if resume:
            print(f"note: {run_dir} has no checkpoint yet; starting the run from the beginning")
        remove_stale(run_dir)
    make_dir(run_dir)
    return "resume" if resume and state == "interrupted" else "new"


def folder_state(run_dir: Path) -> str:
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return "missing"
    if (run_dir / RESULT).is_file():
        return "finished"
    if complete_checkpoints(run_dir):
        return "interrupted"
    if any((run_dir / m).exists() for m in RUN_MARKERS):
        return "started"
    return "foreign"


def remove_stale(run_dir: Path) -> None:
    """A run killed before its first checkpoint: its logs and partial files would mislead."""
    for name in (METRICS, CHECKPOINTS, LR_SEARCH, LR_SEARCH_TMP, *WEIGHTS_TMP):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


def remove(run_dir: Path) -> None:
    try:
        shutil.rmtree(run_dir)
    except OSError as exc:
        raise PeftkitError(f"cannot delete {exc.filename or run_dir} for --overwrite: "
                           f"{exc.strerror}") from None


def make_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PeftkitError(f"cannot create run folder {run_dir}: {exc.strerror}") from None


def finished_result(run_dir: Path) -> dict:
    """--resume on a finished run: nothing to train; the saved result stands."""
    print(f"note: {run_dir} already holds a finished run; nothing to resume (pass --overwrite to "
          "train it again)")
    try:
        return json.loads((Path(run_dir) / RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PeftkitError(f"cannot read {Path(run_dir) / RESULT}: {exc}") from None


# ---------------------------------------------------------------- checkpoints

def checkpoint_step(folder: Path) -> int:
    return int(CHECKPOINT.match(folder.name).group(1))


def all_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    return sorted(found, key=checkpoint_step)


def is_complete(folder: Path) -> bool:
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def complete_checkpoints(run_dir: Path) -> list[Path]:
    return [c for c in all_checkpoints(run_dir) if is_complete(c)]


# ---------------------------------------------------------------- writing

def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: readers see the old file or the new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PeftkitError(f"cannot write {path}: {exc.strerror}") from None


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_recipe(run_dir: Path, recipe) -> None:
    import yaml

    atomic_write_text(run_dir / RECIPE, yaml.safe_dump(recipe.to_dict(), sort_keys=False))


def save_weights(run_dir: Path, strategy, model, tokenizer, labels, cfg=None, write=None) -> Path:
    """Save the adapter (or full model) and tokenizer under a temporary name, then rename.

    `cfg`: the recipe's strategy settings; `write(folder)` replaces strategy.save (a state dict
    gathered from sharded processes, peftkit.distributed)."""
    name = MODEL_DIR if strategy.saves_whole_model else ADAPTER_DIR
    final, tmp = run_dir / name, run_dir / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if write is not None:
            write(tmp)
        else:
            strategy.save(model, tmp, cfg)
        tokenizer.save_pretrained(str(tmp))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        raise PeftkitError(f"cannot save weights to {final}: {exc.strerror}") from None
    write_json(run_dir / LABELS, labels)
    return final


def weights_dir(run_dir: Path) -> Path:
    if (run_dir / "peftkit.json").is_file():  # a `peftkit export` folder: weights at its top level
        return run_dir
    for name in (ADAPTER_DIR, MODEL_DIR):
        if (run_dir / name).is_dir():
            return run_dir / name
    raise UsageError(f"{run_dir} holds no adapter/ or model/ folder: not a finished peftkit run "
                     "(or it ran with output.save_model: false)")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def weights_size(path: Path) -> int:
    """Bytes of the weight files in a saved folder (not its tokenizer, configs or card)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES)


def load_run(run_dir: str | os.PathLike, quantization: str | None = None, recipe=None):
    """(model, tokenizer, recipe, labels, task) of a finished run, ready for predict or eval.

    `quantization` overrides the recipe's (merge reloads an 8-bit run's base in full precision);
    `recipe`: the run's recipe.yaml when the caller has read it already.
    """
    from peftkit.models import load_model, source_of
    from peftkit.recipe import build_recipe, read_yaml
    from peftkit.strategies.base import ApplyContext
    from peftkit.tasks import get_task

    run_dir = Path(run_dir)
    if not (run_dir / RECIPE).is_file():
        raise UsageError(f"{run_dir} is not a peftkit run folder (no {RECIPE})")
    if recipe is None:
        recipe = build_recipe(read_yaml(str(run_dir / RECIPE)), source=None, check_paths=False)
    if quantization is not None:
        recipe = recipe.with_quantization(quantization)
    labels = json.loads((run_dir / LABELS).read_text()) if (run_dir / LABELS).exists() else None
    task = get_task(recipe.task)
    folder = weights_dir(run_dir)
    tokenizer = load_tokenizer_from(folder)
    source = source_of(recipe)

    def load_base(path: str | None = None):
        return load_model(source, recipe, task, labels, path=path)

    ctx = ApplyContext(task=task, head_names=task.head_names, quantized=recipe.model.quantized)
    model = recipe.strategy_impl.load(load_base, folder, recipe.strategy, ctx)
    model.eval()
    return model, tokenizer, recipe, labels, task


def load_tokenizer_from(folder: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
