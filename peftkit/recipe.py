"""Recipes: YAML + dotted overrides -> a typed, validated `Recipe`.

Torch-free. Every problem in a recipe is collected and raised together as one
`RecipeError` that names the dotted key, what was wrong and what is allowed.

    task: token-classification
    model:    {name: minilm-l6}
    strategy: {name: lora, r: 8}
    data:     {name: demo-ner, max_length: 128}
    train:    {epochs: 3, learning_rate: 5.0e-4}
    eval:     {metric: f1}
    output:   {dir: runs/lora_ner}
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftkit.errors import RecipeError
from peftkit.integrations import REPORTERS
from peftkit.integrations import missing as missing_reporter
from peftkit.strategies import get_strategy
from peftkit.strategies.configs import DEFAULT_STRATEGY, STRATEGIES, opt

TASKS = ["token-classification", "sequence-classification", "causal-lm"]


@dataclass
class ModelSection:
    name: str = opt("minilm-l6", "packaged alias, local folder, GGUF file or hub id")
    revision: str | None = opt(None, "hub revision")
    gguf_file: str | None = opt(None, "GGUF file inside a folder `name`")
    quantization: str = opt("none", "load the base quantized", choices=["none", "8bit", "4bit"])
    trust_remote_code: bool = opt(False, "run model code shipped with a hub model")
    head_init: str = opt("prior", "the new task head's bias: log of the training labels' "
                         "frequencies (prior) or transformers' zeros (zero)", choices=["prior", "zero"])

    @property
    def quantized(self) -> bool:
        """Loaded in 8 or 4 bit (bitsandbytes)."""
        return self.quantization != "none"


@dataclass
class DataSection:
    name: str = opt("demo-ner", "built-in set, folder/file, or hub dataset id")
    data_dir: str | None = opt(None, "where named sets live (else $PEFTKIT_DATA_DIR)")
    config: str | None = opt(None, "hub dataset configuration")
    train_file: str | None = opt(None, "the training split's file (any name; CoNLL, JSONL, CSV/TSV, "
                                 "Parquet, Arrow or a save_to_disk folder); with it data.name is unused")
    validation_file: str | None = opt(None, "the evaluation split's file (none: cut from the training "
                                      "data, data.validation_size)")
    test_file: str | None = opt(None, "the test split's file (none: the data's test split, else the "
                                "evaluation split)")
    validation_size: float = opt(0.1, "where the data has no evaluation split: the share (< 1) or "
                                 "number (>= 1) of training examples held out as one, seeded by "
                                 "train.seed", gt=0)
    train_split: str = opt("train", "split to train on")
    eval_split: str | None = opt("validation", "split evaluated during training (null: the data has "
                                 "none to use; hold one out of the training split, "
                                 "data.validation_size)")
    test_split: str | None = opt("test", "split of the final metrics (null: use eval_split; both "
                                 "null: the part held out of the training split, said so in the "
                                 "data report)")
    max_length: int = opt(128, "tokens per example after tokenization", min=8)
    max_train_samples: int | None = opt(None, "use only the first N training examples", min=1)
    max_eval_samples: int | None = opt(None, "use only the first N evaluation examples", min=1)
    max_test_samples: int | None = opt(None, "use only the first N test examples", min=1)
    tokens_column: str = opt("tokens", "token-classification: list of words")
    tags_column: str = opt("ner_tags", "token-classification: list of tags")
    text_column: str = opt("sentence", "sequence-classification: first text")
    text_pair_column: str | None = opt(None, "sequence-classification: second text")
    label_column: str = opt("label", "sequence-classification: class label")
    label_names: list[str] | None = opt(None, "sequence-classification: names of integer labels 0..N-1",
                                        nonempty=True)
    labels: list[str] | None = opt(None, "the label set (classes, or NER entity types / tags); any "
                                   "other label in the data is an error naming its file and line",
                                   nonempty=True)
    prompt_column: str = opt("mr", "causal-lm: the input the model is given")
    target_column: str = opt("ref", "causal-lm: the text the model should produce")
    template: str = opt("tokenizer", "causal-lm: how a prompt is written out: the tokenizer's chat "
                        "template (plain where it has none), plain text, or the Alpaca layout",
                        choices=["tokenizer", "plain", "alpaca"])

    @property
    def final_split_name(self) -> str:
        """The split the final metrics come from, as people read it (cards, `peftkit eval`)."""
        return self.test_split or self.eval_split or f"{self.train_split} (the held-out part)"


@dataclass
class TrainSection:
    epochs: float = opt(3.0, "passes over the training set", gt=0)
    max_steps: int | None = opt(None, "stop after N optimizer steps (overrides epochs)", min=1)
    min_steps: int | None = opt(None, "train at least N optimizer steps: more epochs when the data "
                                "is small (a few hundred examples give a few dozen steps)", min=1)
    batch_size: int = opt(16, "examples per device per step", min=1)
    eval_batch_size: int = opt(64, "examples per device per evaluation step", min=1)
    gradient_accumulation_steps: int = opt(1, "steps accumulated per optimizer step", min=1)
    learning_rate: float | str = opt(5e-4, "peak learning rate, or auto: found on the training data "
                                     "before the run (peftkit/lr_search.py)", gt=0, max=1.0,
                                     words=["auto"])
    lr_search: str = opt("auto", "with learning_rate auto: sweep, range, or auto (the strategy's "
                         "measured choice)", choices=["auto", "sweep", "range"])
    weight_decay: float = opt(0.0, "AdamW weight decay", min=0.0)
    optimizer: str = opt("adamw", "adamw (torch's); adamw_8bit or paged_adamw_8bit: bitsandbytes' "
                         "8-bit optimizer states, a quarter of AdamW's memory for full fine-tuning "
                         "(paging needs a GPU; benchmarks/RESULTS.md#memory)",
                         choices=["adamw", "adamw_8bit", "paged_adamw_8bit"])
    warmup: float = opt(0.06, "warm-up: ratio of steps if < 1, else steps", min=0.0)
    lr_scheduler: str = opt("linear", "learning-rate schedule",
                            choices=["linear", "cosine", "constant", "constant_with_warmup"])
    max_grad_norm: float = opt(1.0, "gradient clipping", min=0.0)
    seed: int = opt(42, "seed for weights, data order and dropout", min=0)
    precision: str = opt("auto", "auto picks bf16 where the hardware has it",
                         choices=["auto", "fp32", "bf16", "fp16"])
    packing: bool = opt(True, "pack each random batch's examples into shared rows (less padding, "
                        "the same loss); not for prefix / prompt tuning")
    group_by_length: bool = opt(False, "batch examples of similar length: least padding, but a "
                                "different training signal (docs/speed.md)")
    logging_steps: int = opt(10, "log loss every N steps", min=1)
    eval_every: str = opt("epoch", "when to evaluate during training", choices=["epoch", "steps", "no"])
    eval_steps: int | None = opt(None, "with eval_every: steps, evaluate every N steps", min=1)
    save_steps: int | None = opt(None, "checkpoint every N steps (null: at epoch ends)", min=1)
    save_total_limit: int = opt(2, "checkpoints kept", min=1)
    class_weights: str = opt(
        "auto", "classification loss weights: none; balanced (each class weighs the inverse "
        "of its training frequency: for a minority class that matters, at some accuracy on the "
        "majority); sqrt (the inverse square root: half way); auto (for sequence "
        "classification when the largest training class is 4x the smallest or more, the "
        "strategy's choice: sqrt, or balanced for prompt and prefix tuning, whose frozen layers "
        "need it (benchmarks/RESULTS.md#robustness); else none; NER: none)", choices=["auto", "none", "balanced", "sqrt"])
    early_stopping_patience: int | None = opt(
        None, "stop after N evaluations without a better validation score and restore the best "
        "checkpoint (the task's selection metric; needs eval_every)", min=1)
    gradient_checkpointing: bool = opt(False, "trade compute for memory")
    torch_compile: bool = opt(False, "torch.compile the model (inductor). Measured on CPU: minutes "
                              "of compiling, then 0.76-0.95x the eager speed, so off by default; "
                              "for GPUs (unmeasured). benchmarks/compile_speed.py")
    report_to: list[str] = opt([], "the Trainer's logging integrations (tensorboard, mlflow, wandb, ...)",
                               choices=list(REPORTERS))
    num_threads: int | None = opt(None, "CPU threads for torch (null: this process's share of the cores, "
                                "other peftkit runs on the machine counted; docs/speed.md)", min=1)


@dataclass
class EvalSection:
    metric: str | None = opt(None, "metric that ranks runs (null: the task's default)")
    max_new_tokens: int = opt(64, "causal-lm: tokens generated per example", min=1)
    num_beams: int = opt(1, "causal-lm: beam width", min=1)
    fail_on_collapse: bool = opt(True, "exit with code 3 when the run learned nothing useful "
                                 "(peftkit/health.py); false: warn and record it, exit 0")


@dataclass
class OutputSection:
    dir: str | None = opt(None, "run folder (null: runs/<recipe name>)")
    save_model: bool = opt(True, "write the adapter or model into the run folder")


@dataclass
class Recipe:
    task: str = opt("token-classification", "what the model learns", choices=TASKS)
    model: ModelSection = field(default_factory=ModelSection)
    strategy: Any = None  # one of peftkit.strategies.configs, chosen by strategy.name
    strategy_name: str = DEFAULT_STRATEGY
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    output: OutputSection = field(default_factory=OutputSection)
    source: str | None = None  # the recipe file, for messages and relative paths
    # look-ups made once per recipe and shared by its copies (dataclasses.replace): where
    # model.name and data.name point, the strategy object. Keyed by what they depend on, so a
    # copy with another model.name resolves that name afresh (resolve_once).
    resolved: dict = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict:
        """The resolved recipe as plain data, in the layout of a recipe file."""
        out = {"task": self.task, "model": dataclasses.asdict(self.model),
               "strategy": {"name": self.strategy_name, **dataclasses.asdict(self.strategy)}}
        for name in ("data", "train", "eval", "output"):
            out[name] = dataclasses.asdict(getattr(self, name))
        return out

    @property
    def strategy_impl(self):
        """The Strategy object of strategy.name (imports its implementation on first use)."""
        name = self.strategy_name
        return self.resolve_once(("strategy", name), lambda: get_strategy(name))

    def with_quantization(self, mode: str) -> "Recipe":
        """A copy that loads the base as `mode` (merge reloads an 8-bit run's base in full precision:
        merging into int8 weights would round the delta away)."""
        return dataclasses.replace(self, model=dataclasses.replace(self.model, quantization=mode))

    def resolve_once(self, key: tuple, resolve):
        """resolve() the first time `key` is asked for, then the kept value (an error is not kept)."""
        if key not in self.resolved:
            self.resolved[key] = resolve()
        return self.resolved[key]

    @property
    def base_dir(self) -> Path:
        """Relative paths in a recipe are relative to the recipe file, not the working directory."""
        return Path(self.source).resolve().parent if self.source else Path.cwd()

    def resolve_path(self, value: str) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else self.base_dir / p


SECTIONS = {"model": ModelSection, "data": DataSection, "train": TrainSection,
            "eval": EvalSection, "output": OutputSection}
TOP_KEYS = ["task", "strategy", *SECTIONS]


# ---------------------------------------------------------------- loading

def load_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> Recipe:
    """Read a recipe file, apply `key=value` overrides, validate. Raises RecipeError."""
    path = shipped_or_file(str(path))
    raw = read_yaml(path)
    if not raw:  # every default would train for the better part of an hour on the demo set
        raise RecipeError(["the recipe is empty; write at least `task:` and `data:`, or start from "
                           "a shipped one: peftkit recipes copy lora_ner my.yaml"], source=path)
    return build_recipe(raw, overrides, source=path)


def shipped_or_file(path: str) -> str:
    """A path as given, or the shipped recipe of that name (`peftkit run lora_ner`) when no such
    file exists here."""
    if Path(path).exists():
        return path
    from peftkit import shipped_recipes

    name = path.removesuffix(".yaml")
    return str(shipped_recipes.ROOT / f"{name}.yaml") if name in shipped_recipes.names() else path


def read_yaml(path: str) -> dict:
    import yaml  # safe_load only: recipes never construct Python objects

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError([f"file not found: {path}"]) from None
    except UnicodeDecodeError:
        from peftkit.data.checks import utf8_problem  # names the line of the bad byte

        raise RecipeError([utf8_problem(path)]) from None
    except (OSError, ValueError) as exc:  # a folder, no permission, a NUL byte in the path
        raise RecipeError([f"cannot read {path}: {exc}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError([f"{where}invalid YAML ({problem})"], source=path) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # e.g. !!timestamp 2020-13-01
        raise RecipeError([f"invalid YAML value ({type(exc).__name__}: {str(exc)[:120]})"],
                          source=path) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RecipeError([f"the top level must be a mapping of sections ({', '.join(TOP_KEYS)}), "
                           f"not {type_name(raw)}"], source=path)
    return raw


def build_recipe(raw: dict, overrides: list[str] = (), source: str | None = None,
                 check_paths: bool = True) -> Recipe:
    """check_paths=False skips the model/data look-ups (a saved recipe whose data has moved)."""
    problems: list[str] = []
    raw = apply_overrides(raw, overrides, problems)
    recipe = Recipe(source=source)
    for key in raw:
        if key not in TOP_KEYS:
            problems.append(unknown_key(str(key), TOP_KEYS))
    if "task" in raw:
        recipe.task = check_value("task", raw["task"], Recipe.__dataclass_fields__["task"], str,
                                  problems, recipe.task)
    for name, cls in SECTIONS.items():
        setattr(recipe, name, build_section(name, cls, raw.get(name, {}), problems))
    recipe.strategy_name, recipe.strategy = build_strategy(raw.get("strategy", {}), problems)
    check_recipe(recipe, problems, check_paths)
    if problems:
        raise RecipeError(problems, source=source)
    return recipe


def flatten(data: dict, prefix: str = "") -> dict:
    """A recipe's nested sections as dotted keys, the override syntax: {"train.epochs": 3, ...}."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def apply_overrides(raw: dict, overrides: list[str], problems: list[str]) -> dict:
    """`train.epochs=1` -> raw['train']['epochs'] = 1; values parsed as YAML scalars/lists."""
    import copy

    import yaml

    raw = copy.deepcopy(raw)
    if isinstance(raw.get("strategy"), str):  # `strategy: lora` + strategy.r=16
        raw["strategy"] = {"name": raw["strategy"]}
    # strategy.name first: switching strategy replaces the section, then its keys apply on top
    for item in sorted(overrides, key=lambda o: o.partition("=")[0].strip() != "strategy.name"):
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            problems.append(f"override {item!r}: expected dotted.key=value, e.g. train.epochs=1")
            continue
        try:
            value = yaml.safe_load(text)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError):
            value = text
        if len(parts) == 1 and value is None and parts[0] in (*SECTIONS, "strategy"):
            problems.append(f"override {item!r}: would silently reset the whole {parts[0]} section "
                            f"to its defaults; set its keys one by one ({parts[0]}.<key>=...)")
            continue
        if parts == ["strategy", "name"] and switches_strategy(raw.get("strategy"), value):
            raw["strategy"] = {}  # the old strategy's keys mean nothing to the new one
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(f"override {item!r}: {'.'.join(parts[:i + 1])} is not a section")
                break
            node = child
        else:
            node[parts[-1]] = value
    return raw


