"""One base model holding every served run's adapter (issue 20, part 3).

    run folders ──rundir.load_run (first: base + its adapter, SHA256SUMS checked)──▶ PeftModel
                ──strategy.add_adapter (the others, checked the same way)──────▶ one adapter each
    predict(names, texts)   one name per text ──▶ task.predict, the code `peftkit predict` runs:
        strategy.mixed_batch: one forward pass, peft's `adapter_names` picks each row's adapter
        otherwise:            adapter by adapter, set_adapter under the lock

Every run must sit on the same base (model, GGUF file, revision, quantization), task, labels and
strategy: one set of base weights and one head shape can serve them all. The lock serializes
forward passes and adapter loading; the server calls this from one worker thread anyway.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit.errors import UsageError

NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,63}$")   # what an OpenAI `model` field can carry as is


@dataclass
class Adapter:
    name: str          # what clients call it (`adapter`, OpenAI `model`)
    folder: Path       # its run (or export) folder
    recipe: Any
    peft_name: str     # its name inside the PeftModel


def split_spec(spec: str) -> tuple[str, Path]:
    """NAME=PATH, or a folder whose name is the adapter's name."""
    name, sep, path = spec.partition("=")
    if sep and NAME.match(name) and not Path(spec).exists():
        return name, Path(path)
    return Path(spec).resolve().name, Path(spec)


def read_run(spec: str, trust_remote_code: bool = False) -> tuple[str, Path, Any]:
    """(name, folder, recipe) of a run or export folder, read without loading a model."""
    from peftkit.export.folder import MERGED, ONNX
    from peftkit.predict import read_folder

    name, folder = split_spec(spec)
    if not NAME.match(name):
        raise UsageError(f"{spec}: {name!r} cannot name an adapter (letters, digits, '_', '-', "
                         "'.', at most 64); name it with NAME=PATH")
    kind, recipe = read_folder(folder, trust_remote_code)
    if kind in (MERGED, ONNX):
        raise UsageError(f"{folder} is a merged model: its adapter is folded into the weights, "
                         "so it cannot share a base; serve the run folder it was merged from")
    return name, folder, recipe


def base_identity(recipe) -> tuple:
    """What must be equal for two runs to share one loaded base."""
    from peftkit.models import source_of

    source = source_of(recipe)
    return (source.path, source.gguf_file, recipe.model.revision, recipe.model.quantization)


