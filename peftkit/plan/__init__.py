"""`peftkit plan` and the estimate `run` prints first: parameters, peak memory and time per
epoch of a recipe, without loading its weights.

    make_plan(parts)   parts: pipeline.Build (data, tokenizer, encoded examples: no weights)
        probe.count        meta-device model + Strategy.apply: exact counts, bytes as loaded
        batches.largest_*  the largest training batch (as packed) and evaluation batch
        probe.activations  a forward pass of a 1- and 2-layer random copy on that batch, with
                           the run's own training loss (a causal LM's: completion logits only)
        probe.eval_row     an evaluation forward of one row as wide as the largest evaluation
                           batch: its logits and what else the model returns (key/value cache),
                           and what the layers hold at once for the whole batch (working.py:
                           the allocator's events, bitsandbytes' 8-bit matmul included)
        memory.memory      the arithmetic (memory.py): weights, gradients, AdamW, activations,
                           logits, evaluation, loading, over this process's baseline
        timing             FLOPs / a measured matmul rate (rough)

Imports torch only inside functions: `peftkit --help` stays torch-free.
"""

from __future__ import annotations

import dataclasses
import math

from peftkit.plan.memory import MB, Memory, Plan, memory

__all__ = ["Memory", "Plan", "make_plan", "memory", "summary_lines"]

CPU_LAYERS_IN_BACKWARD = 2  # on CPU, beside the saved tensors: probe.py says why
# On CPU an evaluation raises the resident peak by about twice what its layers hold at once: the
# chunks of the tensors that die stay in glibc's heap, fragmented (benchmarks/RESULTS.md#plan)
CPU_EVAL_HEAP = 2


def make_plan(parts) -> Plan:
    """The plan of the run `parts` was built for (pipeline.build)."""
    from peftkit.plan import batches, probe, timing

    recipe, t = parts.recipe, parts.recipe.train
    config = probe.load_config(parts)
    gguf = bool(parts.source.gguf_file)
    dtype = probe.loaded_dtype(config, gguf)
    counts, packed = probe.count(parts, config, dtype)
    import_run_modules(parts.task)
    baseline = baseline_mb()  # libraries imported, data encoded, no tensors yet
    train = parts.encoded["train"]
    lengths = [len(ids) for ids in train["input_ids"]]
    steps = steps_per_epoch(recipe, len(lengths))
    # the largest batch of a shuffled epoch: the Trainer's own shuffle is another draw, so a
    # short run may meet it as well as a long one
    big = batches.largest_training_batch(lengths, t.batch_size, math.ceil(len(lengths) / t.batch_size),
                                         packed, t.seed)
    full, fwd = probe.activations(parts, config, dtype, [train[i] for i in big.indices], parts.precision)
    saved = full.saved_bytes + (0 if on_gpu() else CPU_LAYERS_IN_BACKWARD * full.layer_bytes)
    # the probe runs unquantized; an 8-bit Linear de-quantizes its weight for every matmul
    saved += counts.int8_weights * 4
    if t.gradient_checkpointing:  # only each layer's input is kept, one layer recomputed at a time
        saved = checkpointed(saved, fwd, config, big)
    ev, split = largest_eval(parts, recipe)
    longest = max(ev.indices, key=lambda i: len(parts.encoded[split][i]["input_ids"]))
    row = probe.eval_row(parts, config, dtype, parts.encoded[split][longest], parts.precision, ev.rows)
    mem = memory(baseline_mb=baseline, weight_bytes=counts.weight_bytes,
                 trainable_bytes=counts.trainable_bytes, activation_bytes=saved,
                 logits_numel=fwd.logits_numel, eval_logits_numel=ev.rows * row.logits_numel,
                 eval_logit_bytes=fwd.logits_bytes, eval_other_bytes=ev.rows * row.other_bytes,
                 eval_working_bytes=row.working_bytes * (1 if on_gpu() else CPU_EVAL_HEAP),
                 loading_bytes=loading_bytes(parts, counts, gguf))
    _, layers = probe.num_layers(config)
    hidden = getattr(config, "hidden_size", 0) or 0
    per_token = timing.flops_per_token(counts.matmul_weights, counts.trained_weights, layers, hidden,
                                       big.width)
    rate = timing.matmul_gflops(parts.precision)
    slots = epoch_slots(lengths, t.batch_size, packed, t.seed)
    plan = Plan(counts.total, counts.trainable, mem, big.record(len(big.indices)),
                ev.record(len(ev.indices)), slots * per_token / (rate * 1e9), steps, per_token, rate,
                parts.precision, available_mb(baseline), [])
    plan.advice = advice(plan, recipe)
    return plan


