"""Experiment tracking through the Trainer's own integrations, with the logs inside the run folder.

    train.report_to: [tensorboard] ──▶ run/logs/    event files of TensorBoardCallback (train/loss,
                                                    eval/*, test/*), the recipe as text, and the
                                                    recipe + final test metrics as hparams
    train.report_to: [mlflow]      ──▶ run/mlruns/  an MLflow file store (MLflowCallback): params =
                                                    the resolved recipe (+ the Trainer's arguments),
                                                    metrics = every log line and the test metrics,
                                                    artifacts = recipe.yaml, result.json

Where the logs go:
  * transformers 5 dropped TrainingArguments.logging_dir: TensorBoardCallback takes its folder from
    TENSORBOARD_LOGGING_DIR when it is built, else output_dir/runs/<date>. peftkit sets the
    callback's `logging_dir` (not the process environment, which would leak from one run of a
    bench into the next); a TENSORBOARD_LOGGING_DIR set by the user wins.
  * MLflow goes where MLFLOW_TRACKING_URI says (a server, sqlite); when it is unset, peftkit points
    it at file:<run>/mlruns for this run only. MLflow 3 refuses file stores unless
    MLFLOW_ALLOW_FILE_STORE=true, which peftkit then sets: the store is a folder of plain files,
    needing no database (creating a sqlite store costs ~13 s here, the file store ~1 s).

Why peftkit starts the MLflow run itself: MLflowCallback ends a run it started at on_train_end,
before the pipeline evaluates on the test split, and the test metrics would open a second run.
With a run already active the callback uses it and leaves it open; `finish` ends it after the
final metrics. A run that crashes is ended as FAILED (at exit, or when the next run starts).
Only the main process tracks (the callbacks check is_world_process_zero themselves).
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from pathlib import Path

from peftkit import rundir
from peftkit.env import is_main
from peftkit.recipe import flatten

LOGS = "logs"
MLRUNS = "mlruns"


@dataclass
class Tracking:
    run_dir: Path
    tensorboard: object = None       # the Trainer's TensorBoardCallback
    mlflow_run: str | None = None    # id of the MLflow run peftkit started
    own_uri: bool = False            # the tracking URI is ours: unset it afterwards


_ACTIVE: Tracking | None = None      # started and not yet finished (ended as FAILED if left so)


def start(trainer, recipe, run_dir: Path) -> Tracking | None:
    """Point the Trainer's tracking callbacks at the run folder; start the MLflow run."""
    wanted = set(recipe.train.report_to)
    if not wanted:
        return None
    abandon()  # a previous run in this process that crashed before finish()
    tracking = Tracking(Path(run_dir))
    if "tensorboard" in wanted:
        tracking.tensorboard = callback(trainer, "TensorBoardCallback")
        if tracking.tensorboard is not None and not os.environ.get("TENSORBOARD_LOGGING_DIR"):
            tracking.tensorboard.logging_dir = str(tracking.run_dir / LOGS)
    if "mlflow" in wanted and is_main():
        start_mlflow(tracking, recipe)
    return tracking


def callback(trainer, name: str):
    return next((cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == name), None)


def start_mlflow(tracking: Tracking, recipe) -> None:
    global _ACTIVE
    import mlflow

    register_exit_hook()
    if not mlflow.is_tracking_uri_set():
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri((tracking.run_dir / MLRUNS).resolve().as_uri())
        tracking.own_uri = True
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if experiment:
        mlflow.set_experiment(experiment)
    run = mlflow.start_run(run_name=tracking.run_dir.name,
                           tags={"peftkit.run_dir": str(tracking.run_dir.resolve()),
                                 "peftkit.strategy": recipe.strategy_name, "peftkit.task": recipe.task})
    tracking.mlflow_run = run.info.run_id
    mlflow.log_params({k: str(v)[:6000] for k, v in recipe_params(recipe).items()})
    _ACTIVE = tracking


def recipe_params(recipe) -> dict:
    """The resolved recipe as flat dotted keys (train.learning_rate: 0.0005); lists and nulls as
    text, since MLflow and TensorBoard's hparams take scalars and strings only."""
    return {k: v if isinstance(v, (bool, int, float, str)) else ("null" if v is None else str(v))
            for k, v in flatten(recipe.to_dict()).items()}


def finish(tracking: Tracking | None, recipe, result: dict) -> None:
    """After the final metrics: the recipe and test metrics into TensorBoard, the run's files into
    MLflow, and end the MLflow run."""
    global _ACTIVE
    if tracking is None or not is_main():
        return
    test = {k: float(v) for k, v in result.get("test", {}).items() if isinstance(v, (int, float))}
    if tracking.tensorboard is not None:
        write_tensorboard_summary(tracking, recipe, test, result.get("train_steps"))
    if tracking.mlflow_run is not None:
        import mlflow

        summary = {k: float(result[k]) for k in ("trainable_params", "total_params", "train_seconds",
                                                 "train_tokens_per_second", "peak_memory_mb")
                   if isinstance(result.get(k), (int, float))}
        mlflow.log_metrics(summary)
        for name in (rundir.RECIPE, rundir.RESULT, rundir.LABELS):
            if (tracking.run_dir / name).is_file():
                mlflow.log_artifact(str(tracking.run_dir / name))
        end_mlflow(tracking, "FINISHED")
        _ACTIVE = None


def write_tensorboard_summary(tracking: Tracking, recipe, test: dict, step: int | None) -> None:
    import yaml

    from torch.utils.tensorboard import SummaryWriter

    cb = tracking.tensorboard
    if cb.tb_writer is not None:  # closed at on_train_end, reopened by the test metrics' log
        cb.tb_writer.close()
        cb.tb_writer = None
    if cb.logging_dir is None:
        return
    with SummaryWriter(log_dir=cb.logging_dir) as writer:
        recipe_yaml = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
        writer.add_text("peftkit/recipe", "```\n" + recipe_yaml + "```")
        # the hparams view: one row per run, its recipe against its final test metrics
        writer.add_hparams(recipe_params(recipe), {f"test/{k}": v for k, v in test.items()},
                           run_name=".", global_step=step)  # the step the test scalars have


def end_mlflow(tracking: Tracking, status: str) -> None:
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == tracking.mlflow_run:
        mlflow.end_run(status=status)
    if tracking.own_uri:
        mlflow.set_tracking_uri(None)  # the next run in this process chooses its own store


def abandon() -> None:
    """End a started MLflow run that never reached finish() (its run raised) as FAILED."""
    global _ACTIVE
    if _ACTIVE is not None:
        tracking, _ACTIVE = _ACTIVE, None
        try:
            end_mlflow(tracking, "FAILED")
        except Exception:  # noqa: BLE001 - tracking must never hide the run's own error
            pass


_HOOKED = False


def register_exit_hook() -> None:
    """Registered after mlflow's own exit hook (set when mlflow is imported), so it runs first: a
    run that crashed is recorded as FAILED rather than ended as FINISHED by mlflow."""
    global _HOOKED
    if not _HOOKED:
        atexit.register(abandon)
        _HOOKED = True
