"""What every strategy provides, and helpers they share.

    recipe.strategy (typed config) ──▶ Strategy.apply(model, cfg, ctx) ──▶ model to train
                                        Strategy.callbacks(...)        ──▶ Trainer callbacks
    run folder ◀── Strategy.save(model, folder)
    run folder ──▶ Strategy.load(load_base, folder, cfg) ──▶ model for predict / eval / merge
                   Strategy.merge(model)                 ──▶ plain transformers model

A strategy never trains: the pipeline's one Trainer does, whatever the strategy.

Everything the rest of peftkit needs to know about a method is a fact declared here (what the run
folder holds, whether and how it merges, how `peftkit bench` plots it, what its checkpoints carry
besides the Trainer's state), so callers ask the strategy object and never test its name. Its
recipe checks are on its settings class (`strategies/configs.py`: validation stays torch-free).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from peftkit.errors import PeftkitError

OWN_FORMAT_FILE = "peftkit_adapter.json"
OWN_WEIGHTS_FILE = "adapter_model.safetensors"


@dataclass
class ApplyContext:
    """What a strategy may need to know besides its own settings."""

    task: Any                      # peftkit.tasks.Task
    total_steps: int = 0           # optimizer steps of the whole run (AdaLoRA's budget schedule)
    head_names: list[str] = field(default_factory=list)  # task head modules that must train
    quantized: bool = False        # base loaded in 8/4 bit
    tokenizer: Any = None          # the run's tokenizer (prompt tuning initialises from text)


class Strategy:
    name: str = ""
    saves_whole_model: bool = False  # the run folder holds model/ (a plain transformers model),
                                     # not adapter/; exports and model cards say "whole model"
    can_merge: bool = False        # `peftkit merge` gives a plain model: a weight delta that folds
                                   # into the base, or a whole model already
    merge_refusal: str = "its result is not a weight delta"  # why not, when can_merge is False
    # `peftkit merge --weights`: peft's add_weighted_adapter methods for this strategy's adapters,
    # and why there are none (shown when the tuple is empty)
    weighted_methods: tuple[str, ...] = ()
    weighted_refusal: str = ""
    peft_format: bool = False      # saved as a peft adapter folder (PeftModel.from_pretrained)
    # `peftkit bench` plots: method name (Strategy.method) -> matplotlib marker, fixed across suites
    plot_markers: dict[str, str] = {}
    packable: bool = True          # training batches may be packed (peftkit.packing); False where
                                   # virtual tokens are added to the attention mask
    # DDP's find_unused_parameters: True only where some trainable parameter gets no gradient in a
    # step (DDP then waits for it forever). None so far: AdaLoRA's pruned ranks are zeroed, not cut
    # from the graph; prefix tuning's reparameterisation MLP feeds every layer until it is folded
    # after training; task heads train or are frozen (DDP skips frozen ones). Checked for every
    # strategy by tests/test_distributed.py; False keeps DDP's cheaper path.
    ddp_find_unused_parameters: bool = False
    # train.learning_rate: auto (peftkit/lr_search.py): the range this method's good rates lie in
    # on small encoders and decoders (benchmarks/RESULTS.md#robustness), how to search it, and the
    # rate a run too short to search falls back to
    lr_range: tuple[float, float] = (1e-4, 5e-3)
    # train.class_weights: auto on lopsided classes (Task.auto_class_weights): how strongly this
    # method needs the rare classes weighed. sqrt by default: full inverse weights flipped DoRA
    # and Houlsby adapters to the minority class on SST-2 at 90/10 (benchmarks/RESULTS.md#robustness)
    lopsided_class_weights: str = "sqrt"
    lr_search: str = "sweep"
    default_lr: float = 1e-3
    # `peftkit bench --tune` with `tune.size: true`: the setting that sizes this method (its
    # trainable parameters) and the values the search tries besides the learning rate; None:
    # nothing to size (IA3, full, AdaLoRA whose target_r must stay below its init_r)
    tune_size: tuple[str, tuple] | None = None
    # `peftkit serve`: several runs' adapters on one loaded base (add_adapter), and why not
    serves_many: bool = False
    serve_refusal: str = "its result is not an adapter that several runs can share one base with"

    def adds_to_model_loss(self, cfg) -> bool:
        """True where the method adds a term to the loss the model's forward computes (AdaLoRA's
        orthogonality regulariser): a task's own training loss (Task.training_loss) would lose it."""
        return False

    def apply(self, model, cfg, ctx: ApplyContext):
        raise NotImplementedError

    def callbacks(self, model, cfg, ctx: ApplyContext) -> list:
        return []

    def save(self, model, folder: Path, cfg=None) -> None:
        """Write the trained result; `cfg`: the recipe's settings, when a run saves its result."""
        raise NotImplementedError

    def load(self, load_base: Callable, folder: Path, cfg, ctx: ApplyContext):
        raise NotImplementedError

    def add_adapter(self, model, folder: Path, name: str) -> None:
        """`peftkit serve`: load another run's adapter, named `name`, into a model that load()
        returned (serves_many)."""
        raise PeftkitError(f"strategy {self.name!r} cannot serve several runs on one base: "
                           f"{self.serve_refusal}")

    def mixed_batch(self, cfg) -> bool:
        """Whether inputs for different adapters may share one forward pass (peft's
        `adapter_names`); False: `peftkit serve` runs them adapter by adapter (set_adapter)."""
        return False

    def size_caveat(self, total_params: int) -> str | None:
        """A note printed before training where this method is known to trail full fine-tuning
        on a model of this size (measured), so that nobody mistakes it for a peftkit fault."""
        return None

    def gguf_adapter_refusal(self, cfg) -> str | None:
        """`peftkit export --format gguf`: why llama.cpp cannot load this run's adapter beside its
        base (None: it can, and lora_pairs gives the tensors)."""
        return ("llama.cpp's adapter files hold LoRA A/B pairs only, and this method's result is "
                "not one")

    def lora_pairs(self, model, adapter: str = "default"):
        """(module name, A, B, scaling) of each adapted linear layer: delta W = scaling * B @ A."""
        raise PeftkitError(f"strategy {self.name!r} has no LoRA pairs")

    def report(self, model) -> dict:
        """Extra facts about the trained model for result.json (AdaLoRA: the ranks it kept)."""
        return {}

    def merge(self, model):
        raise PeftkitError(f"strategy {self.name!r} cannot be merged into the base weights")

    def weighted_kwargs(self, method: str, density, svd_rank) -> dict:
        """Arguments of peft's add_weighted_adapter beyond the adapters and their weights."""
        return {"combination_type": method, "density": density, "svd_rank": svd_rank}

    def method(self, settings: dict) -> str:
        """The method name people compare in bench tables (DoRA is LoRA with use_dora)."""
        return self.name

    @property
    def saved_by_save_pretrained(self) -> bool:
        """Saved with save_pretrained (peft or transformers), which takes a gathered state dict:
        FSDP / ZeRO-3 can save it. peftkit's own format reads the (sharded) parameters one by one."""
        return self.peft_format or self.saves_whole_model

    # ---- state a checkpoint needs besides the Trainer's (peftkit.callbacks.CheckpointExtras)

    def set_aside_for_checkpoint(self, model):
        """Just before the Trainer writes a checkpoint: take out what must not be in it; returns
        what put_back_after_checkpoint restores (None: nothing was taken)."""
        return None

    def put_back_after_checkpoint(self, model, taken) -> None:
        pass

    def checkpoint_state(self, model) -> dict | None:
        """Tensors / plain data saved with every checkpoint (peftkit_state.pt), or None."""
        return None

    def restore_checkpoint_state(self, model, saved: dict | None, folder: Path) -> None:
        """On resume: `saved` is this strategy's checkpoint_state (None: the file is missing)."""