def switches_strategy(section: Any, name: Any) -> bool:
    current = section.get("name", DEFAULT_STRATEGY) if isinstance(section, dict) else None
    return isinstance(section, dict) and current != name


def build_section(path: str, cls: type, raw: Any, problems: list[str]):
    obj = cls()
    if raw is None:
        return obj
    if not isinstance(raw, dict):
        problems.append(f"{path}: must be a mapping of settings, not {type_name(raw)}")
        return obj
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in raw.items():
        key = str(key)
        if key not in fields:
            problems.append(unknown_key(key, list(fields), path))
            continue
        setattr(obj, key, check_value(f"{path}.{key}", value, fields[key], hints[key], problems,
                                      getattr(obj, key)))
    return obj


def build_strategy(raw: Any, problems: list[str]):
    if isinstance(raw, str):  # `strategy: full` is shorthand for `strategy: {name: full}`
        raw = {"name": raw}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"strategy: must be a mapping with a name, not {type_name(raw)}")
        raw = {}
    name = raw.get("name", DEFAULT_STRATEGY)
    if not isinstance(name, str) or name not in STRATEGIES:
        problems.append(f"strategy.name: {short(name)} is not a strategy; choose one of "
                        f"{', '.join(STRATEGIES)}{did_you_mean(str(name), list(STRATEGIES))}")
        return DEFAULT_STRATEGY, STRATEGIES[DEFAULT_STRATEGY][0]()
    settings = {k: v for k, v in raw.items() if k != "name"}
    return name, build_section("strategy", STRATEGIES[name][0], settings, problems)


