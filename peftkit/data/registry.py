"""Where `data.name` points, decided without reading the data.

Order: built-in demo set -> existing file/folder (relative to the recipe) -> `<data_dir>/<name>`
with data_dir from the recipe or $PEFTKIT_DATA_DIR -> hub dataset id.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BUILTIN = {"demo-ner": "token-classification", "demo-sentiment": "sequence-classification",
           "demo-gen": "causal-lm"}
DATA_DIR_ENV = "PEFTKIT_DATA_DIR"
SPLIT_FILES = {  # split -> file name stems tried in a data folder, in order
    "train": ["train", "trainset", "training"],
    "validation": ["validation", "valid", "dev", "devset", "val", "testa"],
    "test": ["test", "testset_w_refs", "testset", "testb"],
}
EXTENSIONS = [".txt", ".conll", ".iob", ".jsonl", ".json", ".parquet", ".csv", ".tsv"]


@dataclass
class DataSource:
    kind: str    # builtin | local | hub
    location: str


def data_dir(recipe) -> Path | None:
    if recipe.data.data_dir:
        return recipe.resolve_path(recipe.data.data_dir)
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser().resolve() if env else None


def resolve_data(recipe) -> DataSource:
    """Resolve data.name; raises LookupError naming what was tried and the fix."""
    name = recipe.data.name
    if name in BUILTIN:
        return DataSource("builtin", name)
    local = recipe.resolve_path(name)
    if local.exists():
        return DataSource("local", str(local))
    root = data_dir(recipe)
    if root is not None and (root / name).exists():
        return DataSource("local", str(root / name))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise LookupError(f"data folder or file {local} does not exist")
    if root is None and "/" not in name:
        hint = (f"set {DATA_DIR_ENV} or data.data_dir to the folder that holds {name}/ "
                f"(e.g. {DATA_DIR_ENV}=../shared/data)")
    else:
        hint = f"{root / name if root else name} does not exist"
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise LookupError(f"data set {name!r} not found locally and the hub is offline: {hint}")
    return DataSource("hub", name)


def data_source(recipe) -> DataSource:
    """resolve_data, looked up once per recipe (Recipe.resolve_once)."""
    d = recipe.data
    key = ("data", d.name, d.data_dir, recipe.base_dir, os.environ.get(DATA_DIR_ENV))
    return recipe.resolve_once(key, lambda: resolve_data(recipe))


def split_file(folder: Path, split: str) -> Path | None:
    """The file of `split` in a data folder (train.txt, dev.tsv, valid.jsonl, ...)."""
    stems = SPLIT_FILES.get(split, [split])
    for stem in stems:
        for ext in EXTENSIONS:
            if (folder / f"{stem}{ext}").is_file():
                return folder / f"{stem}{ext}"
    return None


def check_data_source(recipe, problems: list[str]) -> None:
    if recipe.data.data_dir and not recipe.resolve_path(recipe.data.data_dir).is_dir():
        problems.append(f"data.data_dir: folder {recipe.resolve_path(recipe.data.data_dir)} does not exist")
        return
    try:
        source = data_source(recipe)
    except LookupError as exc:
        problems.append(f"data.name: {exc}")
        return
    if source.kind == "builtin" and BUILTIN[source.location] != recipe.task:
        problems.append(f"data.name: {source.location} is a {BUILTIN[source.location]} set, "
                        f"but task is {recipe.task}")
    if source.kind == "local" and Path(source.location).is_dir():
        if split_file(Path(source.location), recipe.data.train_split) is None:
            problems.append(f"data.name: folder {source.location} has no {recipe.data.train_split} file "
                            f"(looked for {', '.join(SPLIT_FILES.get(recipe.data.train_split, []))} "
                            f"with {', '.join(EXTENSIONS)})")
