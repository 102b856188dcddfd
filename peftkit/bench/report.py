"""Result records of a bench folder and the files made from them.

    runs/<variant>/result.json | error.json ─▶ records (one per run) ─▶ results.json, results.csv
                                             ─▶ rows (one per variant, mean ± 95% CI over seeds,
                                                 frontier marks: peftkit/bench/stats.py)
                                             ─▶ results.md and the terminal table, pareto.png
    --tune: tuning.json and trials.csv (peftkit/bench/tune.py) add the chosen settings and trials

Everything is rebuilt from the run folders, so the reports never disagree with the runs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import statistics
import time
from pathlib import Path

from peftkit import rundir
from peftkit.bench.numbers import higher_is_better, human_count
from peftkit.bench.plot import plot_pareto
from peftkit.bench.stats import ci95, mark_frontier

ERROR = rundir.BENCH_ERROR
VARIANT = rundir.BENCH_VARIANT  # the settings a run folder was made with (see is_finished)
DICT_COLUMNS = ("strategy_settings", "overrides", "versions", "tuning")  # JSON text in the CSV
TUNING = "tuning.json"  # --tune: per group, the study's trials and the chosen setting


def run_dir(out: Path, variant) -> Path:
    return Path(out) / "runs" / variant.name


def is_finished(folder: Path, variant=None) -> bool:
    """A finished run of this variant: result.json, and the settings it ran with are the
    variant's current ones (an edited suite must not reuse a stale run)."""
    return (folder / rundir.RESULT).is_file() and (variant is None or same_settings(folder, variant))


def same_settings(folder: Path, variant) -> bool:
    try:
        ran = json.loads((folder / VARIANT).read_text(encoding="utf-8"))["recipe"]
    except FileNotFoundError:
        return True  # finished before the bench recorded settings: trust it
    except (OSError, ValueError, KeyError):
        return False
    return ran == settings_of(variant)


def settings_of(variant) -> dict:
    """The variant's recipe as plain JSON data, as recorded in runs/<variant>/variant.json."""
    return json.loads(json.dumps(variant.recipe.to_dict()))


# ---------------------------------------------------------------- records (one per run)

def collect(suite, out: Path) -> list[dict]:
    """Records of every variant that finished or failed, in suite order (not-yet-run ones omitted)."""
    records = []
    for variant in suite.variants:
        folder = run_dir(out, variant)
        if is_finished(folder, variant):
            result = json.loads((folder / rundir.RESULT).read_text(encoding="utf-8"))
            records.append(finished_record(suite, variant, result))
        elif (folder / ERROR).is_file() and same_settings(folder, variant):
            error = json.loads((folder / ERROR).read_text(encoding="utf-8"))
            records.append(failed_record(suite, variant, error["error"]))
    return records


def base_record(suite, variant) -> dict:
    """What the recipe alone says about a run (all a failed run has)."""
    r = variant.recipe
    settings = dataclasses.asdict(r.strategy)
    return {
        "suite": suite.name, "variant": variant.name, "group": variant.group,
        "seed": r.train.seed, "status": None, "error": None,
        "method": r.strategy_impl.method(settings), "strategy": r.strategy_name,
        "strategy_settings": settings, "learning_rate": r.train.learning_rate,
        "epochs": r.train.epochs, "task": r.task, "model": r.model.name, "dataset": r.data.name,
        "train_samples": r.data.max_train_samples, "quantization": r.model.quantization,
        "precision": None, "metric": r.eval.metric or default_metric(r.task), "metric_value": None,
        "test": {}, "trainable_params": None, "total_params": None, "trainable_percent": None,
        "train_seconds": None, "train_steps": None, "tokens_per_second": None,
        "peak_memory_mb": None, "adapter_bytes": None, "versions": {},
        "health": None, "health_findings": [],  # peftkit.health: "ok" or "collapsed"
        "overrides": variant.overrides, "run_dir": f"runs/{variant.name}",
    }


