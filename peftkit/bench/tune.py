"""`peftkit bench --tune`: an Optuna search per variant on the validation split, then the best
setting once per seed on test (issue 16).

    suite (tune: section) ─▶ per variant group: optuna study "<suite>:<group>" in the storage
        trial = pipeline.run_recipe(variant + suggested lr [+ size], test_split: null
                                    [, eval_split: null where validation is the test split])
                └ ReportToStudy: validation metric ─▶ trial.report ─▶ pruner ─▶ TrialPruned
                └ health check collapsed ─▶ trial.set_constraint: infeasible, never the best
    best (healthy) trial's params ─▶ the group's variants (one per seed) ─▶ runner.run_suite (test split)
    DIR/tune.db (default storage) · DIR/trials/<group>/trial-NNN/ · tuning.json · trials.csv

A trial is an ordinary run through the same pipeline; only its final metrics come from the
validation split (data.test_split: null), so the test split never steers the search. Where a
variant's validation split is also the one its results are reported on (SST-2: dev is the only
labelled split besides train), its trials hold a validation split out of train instead
(data.eval_split: null, data.validation_size, seeded by train.seed); the line that starts the
group and tuning.json (`trials_scored_on`) say so. check_test_unseen refuses what could still let
a trial read the test examples. The budget
counts completed, pruned and failed trials; a trial cut short by Ctrl-C or a killed process
(FAIL without an error of its own) does not count, so a rerun replaces it. Several processes on
one storage (--storage) share a study: each runs trials until the shared count reaches the
budget (one more each at most, when they finish at the same moment). On an RDB storage each
running trial sends Optuna heartbeats; one whose process died (no heartbeat for GRACE_S) is
marked failed by the next process that runs a trial, instead of staying "running" for ever.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import time
import zlib
from pathlib import Path

import click

from peftkit import rundir
from peftkit.bench.numbers import higher_is_better
from peftkit.bench.report import TUNING, default_metric
from peftkit.bench.suite import Suite, Variant
from peftkit.errors import PeftkitError, UsageError


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise UsageError("--tune searches with Optuna, which is not installed: "
                           "pip install 'peftkit[tune]' (or pip install optuna)") from None
    if not hasattr(optuna.trial.Trial, "set_constraint"):  # collapsed trials are constraints
        raise UsageError(f"--tune needs Optuna 5 or newer (installed: {optuna.__version__}): "
                         "pip install -U 'optuna>=5'")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # peftkit prints one line a trial
    return optuna


# ---------------------------------------------------------------- the whole suite

def tune_suite(suite: Suite, out: Path, storage_url: str | None = None, echo=click.echo,
               trials: int | None = None) -> Suite:
    """Run the remaining trials of every group's study; the suite with each variant set to its
    group's best trial (or blocked when none completed). Writes tuning.json and trials.csv."""
    optuna = require_optuna()
    spec = dataclasses.replace(suite.tune, trials=trials or suite.tune.trials)
    check_test_unseen(suite)
    storage, label = open_storage(optuna, storage_url, Path(out))
    summaries, tuned = {}, []
    for group, variants in groups(suite).items():
        study = open_study(optuna, storage, f"{suite.name}:{group}", spec, variants[0],
                           shared=storage_url is not None)
        scored_on = trial_origins(variants[0].recipe).get("test")
        if held_out_for_trials(variants[0].recipe):
            echo(click.style(f"tune {group}: its validation split is its test split, so trials "
                             f"are scored on a validation split {scored_on} "
                             "(data.eval_split: null)", fg="yellow"))
        run_trials(optuna, study, group, variants[0], spec, Path(out), echo)
        summaries[group] = {**summarize_study(optuna, study, spec, label),
                            "trials_scored_on": scored_on}
        if summaries[group]["best_collapsed"]:
            echo(click.style(
                f"tune {group}: every completed trial collapsed (health check, trials.csv); its "
                "test runs use the best of them and will be marked collapsed too. If the validation "
                "classes are imbalanced, score the search on a class-balanced metric (eval.metric: "
                "macro_f1 or mcc); else widen the search (tune.lr_range) or train longer",
                fg="red", bold=True))
        tuned += [with_best(v, summaries[group]) for v in variants]
    write_records(Path(out), summaries)
    return dataclasses.replace(suite, variants=tuned)


