"""The one training path: transformers Trainer + peftkit's callbacks, whatever the strategy."""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path


def resolve_precision(choice: str, quantized: bool = False) -> str:
    """auto -> bf16 on GPUs that support it and on CPUs with AVX-512 BF16 or AMX, else fp32."""
    if choice != "auto":
        return choice
    import torch

    if torch.cuda.is_available():  # QLoRA trains k-bit bases under bf16 autocast too
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if quantized:  # bitsandbytes' int8 CPU kernels run in fp32
        return "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


CPUINFO = Path("/proc/cpuinfo")  # Linux; elsewhere unreadable -> fp32


def cpu_has_fast_bf16() -> bool:
    try:
        flags = CPUINFO.read_text()
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


def training_arguments(recipe, output_dir: Path, precision: str, report_to=(),
                       find_unused_parameters: bool = False, probe: bool = False):
    """probe: a learning-rate search run (peftkit.lr_search): no checkpoints, no progress bar."""
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
        save_strategy="no" if probe else "steps" if save_by_steps else "epoch",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        activation_checkpointing=t.gradient_checkpointing,
        report_to=list(report_to) or "none",  # the pipeline passes the recipe's (peftkit.tracking)
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        disable_tqdm=probe,
        ddp_find_unused_parameters=find_unused_parameters,  # the strategy's (Strategy docstring)
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
                  callbacks: list, *, report_to=(), find_unused_parameters: bool = False,
                  probe: bool = False):
    from peftkit.callbacks import guard_callbacks  # NaN stop, signals, resume state, data order
    from peftkit.packing import trainer_class
    from peftkit.quantization import own_adapters_accepted

    args = training_arguments(recipe, run_dir / "checkpoints", precision, report_to,
                              find_unused_parameters, probe)
    declare_loss_kwargs(model)
    pad_multiple = pad_to_multiple(precision)
    trainer_cls = trainer_class(recipe, model, tokenizer.pad_token_id)
    metrics, preprocess = (task.probe_metrics() if probe else
                           (task.compute_metrics(labels, recipe), task.preprocess_logits))
    with own_adapters_accepted(model):  # peftkit's adapter/prefix on an 8/4-bit base
        return trainer_cls(
            model=model,
            args=args,
            train_dataset=encoded["train"],
            eval_dataset=encoded["eval"] if recipe.train.eval_every != "no" else None,
            data_collator=task.collator(tokenizer, pad_to_multiple_of=pad_multiple),
            processing_class=tokenizer,
            compute_metrics=metrics,
            preprocess_logits_for_metrics=preprocess,
            callbacks=[metrics_logger(run_dir / "metrics.jsonl"), *guard_callbacks(recipe), *callbacks],
        )


def declare_loss_kwargs(model) -> None:
    """Tell the Trainer when the model's loss ignores `num_items_in_batch`.

    transformers 5 passes num_items_in_batch (labels counted over all processes) to any forward
    that takes **kwargs, then multiplies the loss by the number of processes and skips the
    gradient-accumulation division, trusting the model to have divided by that count. Models whose
    head calls `self.loss_function` (Llama, ...) do; BERT-family heads take a plain per-batch mean
    with CrossEntropyLoss and ignore it, so under 2 processes their loss and gradients doubled
    (measured: test loss 4.19 against 2.09 single-process, same predictions). The Trainer's
    documented switch is `accepts_loss_kwargs = False` on the model."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft
    if hasattr(base, "accepts_loss_kwargs"):
        return  # the model (or an earlier call) says
    try:
        source = inspect.getsource(type(base).forward)
    except (OSError, TypeError):
        return
    if "self.loss_function(" not in source:
        base.accepts_loss_kwargs = False


def pad_to_multiple(precision: str) -> int | None:
    """8 feeds GPU tensor cores aligned tiles. On CPU a padded slot costs as much as a real token
    (oneDNN has no such tiles; measured: bf16 step time grows linearly with length), so no padding."""
    import torch

    return 8 if precision in ("bf16", "fp16") and torch.cuda.is_available() else None


class TokenCounter:
    """Counts the real (attention_mask) and padded token slots the model trains on: a forward
    pre-hook that ignores eval-mode calls, so evaluations during training are not counted.
    A packed batch's 4-D mask (rows, 1, width, width) has True on its diagonal exactly at real tokens."""

    def __init__(self, model):
        self.real = self.slots = 0
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        if not module.training:
            return
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if mask is not None and mask.dim() == 4:
            self.real += int(mask.diagonal(dim1=-2, dim2=-1).sum())
            self.slots += mask.shape[0] * mask.shape[-1]
        elif mask is not None:
            self.real += int(mask.sum())
            self.slots += mask.numel()
        elif ids is not None:
            self.real += ids.numel()
            self.slots += ids.numel()

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real / self.slots if self.slots else 0.0

    def remove(self) -> None:
        self.handle.remove()


def set_threads(recipe) -> None:
    import torch

    if recipe.train.num_threads:
        torch.set_num_threads(recipe.train.num_threads)
    elif "OMP_NUM_THREADS" not in os.environ:  # processes of one launch share the cores
        torch.set_num_threads(max(1, default_threads() // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


@functools.lru_cache(maxsize=1)
def default_threads() -> int:
    """One thread per physical core this process may use: torch's own default (physical cores,
    no hyper-threads: GEMM kernels share a core's FMA units) capped by the CPU affinity mask, which
    torch ignores (taskset, containers). Cached: later set_num_threads calls change what torch says."""
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(torch.get_num_threads(), usable or 1))