def finished_record(suite, variant, result: dict) -> dict:
    rec = base_record(suite, variant)
    test = {k: v for k, v in result.get("test", {}).items()  # the metrics, not the stopwatch
            if k != "epoch" and not k.endswith(("runtime", "per_second"))}
    rec.update(
        status="ok", model=result.get("model", rec["model"]), precision=result.get("precision"),
        quantization=result.get("quantization", rec["quantization"]),
        metric=result["metric"], metric_value=test.get(result["metric"]), test=test,
        trainable_params=result.get("trainable_params"), total_params=result.get("total_params"),
        trainable_percent=result.get("trainable_percent"),
        train_seconds=result.get("train_seconds"), train_steps=result.get("train_steps"),
        tokens_per_second=result.get("train_tokens_per_second"),
        peak_memory_mb=result.get("peak_memory_mb"), adapter_bytes=result.get("adapter_bytes"),
        versions=result.get("versions", {}),
        learning_rate=result.get("learning_rate", rec["learning_rate"]),
        health=(result.get("health") or {}).get("status"),
        health_findings=[f"{f['split']}: {f['what']}" for f in (result.get("health") or {})
                         .get("findings", [])],
    )
    return rec


def failed_record(suite, variant, message: str) -> dict:
    return {**base_record(suite, variant), "status": "failed", "error": message}


def default_metric(task: str) -> str | None:
    try:
        from peftkit.tasks import get_task

        return get_task(task).default_metric
    except (ImportError, AttributeError, KeyError):
        return None


# ---------------------------------------------------------------- rows (one per variant)

def summarize(records: list[dict], tuning: dict | None = None) -> list[dict]:
    """One row per variant group: mean ± 95% CI of the metric over seeds, its place against the
    Pareto frontier, and (--tune) its search; best first, failures last."""
    groups: dict[str, list[dict]] = {}
    for rec in records:
        groups.setdefault(rec["group"], []).append(rec)
    rows = [group_row(name, recs) for name, recs in groups.items()]
    for row in rows:
        row["tuning"] = (tuning or {}).get(row["variant"])
    ok = [r for r in rows if r["mean"] is not None]
    better = higher_is_better(ok[0]["metric"] if ok else None)
    ok.sort(key=lambda r: (-(1 if better else -1) * r["mean"], r["trainable_params"] or 0))
    mark_frontier(ok, better)
    return ok + [r for r in rows if r["mean"] is None]


def group_row(name: str, recs: list[dict]) -> dict:
    ok = [r for r in recs if r["status"] == "ok" and isinstance(r["metric_value"], (int, float))]
    values = [r["metric_value"] for r in ok]
    first = (ok or recs)[0]
    return {
        "variant": name, "method": first["method"], "strategy": first["strategy"],
        "metric": first["metric"], "runs": len(ok), "failed": len(recs) - len(ok),
        "seeds": [r["seed"] for r in ok],
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "ci95": ci95(values),   # t interval of the mean: what the table and the plot show
        "errors": [f"{r['variant']}: {r['error']}" for r in recs if r["status"] == "failed"],
        "collapsed": sum(r.get("health") == "collapsed" for r in ok),
        "warnings": [f"{r['variant']}: {w}" for r in ok for w in r.get("health_findings", [])],
        "learning_rates": sorted({r["learning_rate"] for r in ok if isinstance(r.get("learning_rate"), float)}),
        **{key: mean_of(ok, key) for key in ("trainable_params", "total_params", "trainable_percent",
                                             "train_seconds", "tokens_per_second", "peak_memory_mb",
                                             "adapter_bytes")},
    }


def mean_of(recs: list[dict], key: str):
    values = [r[key] for r in recs if isinstance(r.get(key), (int, float))]
    return statistics.fmean(values) if values else None


# ---------------------------------------------------------------- files

def write_reports(suite, out: Path, plot: bool = True) -> list[dict]:
    """Rewrite results.json, results.csv, results.md (and pareto.png) from the run folders."""
    out = Path(out)
    records = collect(suite, out)
    tuning = read_tuning(out)
    rows = summarize(records, tuning)
    add_group_figures(records, rows)
    rundir.write_json(out / "results.json", records)
    rundir.atomic_write_text(out / "results.csv", to_csv(records))
    rundir.atomic_write_text(out / "results.md", to_markdown(suite, records, rows))
    if plot and any(r["mean"] is not None for r in rows):
        plot_pareto(rows, out / "pareto.png", title=plot_title(suite.name, records))
    return records


