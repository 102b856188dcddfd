"""Typed settings of every strategy, torch-free so that recipes validate instantly.

Each dataclass is the schema of the recipe's `strategy:` section for one `strategy.name`.
Field metadata drives validation in `peftkit.recipe`: `choices`, `min`/`max` (inclusive),
`gt` (strictly greater) and `help` (shown in errors). Checks that need more than one key are the
settings class's `check(recipe, problems)`, called by `peftkit.recipe.check_recipe`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

MAX_ALPHA = 4096.0  # alpha / r scales the update: beyond this it only diverges (alpha=1e30: inf grads)


def opt(default, help: str = "", **rules):
    """A dataclass field with validation rules in its metadata."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **rules})
    return field(default=default, metadata={"help": help, **rules})


class Settings:
    """Base of every strategy's settings."""

    def check(self, recipe, problems: list[str]) -> None:
        """Append what is wrong with these settings in `recipe` (the other sections) to problems."""

    def check_model(self, facts, problems: list[str]) -> None:
        """Append what does not fit the base model; `facts`: peftkit.model_facts.ModelFacts (its
        config, and module names from a meta-device model: nothing is loaded)."""


def check_rank(key: str, r: int, facts, problems: list[str]) -> None:
    """A rank above the layer width adds parameters and no expressiveness (r=100000 trained 97.6%
    of a model's parameters)."""
    width = facts.hidden_size
    if width and r > width:
        problems.append(f"strategy.{key}: {r} is larger than the model's hidden size {width}; a "
                        f"rank can be at most the layer width: choose {key} <= {width} (usually 4-64)")


def check_targets(key: str, targets, facts, problems: list[str]) -> None:
    """target_modules as peft matches them (a list: name suffixes; a string: a regular expression
    matched against whole names) must match at least one module of the model."""
    if targets is None or targets == "all-linear":
        return
    names = facts.module_names()
    if names is None:
        return
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, n) for n in names):
            problems.append(f"strategy.{key}: the pattern {targets!r} matches no module of the "
                            f"model; {module_hint(names)}")
        return
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in names):
            close = difflib.get_close_matches(t, leaves, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"strategy.{key}: {t!r} matches no module of the model{hint}; "
                            f"{module_hint(names)}")


def module_hint(names: list[str]) -> str:
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names if not n.rsplit(".", 1)[-1].isdigit()})
    return f"module names in it: {', '.join(leaves[:24])}" + (" ..." if len(leaves) > 24 else "")


@dataclass
class FullConfig(Settings):
    freeze_embeddings: bool = opt(False, "keep the embedding matrices frozen")

    def check(self, recipe, problems: list[str]) -> None:
        if recipe.model.quantized:
            problems.append(f"strategy.name: full cannot train a {recipe.model.quantization} base "
                            "(quantized weights have no gradients); use lora, adapter, prefix, ia3 or "
                            "prompt, or set model.quantization: none")


@dataclass
class LoraConfig(Settings):
    r: int = opt(8, "rank of the update; at most the model's hidden size", min=1)
    alpha: float = opt(16.0, "scaling numerator (scale = alpha / r)", gt=0, max=MAX_ALPHA)
    dropout: float = opt(0.1, "dropout on the LoRA input", min=0.0, max=1.0)
    target_modules: list[str] | str | None = opt(
        None, "module names, 'all-linear', or null for the per-architecture default", nonempty=True)
    use_dora: bool = opt(False, "weight-decomposed LoRA (DoRA)")
    use_rslora: bool = opt(False, "rank-stabilised scaling alpha / sqrt(r)")
    bias: str = opt("none", "which biases train", choices=["none", "all", "lora_only"])
    init: str = opt("default", "initialisation of the A/B matrices",
                    choices=["default", "gaussian", "pissa", "olora"])

    def check_model(self, facts, problems: list[str]) -> None:
        check_rank("r", self.r, facts, problems)
        check_targets("target_modules", self.target_modules, facts, problems)