# ---------------------------------------------------------------- value checks

def check_value(path: str, value: Any, f: dataclasses.Field, tp, problems: list[str], default: Any):
    """Type-check and range-check one value; on a problem, record it and keep the default."""
    raw = value  # messages quote what the user wrote (-1, not -1.0)
    words = f.metadata.get("words", ())
    if isinstance(value, str) and words:  # a number or a keyword: learning_rate: auto
        if value in words:
            return value
        ok, number = coerce(value, float)
        if not ok:
            problems.append(f"{path}: {short(value)} is neither a number nor "
                            f"{' / '.join(words)}{did_you_mean(value, list(words))}{help_of(f)}")
            return default
    if value is False and "no" in f.metadata.get("choices", ()):
        value = "no"  # YAML 1.1 reads a bare `no` as false
    ok, value = coerce(value, tp)
    if not ok:
        problems.append(f"{path}: expected {describe(tp)}, got {short(value)} "
                        f"({value_kind(value)}){help_of(f)}")
        return default
    if value == [] and f.metadata.get("nonempty"):
        problems.append(f"{path}: an empty list names nothing (it would silently mean the "
                        f"default); list at least one, or leave the key out{help_of(f)}")
        return default
    if isinstance(value, float) and not math.isfinite(value):
        problems.append(f"{path}: {short(raw)} is not a finite number{help_of(f)}")
        return default
    meta = f.metadata
    for item in (value if isinstance(value, list) else [value]):
        if "choices" in meta and item is not None and item not in meta["choices"]:
            problems.append(f"{path}: {short(item)} is not allowed; choose one of "
                            f"{', '.join(map(str, meta['choices']))}"
                            f"{did_you_mean(str(item), list(map(str, meta['choices'])))}")
            return default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bad = (("min" in meta and value < meta["min"]) or ("max" in meta and value > meta["max"])
               or ("gt" in meta and value <= meta["gt"]))
        if bad:
            problems.append(f"{path}: {raw!r} is out of range; allowed {range_text(meta)}{help_of(f)}")
            return default
    return value


