"""Prefix tuning (Li & Liang 2021, arXiv:2101.00190) through transformers 5's attention registry.

peft's prefix tuning refuses BERT-family models under transformers 5 (it needs past_key_values),
so peftkit registers its own attention function and prepends trainable keys/values there:

    attention module (BertSelfAttention, LlamaAttention, ...)
      q, k, v (k already RoPE-rotated; k/v include any KV-cache) ──▶ ALL_ATTENTION_FUNCTIONS["peftkit_prefix"]
                                                                       │
        prefix_key / prefix_value   [kv_heads, P, head_dim]  ──expand──┤  k' = [P_k ; k]   v' = [P_v ; v]
        mask [B, 1, q, kv] (bool or additive float)          ──────────┤  mask' = [attend ; mask]
                                                                       ▼
                                                        ALL_ATTENTION_FUNCTIONS["sdpa"](q, k', v', mask')

  * The prefix is prepended on every call and never enters the KV cache, so generate() with a
    cache sees the same keys as generate() without one. Prefix keys get no rotary embedding:
    they are free parameters, the model learns whatever "position" suits them.
  * A mask function is registered under the same name (sdpa's), otherwise transformers hands
    the attention function mask=None and padding would be attended to.

  Initialisation (init: real-tokens, Li & Liang section 5.4): the base model reads P real tokens
  once and every layer's keys/values of them become the starting prefixes, so at step 0 the
  prefix looks to the frozen model like a few words of context rather than vectors unlike any key
  it produces. (What collapsed CoNLL-2003 training to all-O was not the init but the MLP below at
  short-run learning rates: recipes/conll2003/prefix.yaml.)

  Reparameterisation (Li & Liang section 4.3), training only:

    embedding [P, hidden] ─▶ Linear(hidden, cfg.hidden_size) ─▶ tanh ─▶ Linear(→ n_layers*2*kv_dim)
                                                                         └─ slice of layer i ─┐
    prefix = real-token keys/values (a fixed buffer) + MLP output  ◀──────────────────────────┘
    The MLP's last Linear starts at zero (as LoRA's B), so step 0 uses the real-token prefixes.

  fold_prefixes() computes that MLP once into plain prefix_key / prefix_value parameters and
  deletes it (at the end of training and before save), so a saved adapter holds only the prefixes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn
from transformers import AttentionInterface, TrainerCallback
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from peftkit.errors import PeftkitError
from peftkit.strategies.base import (
    ApplyContext, Strategy, freeze_all, head_modules, load_trainable, save_trainable, unfreeze_heads,
)
from peftkit.strategies.configs import PrefixConfig

ATTN_NAME = "peftkit_prefix"
CAPTURE_NAME = "peftkit_prefix_capture"   # used once, at apply(), to read real-token keys/values
ENCODER_ATTR = "peftkit_prefix_encoder"
KEY_PROJ_NAMES = ("k_proj", "key")     # Llama family, BERT family


# ---------------------------------------------------------------- the attention function

def prefix_attention(module, query, key, value, attention_mask, **kwargs):
    """sdpa attention with this layer's prefix keys/values in front of the real ones."""
    prefix = layer_prefix(module)
    if prefix is not None:
        pk, pv = prefix
        p_drop = module.__dict__.get("_peftkit_prefix_dropout", 0.0)
        if module.training and p_drop > 0:
            pk, pv = nn.functional.dropout(pk, p_drop), nn.functional.dropout(pv, p_drop)
        batch = key.shape[0]
        attention_mask = extend_mask(attention_mask, module, query, key, pk.shape[2], kwargs)
        key = torch.cat([pk.to(key.dtype).expand(batch, -1, -1, -1), key], dim=2)
        value = torch.cat([pv.to(value.dtype).expand(batch, -1, -1, -1), value], dim=2)
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


