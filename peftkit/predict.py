"""Use a trained model from its folder: predict on texts, evaluate on a data set.

    run folder (peftkit run)  ──rundir.load_run──┐
    export folder (peftkit export) ──load_run────┼─▶ Loaded(model, tokenizer, recipe, labels, task)
    merged folder (peftkit merge) ──Auto*.from_pretrained + peftkit.json──┤
    ONNX folder (merge --format onnx) ──ONNX Runtime session (export/onnx_runtime) + peftkit.json──┘
        ─▶ task.predict(texts)                        JSON records (entities / label / generation)
        ─▶ data readers + task.encode + the pipeline's Trainer ─▶ task.evaluate   same metrics as the run
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit.errors import DataError, UsageError


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    recipe: Any
    labels: list[str] | None
    task: Any
    kind: str            # run | adapter | merged | onnx


def read_folder(path, trust_remote_code: bool = False) -> tuple[str, object]:
    """(kind, recipe) of a run / export / merged folder, read without loading a model. The
    recipe's trust_remote_code is `trust_remote_code` (the command's flag), never the folder's."""
    from peftkit import rundir
    from peftkit.export.folder import MERGED, ONNX, read_meta

    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder; give a run folder (peftkit run) or a merged "
                         "model folder (peftkit merge)")
    meta = read_meta(path)
    if (path / rundir.RECIPE).is_file():
        recipe = rundir.read_run_recipe(path, trust_remote_code)
        return ("adapter" if meta else "run"), recipe
    if meta and meta.get("kind") in (MERGED, ONNX):
        raw = copy.deepcopy(meta["recipe"])  # the model is now this folder, in full precision
        raw["model"].update(name=str(path.resolve()), gguf_file=None, revision=None,
                            quantization="none")
        if meta["kind"] == ONNX:  # the graph computes in float32 whatever the run trained in
            raw["train"]["precision"] = "fp32"
        return meta["kind"], rundir.folder_recipe(raw, path.resolve(), trust_remote_code)
    hint = (" It looks like a Hugging Face model folder, but without peftkit.json nothing says its "
            "task; load it with transformers directly." if (path / "config.json").is_file() else "")
    raise UsageError(f"{path} is neither a peftkit run folder (recipe.yaml) nor a merged model folder "
                     f"(peftkit.json).{hint}")


def load_for_inference(path, folder: tuple[str, object] | None = None,
                       trust_remote_code: bool = False) -> Loaded:
    """`folder`: what read_folder(path) said, when the caller has asked it already."""
    from peftkit import rundir

    from peftkit.export.folder import MERGED, ONNX

    kind, recipe = folder or read_folder(path, trust_remote_code)
    if kind == MERGED:
        return load_merged(Path(path), recipe, trust_remote_code)
    if kind == ONNX:
        return load_onnx(Path(path), recipe, trust_remote_code)
    model, tokenizer, recipe, labels, task = rundir.load_run(
        path, recipe=recipe, trust_remote_code=trust_remote_code)
    return Loaded(model, tokenizer, recipe, labels, task, kind)