def coerce(value: Any, tp) -> tuple[bool, Any]:
    """(ok, value) for a YAML value against a type hint; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            ok, out = coerce(value, arm)
            if ok:
                return True, out
        return False, value
    if tp is type(None):
        return value is None, value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and item_tp is str:
            return False, value
        if not isinstance(value, list):
            return False, value
        out = []
        for item in value:
            ok, item = coerce(item, item_tp)
            if not ok:
                return False, value
            out.append(item)
        return True, out
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return isinstance(value, (int, float)) and not isinstance(value, bool), (
            float(value) if isinstance(value, (int, float)) else value)
    if tp is str:
        return isinstance(value, str), value
    return True, value


def describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is list:
        return f"a list of {describe(typing.get_args(tp)[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def range_text(meta: dict) -> str:
    low = f"> {meta['gt']}" if "gt" in meta else (f">= {meta['min']}" if "min" in meta else "")
    high = f"<= {meta['max']}" if "max" in meta else ""
    return " and ".join(x for x in (low, high) if x)


def help_of(f: dataclasses.Field) -> str:
    return f" ({f.metadata['help']})" if f.metadata.get("help") else ""


def short(value: Any) -> str:
    """repr() bounded in size and depth: a YAML alias bomb or a megabyte string stays one line."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlevel = 80, 80, 3
    return r.repr(value)