def extend_mask(mask, module, query, key, n_prefix: int, kwargs) -> torch.Tensor | None:
    """Prepend `n_prefix` always-visible columns to the mask; build the causal part if it was skipped."""
    q_len, kv_len = query.shape[2], key.shape[2]
    if mask is None:
        causal = kwargs.get("is_causal", getattr(module, "is_causal", False))
        if not causal or q_len == 1:
            return None   # everything visible, prefix included: no mask needed
        # sdpa_mask skipped a plain causal mask; with the prefix it is no longer square, so build
        # it here (queries are the last q_len positions of the kv sequence)
        q_pos = torch.arange(kv_len - q_len, kv_len, device=query.device)
        mask = (q_pos[:, None] >= torch.arange(kv_len, device=query.device)[None, :])[None, None]
    visible = torch.ones if mask.dtype == torch.bool else torch.zeros   # bool: True=attend; float: 0=attend
    cols = visible((*mask.shape[:-1], n_prefix), dtype=mask.dtype, device=mask.device)
    return torch.cat([cols, mask], dim=-1)


def capture_attention(module, query, key, value, attention_mask, **kwargs):
    """sdpa attention that keeps the first example's keys/values [kv_heads, L, head_dim]."""
    module.__dict__["_peftkit_captured"] = (key[0].detach(), value[0].detach())
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(ATTN_NAME, prefix_attention)
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)   # without it the mask arrives as None
AttentionInterface.register(CAPTURE_NAME, capture_attention)
AttentionMaskInterface.register(CAPTURE_NAME, sdpa_mask)


# ---------------------------------------------------------------- prefix parameters

