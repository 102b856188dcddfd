"""Bench suites: a base recipe and a list or grid of variants, expanded x seeds into recipes.

    # peftkit bench benchmarks/example.yaml
    name: example                 # default: the file name; results go to bench/<name>
    base: ../recipes/lora.yaml    # recipe file (relative to this suite) or an inline recipe mapping
    overrides: {train.epochs: 1}  # applied to every variant; nested or dotted keys
    seeds: [1, 2, 3]              # every variant runs once per seed (train.seed)
    grid: {train.learning_rate: [1.0e-3, 2.0e-3]}   # optional: every variant x every combination
    variants:
      - full                      # shorthand for {strategy: {name: full}}
      - name: lora-r{strategy.r}  # {dotted.key} placeholders take the variant's resolved values
        strategy: {name: lora}
        grid: {strategy.r: [4, 8]}
      - name: dora
        strategy: {name: lora, use_dora: true}
      - name: prefix              # a variant may bring its own base recipe (its settings, its
        base: ../recipes/prefix.yaml  # learning rate); the suite's overrides still apply on top
    tune: {trials: 12, seeds: 3}  # with `peftkit bench --tune`: peftkit/bench/tunespec.py

Grid values a name does not mention are appended to it (lora-r8-lr0.002), and with several
seeds every name ends in -seed<N>. Setting `strategy.name` to another strategy starts that
strategy from its defaults (the base's LoRA rank means nothing to an adapter). Every variant is
built with `peftkit.recipe.build_recipe`, so a suite is checked exactly like a recipe; all
problems of all variants are raised together. Under --tune (load_suite(tune=True)) every variant
runs with the seeds of the `tune:` section, which the search then shares per group.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from peftkit.errors import RecipeError, UsageError
from peftkit.bench.tunespec import TuneSpec, check_tune
from peftkit.recipe import Recipe, build_recipe, flatten, read_yaml, type_name, unknown_key
from peftkit.strategies.configs import DEFAULT_STRATEGY

DEFAULT_SUITE = Path(__file__).with_name("quick.yaml")
DEFAULT_TUNE_SUITE = Path(__file__).with_name("quick_tune.yaml")  # `peftkit bench --tune`
SUITE_KEYS = ["name", "description", "base", "overrides", "seeds", "grid", "variants", "tune"]
VARIANT_KEYS = ["name", "grid", "base"]  # every other key of a variant entry is a recipe setting
# Short forms of grid keys in generated variant names: lora-r8-lr0.002, not lora-r8-learning_rate0.002.
ABBREV = {"learning_rate": "lr", "num_virtual_tokens": "t", "reduction_factor": "rf",
          "bottleneck_size": "b", "quantization": "", "placement": "", "name": "", "seed": "seed"}


class SuiteError(RecipeError):
    """Problems in a suite (exit 2), every one of them at once."""

    def __str__(self) -> str:
        return super().__str__().replace(" in the recipe:", " in the suite:", 1)


@dataclass
class Variant:
    name: str        # unique and file-system safe: the run folder's name
    group: str       # the name without the seed: runs of one group are averaged
    seed: int | None
    overrides: dict  # dotted key -> value over the base recipe (what makes this variant)
    recipe: Recipe
    blocked: str | None = None  # why it cannot run (--tune: no trial of its search completed)


@dataclass
class Suite:
    name: str
    source: str
    description: str = ""
    variants: list[Variant] = field(default_factory=list)
    tune: TuneSpec | None = None  # the `tune:` section (defaults where absent) when tuning


def load_suite(path: str | Path | None = None, overrides: list[str] = (), tune: bool = False) -> Suite:
    """Read and expand a suite (default: the packaged quick suite, or quick_tune under tune).
    tune: expand with the `tune:` section's seeds and keep it on the suite. Raises SuiteError."""
    path = Path(path or (DEFAULT_TUNE_SUITE if tune else DEFAULT_SUITE))
    try:
        raw = read_yaml(str(path))
    except RecipeError as exc:
        raise SuiteError(exc.problems, source=str(path)) from None
    problems: list[str] = [unknown_key(str(k), SUITE_KEYS) for k in raw if k not in SUITE_KEYS]
    name = str(raw.get("name") or path.stem)
    if not re.fullmatch(r"[\w.+=-]+", name) or folder_name_problem(name):
        problems.append(f"name: {name!r} must be usable as a folder name (letters, digits, . _ - + =)")
    base, base_source = read_base(raw.get("base"), path, problems)
    common = settings_of(raw.get("overrides"), "overrides", problems)
    cli = cli_layer(overrides, problems)
    seeds = check_seeds(raw.get("seeds"), problems)
    spec = check_tune(raw.get("tune"), seeds, problems)  # checked with or without --tune
    if tune:
        seeds = spec.seeds
    top_grid = check_grid(raw.get("grid"), "grid.", problems)
    entries = raw.get("variants", [{}])
    if not isinstance(entries, list) or not entries:
        got = "an empty list" if entries == [] else type_name(entries)
        problems.append(f"variants: must be a non-empty list of variants, not {got}")
        entries = []
    variants = expand(entries, base, base_source, common, cli, seeds, top_grid,
                      variant_lines(path), problems, path)
    check_unique(variants, problems)
    if problems:
        raise SuiteError(list(dict.fromkeys(problems)), source=str(path))
    return Suite(name=name, source=str(path), description=str(raw.get("description") or ""),
                 variants=[v for v, _ in variants], tune=spec if tune else None)