@dataclass
class AdaLoraConfig(Settings):
    init_r: int = opt(12, "starting rank of every adapted matrix", min=1)
    target_r: int = opt(8, "average rank left when the budget schedule ends", min=1)
    alpha: float = opt(32.0, "scaling numerator", gt=0, max=MAX_ALPHA)
    dropout: float = opt(0.1, "dropout on the input", min=0.0, max=1.0)
    target_modules: list[str] | str | None = opt(None, "module names or null for the default",
                                                 nonempty=True)
    # below 1: a share of total_step (like train.warmup), so a recipe survives train.epochs overrides;
    # defaults follow the AdaLoRA paper's GLUE settings (SST-2: tinit 6000, tfinal 22000 of ~50k steps)
    tinit: float = opt(0.1, "warm-up before ranks are pruned: steps, or a share of steps if < 1", min=0.0)
    tfinal: float = opt(0.4, "final steps with the budget fixed: steps, or a share if < 1", min=0.0)
    deltaT: int = opt(10, "steps between two budget allocations", min=1)
    beta1: float = opt(0.85, "EMA factor of the sensitivity", min=0.0, max=1.0)
    beta2: float = opt(0.85, "EMA factor of the uncertainty", min=0.0, max=1.0)
    # 0, measured (benchmarks/RESULTS.md#adalora-on-short-runs): SST-2 short schedule, 300 steps,
    # accuracy 0.8062 at 0, 0.7890 at 0.1, 0.7339 at peft's 0.5 (LoRA r8: 0.7982); one seed
    orth_reg_weight: float = opt(0.0, "weight of the orthogonality regulariser", min=0.0)
    total_step: int | None = opt(None, "training steps; null takes it from the schedule", min=1)

    def check(self, recipe, problems: list[str]) -> None:
        if self.target_r > self.init_r:
            problems.append(f"strategy.target_r: {self.target_r} is larger than strategy.init_r "
                            f"{self.init_r}; AdaLoRA only prunes ranks")

    def check_model(self, facts, problems: list[str]) -> None:
        check_rank("init_r", self.init_r, facts, problems)
        check_targets("target_modules", self.target_modules, facts, problems)


@dataclass
class AdapterConfig(Settings):
    placement: str = opt("houlsby", "where adapters sit", choices=["houlsby", "pfeiffer"])
    reduction_factor: float | None = opt(16.0, "hidden_size / bottleneck_size", gt=0)
    bottleneck_size: int | None = opt(None, "overrides reduction_factor when set", min=1)
    non_linearity: str = opt("relu", "activation in the bottleneck",
                             choices=["relu", "gelu", "silu", "tanh", "swish"])
    train_layer_norms: bool = opt(False, "also train the layer norms next to the adapters")
    leave_out: list[int] = opt([], "layer indices that get no adapter")
    init_scale: float = opt(1e-3, "std of the down-projection init", min=0.0)

    def check_model(self, facts, problems: list[str]) -> None:
        layers, width = facts.num_layers, facts.hidden_size
        if width and self.bottleneck_size and self.bottleneck_size > width:
            problems.append(f"strategy.bottleneck_size: {self.bottleneck_size} is wider than the "
                            f"model's hidden size {width}; a bottleneck must be narrower")
        if not layers:
            return
        outside = sorted({i for i in self.leave_out if not 0 <= i < layers})
        if outside:
            problems.append(f"strategy.leave_out: {outside} are not layers of the model (it has "
                            f"layers 0..{layers - 1})")
        elif set(range(layers)) <= set(self.leave_out):
            problems.append(f"strategy.leave_out: leaves out every one of the model's {layers} "
                            "layers, so no adapter would train (only the task head); leave out fewer")


@dataclass
class PrefixConfig(Settings):
    num_virtual_tokens: int = opt(20, "prefix length per layer", min=1)
    reparameterize: bool = opt(False, "train through an MLP that is folded away after training; "
                               "wants a far smaller learning rate (Li & Liang: 5e-5)")
    hidden_size: int = opt(512, "width of the reparameterisation MLP", min=1)
    dropout: float = opt(0.0, "dropout on the prefixes", min=0.0, max=1.0)
    init: str = opt("real-tokens", "real-tokens: start from the base model's keys/values of real "
                    "tokens (Li & Liang 2021, 5.4); random: small random vectors",
                    choices=["real-tokens", "random"])
    init_text: str | None = opt(None, "real-tokens: the text whose tokens start the prefix "
                                "(null: a built-in neutral English text)")


@dataclass
class IA3Config(Settings):
    target_modules: list[str] | str | None = opt(None, "module names or null for the default",
                                                 nonempty=True)
    feedforward_modules: list[str] | None = opt(None, "which targets are feed-forward layers")

    def check_model(self, facts, problems: list[str]) -> None:
        check_targets("target_modules", self.target_modules, facts, problems)


@dataclass
class PromptConfig(Settings):
    num_virtual_tokens: int = opt(20, "soft prompt length", min=1)
    init_text: str | None = opt(None, "initialise the prompt from this text's embeddings")


# The registry: name -> (settings class, implementation module). Implementations are imported
# lazily (peftkit.strategies.get_strategy). A new strategy is one line here and its own module.
STRATEGIES: dict[str, tuple[type, str]] = {
    "full": (FullConfig, "peftkit.strategies.full"),
    "lora": (LoraConfig, "peftkit.strategies.lora"),
    "adalora": (AdaLoraConfig, "peftkit.strategies.adalora"),
    "adapter": (AdapterConfig, "peftkit.strategies.adapter"),
    "prefix": (PrefixConfig, "peftkit.strategies.prefix"),
    "ia3": (IA3Config, "peftkit.strategies.ia3"),
    "prompt": (PromptConfig, "peftkit.strategies.prompt"),
}
DEFAULT_STRATEGY = "lora"  # a recipe without strategy.name
