"""Full fine-tuning: every parameter trains (embeddings optionally frozen)."""

from __future__ import annotations

from pathlib import Path

from peftkit.strategies.base import Strategy


class FullStrategy(Strategy):
    name = "full"
    saves_whole_model = True
    can_merge = True               # nothing to fold: merging saves the model as it is
    plot_markers = {"full": "s"}
    lr_range = (1e-5, 3e-4)
    default_lr = 5e-5
    serve_refusal = "each run is a whole model, with no base left to share; serve each run on its own"

    def apply(self, model, cfg, ctx):
        for p in model.parameters():
            p.requires_grad_(True)
        if cfg.freeze_embeddings:
            for p in model.get_input_embeddings().parameters():
                p.requires_grad_(False)
        return model

    def save(self, model, folder: Path, cfg=None) -> None:
        model.save_pretrained(str(folder), safe_serialization=True)

    def load(self, load_base, folder: Path, cfg, ctx):
        return load_base(path=str(folder))

    def merge(self, model):
        return model  # already a plain transformers model


STRATEGY = FullStrategy()
