"""run_recipe(): the one path from a validated recipe to a finished run folder.

    recipe ─▶ data (read, standardize) ─▶ labels ─▶ model + tokenizer ─▶ encode
           ─▶ strategy.apply ─▶ Trainer.train ─▶ evaluate on test ─▶ run folder
`peftkit run`, `peftkit bench` and the tests all come through here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import click

from peftkit import distributed, env, health, output, rundir, tracking
from peftkit.data.labels import format_distribution
from peftkit.data.readers import check_labels, read_data
from peftkit.data.registry import data_source
from peftkit.export.adapter import describe_run_weights
from peftkit.models import init_head_bias, load_model, load_tokenizer, source_of
from peftkit.models_registry import model_source
from peftkit.quantization import memory_footprint
from peftkit.resume import check_same_recipe, checkpoint_to_resume
from peftkit.strategies.base import ApplyContext, count_parameters
from peftkit.tasks import get_task
from peftkit.train import (TokenCounter, build_trainer, disk_errors, early_stopping_record,
                           resolve_precision, run_training, total_train_steps)


def run_recipe(recipe, *, run_dir: Path | None = None, overwrite: bool = False,
               resume: bool = False, callbacks: tuple = ()) -> dict:
    """Train and evaluate `recipe`; returns the result record also written to result.json.
    callbacks: extra TrainerCallbacks (`peftkit bench --tune` reports validation scores to Optuna)."""
    run_dir = Path(run_dir or rundir.default_run_dir(recipe))
    recipe = absolute_paths(recipe)
    distributed.init()  # under torchrun / accelerate launch only the main process edits the folder
    held = []  # the main process's lock on the folder, for the whole run (one writer at a time)

    def claim_and_prepare():
        held.append(rundir.claim(run_dir))
        return prepare_folder(run_dir, recipe, overwrite, resume)

    try:
        state, checkpoint = distributed.main_first(claim_and_prepare)
        if state == "finished":  # --resume of a run that already finished: nothing to train
            return distributed.main_first(lambda: rundir.finished_result(run_dir))
        with disk_errors(run_dir):  # a full disk anywhere: the one documented line
            return train_in(run_dir, recipe, checkpoint, callbacks)
    finally:
        for lock in held:
            lock.release()


def train_in(run_dir: Path, recipe, checkpoint: str | None, callbacks: tuple = ()) -> dict:
    """Phases 2-4 in a prepared (and locked) folder."""
    threads = env.set_threads(recipe)
    output.route_libraries(run_dir / rundir.LOG if env.is_main() else None)
    parts = build(recipe)
    plan = announce_plan(parts) if env.is_main() else None
    if env.is_main():
        rundir.write_recipe(run_dir, recipe)  # as the user wrote it: learning_rate stays `auto`
    trained, search = settle_learning_rate(parts, run_dir)  # parts.recipe: min_steps applied
    result, tracker = train_and_test(trained, parts, run_dir, checkpoint, callbacks)
    if search is not None:
        result["lr_search"] = search
        result["lr_search"]["share_of_train_time"] = search["seconds"] / max(1e-9, result["train_seconds"])
    result["threads"] = threads
    result["plan"] = plan  # predicted beside measured: peak_memory_mb, train_seconds
    result["health"] = judge(result)
    if env.is_main():
        if recipe.output.save_model:  # portable adapter config and a model card, like an export
            describe_run_weights(run_dir, trained, result, parts.labels)
        rundir.write_json(run_dir / rundir.RESULT, result)  # last: it marks the run finished
    tracking.finish(tracker, trained, result)
    distributed.barrier()  # the other processes return once the run folder is complete
    return result


@dataclass
class Build:
    """What a run is made of before training: data, labels, tokenizer, strategy; fresh models."""

    recipe: object
    task: object
    labels: list | None
    source: object
    tokenizer: object
    encoded: object
    data_stats: dict
    strategy: object
    ctx: object
    precision: str
    head_prior: list | None = None   # the new head's starting bias (models.init_head_bias)

    def fresh_model(self):
        """(model with the strategy applied, its callbacks): the same weights for the same seed."""
        from transformers import set_seed

        set_seed(self.recipe.train.seed)
        model = load_model(self.source, self.recipe, self.task, self.labels)
        if self.head_prior is not None:   # before apply: peft copies the head it trains
            init_head_bias(model, self.task.head_names, self.head_prior)
        model = self.strategy.apply(model, self.recipe.strategy, self.ctx)
        return model, self.strategy.callbacks(model, self.recipe.strategy, self.ctx)


def build(recipe) -> Build:
    from transformers import set_seed

    set_seed(recipe.train.seed)
    task = get_task(recipe.task)
    raw, report = read_data(recipe, task)
    if env.is_main() and report.guessed():  # say which file became which split, and why
        print("\n".join(report.lines()))
    dist = report_labels(raw, recipe, report.where)
    labels = task.label_names(raw, recipe)
    source = source_of(recipe)
    tokenizer = load_tokenizer(source, recipe)
    encoded, data_stats = task.encode(raw, tokenizer, recipe, labels)
    if env.is_main():
        report_truncation(data_stats, recipe)
    recipe = at_least_min_steps(recipe, len(encoded["train"]))
    quantized = recipe.model.quantized
    ctx = ApplyContext(task=task, head_names=task.head_names, quantized=quantized, tokenizer=tokenizer,
                       total_steps=total_train_steps(recipe, len(encoded["train"]), env.world_size()))
    data_stats["label_counts"] = dist
    data_stats["data"] = report.record()  # which file became which split, what was held out
    train_prior = task.label_prior(encoded["train"], len(labels)) if labels else None
    recipe = settle_class_weights(recipe, task, train_prior)
    data_stats["class_weights"] = recipe.train.class_weights
    prior = train_prior if recipe.model.head_init == "prior" else None
    return Build(recipe, task, labels, source, tokenizer, encoded, data_stats,
                 recipe.strategy_impl, ctx, resolve_precision(recipe.train.precision, quantized),
                 prior)


def announce_plan(parts: Build) -> dict | None:
    """`peftkit plan`'s estimate, printed before anything loads; its record goes to result.json.
    An estimate never stops a run: a model the planner cannot build from its config is said."""
    from peftkit.plan import make_plan, summary_lines

    try:
        plan = make_plan(parts)
    except Exception as exc:  # noqa: BLE001 - an estimate, not a check: the run goes on
        print(f"plan: no estimate for this model ({type(exc).__name__}: {str(exc)[:120]})")
        return None
    print("\n".join(summary_lines(plan)))
    caveat = parts.recipe.strategy_impl.size_caveat(plan.total_params)
    if caveat:
        print(f"note: {caveat}")
    return plan.record()


def at_least_min_steps(recipe, n_train: int):
    """train.min_steps: small data trains for more epochs instead of stopping after a few dozen
    steps (issue 15: SST-2 with 500 sentences stays at chance after 2 epochs = 32 steps)."""
    t = recipe.train
    steps = total_train_steps(recipe, n_train, env.world_size())
    if t.max_steps or not t.min_steps or steps >= t.min_steps:
        return recipe
    if env.is_main():
        print(f"note: {n_train:,} training examples give {steps} steps at train.epochs={t.epochs:g}; "
              f"training train.min_steps={t.min_steps} steps instead "
              f"(about {t.epochs * t.min_steps / steps:.1f} epochs)")
    return dataclasses.replace(recipe, train=dataclasses.replace(t, max_steps=t.min_steps))


def settle_class_weights(recipe, task, prior: list | None):
    """train.class_weights: auto becomes none, sqrt or balanced: the task says whether the training
    labels are lopsided (Task.auto_class_weights), the strategy how strongly its method needs
    them weighed then (Strategy.lopsided_class_weights); the run says when it weighs classes."""
    t = recipe.train
    if t.class_weights != "auto":
        return recipe
    chosen = (task.auto_class_weights(prior, recipe.strategy_impl.lopsided_class_weights)
              if prior else "none")
    if chosen != "none" and env.is_main():
        print(f"note: the largest training class is {max(prior) / min(prior):.1f}x the smallest: "
              f"training with class_weights {chosen} (train.class_weights=none to train without)")
    return dataclasses.replace(recipe, train=dataclasses.replace(t, class_weights=chosen))


def settle_learning_rate(parts: Build, run_dir: Path):
    """(recipe with a number for train.learning_rate, the search record or None). A resumed run
    reuses the rate its first part chose (lr_search.json), so it continues the same training."""
    recipe = parts.recipe
    if recipe.train.learning_rate != "auto":
        return recipe, None
    from peftkit.lr_search import find_learning_rate  # transformers at import time

    saved = run_dir / rundir.LR_SEARCH
    if saved.is_file():
        record = json.loads(saved.read_text(encoding="utf-8"))
        print(f"learning rate: {record['chosen']:g} (chosen when this run started: {saved})")
    else:
        echo = print if env.is_main() else (lambda *a, **k: None)
        record = find_learning_rate(recipe, parts, parts.ctx.total_steps, run_dir / rundir.LR_SEARCH_TMP,
                                    echo=echo, world_size=env.world_size()).record()
        if env.is_main():
            rundir.write_json(saved, record)
    train = dataclasses.replace(recipe.train, learning_rate=record["chosen"])
    return dataclasses.replace(recipe, train=train), record


def train_and_test(recipe, parts: Build, run_dir: Path, checkpoint: str | None,
                   extra_callbacks: tuple = ()) -> dict:
    """Train with the one Trainer path, evaluate on test, save the weights: (result, tracker)."""
    from peftkit.callbacks import RunTotals         # TrainerCallbacks: transformers stays lazy
    from peftkit.health_watch import HealthWatch

    task, strategy = parts.task, parts.strategy
    model, callbacks = parts.fresh_model()
    watch = HealthWatch(echo=env.is_main())   # the collapse checks at every evaluation
    trainable, total = count_parameters(model)
    model_memory_mb = memory_footprint(model) / 2**20  # as stored: int8 / packed NF4 weights are smaller
    trainer = build_trainer(recipe, model, parts.tokenizer, task, parts.encoded, parts.labels, run_dir,
                            parts.precision, [*callbacks, watch, *extra_callbacks], report_to=recipe.train.report_to,
                            find_unused_parameters=strategy.ddp_find_unused_parameters)
    distributed.check_engine(trainer, strategy)  # FSDP / DeepSpeed from an accelerate config
    tracker = tracking.start(trainer, recipe, run_dir)  # report_to: logs inside the run folder
    counter = TokenCounter(trainer.model)  # real vs padded tokens of the training batches
    totals = RunTotals(counter, env.rank()).attach(trainer)  # across interruptions
    run_training(trainer, checkpoint, run_dir)  # + signals, disk errors
    train_seconds = totals.seconds()
    counter.remove()
    real, slots = distributed.all_sum([totals.real(), totals.slots()])  # every process's batches
    test_metrics = task.evaluate(trainer, parts.encoded["test"], recipe, parts.labels, "test", run_dir)

    result = {
        "run_dir": str(run_dir), "task": recipe.task, "strategy": recipe.strategy_name,
        "strategy_settings": dataclasses.asdict(recipe.strategy), "model": parts.source.label,
        "dataset": recipe.data.name, "quantization": recipe.model.quantization,
        "precision": parts.precision, "seed": recipe.train.seed,
        "learning_rate": recipe.train.learning_rate,
        "metric": recipe.eval.metric or task.default_metric,
        "test": strip_prefix(test_metrics, "test_"),
        "trainable_params": trainable, "total_params": total,
        "trainable_percent": 100.0 * trainable / total,
        "train_seconds": train_seconds, "train_steps": trainer.state.global_step,
        "train_loss": totals.loss_sum / max(1, trainer.state.global_step),
        "train_tokens": real, "train_tokens_per_second": real / train_seconds,
        "train_padding_fraction": 1.0 - real / slots if slots else 0.0,
        "peak_memory_mb": peak_memory_mb(), "model_memory_mb": model_memory_mb,
        "world_size": env.world_size(),
        "effective_batch_size": recipe.train.batch_size * recipe.train.gradient_accumulation_steps
        * env.world_size(),
        "examples": {split: len(ds) for split, ds in parts.encoded.items()}, **parts.data_stats,
        "versions": versions(), **strategy.report(trainer.model),
    }
    if recipe.train.early_stopping_patience:
        result["early_stopping"] = early_stopping_record(recipe, task, trainer.state,
                                                         trainer.state.max_steps)
    saved = (distributed.save_weights(trainer, run_dir, strategy, parts.tokenizer, parts.labels,
                                      recipe.strategy)
             if recipe.output.save_model else None)  # FSDP / ZeRO-3: every process gathers
    if trainer.is_world_process_zero() and saved is not None:
        result["adapter_bytes"] = rundir.weights_size(saved)
    result["_losses"] = [x["loss"] for x in trainer.state.log_history if "loss" in x]
    result["_evaluations"] = watch.evaluations
    return result, tracker


def judge(result: dict) -> dict:
    """The health record: collapse checks on the test predictions and the loss curve."""
    result["test"], record = health.split_metrics(result["test"], "test", lr_fix(result),
                                                  result.pop("_losses", []))
    record["evaluations"] = result.pop("_evaluations", [])   # health_watch: during training
    if record["findings"] and env.is_main():
        click.secho(health.warning_text(record["findings"]), fg="red", bold=True, err=True)
    return record


def lr_fix(result: dict) -> str:
    """The override most likely to rescue a collapsed run, given the rate it trained at."""
    lr = result["learning_rate"]
    if "lr_search" in result:
        return (f"the learning rate {lr:g} was found by a short search; try "
                f"train.learning_rate={lr / 4:.2g}, or train longer (train.epochs)")
    return f"lower the learning rate, train.learning_rate={lr / 4:.2g}, or use train.learning_rate=auto"


def prepare_folder(run_dir: Path, recipe, overwrite: bool, resume: bool) -> tuple[str, str | None]:
    """The existing-folder rules (peftkit/rundir.py), then the checkpoint to resume from, if any."""
    state = rundir.prepare(run_dir, overwrite, resume)
    if state == "finished":  # --resume: the saved result stands only for the same recipe
        check_same_recipe(run_dir, recipe)
    return state, checkpoint_to_resume(run_dir, recipe) if state == "resume" else None


def absolute_paths(recipe):
    """Local model and data paths become absolute so the saved recipe works from anywhere."""
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model),
                                 data=dataclasses.replace(recipe.data))
    source = model_source(recipe)  # validation's look-ups, kept on the recipe
    if source.kind in ("folder", "gguf"):
        recipe.model.name = str(Path(source.path) / source.gguf_file) if source.kind == "gguf" \
            else source.path
    data = data_source(recipe)
    if data.kind == "local":
        recipe.data.name, recipe.data.data_dir = data.location, None
    return recipe


def report_labels(raw, recipe, sources: dict | None = None) -> dict:
    """Label distribution per split (printed), labels that look wrong (warned), data.labels (enforced)."""
    dist, found = check_labels(raw, recipe, sources)
    if env.is_main() and dist:
        print("labels: " + "\n        ".join(format_distribution(dist)))
        for problem in found:
            output.warn(problem)
    return dist


def report_truncation(stats: dict, recipe) -> None:
    cut = {k[len("truncated_"):]: v for k, v in stats.items() if k.startswith("truncated_") and v}
    if cut:
        parts = ", ".join(f"{n} in {s}" for s, n in cut.items())
        print(f"note: {parts} examples longer than data.max_length={recipe.data.max_length} "
              "tokens were truncated (their cut-off words are not trained or scored)")


def strip_prefix(metrics: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in metrics.items()}


def peak_memory_mb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def versions() -> dict:
    out = {}
    for pkg in ("peftkit", "torch", "transformers", "peft", "datasets", "accelerate", "bitsandbytes"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