class AdapterPool:
    def __init__(self, model, tokenizer, task, labels, first: Adapter):
        self.model, self.tokenizer, self.task, self.labels = model, tokenizer, task, labels
        self.adapters: dict[str, Adapter] = {first.name: first}
        self.strategy = first.recipe.strategy_impl
        self.lock = threading.Lock()

    @classmethod
    def load(cls, specs: list[str], trust_remote_code: bool = False,
             base: str | None = None) -> "AdapterPool":
        """Check every run against the first (and `base`, the base model named on the command
        line) before any model is loaded, then load them."""
        from peftkit import rundir

        runs = [read_run(spec, trust_remote_code) for spec in specs]
        first_name, first_folder, first_recipe = runs[0]
        if base is not None:
            check_base(base, first_folder, first_recipe)
        for name, folder, recipe in runs[1:]:
            check_compatible(first_folder, first_recipe, folder, recipe, len(runs))
        seen: dict[str, Path] = {}
        for name, folder, _ in runs:
            if name in seen:
                raise UsageError(f"two runs are named {name!r} ({seen[name]} and {folder}); name "
                                 "them apart with NAME=PATH, e.g. ner_a=runs/a")
            seen[name] = folder
        model, tokenizer, recipe, labels, task = rundir.load_run(
            first_folder, recipe=first_recipe, trust_remote_code=trust_remote_code)
        pool = cls(model, tokenizer, task, labels,
                   Adapter(first_name, first_folder, recipe, model_adapter_name(model)))
        for name, folder, recipe in runs[1:]:
            pool.attach(name, folder, recipe)
        return pool

    # ---------------------------------------------------------------- adapters

    def attach(self, name: str, folder: Path, recipe) -> Adapter:
        from peftkit import rundir

        weights = rundir.checked_weights(folder)
        adapter = Adapter(name, folder, recipe, f"adapter_{len(self.adapters)}")
        with self.lock:
            self.strategy.add_adapter(self.model, weights, adapter.peft_name)
            self.model.eval()
            self.adapters[name] = adapter
        return adapter

    def add(self, spec: str) -> Adapter:
        """Load one more run while serving (POST /v1/adapters); model code never runs."""
        name, folder, recipe = read_run(spec)
        if name in self.adapters:
            raise UsageError(f"an adapter named {name!r} is served already; give another name "
                             "(\"name\" in the request)")
        first = next(iter(self.adapters.values()))
        check_compatible(first.folder, first.recipe, folder, recipe, len(self.adapters) + 1)
        return self.attach(name, folder, recipe)

    def get(self, name: str) -> Adapter | None:
        return self.adapters.get(name)

    def batch_key(self, adapter: Adapter) -> tuple:
        """Requests with equal keys may share one forward pass."""
        settings = self.task.predict_settings(adapter.recipe)
        if self.strategy.mixed_batch(adapter.recipe.strategy):
            return settings
        return (*settings, adapter.name)

    # ---------------------------------------------------------------- inference

    def predict(self, names: list[str], texts: list[str]) -> list[dict]:
        """`peftkit predict`'s records, text i through adapter names[i] (equal batch keys)."""
        first = self.adapters[names[0]]
        with self.lock:
            if self.strategy.mixed_batch(first.recipe.strategy):
                peft_names = [self.adapters[n].peft_name for n in names]
                return self.task.predict(self.model, self.tokenizer, texts, self.labels,
                                         first.recipe, adapter_names=peft_names)
            self.activate(first)
            return self.task.predict(self.model, self.tokenizer, texts, self.labels, first.recipe)

    def generate(self, names: list[str], prompts: list[list[int]], sampling) -> list[list[int]]:
        """New token ids per prompt (causal-lm), prompt i through adapter names[i]."""
        from peftkit.tasks.causal_lm import generate_ids

        first = self.adapters[names[0]]
        size = first.recipe.train.eval_batch_size
        with self.lock:
            if self.strategy.mixed_batch(first.recipe.strategy):
                peft_names = [self.adapters[n].peft_name for n in names]
                return generate_ids(self.model, self.tokenizer, prompts, sampling, size, peft_names)
            self.activate(first)
            return generate_ids(self.model, self.tokenizer, prompts, sampling, size)

    def activate(self, adapter: Adapter) -> None:
        if len(self.adapters) > 1:  # a single run may be a strategy without named adapters
            self.model.set_adapter(adapter.peft_name)


def model_adapter_name(model) -> str:
    return getattr(model, "active_adapter", None) or "default"


def check_compatible(folder_a: Path, a, folder_b: Path, b, count: int) -> None:
    """Refuse a run that cannot share the first run's loaded base, saying what differs."""
    from peftkit import rundir

    if a.strategy_impl is not b.strategy_impl:
        raise UsageError(f"{folder_b} was trained with strategy {b.strategy_impl.name}, {folder_a} with "
                         f"{a.strategy_impl.name}: one served base holds adapters of one strategy; "
                         "serve them from separate `peftkit serve` processes")
    if count > 1 and not a.strategy_impl.serves_many:
        raise UsageError(f"strategy {a.strategy_impl.name} cannot serve several runs on one base: "
                         f"{a.strategy_impl.serve_refusal}")
    if a.task != b.task:
        raise UsageError(f"{folder_b} is a {b.task} run and {folder_a} a {a.task} run: every run "
                         "served together must have the same task")
    if base_identity(a) != base_identity(b):
        raise UsageError(f"{folder_b} was trained on another base than {folder_a} (model "
                         f"{b.model.name!r} against {a.model.name!r}, or its GGUF file, revision "
                         "or quantization): every run served together must share one base model")
    if rundir.read_labels(folder_a) != rundir.read_labels(folder_b):
        raise UsageError(f"{folder_b} and {folder_a} have different labels (labels.json): their "
                         "heads do not fit one base; serve them from separate processes")


def check_base(name: str, folder: Path, recipe) -> None:
    """`peftkit serve BASE RUN ...`: BASE must be the base the runs were trained on."""
    from peftkit.models_registry import resolve_model

    try:
        given = resolve_model(name)
    except LookupError as exc:
        raise UsageError(f"{name}: not a run folder, and {exc}") from None
    if (given.path, given.gguf_file) != base_identity(recipe)[:2]:
        raise UsageError(f"base {name} is not the model the runs were trained on "
                         f"({recipe.model.name}, from {folder}); give that base, or leave BASE "
                         "out: the runs name their own")
