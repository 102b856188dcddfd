"""run_recipe(): the one path from a validated recipe to a finished run folder.

    recipe ─▶ data (read, standardize) ─▶ labels ─▶ model + tokenizer ─▶ encode
           ─▶ strategy.apply ─▶ Trainer.train ─▶ evaluate on test ─▶ run folder
`peftkit run`, `peftkit bench` and the tests all come through here.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from peftkit import distributed, rundir, tracking


def run_recipe(recipe, *, run_dir: Path | None = None, overwrite: bool = False,
               resume: bool = False) -> dict:
    """Train and evaluate `recipe`; returns the result record also written to result.json."""
    from transformers import set_seed

    from peftkit.data.readers import load_raw
    from peftkit.models import load_model, load_tokenizer, source_of
    from peftkit.quantization import memory_footprint
    from peftkit.resume import finished_result, train as train_run
    from peftkit.strategies import get_strategy
    from peftkit.strategies.base import ApplyContext, count_parameters
    from peftkit.tasks import get_task
    from peftkit.train import (TokenCounter, build_trainer, resolve_precision, set_threads,
                               total_train_steps)

    run_dir = Path(run_dir or rundir.default_run_dir(recipe))
    recipe = absolute_paths(recipe)
    distributed.init()  # under torchrun / accelerate launch only the main process edits the folder
    state, checkpoint = distributed.main_first(
        lambda: prepare_folder(run_dir, recipe, overwrite, resume))
    if state == "finished":  # --resume of a run that already finished: nothing to train
        return distributed.main_first(lambda: finished_result(run_dir))
    set_threads(recipe)
    set_seed(recipe.train.seed)

    task = get_task(recipe.task)
    raw = load_raw(recipe, task)
    labels = task.label_names(raw, recipe)
    source = source_of(recipe)
    tokenizer = load_tokenizer(source, recipe)
    model = load_model(source, recipe, task, labels)
    encoded, data_stats = task.encode(raw, tokenizer, recipe, labels)
    if distributed.is_main():
        report_truncation(data_stats, recipe)

    quantized = recipe.model.quantization != "none"
    strategy = get_strategy(recipe.strategy_name)
    ctx = ApplyContext(task=task, head_names=task.head_names, quantized=quantized, tokenizer=tokenizer,
                       total_steps=total_train_steps(recipe, len(encoded["train"]), world_size()))
    model = strategy.apply(model, recipe.strategy, ctx)
    trainable, total = count_parameters(model)
    model_memory_mb = memory_footprint(model) / 2**20  # as stored: int8 / packed NF4 weights are smaller
    precision = resolve_precision(recipe.train.precision, quantized)
    if distributed.is_main():
        rundir.write_recipe(run_dir, recipe)

    trainer = build_trainer(recipe, model, tokenizer, task, encoded, labels, run_dir, precision,
                            strategy.callbacks(model, recipe.strategy, ctx),
                            report_to=recipe.train.report_to,
                            find_unused_parameters=strategy.ddp_find_unused_parameters)
    distributed.check_engine(trainer, strategy)  # FSDP / DeepSpeed from an accelerate config
    tracker = tracking.start(trainer, recipe, run_dir)  # report_to: logs inside the run folder
    counter = TokenCounter(trainer.model)  # real vs padded tokens of the training batches
    start = time.perf_counter()
    train_out = train_run(trainer, checkpoint, run_dir)  # + signals, disk errors
    train_seconds = time.perf_counter() - start
    counter.remove()
    real, slots = distributed.all_sum([counter.real, counter.slots])  # every process's batches
    test_metrics = task.evaluate(trainer, encoded["test"], recipe, labels, "test")

    result = {
        "run_dir": str(run_dir), "task": recipe.task, "strategy": recipe.strategy_name,
        "strategy_settings": dataclasses.asdict(recipe.strategy), "model": source.label,
        "dataset": recipe.data.name, "quantization": recipe.model.quantization,
        "precision": precision, "seed": recipe.train.seed,
        "metric": recipe.eval.metric or task.default_metric,
        "test": strip_prefix(test_metrics, "test_"),
        "trainable_params": trainable, "total_params": total,
        "trainable_percent": 100.0 * trainable / total,
        "train_seconds": train_seconds, "train_steps": trainer.state.global_step,
        "train_loss": train_out.training_loss,
        "train_tokens_per_second": real / train_seconds,
        "train_padding_fraction": 1.0 - real / slots if slots else 0.0,
        "peak_memory_mb": peak_memory_mb(), "model_memory_mb": model_memory_mb,
        "world_size": world_size(),
        "effective_batch_size": recipe.train.batch_size * recipe.train.gradient_accumulation_steps
        * world_size(),
        "examples": {split: len(ds) for split, ds in encoded.items()}, **data_stats,
        "versions": versions(), **strategy.report(trainer.model),
    }
    saved = (distributed.save_weights(trainer, run_dir, strategy, tokenizer, labels)
             if recipe.output.save_model else None)  # FSDP / ZeRO-3: every process gathers
    if trainer.is_world_process_zero():
        if saved is not None:
            result["adapter_bytes"] = rundir.dir_size(saved)
        rundir.write_json(run_dir / rundir.RESULT, result)
    tracking.finish(tracker, recipe, result)
    distributed.barrier()  # the other processes return once the run folder is complete
    return result


def prepare_folder(run_dir: Path, recipe, overwrite: bool, resume: bool) -> tuple[str, str | None]:
    """The existing-folder rules (peftkit/resume.py), then the checkpoint to resume from, if any."""
    from peftkit.resume import checkpoint_to_resume

    state = rundir.prepare(run_dir, overwrite, resume)
    return state, checkpoint_to_resume(run_dir, recipe) if state == "resume" else None


def absolute_paths(recipe):
    """Local model and data paths become absolute so the saved recipe works from anywhere."""
    from peftkit.data.registry import resolve_data
    from peftkit.models_registry import resolve_model

    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model),
                                 data=dataclasses.replace(recipe.data))
    source = resolve_model(recipe.model.name, recipe.model.gguf_file, recipe.base_dir)
    if source.kind in ("folder", "gguf"):
        recipe.model.name = str(Path(source.path) / source.gguf_file) if source.kind == "gguf" \
            else source.path
    data = resolve_data(recipe)
    if data.kind == "local":
        recipe.data.name, recipe.data.data_dir = data.location, None
    return recipe


def report_truncation(stats: dict, recipe) -> None:
    cut = {k[len("truncated_"):]: v for k, v in stats.items() if k.startswith("truncated_") and v}
    if cut:
        parts = ", ".join(f"{n} in {s}" for s, n in cut.items())
        print(f"note: {parts} examples longer than data.max_length={recipe.data.max_length} "
              "tokens were truncated (their cut-off words are not trained or scored)")


def strip_prefix(metrics: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in metrics.items()}


def world_size() -> int:
    """Processes of a torchrun / accelerate launch (known before the Trainer starts them)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def peak_memory_mb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("peftkit", "torch", "transformers", "peft", "datasets", "accelerate", "bitsandbytes"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