def check_test_unseen(suite: Suite) -> None:
    """Refuse a variant whose trials would read its test examples: trained on them
    (data.train_split is the test split), or results that are themselves scored on a part held
    out of train (both splits null: no test set to keep out of the search)."""
    from peftkit.data.readers import HELD_OUT, role_origins

    problems = []
    for v in suite.variants:
        test = role_origins(v.recipe).get("test")  # none: data.name unknown, the run says so
        if test and (test in trial_origins(v.recipe).values() or test.startswith(HELD_OUT)):
            problems.append(f"{v.name}: its results are scored on {test}, which its trials would "
                            "read too")
    if problems:
        raise UsageError(
            f"{suite.source}: --tune keeps the test examples out of the search, and cannot here:\n  "
            + "\n  ".join(sorted(problems)) + "\nGive the variants a test split of their own "
            "(data.test_split or data.test_file), apart from data.train_split")


def held_out_for_trials(recipe) -> bool:
    """The variant's validation split is the split its results are reported on (SST-2's dev)."""
    from peftkit.data.readers import role_origins

    origins = role_origins(recipe)
    return bool(origins) and origins["eval"] == origins["test"]


def trial_origins(recipe) -> dict[str, str]:
    """role -> what a trial of the variant reads (its test role: what the trial is scored on)."""
    from peftkit.data.readers import role_origins

    return role_origins(dataclasses.replace(recipe, data=trial_data(recipe)))


def groups(suite: Suite) -> dict[str, list[Variant]]:
    """The variants of one group differ only by seed: they share one search."""
    out: dict[str, list[Variant]] = {}
    for v in suite.variants:
        out.setdefault(v.group, []).append(v)
    return out


HEARTBEAT_S, GRACE_S = 60, 600  # a trial's process sends a heartbeat a minute; 10 min silent: dead


def open_storage(optuna, url: str | None, out: Path):
    """(storage, its description). Default: SQLite in the bench folder, so a rerun resumes.
    A URL with :// is an RDB (sqlite:///f.db, postgresql://...); journal:PATH or any other path
    is an Optuna journal file, which processes on several machines may share over a file system."""
    if url is None:
        out.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(out / 'tune.db').resolve()}"
    if "://" in url:
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S,
                                              grace_period=GRACE_S), url
        except Exception as exc:  # noqa: BLE001 - a bad URL or a missing database driver
            raise PeftkitError(f"--storage {url}: Optuna cannot open it ({exc}). Use an RDB URL "
                               "such as sqlite:///tune.db or a journal file, journal:PATH") from None
    path = Path(url.removeprefix("journal:")).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path))), f"journal:{path}"


def open_study(optuna, storage, name: str, spec, template: Variant, shared: bool):
    """Create the study or load it (load_if_exists: a rerun or another process continues it)."""
    metric = metric_of(template)
    existing = len(optuna.load_study(study_name=name, storage=storage).trials) \
        if name in optuna.get_all_study_names(storage) else 0
    sampler = optuna.samplers.TPESampler(seed=study_seed(spec, name, existing, shared),
                                         n_startup_trials=max(2, spec.trials // 3))
    return optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                               sampler=sampler, pruner=make_pruner(optuna, spec),
                               direction="maximize" if higher_is_better(metric) else "minimize")


def study_seed(spec, name: str, existing: int, shared: bool) -> int:
    """TPE's seed for one study. TPE restarts its random stream with its seed, so the seed is
    offset by the trials already there (a rerun would otherwise propose the first trials again),
    by the study's name and, on a shared storage, by the process. The name: with one seed for
    every study, each variant's random start-up trials fell on the same quantiles of its range
    (CoNLL-2003, 2026-12-06: both adapters' first two trials at 1.9e-4 and 1.2e-4, DoRA's and
    AdaLoRA's first at 2.2e-4), so a suite's variants were unlucky together."""
    offset = zlib.crc32(name.encode()) + existing + (os.getpid() if shared else 0)
    return (spec.sampler_seed + offset) % 2**32


def make_pruner(optuna, spec):
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials)
    if spec.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------- trials

def counts(optuna, trial) -> bool:
    """Does a trial use up budget: finished, pruned, or failed by its own error."""
    state = optuna.trial.TrialState
    return (trial.state in (state.COMPLETE, state.PRUNED)
            or (trial.state == state.FAIL and "error" in trial.user_attrs))


def used(optuna, study) -> int:
    return sum(counts(optuna, t) for t in study.get_trials(deepcopy=False))


