"""docs/recipe.md, generated from the recipe schema (the dataclasses in recipe.py and
strategies/configs.py), so the reference cannot drift from what `validate` accepts:

    python -m peftkit.recipe_reference > docs/recipe.md

tests/test_shipped_recipes.py fails when the file and the schema differ.
"""

from __future__ import annotations

import dataclasses
import typing

from peftkit.recipe import SECTIONS, Recipe, describe, range_text
from peftkit.strategies.configs import DEFAULT_STRATEGY, STRATEGIES

HEADER = """# Recipe reference

Every key a recipe can set, generated from the schema by `python -m peftkit.recipe_reference >
docs/recipe.md` (a test keeps this file in sync). Set a key in the YAML file or on the command
line as a dotted override: `peftkit run RECIPE train.epochs=1`, `peftkit validate RECIPE
strategy.r=16`. Start from a shipped recipe: `peftkit recipes`, `peftkit recipes copy lora_ner my.yaml`.
"""


def rows(cls) -> list[str]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue  # internal fields (source, resolved, ...)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        allowed = ", ".join(f"`{c}`" for c in f.metadata["choices"]) if "choices" in f.metadata \
            else range_text(f.metadata)
        out.append(f"| `{f.name}` | {describe(hints[f.name])} | `{yaml_text(default)}` | "
                   f"{allowed} | {f.metadata['help'].replace('|', '/')} |")
    return out


def yaml_text(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def table(title: str, cls, intro: str = "") -> str:
    head = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    return "\n".join([f"## {title}", "", *([intro, ""] if intro else []), *head, *rows(cls), ""])


def reference() -> str:
    parts = [HEADER, table("Top level", Recipe)]
    parts += [table(f"`{name}:`", cls) for name, cls in SECTIONS.items()]
    for name, (cls, _) in STRATEGIES.items():
        intro = f"`strategy: {{name: {name}, ...}}`" + (" (the default)" if name == DEFAULT_STRATEGY else "")
        parts.append(table(f"`strategy:` {name}", cls, intro))
    return "\n".join(parts)


if __name__ == "__main__":
    print(reference(), end="")
