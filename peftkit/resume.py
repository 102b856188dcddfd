"""What happens when a run folder already exists, and how an interrupted run continues.

A run folder is in one of these states; the rule for each needs no prompt:

    state          no flag                  --resume                      --overwrite
    missing/empty  new run                  new run (note)                new run
    started        new run (stale logs      new run (note: no checkpoint  delete, new run
    (no checkpoint) removed)                yet)
    interrupted    refuse: pass --resume    continue from the newest      delete, new run
    (checkpoints)  or --overwrite           complete checkpoint
    finished       refuse: pass --overwrite nothing to do: print the      delete, new run
    (result.json)                           saved result
    not a run      refuse (never deleted, even with --overwrite)

A checkpoint is complete once the Trainer has written its trainer_state.json (its last file).
Torch-free: imports transformers/torch only inside `train`.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from peftkit.errors import PeftkitError, UsageError

RESULT, RECIPE, METRICS, CHECKPOINTS = "result.json", "recipe.yaml", "metrics.jsonl", "checkpoints"
LR_SEARCH = "lr_search.json"  # learning_rate: auto's choice, reused by --resume (peftkit/lr_search.py)
RUN_MARKERS = (RESULT, RECIPE, METRICS, CHECKPOINTS, "labels.json", "adapter", "model",
               "adapter.tmp", "model.tmp", "error.json", "variant.json")  # last two: peftkit bench
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Settings a resumed run may change: they do not alter what is trained.
CHANGEABLE = ("train.num_threads", "train.report_to", "train.eval_batch_size", "train.save_steps",
              "train.save_total_limit", "train.logging_steps", "output.", "eval.")


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
    for name in (METRICS, CHECKPOINTS, LR_SEARCH, "lr_search.tmp", "adapter.tmp", "model.tmp"):
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


def checkpoint_to_resume(run_dir: Path, recipe=None) -> str | None:
    """The newest complete checkpoint; partial ones after it are deleted and metrics.jsonl is cut
    back to its step, so the resumed run appends where the checkpoint left off."""
    run_dir = Path(run_dir)
    if recipe is not None:
        check_same_recipe(run_dir, recipe)
    complete = complete_checkpoints(run_dir)
    if not complete:
        return None
    chosen = complete[-1]
    for partial in all_checkpoints(run_dir):
        if checkpoint_step(partial) > checkpoint_step(chosen):
            print(f"note: removing incomplete checkpoint {partial} (the run stopped while "
                  "writing it)")
            shutil.rmtree(partial, ignore_errors=True)
    truncate_metrics(run_dir / METRICS, checkpoint_step(chosen))
    print(f"resuming from {chosen}")
    return str(chosen)


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
                and "train_runtime" not in record:
            kept.append(line)
    from peftkit.rundir import atomic_write_text

    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def check_same_recipe(run_dir: Path, recipe) -> None:
    """Resuming with other settings would silently mix two runs: name what changed."""
    import yaml

    try:
        saved = yaml.safe_load((run_dir / RECIPE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return
    if not isinstance(saved, dict):
        return
    old, new = flatten(saved), flatten(recipe.to_dict())
    changed = [k for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and not k.startswith(CHANGEABLE)]
    if changed:
        lines = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
        raise UsageError(f"cannot resume {run_dir}: the recipe differs from the interrupted run's "
                         f"({lines}). Resume with the same recipe, or pass --overwrite to start "
                         "again")


def flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# ---------------------------------------------------------------- training

def train(trainer, checkpoint: str | None, run_dir: Path):
    """trainer.train with peftkit's signal handling and disk errors turned into PeftkitErrors."""
    from peftkit.callbacks import CheckpointExtras, SignalStop

    stop = None
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, CheckpointExtras):
            cb.resume_from = checkpoint
        if isinstance(cb, SignalStop):
            stop = cb
    with disk_errors(run_dir), (stop.installed() if stop else _nothing()):
        return trainer.train(resume_from_checkpoint=checkpoint)


@contextmanager
def _nothing():
    yield


DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
               errno.EROFS: "read-only file system"}


TORCH_WRITE_ERRORS = ("PytorchStreamWriter", "inline_container", "file write failed")


@contextmanager
def disk_errors(where: Path):
    """Full disks and unwritable folders as one clear line naming the path, not a traceback."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        raise PeftkitError(f"cannot write {exc.filename or where}: {DISK_ERRNOS[exc.errno]}. "
                           "Free some space or point output.dir (or --out) at a writable "
                           "folder") from None
    except RuntimeError as exc:
        # torch.save reports a failed write as a RuntimeError from its zip writer, without errno
        text = str(exc)
        if not any(k in text for k in TORCH_WRITE_ERRORS):
            raise
        raise PeftkitError(f"cannot write a checkpoint under {where}: "
                           f"{text.splitlines()[0][:160]}. "
                           "Is the disk full or the folder read-only? Free some space or point "
                           "output.dir (or --out) elsewhere, then rerun with --resume") from None
