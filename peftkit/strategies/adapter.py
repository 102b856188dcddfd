"""Bottleneck adapters (Houlsby et al. 2019, arXiv:1902.00751; Pfeiffer et al. 2020, arXiv:2005.00247).

peft has no bottleneck adapter, so this is peftkit's own code. Each adapted Linear is wrapped:

        x ──▶ base Linear (frozen) ──▶ h ──┬───────────────────────────────────┬──▶ (+) ──▶ h'
                                           └─▶ down ─▶ act ─▶ up (init 0) ──────┘
                                              hidden→b       b→hidden

    BERT layer  (Houlsby: both ◆, Pfeiffer: only the second)
        attention.self ─▶ attention.output.dense ◆ ─▶ +residual ─▶ LayerNorm
        intermediate   ─▶ output.dense ◆           ─▶ +residual ─▶ LayerNorm
    Llama layer
        norm ─▶ self_attn ─▶ o_proj ◆ ─▶ +residual ─▶ norm ─▶ mlp ─▶ down_proj ◆ ─▶ +residual

The adapter sits before the residual + LayerNorm, as in Houlsby's figure 2. The up-projection
starts at zero, so at step 0 the adapted model computes exactly what the base computes.
Wrapping (rather than hooks) keeps parameter names deterministic for save/load:
`...attention.output.dense.adapter.down.weight`, the frozen weight moves to `...dense.base.weight`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
from torch import nn

from peftkit.errors import PeftkitError
from peftkit.strategies.base import (
    ApplyContext, Strategy, freeze_all, head_modules, load_trainable, save_trainable, unfreeze_heads,
)
from peftkit.strategies.configs import AdapterConfig

# (attention output, feed-forward output), relative to one transformer layer, per family.
TARGETS: list[tuple[str, str]] = [
    ("attention.output.dense", "output.dense"),   # BERT, RoBERTa, ELECTRA, XLM-R, DeBERTa
    ("self_attn.o_proj", "mlp.down_proj"),        # Llama, Mistral, Qwen2, Gemma
    ("attention.out_lin", "ffn.lin2"),            # DistilBERT
    ("self_attn.out_proj", "fc2"),                # OPT, BART-style
]
LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers)\.(\d+)$")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "swish": nn.SiLU, "tanh": nn.Tanh}


class Bottleneck(nn.Module):
    """x + up(act(down(x))): a residual bottleneck that is the identity while `up` is zero."""

    def __init__(self, hidden: int, size: int, act: str, init_scale: float, dtype, device):
        super().__init__()
        self.down = nn.Linear(hidden, size, dtype=dtype, device=device)
        self.act = ACTIVATIONS[act]()
        self.up = nn.Linear(size, hidden, dtype=dtype, device=device)
        nn.init.normal_(self.down.weight, std=init_scale)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)   # zero => adapted model == base model at step 0
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(self.down.weight.dtype)
        return x + self.up(self.act(self.down(h))).to(x.dtype)


class AdaptedLinear(nn.Module):
    """A frozen Linear (also an 8-bit one) followed by a trainable Bottleneck."""

    def __init__(self, base: nn.Module, adapter: Bottleneck):
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


def find_layers(model) -> list[tuple[int, nn.Module]]:
    """(index, layer) of the transformer layers: modules named `...layer.N` / `...layers.N`.

    A match nested inside an earlier match (a sub-layer such as T5's `block.0.layer.1`) is skipped.
    """
    layers, outer = [], []
    for name, module in model.named_modules():
        m = LAYER_RE.search(name)
        if m and not any(name.startswith(o + ".") for o in outer):
            outer.append(name)
            layers.append((int(m.group(1)), module))
    return layers


def layer_targets(layer: nn.Module) -> tuple[str, str] | None:
    """The (attention, feed-forward) output Linear names of `layer`, or None if no family matches."""
    names = {n for n, m in layer.named_modules() if isinstance(m, nn.Linear) or _is_quantized_linear(m)}
    for attn, ffn in TARGETS:
        if attn in names and ffn in names:
            return attn, ffn
    return None


def _is_quantized_linear(module: nn.Module) -> bool:
    return type(module).__name__ in {"Linear8bitLt", "Linear4bit"}


def bottleneck_size(hidden: int, cfg: AdapterConfig) -> int:
    if cfg.bottleneck_size:
        return cfg.bottleneck_size
    if not cfg.reduction_factor:
        raise PeftkitError("adapter: set strategy.bottleneck_size or strategy.reduction_factor")
    return max(1, round(hidden / cfg.reduction_factor))


def _wrap(layer: nn.Module, path: str, cfg: AdapterConfig) -> AdaptedLinear:
    parent_name, _, child = path.rpartition(".")
    parent = layer.get_submodule(parent_name) if parent_name else layer
    base = getattr(parent, child)
    # 8-bit weights are int8: the adapter itself trains in float32 then
    dtype = base.weight.dtype if base.weight.is_floating_point() else torch.float32
    adapter = Bottleneck(base.out_features, bottleneck_size(base.out_features, cfg), cfg.non_linearity,
                         cfg.init_scale, dtype, base.weight.device)
    wrapped = AdaptedLinear(base, adapter)
    setattr(parent, child, wrapped)
    return wrapped


def _unfreeze_norms(layer: nn.Module) -> None:
    """Houlsby trains the layer norms of every adapted layer too (section 2.1)."""
    for name, module in layer.named_modules():
        if "norm" in type(module).__name__.lower() or "norm" in name.split(".")[-1].lower():
            for p in module.parameters(recurse=False):
                p.requires_grad_(True)


def _check_leave_out(leave_out: list[int], n_layers: int) -> None:
    bad = [i for i in leave_out if not 0 <= i < n_layers]
    if bad:
        raise PeftkitError(f"adapter: strategy.leave_out has {bad}, but layers are 0..{n_layers - 1}")


class AdapterStrategy(Strategy):
    name = "adapter"
    can_merge = False
    merge_refusal = ("bottleneck adapters add a non-linear module (down-projection, activation, "
                     "up-projection) after each adapted layer, which no weight delta can express")
    plot_markers = {"adapter": "P"}
    tune_size = ("reduction_factor", (8.0, 16.0, 32.0))  # ignored when bottleneck_size is set
    peft_format = False
    serve_refusal = ("its bottleneck layers are peftkit's own modules inserted into the base, one "
                     "run's at a time; serve each adapter run on its own")

    def apply(self, model, cfg: AdapterConfig, ctx: ApplyContext):
        layers = find_layers(model)
        targets = [layer_targets(layer) for _, layer in layers]
        if not layers or None in targets:
            raise PeftkitError(
                f"adapter: cannot find the attention / feed-forward outputs of {type(model).__name__}; "
                "supported: BERT-family encoders (attention.output.dense, output.dense), Llama-family "
                "decoders (self_attn.o_proj, mlp.down_proj), DistilBERT, OPT. Try strategy.name=lora.")
        _check_leave_out(cfg.leave_out, max(i for i, _ in layers) + 1)
        freeze_all(model)
        for (i, layer), (attn, ffn) in zip(layers, targets):
            if i in cfg.leave_out:
                continue
            if cfg.placement == "houlsby":   # Pfeiffer found the attention-side adapter dispensable
                _wrap(layer, attn, cfg)
            _wrap(layer, ffn, cfg)
            if cfg.train_layer_norms:
                _unfreeze_norms(layer)
        for module in model.modules():
            if isinstance(module, Bottleneck):
                module.requires_grad_(True)
        unfreeze_heads(model, head_modules(model, ctx.head_names))
        model._peftkit_adapter_cfg = cfg   # save() writes it into the adapter's JSON
        return model

    def save(self, model, folder: Path, cfg=None) -> None:
        cfg = getattr(model, "_peftkit_adapter_cfg", None)
        if cfg is None:
            raise PeftkitError("adapter: this model has no adapters; call apply() before save()")
        save_trainable(model, Path(folder), {"strategy": self.name, "config": dataclasses.asdict(cfg)})

    def load(self, load_base, folder: Path, cfg: AdapterConfig, ctx: ApplyContext):
        model = self.apply(load_base(), cfg, ctx)
        load_trainable(model, Path(folder))
        return model

    def merge(self, model):
        raise PeftkitError(
            "adapter: bottleneck adapters cannot be merged into the base weights: each adds a non-linear "
            "module (down-projection, activation, up-projection) that no weight delta can express. "
            "Use `peftkit export` to write the adapter-only format instead, and load it with peftkit.")

    def callbacks(self, model, cfg, ctx: ApplyContext) -> list:
        return []


STRATEGY = AdapterStrategy()