def load_merged(path: Path, recipe, trust_remote_code: bool = False) -> Loaded:
    """A merged folder loads with plain transformers; peftkit.json supplies the task and recipe."""
    import transformers

    from peftkit import remote_code
    from peftkit.export.folder import read_meta
    from peftkit.rundir import checked_weights, load_tokenizer_from
    from peftkit.tasks import get_task

    task = get_task(recipe.task)
    checked_weights(path)
    remote_code.announce([path], trust_remote_code)
    with remote_code.refusing_code([path]):
        model = getattr(transformers, task.auto_class).from_pretrained(
            str(path), trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer_from(path, trust_remote_code)
    model.eval()
    labels = read_meta(path).get("labels")
    return Loaded(model, tokenizer, recipe, labels, task, "merged")


def load_onnx(path: Path, recipe, trust_remote_code: bool = False) -> Loaded:
    """An ONNX folder: the graph in an ONNX Runtime session behind the forward() the task calls
    (export/onnx_model.py), the tokenizer and peftkit.json's labels beside it."""
    from peftkit import remote_code
    from peftkit.export.folder import ONNX, read_meta
    from peftkit.export.onnx_runtime import onnx_model
    from peftkit.rundir import load_tokenizer_from
    from peftkit.tasks import get_task

    task = get_task(recipe.task)
    remote_code.announce([path], trust_remote_code)
    with remote_code.refusing_code([path]):
        model = onnx_model(path, task, trust_remote_code)
        tokenizer = load_tokenizer_from(path, trust_remote_code)
    return Loaded(model, tokenizer, recipe, read_meta(path).get("labels"), task, ONNX)


def predict_texts(path, texts: list[str], trust_remote_code: bool = False) -> list[dict]:
    loaded = load_for_inference(path, trust_remote_code=trust_remote_code)
    return loaded.task.predict(loaded.model, loaded.tokenizer, list(texts), loaded.labels,
                               loaded.recipe)


# ---------------------------------------------------------------- evaluation

def evaluate_folder(path, data: str | None = None, split: str | None = None,
                    max_samples: int | None = None, overrides: list[str] = (),
                  trust_remote_code: bool = False) -> dict:
    """Metrics of the model in `path` on one split, computed exactly as the run computed its own.

    Defaults: the run's data set and test split, with the run's max_test_samples; with another
    `data`, every example of the split unless `max_samples` says otherwise.
    """
    from peftkit.env import set_threads
    from peftkit.train import build_trainer, resolve_precision

    # the data settings are checked before any model is loaded
    folder = read_folder(path, trust_remote_code)  # recipe.yaml (or peftkit.json) is read once
    recipe = eval_recipe(folder[1], data, split, max_samples, overrides)
    set_threads(recipe)  # before loading: an ONNX Runtime session takes its threads when made
    loaded = load_for_inference(path, folder, trust_remote_code)
    encoded = encode_split(loaded, recipe)
    test = encoded["test"]
    precision = resolve_precision(recipe.train.precision, recipe.model.quantized)
    with tempfile.TemporaryDirectory(prefix="peftkit-eval-") as tmp:
        trainer = build_trainer(recipe, loaded.model, loaded.tokenizer, loaded.task, encoded,
                                loaded.labels, Path(tmp), precision, [])
        metrics = loaded.task.evaluate(trainer, encoded["test"], recipe, loaded.labels, "test", Path(tmp))
    from peftkit.health import split_metrics

    scores, health = split_metrics(metrics, "test")
    return {"folder": str(path), "data": recipe.data.name, "split": recipe.data.final_split_name,
            "examples": len(test), "metric": recipe.eval.metric or loaded.task.default_metric,
            "precision": precision, "test": {k.removeprefix("test_"): v for k, v in scores.items()},
            "health": health}


def encode_split(loaded: Loaded, recipe):
    """The recipe's test split read and tokenized as in training (train / eval: one dummy row)."""
    from datasets import DatasetDict

    from peftkit.data.readers import load_raw

    test = load_raw(recipe, loaded.task)["test"]
    one = test.select(range(1))  # encode / Trainer want train and eval splits; they are not used
    try:
        encoded, _ = loaded.task.encode(DatasetDict(train=one, eval=one, test=test),
                                        loaded.tokenizer, recipe, loaded.labels)
    except (KeyError, IndexError) as exc:
        raise DataError(f"data {recipe.data.name!r} split {recipe.data.final_split_name!r} has a "
                        f"label the model was not trained on: {exc}; its labels are "
                        f"{loaded.labels}") from None
    return encoded


def one_file(d: dict, split: str) -> None:
    """A run on per-split files (data.train_file, ...): every role reads the file of `split`."""
    from peftkit.data.layout import FILE_KEYS, kind_of_split, role_of_kind

    key = FILE_KEYS[role_of_kind(kind_of_split(split) or "test")]
    if d.get("train_file") and d.get(key):
        d.update({k: d[key] for k in FILE_KEYS.values()})


def eval_recipe(recipe, data=None, split=None, max_samples=None, overrides=()):
    """The run's recipe pointed at one split; read as the run read its data (columns, max_length)."""
    from peftkit.recipe import build_recipe

    raw = recipe.to_dict()
    d = raw["data"]
    if data is not None:
        d.update(name=data, data_dir=None, config=None, max_test_samples=None,
                 train_file=None, validation_file=None, test_file=None)
    split = split or d["test_split"] or d["eval_split"] or (None if data is None else "test")
    # split None: the run scored the part held out of its training split; its recipe as it is cuts
    # the same examples again (seeded; read_data holds out before any max_*_samples)
    if split is not None:
        one_file(d, split)
        # every role reads the one split, so a data set with only that split (or one file) works
        d.update(train_split=split, eval_split=split, test_split=split, max_train_samples=None,
                 max_eval_samples=None)
    if max_samples is not None:
        d["max_test_samples"] = max_samples
    # the run's own data resolves against its folder; --data is the user's, against the cwd
    return build_recipe(raw, list(overrides), source=recipe.source if data is None else None)
