"""LoRA (Hu et al. 2021), DoRA (Liu et al. 2024) and rsLoRA through peft.

    x ──▶ W (frozen) ───────────────┐
      └─▶ dropout ─▶ A (r×d) ─▶ B (d×r, zero init) ─▶ × alpha/r ─▶ + ─▶ y
"""

from __future__ import annotations

from peftkit.errors import PeftkitError
from peftkit.strategies.lora_addmm import add_inside_matmul
from peftkit.strategies.peft_base import PeftStrategy, heads_to_save, target_modules, task_type

INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
# peft's add_weighted_adapter combinations of LoRA adapters
WEIGHTED_METHODS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties",
                    "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")


class LoraStrategy(PeftStrategy):
    name = "lora"
    can_merge = True
    weighted_methods = WEIGHTED_METHODS
    plot_markers = {"lora": "o", "dora": "D"}
    tune_size = ("r", (4, 8, 16))

    def method(self, settings: dict) -> str:
        return "dora" if settings.get("use_dora") else self.name

    def apply(self, model, cfg, ctx):
        model = super().apply(model, cfg, ctx)
        add_inside_matmul(model)  # the update added inside one matmul (lora_addmm.py)
        return model

    def load(self, load_base, folder, cfg, ctx):
        model = super().load(load_base, folder, cfg, ctx)
        add_inside_matmul(model)
        return model

    def mixed_batch(self, cfg) -> bool:
        # peft's mixed-adapter batches cover LoRA layers and modules_to_save heads, not DoRA
        # ("Cannot pass `adapter_names` when DoRA is enabled")
        return not cfg.use_dora

    def gguf_adapter_refusal(self, cfg) -> str | None:
        if cfg.use_dora:
            return "llama.cpp's LoRA adapters have no DoRA magnitude vectors"
        if cfg.init in ("pissa", "olora"):  # these change the base weights the adapter sits on
            return f"init {cfg.init} trains against a modified base, not the base GGUF file"
        if cfg.bias != "none":
            return f"bias {cfg.bias} trains base biases, which llama.cpp adapters cannot carry"
        return None

    def lora_pairs(self, model, adapter: str = "default"):
        from peft.tuners.lora import Linear, LoraLayer

        for name, module in model.named_modules():
            if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
                continue
            if not isinstance(module, Linear):  # embeddings and convolutions: A/B laid out otherwise
                raise PeftkitError(f"LoRA on {name} ({type(module).__name__}): llama.cpp adapter "
                                   "files take LoRA on linear layers only")
            yield (name.removeprefix("base_model.model."), module.lora_A[adapter].weight,
                   module.lora_B[adapter].weight, module.scaling[adapter])

    def peft_config(self, model, cfg, ctx):
        from peft import LoraConfig

        return LoraConfig(task_type=task_type(ctx), r=cfg.r, lora_alpha=cfg.alpha,
                          lora_dropout=cfg.dropout, target_modules=target_modules(cfg.target_modules),
                          use_dora=cfg.use_dora, use_rslora=cfg.use_rslora, bias=cfg.bias,
                          init_lora_weights=INIT[cfg.init], modules_to_save=heads_to_save(model, ctx))


STRATEGY = LoraStrategy()
