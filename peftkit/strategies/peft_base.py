"""Strategies that peft owns (LoRA, DoRA, AdaLoRA, IA3, prompt tuning) share this base:
build a peft config, wrap with get_peft_model, save/load peft adapter folders, merge."""

from __future__ import annotations

from pathlib import Path

from peftkit.strategies.base import ApplyContext, Strategy, head_modules


class PeftStrategy(Strategy):
    peft_format = True
    serves_many = True         # peft keeps several named adapters on one base (load_adapter)

    def peft_config(self, model, cfg, ctx: ApplyContext):
        """The peft config object for this method."""
        raise NotImplementedError

    def apply(self, model, cfg, ctx: ApplyContext):
        from peft import get_peft_model

        if ctx.quantized:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return get_peft_model(model, self.peft_config(model, cfg, ctx))

    def save(self, model, folder: Path, cfg=None) -> None:
        model.save_pretrained(str(folder))

    def load(self, load_base, folder: Path, cfg, ctx: ApplyContext):
        from peft import PeftModel

        return PeftModel.from_pretrained(load_base(), str(folder))

    def add_adapter(self, model, folder: Path, name: str) -> None:
        model.load_adapter(str(folder), adapter_name=name)

    def merge(self, model):
        return model.merge_and_unload()


def task_type(ctx: ApplyContext):
    from peft import TaskType

    return getattr(TaskType, ctx.task.peft_task_type)


def heads_to_save(model, ctx: ApplyContext) -> list[str] | None:
    """Task heads are new and must train in full (peft's modules_to_save)."""
    return head_modules(model, ctx.head_names) or None


def target_modules(cfg_value):
    """null -> peft's per-architecture default (BERT: query/value; Llama: q_proj/v_proj)."""
    return cfg_value if cfg_value else None
