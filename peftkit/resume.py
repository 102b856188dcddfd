"""Continuing an interrupted run: which checkpoint to continue from, and whether the recipe is
still the one the run started with. The folder rules and checkpoint listing are peftkit.rundir's;
the Trainer call is peftkit.train.run_training.

Torch-free.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from peftkit import rundir
from peftkit.errors import UsageError
from peftkit.recipe import flatten

# Settings a resumed run may change: they do not alter what is trained.
CHANGEABLE = ("train.num_threads", "train.report_to", "train.eval_batch_size", "train.save_steps",
              "train.save_total_limit", "train.logging_steps", "output.", "eval.")


def checkpoint_to_resume(run_dir: Path, recipe=None) -> str | None:
    """The newest complete checkpoint; partial ones after it are deleted and metrics.jsonl is cut
    back to its step, so the resumed run appends where the checkpoint left off."""
    run_dir = Path(run_dir)
    if recipe is not None:
        check_same_recipe(run_dir, recipe)
    chosen = newest_verified(run_dir)
    if chosen is None:
        print(f"note: {run_dir} has no checkpoint that can be trusted; starting the run again")
        rundir.remove_stale(run_dir)
        return None
    for partial in rundir.all_checkpoints(run_dir):
        if rundir.checkpoint_step(partial) > rundir.checkpoint_step(chosen):
            print(f"note: removing incomplete checkpoint {partial} (the run stopped while "
                  "writing it)")
            shutil.rmtree(partial, ignore_errors=True)
    truncate_metrics(run_dir / rundir.METRICS, rundir.checkpoint_step(chosen))
    print(f"resuming from {chosen}")
    return str(chosen)


def newest_verified(run_dir: Path) -> Path | None:
    """The newest complete checkpoint whose files match its SHA256SUMS; the newer ones that do
    not are named, removed, and fallen back from (issue 17: a truncated checkpoint gave a
    traceback on --resume)."""
    for folder in reversed(rundir.complete_checkpoints(run_dir)):
        problem = rundir.checkpoint_problem(folder)
        if problem is None:
            return folder
        print(f"note: not resuming from {folder.name}: {problem}; removing it and falling back "
              "to the checkpoint before")
        shutil.rmtree(folder, ignore_errors=True)
    return None


def truncate_metrics(path: Path, step: int) -> None:
    """Keep log lines up to `step` (logs come before the checkpoint of the same step); drop later
    ones, a last line cut short by a kill, and the interrupted train() call's closing summary
    (train_runtime ...): the resumed log then reads like an uninterrupted run's."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step \
                and "train_runtime" not in record and not is_test_log(record):
            kept.append(line)
    rundir.atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def is_test_log(record: dict) -> bool:
    """The final test evaluation's line: a resumed run logs it again (issue 17: it was twice)."""
    return any(str(k).startswith("test_") for k in record)


def check_same_recipe(run_dir: Path, recipe) -> None:
    """Resuming with other settings would silently mix two runs: name what changed."""
    try:
        saved = yaml.safe_load((run_dir / rundir.RECIPE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return
    if not isinstance(saved, dict):
        return
    old, new = flatten(saved), flatten(recipe.to_dict())
    changed = [k for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and not k.startswith(CHANGEABLE)]
    if changed:
        lines = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
        raise UsageError(f"cannot resume {run_dir}: the recipe differs from the one the run was "
                         f"started with ({lines}). Resume with the same recipe, or pass "
                         "--overwrite to start again")