def run_trials(optuna, study, group: str, template: Variant, spec, out: Path, echo) -> None:
    left = spec.trials - used(optuna, study)
    if left <= 0:
        echo(click.style(f"tune {group}: {spec.trials} trials done earlier", fg="cyan"))
        return
    echo(click.style(f"tune {group}: {left} of {spec.trials} trials to run", bold=True))

    def stop_at_budget(study, trial):  # other processes on the storage count too
        echo(trial_line(group, trial))
        if used(optuna, study) >= spec.trials:
            study.stop()

    study.optimize(objective(optuna, group, template, spec, out), n_trials=left,
                   catch=(Exception,), callbacks=[stop_at_budget])


def objective(optuna, group: str, template: Variant, spec, out: Path):
    """One trial: the variant with the suggested setting, scored on the validation split."""
    from peftkit.bench.runner import error_message

    strategy = template.recipe.strategy_impl
    low, high = spec.lr_range or strategy.lr_range
    metric = metric_of(template)

    def run(trial):
        params = {"learning_rate": trial.suggest_float("learning_rate", low, high, log=True)}
        if spec.size and strategy.tune_size:
            key, choices = strategy.tune_size
            params[key] = trial.suggest_categorical(key, list(choices))
        folder = out / "trials" / group / f"trial-{trial.number:03d}"
        from peftkit import pipeline  # looked up at call time, so tests can stand in for it

        reporter = report_to_study(optuna, trial, metric, spec.reports)
        start = time.monotonic()
        try:
            result = pipeline.run_recipe(trial_recipe(template.recipe, params), run_dir=folder,
                                         overwrite=True, callbacks=[reporter])
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("error", error_message(exc))  # counts against the budget
            raise
        finally:
            trial.set_user_attr("seconds", round(time.monotonic() - start, 1))
            shutil.rmtree(folder / rundir.CHECKPOINTS, ignore_errors=True)
        from peftkit.health import is_collapsed

        trial.set_user_attr("health", (result.get("health") or {}).get("status"))
        # A collapsed trial can score best (accuracy on a 90/10 validation split: always answering
        # the majority). Infeasible, it is never the study's best trial and TPE samples away from it.
        trial.set_constraint("collapsed", 1.0 if is_collapsed(result) else 0.0)
        value = result["test"].get(metric)  # test_split: null -> the (trial's) validation split
        if not isinstance(value, (int, float)):
            raise PeftkitError(f"the trial's results have no {metric!r} (eval.metric)")
        return value

    return run


def trial_recipe(recipe, params: dict):
    """The variant as a trial: the suggested setting, final metrics on the validation split, no
    weights saved. Its evaluations during training are the recipe's plus the reports' (the
    pruner's: report_to_study asks for them)."""
    lr = params["learning_rate"]
    sized = {k: v for k, v in params.items() if k != "learning_rate"}
    return dataclasses.replace(
        recipe, train=dataclasses.replace(recipe.train, learning_rate=lr),
        data=trial_data(recipe),
        output=dataclasses.replace(recipe.output, save_model=False),
        strategy=dataclasses.replace(recipe.strategy, **sized))


def trial_data(recipe):
    """Final metrics on the validation split (data.test_file would win over test_split: cleared
    too); a validation split that is the test split is replaced by one held out of train."""
    data = dataclasses.replace(recipe.data, test_split=None, test_file=None)
    if held_out_for_trials(recipe):
        data = dataclasses.replace(data, eval_split=None, validation_file=None)
    return data


