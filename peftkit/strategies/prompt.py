"""Prompt tuning (Lester et al. 2021, arXiv:2104.08691) through peft: trainable input embeddings.

    [p_1 … p_P] (trainable, P × hidden) ++ embed(x_1 … x_n) ──▶ frozen model ──▶ outputs

The prompt starts from the embeddings of `init_text` (the paper's best init besides sampled
vocabulary) or, without one, from embeddings of random vocabulary tokens (peft's SAMPLE_VOCAB),
never from N(0, 1), which is far off the scale of a pretrained embedding table.

peft prepends the virtual tokens for token classification too, but then the logits have P more
positions than the labels; two hooks on the wrapped model pad the labels with -100 and cut the
virtual positions off the logits, so loss, metrics and predictions line up word for word.
"""

from __future__ import annotations

from pathlib import Path

from peftkit.errors import PeftkitError
from peftkit.strategies.peft_base import PeftStrategy, heads_to_save, task_type
from peftkit.tasks.base import IGNORE

SMALL_MODEL = 1_000_000_000  # parameters below which size_caveat speaks (Lester et al. 2021's
                             # prompt tuning closes the gap to full fine-tuning only beyond ~10B)


class PromptStrategy(PeftStrategy):
    name = "prompt"
    can_merge = False
    merge_refusal = "a soft prompt is extra input embeddings in front of every input, not a weight delta"
    plot_markers = {"prompt": "*"}
    tune_size = ("num_virtual_tokens", (5, 10, 20))
    packable = False   # peft prepends the virtual tokens to a 2-D attention mask
    lr_range = (3e-3, 1e-1)
    default_lr = 3e-2
    # 20 soft tokens in front of a frozen encoder barely move its features; on SST-2 at 90/10 with
    # sqrt weights the run still predicted one class (accuracy 0.5092), with full inverse weights
    # it learned both (0.6044; full fine-tuning 0.6399) (benchmarks/RESULTS.md#robustness)
    lopsided_class_weights = "balanced"

    def size_caveat(self, total_params: int) -> str | None:
        if total_params >= SMALL_MODEL:
            return None
        return ("prompt tuning trails full fine-tuning by 3.5-15 points on a model of this size "
                f"({total_params / 1e6:.0f}M parameters; MiniLM on every set of "
                "benchmarks/RESULTS.md#robustness, learning rate searched); soft prompts approach "
                "full fine-tuning on models of billions of parameters (Lester et al. 2021). On a "
                "small model, LoRA (strategy.name=lora) trains a comparable share of parameters")

    def peft_config(self, model, cfg, ctx):
        from peft import PromptTuningConfig, PromptTuningInit

        return PromptTuningConfig(task_type=task_type(ctx), num_virtual_tokens=cfg.num_virtual_tokens,
                                  prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
                                  modules_to_save=heads_to_save(model, ctx))

    def apply(self, model, cfg, ctx):
        model = super().apply(model, cfg, ctx)
        if cfg.init_text:
            init_from_text(model, cfg.init_text, ctx.tokenizer)
        return align_token_outputs(model, ctx)

    def load(self, load_base, folder: Path, cfg, ctx):
        return align_token_outputs(super().load(load_base, folder, cfg, ctx), ctx)

    def merge(self, model):
        raise PeftkitError(
            "prompt: a soft prompt cannot be merged into the base weights: it is extra input "
            "embeddings in front of every input, not a weight delta. Keep the adapter folder and load "
            "it with peftkit (predict / eval), or train with lora to get a mergeable result.")


def init_from_text(model, text: str, tokenizer) -> None:
    """Prompt embeddings = embeddings of `text`'s tokens, repeated or cut to the prompt length."""
    import torch

    if tokenizer is None:
        raise PeftkitError("prompt: strategy.init_text needs the run's tokenizer")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise PeftkitError(f"prompt: strategy.init_text {text!r} has no tokens")
    embedding = model.prompt_encoder[model.active_adapter].embedding
    n = embedding.num_embeddings
    ids = (ids * (n // len(ids) + 1))[:n]
    words = model.get_input_embeddings()
    with torch.no_grad():
        init = words(torch.tensor(ids, device=words.weight.device))
        embedding.weight.copy_(init.to(embedding.weight.dtype))


def align_token_outputs(model, ctx):
    """Token classification: labels get P leading IGNOREs, logits lose their first P positions."""
    import torch

    if ctx.task.name != "token-classification":
        return model
    n_virtual = model.active_peft_config.num_virtual_tokens
    inner = model.base_model   # the transformers model peft feeds inputs_embeds to

    def pad_labels(module, args, kwargs):
        labels = kwargs.get("labels")
        if labels is not None:
            pad = labels.new_full((labels.shape[0], n_virtual), IGNORE)
            kwargs["labels"] = torch.cat([pad, labels], dim=1)
        return args, kwargs

    def cut_logits(module, args, kwargs, output):
        output["logits"] = output["logits"][:, n_virtual:]
        return output

    inner.register_forward_pre_hook(pad_labels, with_kwargs=True)
    inner.register_forward_hook(cut_logits, with_kwargs=True)
    return model


STRATEGY = PromptStrategy()
