"""What validation knows of the base model without loading its weights (issue 17: values that
make no sense for the model failed only after loading, or trained silently wrong).

    read(recipe, problems) ─▶ ModelFacts: hidden size, positions, layers   (config.json as JSON)
                              .module_names()   a meta-device model: names, no memory, no weights

Also refuses, with the file named, a model folder that cannot load: config.json that is not
JSON, no weight file, a .gguf that is not GGUF. Torch-free unless module_names() is asked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from peftkit.models_registry import model_source
from peftkit.weight_files import WEIGHT_SUFFIXES, graph_only

# config.json spells the same fact differently per architecture (BERT, GPT-2, T5, ...)
HIDDEN = ("hidden_size", "n_embd", "d_model")
POSITIONS = ("max_position_embeddings", "n_positions", "max_seq_len")
LAYERS = ("num_hidden_layers", "n_layer", "num_layers")
GGUF_MAGIC = b"GGUF"


@dataclass
class ModelFacts:
    folder: Path
    config: dict
    auto_class: str            # the task's transformers Auto class (its head is part of the names)
    _names: list[str] | None = field(default=None, repr=False)

    def first(self, keys: tuple[str, ...]) -> int | None:
        for key in keys:
            value = self.config.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    @property
    def hidden_size(self) -> int | None:
        return self.first(HIDDEN)

    @property
    def max_positions(self) -> int | None:
        return self.first(POSITIONS)

    @property
    def num_layers(self) -> int | None:
        return self.first(LAYERS)

    def module_names(self) -> list[str] | None:
        """Every module's dotted name, from a model built on the meta device (no weights); None
        when transformers cannot build it from its config alone (its own code: not run here)."""
        if self._names is None:
            self._names = meta_module_names(self.folder, self.auto_class)
        return self._names


def read(recipe, problems: list[str]) -> ModelFacts | None:
    """The facts of a local model (folder or packaged alias); None when there is nothing to read
    here (a hub id, a GGUF file: checked for its magic bytes only) or the name did not resolve."""
    from peftkit.tasks import get_task

    try:
        source = model_source(recipe)
    except (LookupError, OSError, ValueError):
        return None  # check_model_name reported it
    folder = Path(source.path)
    if source.gguf_file:
        check_gguf(folder / source.gguf_file, problems)
        return None
    if source.kind == "hub":
        return None
    if graph_only(folder):  # `peftkit eval` of an ONNX folder: no torch weights to read facts of
        return None          # (training from one is refused when the model loads: models.py)
    config = read_config(folder / "config.json", problems)
    if config is None or not has_weights(folder, problems):
        return None
    return ModelFacts(folder, config, get_task(recipe.task).auto_class)


def read_config(path: Path, problems: list[str]) -> dict | None:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problems.append(f"model.name: {path} cannot be read as JSON ({type(exc).__name__}: "
                        f"{str(exc)[:80]}); the model folder is damaged: copy it again")
        return None
    if not isinstance(config, dict):
        problems.append(f"model.name: {path} is not a JSON object; the model folder is damaged")
        return None
    return config


def has_weights(folder: Path, problems: list[str]) -> bool:
    if any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir() if p.is_file()):
        return True
    problems.append(f"model.name: {folder} has a config.json but no weight file (model.safetensors "
                    "or pytorch_model.bin); copy the weights in, or point model.name elsewhere")
    return False


def check_gguf(path: Path, problems: list[str]) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        problems.append(f"model.name: cannot read {path}: {exc.strerror}")
        return
    if magic != GGUF_MAGIC:
        problems.append(f"model.name: {path} is not a GGUF file (it does not start with the GGUF "
                        "magic bytes); download it again or point model.name at a model folder")


def meta_module_names(folder: Path, auto_class: str) -> list[str] | None:
    import torch
    import transformers

    try:  # never trust_remote_code: validation runs no code a folder names
        config = transformers.AutoConfig.from_pretrained(str(folder))
        with torch.device("meta"):
            model = getattr(transformers, auto_class).from_config(config)
    except Exception:  # noqa: BLE001 - best effort: loading reports what is wrong with the model
        return None
    return [name for name, _ in model.named_modules() if name]