def report_to_study(optuna, trial, metric: str, reports: int):
    """A TrainerCallback: `reports` validation scores per trial to Optuna (it asks the Trainer
    for an evaluation at each, whatever the recipe's eval_every); a hopeless trial (the pruner
    says so) stops training by raising TrialPruned."""
    from transformers import TrainerCallback

    class ReportToStudy(TrainerCallback):
        def __init__(self):
            self.every, self.done = 1, set()   # steps already reported (once each)

        def on_train_begin(self, args, state, control, **kwargs):
            self.every = max(1, -(-state.max_steps // max(1, reports)))  # ceil: `reports` in all

        def reports_at(self, state) -> bool:
            # the last step is scored by the trial's final evaluation
            return state.global_step % self.every == 0 and state.global_step < state.max_steps

        def on_step_end(self, args, state, control, **kwargs):
            if self.reports_at(state):
                control.should_evaluate = True

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            value = (metrics or {}).get(f"eval_{metric}")
            step = state.global_step
            if not isinstance(value, (int, float)) or step in self.done:
                return
            self.done.add(step)
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation {metric} {value:.4f} at step {step}")

    return ReportToStudy()


def trial_line(group: str, trial) -> str:
    value = "" if trial.value is None else f" {trial.value:.4f}"
    params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in trial.params.items())
    error = f": {trial.user_attrs['error'].splitlines()[0]}" if "error" in trial.user_attrs else ""
    return f"  {group} trial #{trial.number} {trial.state.name.lower()}{value} ({params}){error}"


# ---------------------------------------------------------------- results

def metric_of(variant: Variant) -> str:
    r = variant.recipe
    return r.eval.metric or default_metric(r.task)


def summarize_study(optuna, study, spec, storage: str) -> dict:
    state = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == state.COMPLETE]
    best = best_healthy_trial(study, complete) if complete else None
    return {
        "study": study.study_name, "storage": storage, "budget": spec.trials,
        "pruner": spec.pruner, "search": spec.as_dict(),
        "params": best.params if best else None, "best_trial": best.number if best else None,
        "best_value": best.value if best else None,
        "best_collapsed": bool(best and trial_collapsed(best)),
        "trials": used(optuna, study), "complete": len(complete),
        "collapsed": sum(trial_collapsed(t) for t in complete),
        "pruned": sum(t.state == state.PRUNED for t in trials),
        "failed": sum(t.state == state.FAIL and "error" in t.user_attrs for t in trials),
        "not_finished": sum(not counts(optuna, t) and t.state != state.COMPLETE for t in trials),
        "trial_list": [trial_record(t) for t in trials],
    }


def trial_collapsed(trial) -> bool:
    """The trial's run was found collapsed (the health status the objective recorded)."""
    return trial.user_attrs.get("health") == "collapsed"


def best_healthy_trial(study, complete: list):
    """The best trial whose run did not collapse (Optuna's best among feasible trials); where every
    completed trial collapsed, the best of them (its test runs are then marked collapsed too)."""
    try:
        return study.best_trial
    except ValueError:
        pick = max if study.direction.name == "MAXIMIZE" else min
        return pick(complete, key=lambda t: t.value)


def trial_record(t) -> dict:
    return {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
            "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            "error": t.user_attrs.get("error") or stopped_note(t), "health": t.user_attrs.get("health"),
            "seconds": t.user_attrs.get("seconds"),
            "note": t.user_attrs.get("note")}  # set by whoever added a trial it did not run


def stopped_note(t) -> str | None:
    """Why a failed trial without an error of its own failed (it does not use up budget)."""
    if t.state.name == "FAIL" and "error" not in t.user_attrs:
        return "stopped before it finished (Ctrl-C, or its process died); not counted, rerun"
    return None


def with_best(variant: Variant, summary: dict) -> Variant:
    """The variant set to the best trial's setting (the test runs), or blocked without one."""
    params = summary["params"]
    if not params:
        return dataclasses.replace(variant, blocked=(
            f"no trial of {summary['study']} completed ({summary['pruned']} pruned, "
            f"{summary['failed']} failed; trials.csv has their errors)"))
    r = variant.recipe
    sized = {k: v for k, v in params.items() if k != "learning_rate"}
    recipe = dataclasses.replace(
        r, train=dataclasses.replace(r.train, learning_rate=params["learning_rate"]),
        strategy=dataclasses.replace(r.strategy, **sized))
    overrides = {**variant.overrides, "train.learning_rate": params["learning_rate"],
                 **{f"strategy.{k}": v for k, v in sized.items()}}
    return dataclasses.replace(variant, recipe=recipe, overrides=overrides)


def write_records(out: Path, summaries: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rundir.write_json(out / TUNING, summaries)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["group", "trial", "state", "value", "params", "reports", "last_report",
                     "health", "seconds", "error", "note"])
    for group, s in summaries.items():
        for t in s["trial_list"]:
            steps = list(t["intermediate"].values())
            writer.writerow([group, t["number"], t["state"], t["value"], json.dumps(t["params"]),
                             len(steps), steps[-1] if steps else None, t["health"], t["seconds"],
                             (t["error"] or "").splitlines()[0] if t["error"] else "",
                             t["note"] or ""])
    rundir.atomic_write_text(out / "trials.csv", buf.getvalue())