# what `run` imports to train (about 85 MB resident here: benchmarks/RESULTS.md#plan)
RUN_MODULES = ("transformers.trainer", "peftkit.callbacks", "peftkit.health_watch")


def import_run_modules(task) -> None:
    """The modules a run has imported by its peak (the Trainer, the task's metric libraries),
    so that this process's resident memory is the run's baseline."""
    import importlib

    for name in (*RUN_MODULES, *task.metric_modules):
        importlib.import_module(name)


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def baseline_mb() -> float:
    """What the process holds before the model: CUDA counts tensors only (none yet), CPU its
    resident memory (Python, torch, transformers, the data and the tokenizer)."""
    import psutil
    import torch

    if torch.cuda.is_available():
        return torch.cuda.memory_allocated() / MB
    return psutil.Process().memory_info().rss / MB


def available_mb(baseline: float) -> float:
    """Memory this run could reach: free memory now, plus what the process already holds."""
    import psutil
    import torch

    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0] / MB + baseline
    return psutil.virtual_memory().available / MB + baseline


def loading_bytes(parts, counts, gguf: bool) -> int:
    """Beside the built model while it loads: the weight file's pages (read through mmap); a
    GGUF file is first de-quantized into a whole float state dict, then copied into the model."""
    import torch

    if torch.cuda.is_available():
        return 0
    from peftkit.plan.probe import file_bytes

    return file_bytes(parts) + (counts.weight_bytes if gguf else 0)


def checkpointed(saved: int, fwd, config, big) -> int:
    """Activation checkpointing keeps each layer's input (hidden x slots, fp32) and recomputes
    one layer's activations at a time during backward."""
    from peftkit.plan.probe import num_layers

    _, layers = num_layers(config)
    hidden = getattr(config, "hidden_size", 0) or 0
    return min(saved, layers * big.slots * hidden * 4 + saved // max(1, layers))


def largest_eval(parts, recipe):
    """The largest evaluation batch: the validation split during training, the test split at the end."""
    from peftkit.plan.batches import largest_eval_batch

    found = [(largest_eval_batch([len(ids) for ids in parts.encoded[split]["input_ids"]],
                                 recipe.train.eval_batch_size), split)
             for split in ("eval", "test") if split in parts.encoded and len(parts.encoded[split])]
    return max(found, key=lambda found: found[0].slots)


def steps_per_epoch(recipe, n_train: int) -> int:
    t = recipe.train
    return max(1, math.ceil(n_train / t.batch_size) // t.gradient_accumulation_steps)


def epoch_slots(lengths: list[int], batch_size: int, packed: bool, seed: int) -> int:
    """Token slots (rows x width, padding included: it is computed too) of one shuffled epoch."""
    import random

    from peftkit.plan.batches import shape

    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    return sum(shape(order[i:i + batch_size], lengths, packed).slots
               for i in range(0, len(order), batch_size))


def advice(plan: Plan, recipe) -> list[str]:
    """Overrides that lower the peak, for a plan that does not fit (largest saving first)."""
    if plan.fits:
        return []
    mem, t, out = plan.memory, recipe.train, []
    if mem.phase() == "evaluation" and t.eval_batch_size > 1:
        out.append(f"train.eval_batch_size={max(1, t.eval_batch_size // 4)}")
    if t.batch_size > 1:
        out.append(f"train.batch_size={t.batch_size // 2} "
                   f"train.gradient_accumulation_steps={2 * t.gradient_accumulation_steps}")
    if not t.gradient_checkpointing and mem.activations > 0.2 * mem.peak:
        out.append("train.gradient_checkpointing=true")
    if quantizable(recipe):
        out.append("model.quantization=8bit")
    return out


def quantizable(recipe) -> bool:
    """8-bit is worth suggesting where the recipe would still validate with it (the strategy's
    own check: full fine-tuning refuses a quantized base; GGUF files cannot be quantized)."""
    from peftkit.quantization import check_quantizable

    if recipe.model.quantized:
        return False
    eight = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, quantization="8bit"))
    problems: list[str] = []
    recipe.strategy.check(eight, problems)
    check_quantizable(eight, problems)
    return not problems


def summary_lines(plan: Plan) -> list[str]:
    """The short block `run` prints and `plan` opens with."""
    m = plan.memory
    fit = "fits" if plan.fits else "does NOT fit"
    lines = [f"plan: {plan.trainable_params:,} of {plan.total_params:,} parameters trained; "
             f"peak memory ~{m.peak:,.0f} MB ({m.phase()}), {fit} in {plan.available_mb:,.0f} MB "
             f"available; ~{fmt_seconds(plan.seconds_per_epoch)} per epoch (rough)"]
    if plan.advice:
        lines.append("      to fit, try: " + "  or  ".join(plan.advice))
    return lines


def fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"
