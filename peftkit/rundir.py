"""The run folder: what a finished run leaves, written so that it is never half-written.

    run/
      recipe.yaml     the resolved recipe (every default filled in)
      adapter/        peft adapter folder, peftkit's own adapter format, or model/ for full
      labels.json     class names in id order (null for causal-lm)
      metrics.jsonl   every log line of training and evaluation
      result.json     final metrics, parameter counts, speed, memory, versions
      checkpoints/    Trainer checkpoints (resume)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from peftkit.errors import PeftkitError, UsageError

RESULT = "result.json"
RECIPE = "recipe.yaml"
LABELS = "labels.json"
ADAPTER_DIR, MODEL_DIR = "adapter", "model"  # the weights: a strategy's result, or a whole model


def default_run_dir(recipe) -> Path:
    if recipe.output.dir:
        return Path(os.path.expanduser(recipe.output.dir))
    stem = Path(recipe.source).stem if recipe.source else "run"
    return Path("runs") / stem


def prepare(run_dir: Path, overwrite: bool, resume: bool) -> str:
    """Apply the existing-folder rules (table in peftkit/resume.py): "new", "resume" or "finished"."""
    from peftkit.resume import prepare as prepare_folder

    return prepare_folder(run_dir, overwrite, resume)


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


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def load_run(run_dir: str | os.PathLike, quantization: str | None = None):
    """(model, tokenizer, recipe, labels, task) of a finished run, ready for predict or eval.

    `quantization` overrides the recipe's (merge reloads an 8-bit run's base in full precision).
    """
    from peftkit.models import load_model, source_of
    from peftkit.recipe import build_recipe, read_yaml
    from peftkit.strategies.base import ApplyContext
    from peftkit.tasks import get_task

    run_dir = Path(run_dir)
    if not (run_dir / RECIPE).is_file():
        raise UsageError(f"{run_dir} is not a peftkit run folder (no {RECIPE})")
    recipe = build_recipe(read_yaml(str(run_dir / RECIPE)), source=None, check_paths=False)
    if quantization is not None:
        recipe.model.quantization = quantization
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
