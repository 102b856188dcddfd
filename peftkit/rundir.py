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
      .peftkit-run    marker: written at run start, the folder is peftkit's to delete
      .peftkit-lock   held by the process writing the folder
      adapter/SHA256SUMS  SHA-256 of each weight file (peftkit.weight_files)

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

A folder is peftkit's own only when it holds MARKER (`.peftkit-run`), written by `prepare` when
the run starts; common names (model/, checkpoints/, labels.json) prove nothing (issue 17: another
tool's checkpoints/ and a thesis folder with model/ were deleted). A folder written before the
marker existed is "not a run" here: peftkit still reads it (predict, eval, merge, export) but never
deletes or cleans it; delete it by hand to reuse the name. While a run writes, it holds LOCK
(`.peftkit-lock`, peftkit.folder_lock): a second writer is refused, naming the first one's pid.

A checkpoint is complete once the Trainer has written its trainer_state.json, and resumable once
peftkit has sealed it (SHA256SUMS, written last) and its files still match.
Torch-free at import time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from peftkit import weight_files
from peftkit.errors import DISK_ERRNOS, PeftkitError, UsageError, write_error
from peftkit.folder_lock import FolderLock

RESULT, RECIPE, LABELS, METRICS = "result.json", "recipe.yaml", "labels.json", "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LOG = "run.log"  # what the libraries said (tables, warnings, raw Trainer logs): peftkit.output
LR_SEARCH, LR_SEARCH_TMP = "lr_search.json", "lr_search.tmp"  # the second: probes' scratch folder
ADAPTER_DIR, MODEL_DIR = "adapter", "model"  # the weights: a strategy's result, or a whole model
WEIGHTS_TMP = (f"{ADAPTER_DIR}.tmp", f"{MODEL_DIR}.tmp")  # weights being written (save_weights)
BENCH_ERROR, BENCH_VARIANT = "error.json", "variant.json"  # peftkit bench: a failed run, its settings
RUN_MARKERS = (RESULT, RECIPE, METRICS, CHECKPOINTS, LABELS, ADAPTER_DIR, MODEL_DIR, *WEIGHTS_TMP,
               BENCH_ERROR, BENCH_VARIANT)  # what a run folder may hold: not proof that it is one
MARKER = ".peftkit-run"      # written at run start: the only proof a folder is peftkit's (issue 17)
MARKER_FORMAT = 1
LOCK = ".peftkit-lock"       # held by the process writing the folder (a run, a bench)
CHECKSUMS = "SHA256SUMS"     # beside the weights: a SHA-256 line per weight file (weight_files)
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
        raise foreign_folder(run_dir)
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
    make_run_dir(run_dir)
    return "resume" if resume and state == "interrupted" else "new"


def folder_state(run_dir: Path) -> str:
    if not contents(run_dir):
        return "missing"
    if not is_ours(run_dir):
        return "foreign"
    if (run_dir / RESULT).is_file():
        return "finished"
    if complete_checkpoints(run_dir):
        return "interrupted"
    return "started"


def contents(folder: Path) -> list[str]:
    """What a folder holds, besides a lock file (a lock alone leaves a folder empty)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK)


def is_ours(folder: Path) -> bool:
    try:
        marker = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and isinstance(marker.get("format"), int)


def foreign_folder(run_dir: Path) -> UsageError:
    found = contents(run_dir)
    listed = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
    old = (f" If it is a run folder written by an older peftkit (before {MARKER} marked them), "
           "peftkit still reads it (predict, eval, merge, export) but will not delete it: remove "
           "it yourself to reuse the name." if (run_dir / RECIPE).is_file() else "")
    return UsageError(f"output folder {run_dir} is not empty ({listed}) and is not a peftkit run "
                      f"folder (no {MARKER}); choose another output.dir or --out. peftkit never "
                      f"deletes it, not even with --overwrite.{old}")


def claim(run_dir: Path) -> FolderLock:
    """The run folder's lock, held until released; a foreign folder is refused before anything is
    written into it."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"output folder {run_dir} is a file; set output.dir or --out to a folder")
    if contents(run_dir) and not is_ours(run_dir):
        raise foreign_folder(run_dir)
    make_dir(run_dir)
    return lock_folder(run_dir, f"run folder {run_dir}")


def lock_folder(folder: Path, what: str) -> FolderLock:
    return FolderLock(Path(folder) / LOCK, what).acquire()


def make_run_dir(run_dir: Path) -> None:
    """The folder, with the marker that makes it peftkit's own (kept if it is there already)."""
    from peftkit import __version__

    make_dir(run_dir)
    if not is_ours(run_dir):
        write_json(run_dir / MARKER, {"format": MARKER_FORMAT, "peftkit": __version__,
                                      "what": "a peftkit run folder; peftkit may delete it "
                                              "(--overwrite)"})


def remove_stale(run_dir: Path) -> None:
    """A run killed before its first checkpoint: its logs and partial files would mislead."""
    for name in (METRICS, CHECKPOINTS, LR_SEARCH, LR_SEARCH_TMP, *WEIGHTS_TMP):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


def remove(run_dir: Path) -> None:
    """Empty a folder of ours (the lock stays: its holder is this process)."""
    if not is_ours(run_dir):  # the rule prepare applies; said again where the deleting happens
        raise foreign_folder(run_dir)
    try:
        for path in run_dir.iterdir():
            if path.name == LOCK:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    except OSError as exc:
        raise PeftkitError(f"cannot delete {exc.filename or run_dir} for --overwrite: "
                           f"{exc.strerror}") from None


def make_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in DISK_ERRNOS:
            raise write_error(run_dir, exc) from None
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


def checkpoint_problem(folder: Path) -> str | None:
    """Why a complete checkpoint cannot be resumed from (None: its files match its manifest)."""
    if not (folder / CHECKSUMS).is_file():
        return f"it has no {CHECKSUMS} (cut short before it was sealed, or older than peftkit's checks)"
    try:
        weight_files.verify(folder, CHECKSUMS)
    except PeftkitError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------- writing

def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: readers see the old file or the new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from None


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
        weight_files.seal(tmp, CHECKSUMS)  # 0644 like the rest, and a SHA-256 line a file
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written copy would only fill the disk more
        raise write_error(final, exc) from None
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


def weights_size(path: Path) -> int:
    """Bytes of the weight files in a saved folder (not its tokenizer, configs or card)."""
    return sum(f.stat().st_size for f in weight_files.weight_files(path))


def load_run(run_dir: str | os.PathLike, quantization: str | None = None, recipe=None,
             trust_remote_code: bool = False):
    """(model, tokenizer, recipe, labels, task) of a finished run, ready for predict or eval.

    `quantization` overrides the recipe's (merge reloads an 8-bit run's base in full precision);
    `recipe`: the run's recipe.yaml when the caller has read it already (read_run_recipe).
    `trust_remote_code`: the command's --trust-remote-code; the folder's own recipe never decides
    it (issue 17: a folder is data, its auto_map code must not run because its recipe says so).
    """
    from peftkit import remote_code
    from peftkit.models import load_model, source_of
    from peftkit.strategies.base import ApplyContext
    from peftkit.tasks import get_task

    run_dir = Path(run_dir)
    if not (run_dir / RECIPE).is_file():
        raise UsageError(f"{run_dir} is not a peftkit run folder (no {RECIPE})")
    recipe = with_trust(recipe or read_run_recipe(run_dir), trust_remote_code)
    if quantization is not None:
        recipe = recipe.with_quantization(quantization)
    labels = read_labels(run_dir)
    task = get_task(recipe.task)
    folder = checked_weights(run_dir)
    source = source_of(recipe)
    code_dirs = [folder] + ([Path(source.path)] if source.kind == "folder" else [])
    remote_code.announce(code_dirs, trust_remote_code)

    def load_base(path: str | None = None):
        return load_model(source, recipe, task, labels, path=path)

    ctx = ApplyContext(task=task, head_names=task.head_names, quantized=recipe.model.quantized)
    with remote_code.refusing_code(code_dirs):
        tokenizer = load_tokenizer_from(folder, trust_remote_code)
        model = recipe.strategy_impl.load(load_base, folder, recipe.strategy, ctx)
    model.eval()
    return model, tokenizer, recipe, labels, task


def read_labels(run_dir: Path) -> list[str] | None:
    """labels.json: class names in id order (None: causal-lm, or no such file)."""
    path = Path(run_dir) / LABELS
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def checked_weights(run_dir: Path) -> Path:
    """weights_dir, its files checked against their SHA-256 lines (a folder from before the
    manifest has none to check)."""
    folder = weights_dir(Path(run_dir))
    weight_files.verify(folder, CHECKSUMS)
    return folder


def seal_weights(folder: Path) -> None:
    """For merged folders (export.merge): the same modes and manifest as a run's weights."""
    weight_files.seal(folder, CHECKSUMS)


def read_run_recipe(run_dir, trust_remote_code: bool = False):
    """A run or export folder's recipe.yaml, read as data: trust_remote_code is the command's, and
    relative paths in it are relative to the folder, never to the working directory."""
    from peftkit.recipe import read_yaml

    run_dir = Path(run_dir).resolve()
    return folder_recipe(read_yaml(str(run_dir / RECIPE)), run_dir, trust_remote_code)


def folder_recipe(raw: dict, folder: Path, trust_remote_code: bool = False):
    """build_recipe of a recipe stored in `folder` (recipe.yaml, or peftkit.json's copy)."""
    import copy

    from peftkit.recipe import build_recipe

    raw = copy.deepcopy(raw)
    model = raw.get("model")
    if isinstance(model, dict):
        model["trust_remote_code"] = bool(trust_remote_code)
        if isinstance(model.get("name"), str):
            model["name"] = inside_folder(model["name"], Path(folder))
    return build_recipe(raw, source=str(Path(folder) / RECIPE), check_paths=False)


def inside_folder(name: str, folder: Path) -> str:
    """A relative model path of a stored recipe, made absolute against its folder. A hub id stays
    a hub id, unless a file of that name sits in the folder or the working directory (which
    must then not be the one picked up)."""
    from peftkit.models_registry import ALIASES, HUB_ID

    path = Path(os.path.expanduser(name))
    if name in ALIASES or path.is_absolute():
        return name
    inside = folder / path
    if inside.exists() or path.exists() or name.startswith(".") or not HUB_ID.match(name):
        return str(inside)
    return name


def with_trust(recipe, trust_remote_code: bool):
    import dataclasses

    model = dataclasses.replace(recipe.model, trust_remote_code=bool(trust_remote_code))
    return dataclasses.replace(recipe, model=model)


def load_tokenizer_from(folder: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
