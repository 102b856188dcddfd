"""The one training path: transformers Trainer + peftkit's callbacks, whatever the strategy.

    training_arguments + build_trainer ──▶ run_training (signals, disk errors) ──▶ train output
"""

from __future__ import annotations

import errno
import json
import math
from contextlib import contextmanager
from pathlib import Path

from peftkit import output, rundir
from peftkit.env import cpu_has_fast_bf16
from peftkit.errors import DISK_ERRNOS, PeftkitError, write_error
from peftkit.tasks.base import IGNORE


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


def total_train_steps(recipe, n_train: int, world_size: int = 1) -> int:
    """Optimizer steps of the run, computed as the Trainer does (AdaLoRA's budget needs it early)."""
    t = recipe.train
    if t.max_steps:
        return t.max_steps
    batches = math.ceil(n_train / (t.batch_size * world_size))
    per_epoch = max(1, batches // t.gradient_accumulation_steps)
    return math.ceil(per_epoch * t.epochs)


# train.optimizer -> TrainingArguments.optim (the Trainer builds bitsandbytes' optimizers itself)
OPTIMIZERS = {"adamw": "adamw_torch_fused",  # the Trainer's default
              "adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit"}


def training_arguments(recipe, output_dir: Path, precision: str, report_to=(),
                       find_unused_parameters: bool = False, probe: bool = False,
                       best: tuple[str, bool] | None = None):
    """probe: a learning-rate search run (peftkit.lr_search): no checkpoints, no progress bar.
    best: (metric, higher is better) for train.early_stopping_patience: checkpoints at every
    evaluation, and the best one loaded when training ends."""
    import torch
    from transformers import TrainingArguments

    t = recipe.train
    save_by_steps = t.save_steps is not None
    if best and not probe:
        save_by_steps = t.eval_every == "steps"
        best_args = {"load_best_model_at_end": True, "metric_for_best_model": best[0],
                     "greater_is_better": best[1]}
    else:
        best_args = {}
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        optim=OPTIMIZERS[getattr(t, "optimizer", "adamw")],  # recipes saved before it: adamw
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
        save_steps=(t.eval_steps if best_args else t.save_steps) or 500,
        save_total_limit=t.save_total_limit,
        activation_checkpointing=t.gradient_checkpointing,
        torch_compile=getattr(t, "torch_compile", False),  # recipes saved before it: off
        report_to=list(report_to) or "none",  # the pipeline passes the recipe's (peftkit.tracking)
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        disable_tqdm=probe or output.quiet(),
        ddp_find_unused_parameters=find_unused_parameters,  # the strategy's (Strategy docstring)
        **best_args,
    )


def early_stopping(patience: int):
    from transformers import EarlyStoppingCallback

    return EarlyStoppingCallback(early_stopping_patience=patience)


def early_stopping_record(recipe, task, state, planned_steps: int) -> dict:
    """What result.json says of train.early_stopping_patience: the metric followed, the best
    validation score and the step of the checkpoint restored, and whether training stopped early."""
    best = state.best_model_checkpoint
    return {"patience": recipe.train.early_stopping_patience, "metric": task.selection_metric[0],
            "best_value": state.best_metric,
            "best_step": int(best.rsplit("-", 1)[1]) if best else None,
            "stopped_early": state.global_step < planned_steps}


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
    from peftkit.eval_order import longest_first
    from peftkit.freed_memory import ReleaseFreedMemory
    from peftkit.packing import trainer_class
    from peftkit.quantization import own_adapters_accepted

    patience = None if probe else recipe.train.early_stopping_patience
    args = training_arguments(recipe, run_dir / rundir.CHECKPOINTS, precision, report_to,
                              find_unused_parameters, probe, task.selection_metric if patience else None)
    stopping = [early_stopping(patience)] if patience else []
    declare_loss_kwargs(model)
    pad_multiple = pad_to_multiple(precision)
    trainer_cls = trainer_class(recipe, model, tokenizer.pad_token_id)
    if not probe:  # a learning-rate probe's plain loss is the Trainer's eval_loss, which depends
        trainer_cls = longest_first(trainer_cls)  # on the batches: kept as measured (lr_search)
    trainer_cls = with_task_loss(trainer_cls, training_loss_of(recipe, task))
    power = WEIGHT_POWER.get(recipe.train.class_weights)
    weights = (balanced_weights(task.label_prior(encoded["train"], len(labels)), power)
               if power else None)
    metrics, preprocess = (task.probe_metrics() if probe else
                           (task.compute_metrics(labels, recipe), task.preprocess_logits))
    with own_adapters_accepted(model):  # peftkit's adapter/prefix on an 8/4-bit base
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=encoded["train"],
            eval_dataset=encoded["eval"],  # evaluated only when asked (eval_every, a callback)
            data_collator=task.collator(tokenizer, pad_to_multiple_of=pad_multiple),
            processing_class=tokenizer,
            compute_metrics=metrics,
            preprocess_logits_for_metrics=preprocess,
            compute_loss_func=weighted_loss(weights) if weights else None,
            callbacks=[metrics_logger(run_dir / rundir.METRICS), *guard_callbacks(recipe), *callbacks,
                       *stopping, ReleaseFreedMemory()],
        )
    quiet_raw_logs(trainer)
    return trainer