def read_tuning(out: Path) -> dict:
    """{group: study summary} written by a --tune bench (peftkit/bench/tune.py), else {}."""
    try:
        return json.loads((Path(out) / TUNING).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def add_group_figures(records: list[dict], rows: list[dict]) -> None:
    """Every run's record also carries its variant's mean ± 95% CI, frontier mark and search, so
    results.json and results.csv say what results.md says."""
    by_group = {r["variant"]: r for r in rows}
    for rec in records:
        row = by_group[rec["group"]]
        rec.update(group_mean=row["mean"], group_ci95=row["ci95"], group_runs=row["runs"],
                   frontier=row.get("frontier"), not_distinguishable_from=row.get("near"),
                   tuning=chosen(row.get("tuning")))


def chosen(tuning: dict | None) -> dict | None:
    """The search in brief (the trial list stays in tuning.json and trials.csv)."""
    if not tuning:
        return None
    return {k: tuning.get(k) for k in ("study", "params", "best_trial", "best_value", "trials",
                                       "complete", "collapsed", "pruned", "failed",
                                       "trials_scored_on")}


def to_csv(records: list[dict]) -> str:
    """One line per run; the test metrics spread into test_<name> columns."""
    test_keys = list(dict.fromkeys(k for r in records for k in r["test"]))
    fields = [k for k in (records[0] if records else {}) if k != "test"] + [f"test_{k}" for k in test_keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        row = {k: (json.dumps(v, sort_keys=True) if k in DICT_COLUMNS else v)
               for k, v in rec.items() if k != "test"}
        row.update({f"test_{k}": v for k, v in rec["test"].items()})
        writer.writerow(row)
    return buf.getvalue()


def to_markdown(suite, records: list[dict], rows: list[dict]) -> str:
    ok = [r for r in records if r["status"] == "ok"]
    first = (ok or records or [{}])[0]
    failed = sum(r["status"] == "failed" for r in records)
    lines = [f"# Bench `{suite.name}`: {first.get('metric') or 'metric'} against trainable parameters",
             ""]
    if suite.description:
        lines += [suite.description.strip(), ""]
    lines += [f"task {first.get('task')} · model {first.get('model')} · data {first.get('dataset')} · "
              f"runs: {len(ok)} finished, {failed} failed, "
              f"{len(suite.variants) - len(records)} not run · {time.strftime('%Y-%m-%d')} · "
              f"{cpu_name()}", ""]
    lines += [format_table(rows), ""]
    if ok and ok[0]["versions"]:
        lines += ["versions: " + ", ".join(f"{k} {v}" for k, v in ok[0]["versions"].items() if v), ""]
    lines += ["Sorted by the metric on the test split: mean ± 95% confidence interval over seeds "
              "(t(0.975, n-1) · sd / √n) where a variant ran with several. *frontier*: on the "
              "Pareto frontier of the means (no variant with as few trainable parameters does "
              "better); *≈ X*: its interval overlaps that of X, the frontier point at its parameter "
              "budget, so the seeds do not tell the two apart. Every run's folder is under "
              "`runs/<variant>/`; `results.csv` and `results.json` hold every number; "
              "`pareto.png` plots the table (error bars: the 95% intervals).", ""]
    lines += tuning_section(rows)
    return "\n".join(lines)


def tuning_section(rows: list[dict]) -> list[str]:
    """--tune: each variant's search, its trials by state and the setting the test runs used."""
    tuned = [r for r in rows if r.get("tuning")]
    if not tuned:
        return []
    head = ["variant", "chosen setting", "best trial", "validation", "trials", "complete",
            "collapsed", "pruned", "failed", "study"]
    body = [[r["variant"], setting_text(t["params"]), "–" if t["best_trial"] is None else
             f"#{t['best_trial']}", "–" if t["best_value"] is None else f"{t['best_value']:.4f}",
             str(t["trials"]), str(t["complete"]), str(t.get("collapsed") or 0), str(t["pruned"]),
             str(t["failed"]), t["study"]]
            for r in tuned for t in [r["tuning"]]]
    first = tuned[0]["tuning"]
    scored = sorted({t["trials_scored_on"] for r in tuned for t in [r["tuning"]]
                     if t.get("trials_scored_on")})  # tuning.json of an older peftkit has none
    return ["## Tuning", "",
            f"Optuna TPE search per variant on the validation split ({first['budget']} trials "
            f"each, pruner {first['pruner']}), then the best setting trained once per seed and "
            f"scored on test; a trial whose run collapsed (health check) is never the one chosen. "
            f"Every trial, collapsed, pruned and failed ones included, is in `trials.csv` and "
            f"`tuning.json`; storage: `{first['storage']}`."
            + "".join(f" Trials scored on: {s}." for s in scored), "",
            markdown_table(head, body, right={3, 4, 5, 6, 7, 8}), ""]


def setting_text(params: dict | None) -> str:
    if not params:
        return "–"
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def format_table(rows: list[dict]) -> str:
    """The results table (Markdown, readable as plain text too), followed by any failures."""
    metric = next((r["metric"] for r in rows if r["mean"] is not None), None) or "metric"
    several = any(r["runs"] > 1 for r in rows)
    tuned = any(r.get("tuning") for r in rows)
    head = ["#", "variant", "method", metric, "vs frontier", "lr", "trainable", "% trainable",
            "train time", "tokens/s", "peak memory", "saved size"] + (["runs"] if several else []) \
        + (["tuned setting", "trials"] if tuned else [])
    body = []
    for i, r in enumerate(rows, 1):
        if r["mean"] is None:
            body.append(["–", r["variant"], r["method"], "failed"] + ["–"] * (len(head) - 4))
            continue
        value = metric_text(r["mean"], r.get("ci95")) + (" COLLAPSED" if r.get("collapsed") else "")
        cells = [str(i), r["variant"], r["method"], value, frontier_text(r),
                 lr_text(r.get("learning_rates")),
                 human_count(r["trainable_params"]), percent(r["trainable_percent"]),
                 seconds(r["train_seconds"]), number(r["tokens_per_second"]),
                 megabytes(r["peak_memory_mb"]), size(r["adapter_bytes"])]
        body.append(cells + ([str(r["runs"])] if several else []) + (tuned_cells(r) if tuned else []))
    text = [markdown_table(head, body, right={0, 3, *range(5, len(head) - (2 if tuned else 0))})]
    warnings = [w for r in rows for w in r.get("warnings", [])]
    if warnings:
        text += ["", "COLLAPSED runs (trained, learned nothing useful; peftkit.health):"]
        text += [f"- {first_line(w)}" for w in warnings]
    errors = [e for r in rows for e in r["errors"]]
    if errors:
        text += ["", "Failed runs:"] + [f"- {first_line(e)}" for e in errors]
    return "\n".join(text)


def frontier_text(row: dict) -> str:
    if row.get("frontier"):
        return "frontier"
    return f"≈ {row['near']} (not distinguishable)" if row.get("near") else "–"


def tuned_cells(row: dict) -> list[str]:
    t = row.get("tuning")
    if not t:
        return ["–", "–"]
    return [setting_text(t["params"]),
            f"{t['trials']} ({t['complete']} done, {t['pruned']} pruned, {t['failed']} failed)"]


def lr_text(rates) -> str:
    return ", ".join(f"{x:.2g}" for x in rates) if rates else "–"


def markdown_table(head: list[str], body: list[list[str]], right: set[int]) -> str:
    """A Markdown table padded to line up in a terminal; columns in `right` are right-aligned."""
    widths = [max(len(row[c]) for row in [head, *body]) for c in range(len(head))]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if j in right else c.ljust(w)
                                 for j, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if j in right else ("-" * (w + 2))
                          for j, w in enumerate(widths)) + "|"
    return "\n".join([line(head), rule, *map(line, body)])


def plot_title(suite_name: str, records: list[dict]) -> str:
    ok = [r for r in records if r["status"] == "ok"] or records
    r = ok[0]
    data = Path(str(r["dataset"])).name
    return f"bench {suite_name}: {r['metric']} on {data} ({r['task']}, {r['model']})"


# ---------------------------------------------------------------- formatting

def metric_text(mean: float, std: float | None) -> str:
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def percent(p) -> str:
    return "–" if p is None else f"{p:.3g}%"


def seconds(s) -> str:
    return "–" if s is None else duration(s)


def duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    minutes, s = divmod(s, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def number(x) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:,.0f}"


def megabytes(mb) -> str:
    return "–" if mb is None else f"{mb:,.0f} MB"


def size(n) -> str:
    """Bytes on disk, binary units: 1,033,000 -> 0.985 MB."""
    if n is None:
        return "–"
    for div, unit in ((2**30, "GB"), (2**20, "MB")):
        if n >= div * 0.9:
            return f"{n / div:.3g} {unit}"
    return f"{n / 2**10:.3g} KB"


def first_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split("\n", 2)[:2]).strip()
    return line if len(line) <= limit else line[:limit - 1] + "…"


def cpu_name() -> str:
    import os

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
