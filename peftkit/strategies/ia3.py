"""(IA)³ (Liu et al. 2022, arXiv:2205.05638) through peft: learned vectors that rescale activations.

    keys   k = l_k ⊙ (W_k x)          values v = l_v ⊙ (W_v x)
    feed-forward  y = W_out (l_ff ⊙ act(W_in x))     every l starts at 1: step 0 = the base model

The paper rescales keys, values and the feed-forward's inner activation (the input of its second
Linear). peft's BERT default `output.dense` also matches `attention.output.dense` (suffix match),
so for BERT-family encoders peftkit names the feed-forward output with a regex instead.
"""

from __future__ import annotations

from peftkit.strategies.peft_base import PeftStrategy, heads_to_save, task_type

ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "camembert")
# model_type -> (target_modules, feedforward_modules); others fall back to peft's defaults
DEFAULTS = {t: (r".*\.(key|value|layer\.\d+\.output\.dense)$", r".*\.layer\.\d+\.output\.dense$")
            for t in ENCODER_TYPES}


class IA3Strategy(PeftStrategy):
    name = "ia3"
    can_merge = True
    weighted_methods = ("linear",)
    plot_markers = {"ia3": "X"}
    lr_range = (1e-3, 5e-2)
    default_lr = 1e-2

    def peft_config(self, model, cfg, ctx):
        from peft import IA3Config

        targets, feedforward = cfg.target_modules, cfg.feedforward_modules
        if not targets:
            targets, default_ff = DEFAULTS.get(model.config.model_type, (None, None))
            feedforward = feedforward or default_ff
        return IA3Config(task_type=task_type(ctx), target_modules=targets,
                         feedforward_modules=feedforward, modules_to_save=heads_to_save(model, ctx))

    def weighted_kwargs(self, method, density, svd_rank) -> dict:
        return {}  # peft combines IA3 vectors linearly only, and takes no combination arguments


STRATEGY = IA3Strategy()
