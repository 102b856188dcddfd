"""peftkit bench --tune (issue 16): Optuna search on validation, best setting x seeds on test.

One real tuned bench on tiny BERT (3 trials + 2 seeds) runs once per module through the CLI; the
other tests stand in for the pipeline or call the pure functions."""

from __future__ import annotations

import csv
import json
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import tiny_ner_recipe

from peftkit import pipeline
from peftkit.bench import report, stats
from peftkit.bench.suite import SuiteError, load_suite
from peftkit.bench.tunespec import TuneSpec
from peftkit.cli import main

optuna = pytest.importorskip("optuna")


def tuned_suite(folder: Path, model_dir: Path, tune: dict, name: str = "suite.yaml") -> Path:
    base = tiny_ner_recipe(model_dir, Path("unused"))
    del base["output"]
    path = folder / name
    path.write_text(yaml.safe_dump({"name": "tiny", "base": base, "tune": tune,
                                    "variants": [{"name": "lora", "strategy": {"name": "lora", "r": 4}}]}))
    return path


def study_trials(out: Path, name: str = "tiny:lora"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'tune.db'}").trials


@pytest.fixture(scope="module")
def tuned(tiny_bert_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tune")
    path = tuned_suite(tmp, tiny_bert_dir, {"trials": 3, "seeds": [1, 2], "reports": 2,
                                            "startup_trials": 1, "lr_range": [1.0e-3, 1.0e-2]})
    out = tmp / "out"
    result = CliRunner().invoke(main, ["bench", str(path), "--tune", "--out", str(out)])
    return path, out, result


def test_tuned_variant_runs_the_best_trials_setting_with_every_seed(tuned):
    _, out, result = tuned
    assert result.exit_code == 0, result.output
    tuning = json.loads((out / "tuning.json").read_text())["lora"]
    best = max((t for t in study_trials(out) if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert tuning["params"] == best.params and tuning["best_trial"] == best.number
    for seed in (1, 2):  # the test runs: the best trial's rate, each seed, the test split
        run = json.loads((out / "runs" / f"lora-seed{seed}" / "result.json").read_text())
        assert run["learning_rate"] == best.params["learning_rate"] and run["seed"] == seed
    records = json.loads((out / "results.json").read_text())
    assert {r["tuning"]["best_trial"] for r in records} == {best.number}
    assert records[0]["group_runs"] == 2 and records[0]["group_ci95"] is not None
    values = [r["metric_value"] for r in records]
    assert records[0]["group_ci95"] == pytest.approx(stats.ci95(values))
    md = (out / "results.md").read_text()
    assert "## Tuning" in md and f"#{best.number}" in md and "95% confidence interval" in md
    # every trial is recorded, with its state; trials are scored without touching test
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == tuning["trials"] == 3 and {r["state"] for r in rows} <= {"COMPLETE", "PRUNED", "FAIL"}
    saved = yaml.safe_load(next((out / "trials" / "lora").glob("*/recipe.yaml")).read_text())
    assert saved["data"]["test_split"] is None  # final metrics of a trial: the validation split


def test_rerun_resumes_the_study_and_adds_no_trial_twice(tuned, monkeypatch):
    path, out, _ = tuned
    before = [(t.number, t.state.name) for t in study_trials(out)]
    calls = []

    def fake(recipe, run_dir, callbacks=(), **kwargs):
        calls.append(Path(run_dir).name)
        return {"test": {"f1": 0.0}, "health": {"status": "ok"}}

    monkeypatch.setattr(pipeline, "run_recipe", fake)
    again = CliRunner().invoke(main, ["bench", str(path), "--tune", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert calls == []  # budget used up, test runs finished with the same setting: nothing runs
    assert [(t.number, t.state.name) for t in study_trials(out)] == before
    more = CliRunner().invoke(main, ["bench", str(path), "--tune", "--out", str(out),
                                     "--trials", "4", "--trials-only"])
    assert more.exit_code == 0, more.output
    assert len(calls) == 1 and calls[0].startswith("trial-")  # only the missing fourth trial
    assert [t.number for t in study_trials(out)] == [n for n, _ in before] + [len(before)]


def test_two_processes_on_one_storage_split_the_trials(tiny_bert_dir, tmp_path, monkeypatch):
    from peftkit.bench.tune import tune_suite

    suite = load_suite(tuned_suite(tmp_path, tiny_bert_dir, {"trials": 6, "seeds": 1}), tune=True)
    storage = f"journal:{tmp_path / 'shared.log'}"
    ran: dict[str, list[float]] = {"a": [], "b": []}

    def fake(recipe, run_dir, callbacks=(), **kwargs):
        ran[threading.current_thread().name].append(recipe.train.learning_rate)
        time.sleep(0.3)  # a trial takes a while: both workers are busy at once
        return {"test": {"f1": recipe.train.learning_rate}, "health": {"status": "ok"}}

    monkeypatch.setattr(pipeline, "run_recipe", fake)
    workers = [threading.Thread(target=tune_suite, name=n, args=(suite, tmp_path / n, storage),
                                kwargs={"echo": lambda line: None}) for n in ran]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    trials = optuna.load_study(study_name="tiny:lora",
                               storage=optuna.storages.JournalStorage(
                                   optuna.storages.journal.JournalFileBackend(str(tmp_path / "shared.log")))).trials
    assert all(ran.values())  # both did a share
    assert 6 <= len(trials) <= 7 and len(ran["a"]) + len(ran["b"]) == len(trials)
    assert len({t.number for t in trials}) == len(trials)


def test_pruning_stops_a_hopeless_trial(tiny_bert_dir, tmp_path):
    from optuna.distributions import FloatDistribution

    from peftkit.bench.tune import make_pruner, objective

    suite = load_suite(tuned_suite(tmp_path, tiny_bert_dir, {"trials": 1, "seeds": 1}), tune=True)
    spec = TuneSpec(trials=1, seeds=[1], reports=2, startup_trials=1, lr_range=[1e-7, 2e-7])
    study = optuna.create_study(direction="maximize", pruner=make_pruner(optuna, spec))
    # a finished trial that scored a perfect F1 at every step: a 1e-7 rate cannot keep up
    study.add_trial(optuna.trial.create_trial(
        params={"learning_rate": 1.5e-7}, distributions={"learning_rate": FloatDistribution(1e-7, 2e-7, log=True)},
        value=1.0, intermediate_values={step: 1.0 for step in range(100)}))
    study.optimize(objective(optuna, "lora", suite.variants[0], spec, tmp_path), n_trials=1)
    hopeless = study.trials[-1]
    assert hopeless.state.name == "PRUNED"
    assert list(hopeless.intermediate_values) == [2]  # stopped at the first report (step 2 of 4)
    assert not (tmp_path / "trials" / "lora" / "trial-001" / "result.json").exists()


@pytest.mark.parametrize("eval_every,values", [("no", 1), ("epoch", 4)])
def test_a_recipe_without_evaluations_during_training_is_scored_at_the_reports_only(
        eval_every, values, tiny_bert_dir, tmp_path):
    """A trial needs validation scores for the pruner: where the recipe evaluates every epoch
    they are reported too (3 epochs + the report at the middle step), where it asks for none the
    trial evaluates at the reports only, not once an epoch."""
    from peftkit.bench.tune import objective

    base = tiny_ner_recipe(tiny_bert_dir, Path("unused"), epochs=3, batch_size=8, eval_every=eval_every)
    base["data"]["max_train_samples"] = 32  # 4 steps an epoch unpacked; packing makes fewer
    del base["output"]
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "base": base, "tune": {"trials": 1, "seeds": 1},
                                    "variants": [{"name": "lora", "strategy": {"name": "lora", "r": 4}}]}))
    suite = load_suite(path, tune=True)
    spec = TuneSpec(trials=1, seeds=[1], reports=2, startup_trials=1, lr_range=[1e-3, 2e-3])
    study = optuna.create_study(direction="maximize")
    study.optimize(objective(optuna, "lora", suite.variants[0], spec, tmp_path), n_trials=1)
    trial = study.trials[0]
    state = json.loads((tmp_path / "trials" / "lora" / "trial-000" / "result.json").read_text())
    assert trial.state.name == "COMPLETE" and state["train_steps"] >= 6
    steps = state["train_steps"]
    reports = [s for s in trial.intermediate_values if s % -(-steps // 2) == 0 and s < steps]
    assert len(reports) == 1 and len(trial.intermediate_values) == values


def test_confidence_interval_and_not_distinguishable_rows():
    # hand computation: mean 0.74, sd 0.04, t(0.975, 2) = 4.302653, 4.302653 * 0.04 / sqrt(3)
    assert stats.ci95([0.70, 0.74, 0.78]) == pytest.approx(0.0993655, abs=1e-6)
    assert stats.ci95([0.5]) is None

    def rec(group, value, seed, params):
        return {"variant": f"{group}-seed{seed}", "group": group, "status": "ok", "metric": "f1",
                "metric_value": value, "seed": seed, "method": group, "strategy": group,
                "trainable_params": params, "error": None}

    records = [rec("small", v, s, 100) for s, v in enumerate([0.70, 0.74, 0.78])]
    records += [rec("close", v, s, 1000) for s, v in enumerate([0.69, 0.70, 0.71])]
    records += [rec("far", v, s, 1000) for s, v in enumerate([0.40, 0.41, 0.42])]
    rows = {r["variant"]: r for r in report.summarize(records)}
    assert rows["small"]["frontier"] and rows["small"]["ci95"] == pytest.approx(0.0993655, abs=1e-6)
    assert rows["close"]["near"] == "small" and rows["far"]["near"] is None
    table = report.format_table(list(rows.values()))
    assert "0.7400 ± 0.0994" in table
    assert "≈ small (not distinguishable)" in next(line for line in table.splitlines() if "| close " in line)
    assert "not distinguishable" not in next(line for line in table.splitlines() if "| far " in line)


def test_tune_section_is_checked_like_recipe_keys(tiny_bert_dir, tmp_path):
    path = tuned_suite(tmp_path, tiny_bert_dir, {"trals": 3, "pruner": "hyperband", "seeds": [1, 1]})
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    text = str(err.value)
    assert "tune.trals: unknown key (did you mean 'trials'?)" in text
    assert "tune.pruner" in text and "tune.seeds" in text
    result = CliRunner().invoke(main, ["bench", str(path), "--tune"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_tune_without_optuna_says_how_to_install(tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    path = tuned_suite(tmp_path, tiny_bert_dir, {"trials": 1})
    result = CliRunner().invoke(main, ["bench", str(path), "--tune", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "pip install 'peftkit[tune]'" in result.output
    assert "Traceback" not in result.output


def test_validation_that_is_the_test_split_is_held_out_of_train_for_the_trials(
        tiny_bert_dir, tmp_path, monkeypatch):
    """test_split: null (SST-2's dev is both): trials hold validation out of train, and not one
    example of the test split reaches a trial; the seed runs still score on it."""
    from peftkit.data.readers import builtin_dataset, load_raw
    from peftkit.tasks import get_task

    path = tuned_suite(tmp_path, tiny_bert_dir, {"trials": 1, "seeds": 1})
    real, seen = pipeline.run_recipe, {}

    def spy(recipe, run_dir, **kwargs):  # the real run, after noting every example it reads
        raw = load_raw(recipe, get_task(recipe.task))
        seen[Path(run_dir).name] = {tuple(r["tokens"]) for role in raw for r in raw[role]}
        return real(recipe, run_dir=run_dir, **kwargs)

    monkeypatch.setattr(pipeline, "run_recipe", spy)
    out = tmp_path / "o"
    result = CliRunner().invoke(main, ["bench", str(path), "--tune", "data.test_split=null",
                                       "data.validation_size=12", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert ("trials are scored on a validation split held out of demo-ner:train (seed 1, "
            "data.validation_size 12)") in result.output
    tuning = json.loads((out / "tuning.json").read_text())["lora"]
    assert tuning["trials_scored_on"].startswith("held out of demo-ner:train")
    assert "Trials scored on: held out of demo-ner:train" in (out / "results.md").read_text()
    trial = json.loads(next((out / "trials" / "lora").glob("*/result.json")).read_text())
    splits = trial["data"]["splits"]
    assert "held out of train: 12 of 3,000 examples" in splits["eval"]["how"]
    assert splits["test"]["from"] == splits["eval"]["from"] == "demo-ner:train"
    assert trial["examples"]["test"] == 12
    data = builtin_dataset("demo-ner")
    test_only = {tuple(t) for t in data["validation"]["tokens"]} - {tuple(t) for t in data["train"]["tokens"]}
    trials = [name for name in seen if name.startswith("trial-")]
    assert trials and all(not seen[name] & test_only for name in trials)
    run = json.loads((out / "runs" / "lora" / "result.json").read_text())
    assert run["data"]["splits"]["test"]["from"] == "demo-ner:validation"  # the seed run: test = dev
    assert seen["lora"] & test_only


def test_tune_refuses_a_suite_whose_results_are_scored_on_training_data(tiny_bert_dir, tmp_path):
    path = tuned_suite(tmp_path, tiny_bert_dir, {"trials": 1})
    for overrides in (["data.test_split=null", "data.eval_split=null"], ["data.test_split=train"]):
        result = CliRunner().invoke(main, ["bench", str(path), "--tune", *overrides,
                                           "--out", str(tmp_path / "o")])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "keeps the test examples out of the search" in result.output
        assert not (tmp_path / "o" / "trials").exists()


def test_a_trial_whose_process_died_is_failed_by_the_next_process_and_replaced(
        tiny_bert_dir, tmp_path, monkeypatch):
    from peftkit.bench import tune

    monkeypatch.setattr(tune, "HEARTBEAT_S", 1)
    monkeypatch.setattr(tune, "GRACE_S", 1)
    suite = load_suite(tuned_suite(tmp_path, tiny_bert_dir, {"trials": 2, "seeds": 1}), tune=True)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    storage, _ = tune.open_storage(optuna, url, tmp_path)
    study = optuna.create_study(study_name="tiny:lora", storage=storage, direction="maximize")
    dead = study.ask()  # a process started this trial and was killed: heartbeats stop
    storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)
    monkeypatch.setattr(pipeline, "run_recipe", lambda recipe, run_dir, callbacks=(), **kw:
                        {"test": {"f1": 0.5}, "health": {"status": "ok"}})
    tune.tune_suite(suite, tmp_path / "out", url, echo=lambda line: None)
    states = [t.state.name for t in optuna.load_study(study_name="tiny:lora", storage=url).trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"]  # failed, not counted: the budget still ran
    rows = list(csv.DictReader((tmp_path / "out" / "trials.csv").open()))
    assert "not counted" in rows[0]["error"] and rows[1]["error"] == ""


def test_each_study_draws_its_own_start_up_trials():
    """Variants of one suite get their own TPE seeds (reproducibly): with one seed for every study,
    every variant's random first trials fell on the same quantiles of its range."""
    from peftkit.bench.tune import study_seed

    spec = TuneSpec(trials=3)
    seeds = {name: study_seed(spec, name, 0, shared=False) for name in ("conll:lora", "conll:ia3")}
    assert seeds["conll:lora"] != seeds["conll:ia3"]
    assert study_seed(spec, "conll:lora", 0, shared=False) == seeds["conll:lora"]  # a rerun: the same
    assert study_seed(spec, "conll:lora", 2, shared=False) != seeds["conll:lora"]  # resumed: moves on

    def first_rate(seed):
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
        return study.ask().suggest_float("learning_rate", 1e-4, 1e-2, log=True)

    assert first_rate(seeds["conll:lora"]) != first_rate(seeds["conll:ia3"])


def test_trials_added_to_the_study_count_and_keep_their_note(tiny_bert_dir, tmp_path, monkeypatch):
    """A trial put in the storage by someone else (Optuna's add_trial: a study rebuilt from
    recorded values) uses up budget, is never run again and says where it came from."""
    from optuna.distributions import FloatDistribution

    path = tuned_suite(tmp_path, tiny_bert_dir, {"trials": 3, "seeds": 1})
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    study = optuna.create_study(study_name="tiny:lora", storage=storage, direction="maximize")
    for value, lr in [(0.25, 1e-3), (0.5, 2e-3)]:
        study.add_trial(optuna.trial.create_trial(
            params={"learning_rate": lr}, value=value, user_attrs={"note": "re-entered"},
            distributions={"learning_rate": FloatDistribution(1e-4, 5e-3, log=True)}))
    ran = []

    def fake(recipe, run_dir, callbacks=(), **kwargs):
        ran.append((Path(run_dir).name, recipe.train.learning_rate))
        return {"test": {"f1": 0.1}, "health": {"status": "ok"}, "metric": "f1"}

    monkeypatch.setattr(pipeline, "run_recipe", fake)
    result = CliRunner().invoke(main, ["bench", str(path), "--tune", "--trials-only",
                                       "--storage", storage, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert [name for name, _ in ran] == ["trial-002"]  # only the third trial of three ran
    rows = list(csv.DictReader((tmp_path / "out" / "trials.csv").open()))
    assert [r["note"] for r in rows] == ["re-entered", "re-entered", ""]
    tuning = json.loads((tmp_path / "out" / "tuning.json").read_text())["lora"]
    assert tuning["params"] == {"learning_rate": 2e-3} and tuning["best_value"] == 0.5


def test_a_collapsed_trial_is_never_the_one_chosen(tiny_bert_dir, tmp_path, monkeypatch):
    """On an imbalanced validation split always answering the majority can score best (accuracy
    0.90 on 90/10): the search must pick the best healthy trial, and say so when none is."""
    path = tuned_suite(tmp_path, tiny_bert_dir, {"trials": 3, "seeds": 1, "startup_trials": 3})
    scores = iter([(0.85, "ok"), (0.90, "collapsed"), (0.80, "ok")])
    lrs = []

    def fake(recipe, run_dir, callbacks=(), **kwargs):
        value, status = next(scores)
        lrs.append(recipe.train.learning_rate)
        return {"test": {"f1": value}, "health": {"status": status}, "metric": "f1"}

    monkeypatch.setattr(pipeline, "run_recipe", fake)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["bench", str(path), "--tune", "--trials-only", "--out", str(out)])
    assert result.exit_code == 0, result.output
    tuning = json.loads((out / "tuning.json").read_text())["lora"]
    assert tuning["best_trial"] == 0 and tuning["best_value"] == 0.85
    assert tuning["params"] == {"learning_rate": lrs[0]} and tuning["collapsed"] == 1
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["health"] for r in rows] == ["ok", "collapsed", "ok"]

    from peftkit.bench.tune import summarize_study  # every trial collapsed: the best of them, said

    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: (t.set_user_attr("health", "collapsed"),
                              t.set_constraint("collapsed", 1.0), 0.9 - t.number / 10)[-1], n_trials=2)
    summary = summarize_study(optuna, study, load_suite(path, tune=True).tune, "memory")
    assert summary["best_trial"] == 0 and summary["collapsed"] == 2 and summary["best_collapsed"]