def freeze_all(model) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def head_modules(model, names: list[str]) -> list[str]:
    """Names of the task head modules present in `model` (e.g. classifier, score)."""
    present = {n.split(".")[-1] for n, _ in model.named_modules()}
    return [n for n in names if n in present]


def unfreeze_heads(model, names: list[str]) -> None:
    """A freshly initialised task head always trains, whatever the strategy."""
    for mod_name, module in model.named_modules():
        if mod_name.split(".")[-1] in names:
            for p in module.parameters():
                p.requires_grad_(True)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total), counting packed 4-bit weights as their real number of parameters."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":  # two 4-bit values per stored byte: count the
            shape = getattr(getattr(p, "quant_state", None), "shape", None)  # unpacked shape
            n = math.prod(shape) if shape is not None else 2 * n
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def save_trainable(model, folder: Path, meta: dict) -> None:
    """peftkit's own adapter format: the trainable tensors in safetensors + a JSON description."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, str(folder / OWN_WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / OWN_FORMAT_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_trainable(model, folder: Path) -> None:
    """Load tensors written by save_trainable into a model that has the same adapter modules."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / OWN_WEIGHTS_FILE))
    missing = set(tensors) - {n for n, _ in model.named_parameters()}
    if missing:
        raise PeftkitError(f"{folder}: saved tensors that the model does not have: {sorted(missing)[:5]}")
    model.load_state_dict(tensors, strict=False)
