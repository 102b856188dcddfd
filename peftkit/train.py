"""The one training path: transformers Trainer + peftkit's callbacks, whatever the strategy."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def resolve_precision(choice: str, quantized: bool = False) -> str:
    """auto -> bf16 on GPUs that support it and on CPUs with AVX-512 BF16 or AMX, else fp32."""
    if choice != "auto":
        return choice
    if quantized:  # bitsandbytes' int8 CPU kernels run in fp32
        return "fp32"
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def total_train_steps(recipe, n_train: int, world_size: int = 1) -> int:
    """Optimizer steps of the run, computed as the Trainer does (AdaLoRA's budget needs it early)."""
    t = recipe.train
    if t.max_steps:
        return t.max_steps
    batches = math.ceil(n_train / (t.batch_size * world_size))
    per_epoch = max(1, batches // t.gradient_accumulation_steps)
    return math.ceil(per_epoch * t.epochs)


def training_arguments(recipe, output_dir: Path, precision: str):
    import torch
    from transformers import TrainingArguments

    t = recipe.train
    save_by_steps = t.save_steps is not None
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup,  # transformers 5: a value below 1 is a ratio of the total steps
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        use_cpu=not torch.cuda.is_available(),  # bf16 autocast on CPU needs it said
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy=t.eval_every,
        eval_steps=t.eval_steps,
        save_strategy="steps" if save_by_steps else "epoch",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        activation_checkpointing=t.gradient_checkpointing,
        report_to=list(t.report_to) or "none",
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        disable_tqdm=False,
        ddp_find_unused_parameters=False,
    )


def metrics_logger(path: Path):
    """A TrainerCallback that appends every log (loss, lr, eval metrics) to a JSONL file."""
    from transformers import TrainerCallback

    class MetricsLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                record = {"step": state.global_step, "epoch": state.epoch, **logs}
                with open(path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")

    return MetricsLogger()


def build_trainer(recipe, model, tokenizer, task, encoded, labels, run_dir: Path, precision: str,
                  callbacks: list):
    from transformers import Trainer

    args = training_arguments(recipe, run_dir / "checkpoints", precision)
    pad_multiple = 8 if precision in ("bf16", "fp16") else None
    return Trainer(
        model=model,
        args=args,
        train_dataset=encoded["train"],
        eval_dataset=encoded["eval"] if recipe.train.eval_every != "no" else None,
        data_collator=task.collator(tokenizer, pad_to_multiple_of=pad_multiple),
        processing_class=tokenizer,
        compute_metrics=task.compute_metrics(labels, recipe),
        preprocess_logits_for_metrics=task.preprocess_logits,
        callbacks=[metrics_logger(run_dir / "metrics.jsonl"), *callbacks],
    )


def set_threads(recipe) -> None:
    import torch

    if recipe.train.num_threads:
        torch.set_num_threads(recipe.train.num_threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)