def layer_prefix(module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(keys, values) of shape [1, kv_heads, P, head_dim] for one attention module, or None."""
    encoder = module.__dict__.get("_peftkit_prefix_encoder")   # plain attribute: not a submodule
    if encoder is not None:
        k, v = encoder.layer_kv(module.__dict__["_peftkit_prefix_layer"])
    elif "prefix_key" in module._parameters:
        k, v = module.prefix_key, module.prefix_value
    else:
        return None
    return k.unsqueeze(0), v.unsqueeze(0)


def attention_modules(model) -> list[tuple[nn.Module, int, int]]:
    """(module, kv_heads, head_dim) of every self-attention module that calls the registry."""
    found = []
    for module in model.modules():
        name = type(module).__name__
        if "Attention" not in name or "Cross" in name:   # BertCrossAttention: encoder states, no prefix
            continue
        proj = next((getattr(module, n) for n in KEY_PROJ_NAMES if hasattr(module, n)), None)
        head_dim = getattr(module, "head_dim", None) or getattr(module, "attention_head_size", None)
        if head_dim and hasattr(proj, "out_features"):   # GQA: k_proj is kv_heads * head_dim wide
            found.append((module, proj.out_features // head_dim, head_dim))
    return found


class PrefixEncoder(nn.Module):
    """The reparameterisation MLP: one shared net emits the prefixes of every layer."""

    def __init__(self, n_tokens: int, hidden: int, mlp_hidden: int, shapes: list[tuple[int, int]],
                 anchor: torch.Tensor | None = None):
        super().__init__()
        self.shapes = shapes                       # (kv_heads, head_dim) per layer
        self.sizes = [2 * h * d for h, d in shapes]
        self.embedding = nn.Parameter(torch.randn(n_tokens, hidden))   # nn.Embedding's N(0, 1), as peft
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.Tanh(),
                                 nn.Linear(mlp_hidden, sum(self.sizes)))
        # [P, sum(sizes)]: the real-token prefixes the MLP's output is added to (zeros: random init)
        self.register_buffer("anchor", torch.zeros(n_tokens, sum(self.sizes)) if anchor is None else anchor)
        if anchor is not None:   # step 0 = the real-token prefixes; gradients still reach the MLP
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

    def layer_kv(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Only layer i's rows of the last Linear: n_layers cheap calls instead of caching one big output
        hidden = self.mlp[1](self.mlp[0](self.embedding))
        rows = slice(sum(self.sizes[:i]), sum(self.sizes[:i + 1]))
        flat = nn.functional.linear(hidden, self.mlp[2].weight[rows], self.mlp[2].bias[rows])
        flat = flat + self.anchor[:, rows]
        heads, dim = self.shapes[i]
        kv = flat.view(-1, 2, heads, dim).permute(1, 2, 0, 3)   # [2, heads, P, dim]
        return kv[0], kv[1]


def fold_prefixes(model) -> None:
    """Replace the reparameterisation MLP by the prefixes it computes (no-op when already folded)."""
    encoder = getattr(model, ENCODER_ATTR, None)
    if encoder is None:
        return
    with torch.no_grad():
        for module, _, _ in attention_modules(model):
            k, v = encoder.layer_kv(module.__dict__.pop("_peftkit_prefix_layer"))
            del module.__dict__["_peftkit_prefix_encoder"]
            module.prefix_key = nn.Parameter(k.detach().clone())
            module.prefix_value = nn.Parameter(v.detach().clone())
    delattr(model, ENCODER_ATTR)


class FoldPrefixCallback(TrainerCallback):
    """Folds the MLP away when training ends, so evaluation and saving use the plain prefixes."""

    def __init__(self, model):
        self.model = model

    def on_train_end(self, args, state, control, **kwargs):
        fold_prefixes(self.model)


# ---------------------------------------------------------------- the strategy

def _select_attention(model) -> None:
    model.set_attn_implementation(ATTN_NAME)
    if model.config._attn_implementation != ATTN_NAME:   # transformers only warns when it cannot
        raise PeftkitError(f"prefix: {type(model).__name__} cannot switch its attention implementation "
                           "(it does not use transformers' AttentionInterface); try strategy.name=lora")


def _add_prefixes(model, cfg: PrefixConfig, layers, start: list | None) -> None:
    """start: per layer (keys, values) [kv_heads, P, head_dim] to begin from, or None (random)."""
    if cfg.reparameterize:
        anchor = None if start is None else torch.cat(
            [torch.stack(kv, dim=0).permute(2, 0, 1, 3).flatten(1) for kv in start], dim=1)  # [P, Σ 2hd]
        encoder = PrefixEncoder(cfg.num_virtual_tokens, model.config.hidden_size, cfg.hidden_size,
                                [(h, d) for _, h, d in layers], anchor)
        ref = next(model.parameters())
        setattr(model, ENCODER_ATTR, encoder.to(device=ref.device))
        for i, (module, _, _) in enumerate(layers):
            module.__dict__["_peftkit_prefix_encoder"] = encoder   # a reference, not a second owner
            module.__dict__["_peftkit_prefix_layer"] = i
        return
    std = getattr(model.config, "initializer_range", 0.02)
    for i, (module, heads, dim) in enumerate(layers):
        ref = next(module.parameters())
        dtype = ref.dtype if ref.is_floating_point() else torch.float32   # 8-bit bases: train in fp32
        for j, attr in enumerate(("prefix_key", "prefix_value")):
            init = (torch.randn(heads, cfg.num_virtual_tokens, dim, device=ref.device) * std
                    if start is None else start[i][j])
            setattr(module, attr, nn.Parameter(init.to(device=ref.device, dtype=dtype).clone()))


NEUTRAL_TEXT = ("The following is a piece of text in plain English, with the names of people, places "
                "and organisations, and the words that usually come between them.")


def real_token_kv(model, cfg: PrefixConfig, layers, tokenizer) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's keys and values [kv_heads, P, head_dim] of P real tokens read by the base model."""
    ids = init_token_ids(model, cfg, tokenizer)
    was_training = model.training
    model.eval()
    model.set_attn_implementation(CAPTURE_NAME)
    try:
        with torch.no_grad():
            model(input_ids=ids[None].to(next(model.parameters()).device))
    finally:
        model.set_attn_implementation(ATTN_NAME)
        model.train(was_training)
    return [tuple(t.float() for t in module.__dict__.pop("_peftkit_captured")) for module, _, _ in layers]


def init_token_ids(model, cfg: PrefixConfig, tokenizer) -> torch.Tensor:
    """The text's token ids repeated to P; without a tokenizer (a model built in code), ids spread
    evenly over the vocabulary."""
    n = cfg.num_virtual_tokens
    if tokenizer is None:
        if cfg.init_text:
            raise PeftkitError("prefix: strategy.init_text needs the run's tokenizer")
        step = max(1, model.config.vocab_size // (n + 1))
        return torch.arange(1, n + 1) * step
    ids = tokenizer(cfg.init_text or NEUTRAL_TEXT, add_special_tokens=False)["input_ids"]
    if not ids:
        raise PeftkitError(f"prefix: strategy.init_text {cfg.init_text!r} has no tokens; "
                           "give a few words, or set strategy.init: random")
    return torch.tensor((ids * (n // len(ids) + 1))[:n])


class PrefixStrategy(Strategy):
    name = "prefix"
    can_merge = False
    merge_refusal = ("prefixes are extra keys and values every attention layer attends to, not a "
                     "weight delta")
    plot_markers = {"prefix": "v"}
    tune_size = ("num_virtual_tokens", (5, 10, 20))
    peft_format = False
    serve_refusal = ("its prefixes live on the base's attention modules, one run's at a time; "
                     "serve each prefix run on its own")
    packable = False   # the prefix columns are prepended to the mask (extend_mask)
    lr_range = (1e-3, 5e-2)
    default_lr = 1e-2
    # SST-2 at 90/10 (benchmarks/RESULTS.md#robustness): accuracy 0.5860 with sqrt weights, 0.7087
    # with full inverse weights (full fine-tuning, sqrt: 0.6399); frozen layers move little
    lopsided_class_weights = "balanced"

    def apply(self, model, cfg: PrefixConfig, ctx: ApplyContext):
        layers = attention_modules(model)
        if not layers:
            raise PeftkitError(f"prefix: no self-attention modules found in {type(model).__name__}; "
                               "supported: BERT-family encoders and Llama-family decoders")
        _select_attention(model)
        freeze_all(model)
        start = real_token_kv(model, cfg, layers, ctx.tokenizer) if cfg.init == "real-tokens" else None
        _add_prefixes(model, cfg, layers, start)
        for module, _, _ in layers:
            module.__dict__["_peftkit_prefix_dropout"] = cfg.dropout
        unfreeze_heads(model, head_modules(model, ctx.head_names))
        model._peftkit_prefix_cfg = cfg   # save() writes it into the adapter's JSON
        return model

    def callbacks(self, model, cfg: PrefixConfig, ctx: ApplyContext) -> list:
        return [FoldPrefixCallback(model)] if cfg.reparameterize else []

    def save(self, model, folder: Path, cfg=None) -> None:
        cfg = getattr(model, "_peftkit_prefix_cfg", None)
        if cfg is None:
            raise PeftkitError("prefix: this model has no prefixes; call apply() before save()")
        fold_prefixes(model)   # the saved adapter holds only the prefixes, never the MLP
        meta = {"strategy": self.name, "config": dataclasses.asdict(cfg), "prefixes_folded": True}
        save_trainable(model, Path(folder), meta)

    def load(self, load_base, folder: Path, cfg: PrefixConfig, ctx: ApplyContext):
        # saved prefixes are always folded: build the plain form whatever the recipe said (and skip
        # the real-token init: the saved values replace it)
        model = self.apply(load_base(), dataclasses.replace(cfg, reparameterize=False, init="random"), ctx)
        load_trainable(model, Path(folder))
        return model

    def report(self, model) -> dict:
        # what the saved adapter holds (the reparameterisation MLP trains more, then is folded away)
        n_tokens = model._peftkit_prefix_cfg.num_virtual_tokens
        return {"prefix_parameters": sum(2 * h * d * n_tokens for _, h, d in attention_modules(model))}

    def merge(self, model):
        raise PeftkitError(
            "prefix: prefixes cannot be merged into the base weights: they are extra keys and values "
            "every attention layer attends to, not a weight delta. Use `peftkit export` to write the "
            "adapter-only format instead, and load it with peftkit.")


STRATEGY = PrefixStrategy()