def type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def value_kind(value: Any) -> str:
    """type_name, but YAML 1.1's strings that are numbers (1e9) are called what they look like."""
    try:
        number = float(value) if isinstance(value, (str, float)) else None
    except ValueError:
        number = None
    if number is None:
        return type_name(value)
    if number.is_integer():
        return "a number written as a decimal or with an exponent; write an integer as digits"
    return "a number with a fraction"


def unknown_key(key: str, allowed: list[str], path: str | None = None) -> str:
    dotted = f"{path}.{key}" if path else key
    return f"{dotted}: unknown key{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}"


def did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------- cross-field checks

def check_early_stopping(t: TrainSection, problems: list[str]) -> None:
    """Early stopping restores the best checkpoint, so checkpoints are written at the evaluations."""
    if t.early_stopping_patience is None:
        return
    if t.eval_every == "no":
        problems.append("train.early_stopping_patience: needs evaluations during training; set "
                        "train.eval_every: epoch (or steps, with train.eval_steps)")
    elif t.save_steps is not None and (t.eval_every == "epoch" or t.save_steps != t.eval_steps):
        problems.append("train.save_steps: with train.early_stopping_patience the checkpoints are "
                        "written at every evaluation; leave train.save_steps out")


def check_recipe(recipe: Recipe, problems: list[str], check_paths: bool = True) -> None:
    """Checks that span several keys or look at the file system (no model is loaded)."""
    recipe.strategy.check(recipe, problems)  # the strategy's own (strategies/configs.py)
    if recipe.train.eval_every == "steps" and recipe.train.eval_steps is None:
        problems.append("train.eval_steps: required when train.eval_every is steps")
    check_early_stopping(recipe.train, problems)
    if recipe.train.class_weights in ("balanced", "sqrt") and recipe.task == "causal-lm":
        problems.append("train.class_weights: weighs classes of token or sequence classification; "
                        "leave it out for causal-lm")
    if recipe.task == "causal-lm" and recipe.model.name == "minilm-l6":
        problems.append("model.name: minilm-l6 is an encoder and cannot generate; "
                        "use smollm2-135m or another decoder for task causal-lm")
    from peftkit.tasks import get_task  # torch-free: a task's facts, not its model code

    get_task(recipe.task).check_metric(recipe.eval.metric, problems)
    if not check_paths:
        return
    for name in recipe.train.report_to:
        install = missing_reporter(name)
        if install:
            problems.append(f"train.report_to: {name} is not installed here; {install}, or leave "
                            f"{name} out")
    from peftkit.data.registry import check_data_source
    from peftkit.models_registry import check_model_name
    from peftkit.quantization import check_quantizable

    for check, key in ((check_model_name, "model.name"), (check_data_source, "data.name"),
                       (check_quantizable, "model.quantization")):
        try:
            check(recipe, problems)
        except (OSError, ValueError) as exc:  # NUL bytes, names longer than the OS allows
            problems.append(f"{key}: not a usable name or path ({type(exc).__name__}: "
                            f"{str(exc)[:100]})")
    check_against_model(recipe, problems)


def check_against_model(recipe: Recipe, problems: list[str]) -> None:
    """Values that must fit the base model, read from its config.json (no weights loaded)."""
    from peftkit import model_facts

    try:
        facts = model_facts.read(recipe, problems)
    except OSError as exc:  # an unreadable folder: loading names it; validation stays one screen
        problems.append(f"model.name: cannot read {exc.filename or recipe.model.name}: {exc.strerror}")
        return
    if facts is None:
        return
    positions = facts.max_positions
    if positions and recipe.data.max_length > positions:
        problems.append(f"data.max_length: {recipe.data.max_length} is more than the model's "
                        f"{positions} positions (max_position_embeddings in its config.json); "
                        f"set data.max_length <= {positions}")
    recipe.strategy.check_model(facts, problems)