def select(suite: Suite, names: str) -> Suite:
    """The suite cut to the variants named (comma-separated variant or group names: `lora-r8`
    takes every seed of it), in suite order: rerun or spread a suite's variants without copying
    it. Raises UsageError naming what matched nothing and what there is."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if not any(n in (v.name, v.group) for v in suite.variants)]
    if unknown or not wanted:
        groups = ", ".join(dict.fromkeys(v.group for v in suite.variants))
        raise UsageError(f"--only {names!r}: {suite.source} has no variant named "
                         f"{', '.join(unknown) or '(none given)'}; its variants: {groups}")
    return replace(suite, variants=[v for v in suite.variants
                                    if v.name in wanted or v.group in wanted])


# ---------------------------------------------------------------- expansion

def expand(entries, base, base_source, common, cli, seeds, top_grid, lines, problems, suite_path):
    """[(Variant, where)] for every entry x grid combination x seed, in file order."""
    out = []
    # problem -> {entry -> grid combinations it occurs in}: one line per problem, naming its variants
    found: dict[str, dict[str, set[str]]] = {}
    n_combos: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"variants[{i}]" + (f" (line {lines[i]})" if i < len(lines) else "")
        template, settings, grid = parse_entry(entry, where, problems)
        own_base = entry.get("base") if isinstance(entry, dict) else None
        entry_base, entry_source = (read_base(own_base, suite_path, problems, f"{where}: base")
                                    if own_base is not None else (base, base_source))
        base_name = strategy_name(entry_base)
        combos = combinations({**top_grid, **grid})
        n_combos[where] = len(combos)
        for combo in combos:
            combo_text = "".join(f" {k}={v!r}" for k, v in combo.items())
            for seed in seeds or [None]:
                seed_layer = {} if seed is None else {"train.seed": seed}
                merged = merge_layers([common, settings, combo, seed_layer, cli], base_name)
                try:
                    recipe = build_recipe(apply_settings(entry_base, merged), source=entry_source)
                except RecipeError as exc:
                    for p in exc.problems:
                        found.setdefault(p, {}).setdefault(where, set()).add(combo_text)
                    continue
                group = variant_name(template, combo, recipe, where + combo_text, problems)
                name = f"{group}-seed{seed}" if len(seeds) > 1 else group
                out.append((Variant(name, group, seed, merged, recipe), where + combo_text))
    for problem, hits in found.items():
        problems.append(f"{problem}  [{who_has(hits, n_combos)}]")
    return out


def who_has(hits: dict[str, set[str]], n_combos: dict[str, int]) -> str:
    """'every variant', or the entries (and grid combinations, where not all) with a problem."""
    whole = [w for w, combos in hits.items() if len(combos) == n_combos[w]]
    if len(whole) == len(n_combos) > 1:
        return "every variant"
    return ", ".join(w if w in whole else ", ".join(w + c for c in sorted(combos))
                     for w, combos in hits.items())


def parse_entry(entry: Any, where: str, problems: list[str]):
    """(name template or None, dotted settings, dotted grid) of one `variants:` item."""
    if isinstance(entry, str):  # `- lora` is shorthand for a variant that only picks a strategy
        return entry, {"strategy.name": entry}, {}
    if entry is None:
        entry = {}
    if not isinstance(entry, dict):
        problems.append(f"{where}: a variant is a strategy name or a mapping of settings, "
                        f"not {type_name(entry)}")
        return None, {}, {}
    name = entry.get("name")
    if name is not None and not isinstance(name, (str, int, float)):
        problems.append(f"{where}.name: must be a string, not {type_name(name)}")
        name = None
    settings = settings_of({k: v for k, v in entry.items() if k not in VARIANT_KEYS}, where, problems)
    return (None if name is None else str(name)), settings, check_grid(entry.get("grid"),
                                                                       f"{where}: grid.", problems)


def combinations(grid: dict[str, list]) -> list[dict]:
    """Cartesian product of a grid: {a: [1, 2], b: [x]} -> [{a: 1, b: x}, {a: 2, b: x}]."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def merge_layers(layers: list[dict], base_strategy: str) -> dict:
    """Later layers win; a layer that switches strategy drops the earlier strategy settings."""
    out: dict = {}
    for layer in layers:
        new = layer.get("strategy.name")
        if new is not None and new != out.get("strategy.name", base_strategy):
            out = {k: v for k, v in out.items() if not k.startswith("strategy.")}
        out.update(layer)
    return out


