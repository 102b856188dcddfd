"""Where `data.name` points, decided without reading the data.

Order: data.train_file (the per-split files are the data set) -> built-in demo set -> existing
file/folder (relative to the recipe) -> `<data_dir>/<name>` with data_dir from the recipe or
$PEFTKIT_DATA_DIR -> hub dataset id. Which file in a folder is which split: data/layout.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from peftkit.data.layout import EXTENSIONS, FILE_KEYS, SPLIT_FILES, find_split_file, is_disk_folder
from peftkit.errors import DataError

BUILTIN = {"demo-ner": "token-classification", "demo-sentiment": "sequence-classification",
           "demo-gen": "causal-lm"}
DATA_DIR_ENV = "PEFTKIT_DATA_DIR"


@dataclass
class DataSource:
    kind: str    # builtin | local | files (data.train_file and its siblings) | hub
    location: str


def data_dir(recipe) -> Path | None:
    if recipe.data.data_dir:
        return recipe.resolve_path(recipe.data.data_dir)
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser().resolve() if env else None


def resolve_data(recipe) -> DataSource:
    """Resolve data.name; raises LookupError naming what was tried and the fix."""
    name = recipe.data.name
    if recipe.data.train_file:
        return DataSource("files", str(recipe.resolve_path(recipe.data.train_file)))
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
    key = ("data", d.name, d.train_file, d.data_dir, recipe.base_dir, os.environ.get(DATA_DIR_ENV))
    return recipe.resolve_once(key, lambda: resolve_data(recipe))


def split_file(folder: Path, split: str) -> Path | None:
    """The file of `split` in a data folder (layout.find_split_file; None where none fits)."""
    try:
        found = find_split_file(folder, split)
    except DataError:  # two files fit: reported when the data is read
        return None
    return found[0] if found else None


def check_data_source(recipe, problems: list[str]) -> None:
    if recipe.data.data_dir and not recipe.resolve_path(recipe.data.data_dir).is_dir():
        problems.append(f"data.data_dir: folder {recipe.resolve_path(recipe.data.data_dir)} does not exist")
        return
    check_split_files(recipe, problems)
    try:
        source = data_source(recipe)
    except LookupError as exc:
        problems.append(f"data.name: {exc}")
        return
    if source.kind == "builtin" and BUILTIN[source.location] != recipe.task:
        problems.append(f"data.name: {source.location} is a {BUILTIN[source.location]} set, "
                        f"but task is {recipe.task}")
    if source.kind in ("builtin", "hub") and (recipe.data.validation_file or recipe.data.test_file):
        problems.append("data.validation_file / data.test_file: these replace splits of local data "
                        "only; set data.train_file too, or point data.name at a local folder")
    folder = Path(source.location)
    if source.kind == "local" and folder.is_dir() and not is_disk_folder(folder):
        try:
            found = find_split_file(folder, recipe.data.train_split)
        except DataError as exc:
            problems.append(f"data.name: {exc}")
            return
        if found is None:
            problems.append(f"data.name: folder {source.location} has no {recipe.data.train_split} file "
                            f"(looked for {', '.join(SPLIT_FILES.get(recipe.data.train_split, []))} "
                            f"with {', '.join(EXTENSIONS)}, and for file names containing "
                            f"{recipe.data.train_split!r}); or name it with data.train_file")


def check_split_files(recipe, problems: list[str]) -> None:
    """data.train_file / validation_file / test_file exist; validation_size is a share or a count."""
    for key in FILE_KEYS.values():
        value = getattr(recipe.data, key)
        if value and not (recipe.resolve_path(value).is_file() or is_disk_folder(recipe.resolve_path(value))):
            problems.append(f"data.{key}: {recipe.resolve_path(value)} is not a file "
                            "(or a datasets save_to_disk folder)")
    size = recipe.data.validation_size
    if size >= 1 and not float(size).is_integer():
        problems.append(f"data.validation_size: {size:g} is neither a share below 1 (0.1) nor a "
                        "whole number of examples (500)")
