"""Typed settings of every strategy, torch-free so that recipes validate instantly.

Each dataclass is the schema of the recipe's `strategy:` section for one `strategy.name`.
Field metadata drives validation in `peftkit.recipe`: `choices`, `min`/`max` (inclusive),
`gt` (strictly greater) and `help` (shown in errors). Checks that need more than one key are the
settings class's `check(recipe, problems)`, called by `peftkit.recipe.check_recipe`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def opt(default, help: str = "", **rules):
    """A dataclass field with validation rules in its metadata."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **rules})
    return field(default=default, metadata={"help": help, **rules})


class Settings:
    """Base of every strategy's settings."""

    def check(self, recipe, problems: list[str]) -> None:
        """Append what is wrong with these settings in `recipe` (the other sections) to problems."""


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
    r: int = opt(8, "rank of the update", min=1)
    alpha: float = opt(16.0, "scaling numerator (scale = alpha / r)", gt=0)
    dropout: float = opt(0.1, "dropout on the LoRA input", min=0.0, max=1.0)
    target_modules: list[str] | str | None = opt(
        None, "module names, 'all-linear', or null for the per-architecture default")
    use_dora: bool = opt(False, "weight-decomposed LoRA (DoRA)")
    use_rslora: bool = opt(False, "rank-stabilised scaling alpha / sqrt(r)")
    bias: str = opt("none", "which biases train", choices=["none", "all", "lora_only"])
    init: str = opt("default", "initialisation of the A/B matrices",
                    choices=["default", "gaussian", "pissa", "olora"])


@dataclass
class AdaLoraConfig(Settings):
    init_r: int = opt(12, "starting rank of every adapted matrix", min=1)
    target_r: int = opt(8, "average rank left when the budget schedule ends", min=1)
    alpha: float = opt(32.0, "scaling numerator", gt=0)
    dropout: float = opt(0.1, "dropout on the input", min=0.0, max=1.0)
    target_modules: list[str] | str | None = opt(None, "module names or null for the default")
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
    target_modules: list[str] | str | None = opt(None, "module names or null for the default")
    feedforward_modules: list[str] | None = opt(None, "which targets are feed-forward layers")


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