def apply_settings(base: dict, settings: dict) -> dict:
    """The raw recipe of a variant: the base with dotted settings written into it."""
    raw = copy.deepcopy(base)
    if isinstance(raw.get("strategy"), str):
        raw["strategy"] = {"name": raw["strategy"]}
    new = settings.get("strategy.name")
    if new is not None and new != strategy_name(base):
        raw["strategy"] = {"name": new}
    for key, value in settings.items():
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}  # a wrong section type is reported by build_recipe's key checks
            node = node[part]
        node[parts[-1]] = copy.deepcopy(value)
    return raw


def strategy_name(raw: dict) -> str:
    s = raw.get("strategy")
    if isinstance(s, str):
        return s
    return s.get("name", DEFAULT_STRATEGY) if isinstance(s, dict) else DEFAULT_STRATEGY


# ---------------------------------------------------------------- names

def variant_name(template: str | None, combo: dict, recipe: Recipe, label: str,
                 problems: list[str]) -> str:
    values = flatten(recipe.to_dict())
    values["strategy.name"] = recipe.strategy_name
    if template is None:
        template = recipe.strategy_name
    for key in combo:  # grid keys the name does not mention are appended: runs stay apart
        if f"{{{key}}}" not in template:
            template += f"-{ABBREV.get(key.split('.')[-1], key.split('.')[-1])}{{{key}}}"

    def fill(match):
        key = match.group(1)
        if key not in values:
            problems.append(f"{label}: name placeholder {{{key}}} is not a recipe key "
                            "(use dotted keys such as {strategy.r} or {train.learning_rate})")
            return key
        return short(values[key])

    return re.sub(r"[^\w.+=-]", "_", re.sub(r"\{([^{}]+)\}", fill, template))


def short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "+".join(map(short, value))
    return str(value)


