"""The recipes shipped inside the package (peftkit/recipes/, package data): found by name, listed
with their one-line description, copied out to edit (like torchtune's `tune ls` / `tune cp`).

A recipe's name is its path under peftkit/recipes/ without `.yaml` (`lora_ner`, `conll2003/lora`);
its description is the first comment line that is not the command that runs it. The accelerate
configs (recipes/accelerate/) are launcher settings, not recipes, and are not listed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from peftkit.errors import UsageError

ROOT = Path(__file__).resolve().parent / "recipes"
NOT_RECIPES = ("accelerate",)


def names() -> list[str]:
    found = (p.relative_to(ROOT).with_suffix("").as_posix() for p in ROOT.rglob("*.yaml"))
    return sorted(n for n in found if n.split("/")[0] not in NOT_RECIPES)


def path_of(name: str) -> Path:
    name = name.removesuffix(".yaml")
    if name not in names():
        import difflib

        close = difflib.get_close_matches(name, names(), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(f"no shipped recipe {name!r}{hint}; `peftkit recipes` lists them")
    return ROOT / f"{name}.yaml"


def description(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.lstrip("#").strip()
        if not line.startswith("#"):
            break
        if text and "peftkit run" not in text:
            return text
    return ""


def copy(name: str, dest: str | None, force: bool = False) -> Path:
    """Copy recipe `name` to `dest` (a file, or a folder to put `<last part>.yaml` in)."""
    source = path_of(name)
    target = Path(dest) if dest else Path.cwd() / source.name
    if target.is_dir():
        target = target / source.name
    if target.exists() and not force:
        raise UsageError(f"{target} exists; choose another destination or pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target