def training_loss_of(recipe, task):
    """The task's own training loss (Task.training_loss), unless the strategy adds a term to the
    model's loss (AdaLoRA's orthogonality regulariser), which the task's loss would lose."""
    return None if recipe.strategy_impl.adds_to_model_loss(recipe.strategy) else task.training_loss()


def with_task_loss(trainer_cls, task_loss):
    """trainer_cls, or a subclass whose training batches take the task's loss (causal LM: the
    output layer on completion positions only, tasks/completion_loss.py) where the task offers one.
    Evaluation, and runs with class weights or label smoothing, keep the Trainer's own path.

    The task's loss stands in for the model inside the Trainer's compute_loss, which then does what
    it does with a model's loss: num_items_in_batch passed where the model accepts loss kwargs, the
    scaling across processes and for gradient accumulation."""
    if task_loss is None:
        return trainer_cls

    class TaskLossTrainer(trainer_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if (model.training and not return_outputs and self.compute_loss_func is None
                    and self.label_smoother is None):
                model = TaskLossModel(model, self.accelerator.unwrap_model(model), task_loss)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return TaskLossTrainer


class TaskLossModel:
    """Called like the model by Trainer.compute_loss: {"loss": the task's loss}, or the model's
    own output where the task's loss declines (it checks the model once)."""

    def __init__(self, model, unwrapped, task_loss):
        self.model, self.unwrapped, self.task_loss = model, unwrapped, task_loss
        self.training = model.training

    def __call__(self, labels=None, num_items_in_batch=None, **inputs):
        loss = None if labels is None else self.task_loss(self.model, self.unwrapped, inputs, labels,
                                                          num_items_in_batch)
        if loss is not None:
            return {"loss": loss}
        extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
        return self.model(labels=labels, **inputs, **extra)


def quiet_raw_logs(trainer) -> None:
    """The Trainer prints every log dict ({'loss': ...}) beside its progress bar; they are in
    metrics.jsonl already, so the screen shows them only with -v."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    if output.verbose():
        return
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:

        class BarsOnly(ProgressCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                pass

        trainer.add_callback(BarsOnly())


# train.class_weights -> the power of the inverse training frequency each class is weighed by
WEIGHT_POWER = {"balanced": 1.0, "sqrt": 0.5}


def balanced_weights(prior: list[float], power: float = 1.0) -> list[float]:
    """Class weights p_c ** -power, scaled to average 1 over the training labels
    (sum_c p_c * w_c = 1), so the loss keeps its scale and the learning rate its meaning."""
    raw = [p ** -power for p in prior]
    scale = sum(p * w for p, w in zip(prior, raw))
    return [w / scale for w in raw]


def weighted_loss(weights: list[float]):
    """The Trainer's compute_loss_func: class-weighted cross-entropy over the labelled positions.

    The Trainer hands over num_items_in_batch (labels over the accumulated batch and every
    process) and then skips its own accumulation division and multiplies by the number of
    processes, so the sum is divided by it; evaluation passes None: the batch's own count.
    (peft's AdaLoRA adds its orthogonality penalty only to a loss the model computes itself: with
    class weights that penalty is left out; its default weight is 0.)"""
    import torch

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if logits.dim() == 3:  # token classification; prompt tuning prepends virtual positions
            logits = logits[:, -labels.shape[1]:]
        flat = logits.reshape(-1, logits.shape[-1]).float()
        w = torch.tensor(weights, device=flat.device)
        total = torch.nn.functional.cross_entropy(flat, labels.reshape(-1).to(flat.device), weight=w,
                                                  ignore_index=IGNORE, reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else (labels != IGNORE).sum()
        return total / torch.as_tensor(count, device=flat.device).clamp(min=1)

    return loss


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


# ---------------------------------------------------------------- training

def run_training(trainer, checkpoint: str | None, run_dir: Path):
    """trainer.train with peftkit's signal handling and disk errors turned into PeftkitErrors;
    `checkpoint`: the one to resume from (peftkit.resume.checkpoint_to_resume), or None."""
    from peftkit.callbacks import CheckpointExtras, RunTotals, SignalStop

    stop = None
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, (CheckpointExtras, RunTotals)):
            cb.resume_from = checkpoint
        if isinstance(cb, SignalStop):
            stop = cb
    with disk_errors(run_dir), (stop.installed() if stop else _nothing()):
        return trainer.train(resume_from_checkpoint=checkpoint)


@contextmanager
def _nothing():
    yield


TORCH_WRITE_ERRORS = ("PytorchStreamWriter", "inline_container", "file write failed")
NO_SPACE = "No space left on device"  # how tokenizers (Rust: "os error 28") reports ENOSPC


@contextmanager
def disk_errors(where: Path):
    """Full disks and unwritable folders as one clear line naming the path, not a traceback."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        raise write_error(where, exc) from None
    except Exception as exc:  # noqa: BLE001 - tokenizers' Rust errors are plain Exceptions
        if NO_SPACE in str(exc):
            raise write_error(where, OSError(errno.ENOSPC, NO_SPACE)) from None
        if not isinstance(exc, RuntimeError):
            raise
        # torch.save reports a failed write as a RuntimeError from its zip writer, without errno
        text = str(exc)
        if not any(k in text for k in TORCH_WRITE_ERRORS):
            raise
        raise PeftkitError(f"cannot write a checkpoint under {where}: "
                           f"{text.splitlines()[0][:160]}. "
                           "Is the disk full or the folder read-only? Free some space or point "
                           "output.dir (or --out) elsewhere, then rerun with --resume") from None
