"""train.report_to: [tensorboard, mlflow] through the Trainer's integrations, logs inside the run
folder: TensorBoard event files hold the training loss and the test metrics; the MLflow file store
holds one finished run with the resolved recipe as params and the final test metric."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_ner_recipe


@pytest.fixture(scope="module")
def tracked_run(tiny_bert_dir, tmp_path_factory):
    """One in-process run reporting to both trackers (MLflow's URI left for peftkit to choose)."""
    import mlflow

    from peftkit.pipeline import run_recipe
    from peftkit.recipe import build_recipe

    mp = pytest.MonkeyPatch()
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "TENSORBOARD_LOGGING_DIR"):
        mp.delenv(var, raising=False)
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    raw = tiny_ner_recipe(tiny_bert_dir, run_dir, report_to=["tensorboard", "mlflow"],
                          max_steps=3, eval_every="no")
    try:
        result = run_recipe(build_recipe(raw, source=None), run_dir=run_dir)
        uri_left_set = mlflow.is_tracking_uri_set()
    finally:
        mp.undo()
    return run_dir, result, uri_left_set


def logged_losses(run_dir) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


def test_tensorboard_event_files_in_the_run_folder_hold_loss_and_test_metrics(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, result, _ = tracked_run
    assert list((run_dir / "logs").glob("events.out.tfevents.*")), "no event files in run/logs"
    assert not (run_dir / "checkpoints" / "runs").exists()  # not the Trainer's default folder
    events = EventAccumulator(str(run_dir / "logs"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    loss = {e.step: e.value for e in events.Scalars("train/loss")}
    assert loss == pytest.approx(logged_losses(run_dir), rel=1e-6)  # every logged step, same value
    assert events.Scalars("test/f1")[-1].value == pytest.approx(result["test"]["f1"], abs=1e-6)
    assert "test/token_accuracy" in scalars
    assert "peftkit/recipe/text_summary" in events.Tags()["tensors"]  # the resolved recipe


def test_mlflow_file_store_in_the_run_folder_holds_params_and_final_metric(tracked_run):
    from mlflow.tracking import MlflowClient

    run_dir, result, uri_left_set = tracked_run
    store = run_dir / "mlruns"
    assert store.is_dir()
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    runs = client.search_runs(experiment_ids=[e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1  # the test metrics joined the training run, not a second one
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_f1"] == pytest.approx(result["test"]["f1"], abs=1e-6)
    assert run.data.metrics["trainable_params"] == result["trainable_params"]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert {m.step: m.value for m in history} == pytest.approx(logged_losses(run_dir), rel=1e-6)
    params = run.data.params
    assert params["strategy.name"] == "lora" and params["strategy.r"] == "4"
    assert float(params["train.learning_rate"]) == 5e-3
    assert params["model.name"] == result["model"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"recipe.yaml", "result.json"} <= artifacts
    assert not uri_left_set  # the next run in this process picks its own store