def folder_name_problem(name: str) -> str | None:
    """A name that is used as a folder below --out: one plain component, never `..` (issue 17: a
    variant named `..` made a rerun delete the whole --out folder)."""
    if not name or not name.strip():
        return "is empty"
    if "/" in name or "\\" in name or "\0" in name:
        return "contains a path separator"
    if name in (".", "..") or ".." in name or name.startswith("."):
        return "starts with '.' or contains '..'"
    return None


def check_unique(variants: list[tuple[Variant, str]], problems: list[str]) -> None:
    seen: dict[str, list[str]] = {}
    for variant, label in variants:
        bad = folder_name_problem(variant.name)
        if bad:
            problems.append(f"{label}: variant name {variant.name!r} {bad}; it names the run "
                            "folder <out>/runs/<name>: use letters, digits, - _ + = and single dots")
        seen.setdefault(variant.name, []).append(label)
    for name, labels in seen.items():
        if len(labels) > 1:
            labels = list(dict.fromkeys(labels))
            problems.append(f"variant name {name!r} is used by {', '.join(labels)}: give each a "
                            "distinct name, or a {placeholder} such as {strategy.r} in its name")


# ---------------------------------------------------------------- sections of a suite

def read_base(base: Any, suite_path: Path, problems: list[str], where: str = "base"):
    """(raw base recipe, the file its relative paths resolve against)."""
    if base is None:
        return {}, str(suite_path)
    if isinstance(base, dict):
        return base, str(suite_path)
    if not isinstance(base, str):
        problems.append(f"{where}: a recipe file or an inline recipe mapping, not {type_name(base)}")
        return {}, str(suite_path)
    path = Path(base).expanduser()
    path = path if path.is_absolute() else suite_path.resolve().parent / path
    try:
        return read_yaml(str(path)), str(path)
    except RecipeError as exc:
        problems += [f"{where}: {p}" for p in exc.problems]
        return {}, str(path)


def settings_of(raw: Any, where: str, problems: list[str]) -> dict:
    """Nested and/or dotted settings -> {dotted.key: value}; `strategy: lora` -> strategy.name."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping of recipe settings, not {type_name(raw)}")
        return {}
    out = {}
    for key, value in raw.items():
        key = str(key)
        if key == "strategy" and isinstance(value, str):
            out["strategy.name"] = value
        elif isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in settings_of(value, where, problems).items()})
        else:
            out[key] = value
    return out


def check_grid(raw: Any, prefix: str, problems: list[str]) -> dict[str, list]:
    grid = settings_of(raw, prefix.rstrip("."), problems)
    for key, values in list(grid.items()):
        if not isinstance(values, list) or not values:
            problems.append(f"{prefix}{key}: a grid lists the values to try, e.g. [4, 8, 16]; "
                            f"got {values!r}")
            del grid[key]
    return grid


def check_seeds(raw: Any, problems: list[str]) -> list[int]:
    if raw is None:
        return []
    seeds = raw if isinstance(raw, list) else [raw]
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds) or not seeds:
        problems.append(f"seeds: a list of non-negative integers, e.g. [1, 2, 3]; got {raw!r}")
        return []
    if len(set(seeds)) != len(seeds):
        problems.append(f"seeds: {seeds} repeats a seed")
    return seeds


def cli_layer(overrides: list[str], problems: list[str]) -> dict:
    """`key=value` command-line overrides as one more settings layer (values parsed as YAML)."""
    import yaml

    out = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not all(key.strip().split(".")):
            problems.append(f"override {item!r}: expected dotted.key=value, e.g. train.epochs=1")
            continue
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            out[key.strip()] = text
    return out


def variant_lines(path: Path) -> list[int]:
    """Line number of every `variants:` item, for error messages (best effort)."""
    import yaml

    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
        for key, value in root.value:
            if key.value == "variants" and isinstance(value, yaml.SequenceNode):
                return [item.start_mark.line + 1 for item in value.value]
    except Exception:  # noqa: BLE001 - only decorates messages; the real parse already succeeded
        pass
    return []
