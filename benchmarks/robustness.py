"""The robustness matrix (issue 15): every shipped recipe on data sets it was not tuned for.

    python benchmarks/robustness.py [--sets conll-1k,sst2-500] [--only lora,full] [--out DIR]
    python benchmarks/robustness.py --tune [--trials N] [--sets ...] [--only ...]

1. builds the stress sets from ../shared/data into DIR/data (benchmarks/stress_sets.py);
2. writes one bench suite per set into DIR/suites/ (every recipe of the set's task, only the data
   source overridden: benchmarks/robustness.yaml) and runs it with `peftkit bench`'s runner into
   DIR/<set>/ (a rerun skips finished variants);
3. writes DIR/matrix.md and DIR/matrix.json: every run's metric and health, and each PEFT
   strategy's gap to full fine-tuning on the same set.
--tune (issue 16): the same suites with the config's `tune:` budget through `peftkit bench
--tune`'s search (Optuna on each set's validation split, then the best setting once per seed on
test) into DIR/<set>-tuned/; the matrix then gets a second table: how far each recipe's shipped
setting (its fixed rate or `auto`, the untuned run) lands from its tuned best, in points.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stress_sets  # noqa: E402  (benchmarks/ is not a package)

RECIPES_KEY = {"token-classification": "ner_recipes", "sequence-classification": "classification_recipes",
               "causal-lm": "causal_recipes"}


def suite_for(name: str, spec: dict, config: dict, data_dir: Path, only: set[str],
              tune: bool = False) -> dict:
    recipes = sorted((HERE / config[RECIPES_KEY[spec["task"]]]).glob("*.yaml"))
    overrides = {"data.name": str(data_dir / name), "data.data_dir": None, **config.get("common", {})}
    if spec["task"] == "sequence-classification":
        overrides.update(config.get("classification_overrides", {}))
    overrides.update(spec.get("overrides", {}))
    skip = set(spec.get("skip", []))
    variants = [{"name": r.stem, "base": str(r)} for r in recipes
                if (not only or r.stem in only) and r.stem not in skip]
    suite = {"name": name, "description": f"robustness matrix: {name}", "overrides": overrides,
             "variants": variants}
    return {**suite, "name": f"{name}-tuned", "tune": config["tune"]} if tune else suite


def run(config_path: Path, out: Path, sets: list[str] | None, only: set[str], tune: bool = False,
        trials: int | None = None) -> None:
    from peftkit.bench.runner import run_suite
    from peftkit.bench.suite import load_suite
    from peftkit.bench.tune import tune_suite

    config = yaml.safe_load(config_path.read_text())
    data_dir = out / "data"
    stress_sets.build(data_dir, HERE.parents[1] / "shared" / "data")
    (out / "suites").mkdir(parents=True, exist_ok=True)
    for name, spec in config["sets"].items():
        if sets and name not in sets:
            continue
        suite = suite_for(name, spec, config, data_dir.resolve(), only, tune)
        path = out / "suites" / f"{suite['name']}.yaml"
        path.write_text(yaml.safe_dump(suite, sort_keys=False))
        print(f"== {suite['name']}", flush=True)
        if tune:
            folder = out / suite["name"]
            run_suite(tune_suite(load_suite(path, tune=True), folder, trials=trials), folder)
        else:
            run_suite(load_suite(path), out / name)
    write_matrix(out, config)


def write_matrix(out: Path, config: dict) -> None:
    rows = []
    for name in config["sets"]:
        results = out / name / "results.json"
        if not results.is_file():
            continue
        records = json.loads(results.read_text())
        full = next((r["metric_value"] for r in records if r["strategy"] == "full"
                     and r["status"] == "ok"), None)
        for r in records:
            health = r.get("health") or ("failed" if r["status"] == "failed" else "?")
            gap = (r["metric_value"] - full) * 100 if full is not None and r["metric_value"] is not None \
                and r["strategy"] != "full" else None
            rows.append({"set": name, "recipe": r["variant"], "metric": r["metric"],
                         "value": r["metric_value"], "learning_rate": r.get("learning_rate"),
                         "health": health, "gap_to_full_points": gap,
                         "train_seconds": r.get("train_seconds")})
    lines = ["| set | recipe | metric | value | lr | health | gap to full (points) | train s |",
             "|---|---|---|--:|--:|---|--:|--:|"]
    for row in rows:
        value = f"{row['value']:.4f}" if isinstance(row["value"], float) else "—"
        gap = f"{row['gap_to_full_points']:+.2f}" if row["gap_to_full_points"] is not None else ""
        lr = f"{row['learning_rate']:g}" if isinstance(row["learning_rate"], float) else str(row["learning_rate"])
        secs = f"{row['train_seconds']:.0f}" if row["train_seconds"] else ""
        lines.append(f"| {row['set']} | {row['recipe']} | {row['metric']} | {value} | {lr} | "
                     f"{row['health']} | {gap} | {secs} |")
    tuned = tuned_rows(out, config, rows)
    if tuned:
        lines += ["", "Shipped setting against the tuned best (`--tune`; points = shipped − tuned mean):",
                  "", TUNED_HEAD, "|---|---|--:|--:|--:|--:|--:|---|"]
        lines += [tuned_line(t) for t in tuned]
    (out / "matrix.json").write_text(json.dumps({"runs": rows, "tuned": tuned}, indent=2) + "\n")
    (out / "matrix.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


TUNED_HEAD = ("| set | recipe | shipped | shipped lr | tuned mean ± 95% CI (n) | tuned lr | "
              "shipped − tuned (points) | verdict |")


def tuned_rows(out: Path, config: dict, rows: list[dict]) -> list[dict]:
    """One row per tuned group: its shipped run's value next to the tuned seeds' mean and CI."""
    shipped = {(r["set"], r["recipe"]): r for r in rows}
    tuned = []
    for name in config["sets"]:
        results = out / f"{name}-tuned" / "results.json"
        if not results.is_file():
            continue
        groups = {}
        for r in json.loads(results.read_text()):
            groups.setdefault(r["group"], r)  # every run of a group carries the group's mean and CI
        for group, r in groups.items():
            base = shipped.get((name, group), {})
            tuned.append({"set": name, "recipe": group, "shipped": base.get("value"),
                          "shipped_lr": base.get("learning_rate"), "tuned_mean": r.get("group_mean"),
                          "tuned_ci95": r.get("group_ci95"), "tuned_runs": r.get("group_runs"),
                          "tuned_lr": r.get("learning_rate"), "trials": (r.get("tuning") or {}).get("trials"),
                          **verdict(base.get("value"), r.get("group_mean"), r.get("group_ci95"))})
    return tuned


def verdict(shipped, mean, ci) -> dict:
    """Points between the shipped setting and the tuned mean, and whether the seeds tell them
    apart (the shipped run inside the tuned interval: as good as tuning, as far as n seeds show)."""
    if not isinstance(shipped, (int, float)) or not isinstance(mean, (int, float)):
        return {"points": None, "verdict": "not run"}
    points = (shipped - mean) * 100
    if isinstance(ci, (int, float)) and abs(shipped - mean) <= ci:
        return {"points": points, "verdict": "within the tuned interval"}
    return {"points": points, "verdict": "below tuned" if points < 0 else "above tuned"}


def tuned_line(t: dict) -> str:
    def num(x, fmt):
        return format(x, fmt) if isinstance(x, (int, float)) else "—" if x is None else str(x)

    ci = f" ± {num(t['tuned_ci95'], '.4f')}" if isinstance(t["tuned_ci95"], (int, float)) else ""
    return (f"| {t['set']} | {t['recipe']} | {num(t['shipped'], '.4f')} | {num(t['shipped_lr'], 'g')} | "
            f"{num(t['tuned_mean'], '.4f')}{ci} ({t['tuned_runs']}) | {num(t['tuned_lr'], '.2g')} | "
            f"{num(t['points'], '+.2f')} | {t['verdict']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "robustness.yaml")
    parser.add_argument("--out", type=Path, default=Path("bench/robustness"))
    parser.add_argument("--sets", default="", help="comma-separated set names (default: all)")
    parser.add_argument("--only", default="", help="comma-separated recipe stems (default: all)")
    parser.add_argument("--matrix-only", action="store_true", help="rebuild matrix.md, run nothing")
    parser.add_argument("--tune", action="store_true",
                        help="tune each recipe (the config's tune: budget) into DIR/<set>-tuned/")
    parser.add_argument("--trials", type=int, help="with --tune: trials per recipe (default: tune.trials)")
    args = parser.parse_args()
    if args.matrix_only:
        write_matrix(args.out, yaml.safe_load(args.config.read_text()))
        return
    run(args.config, args.out, [s for s in args.sets.split(",") if s] or None,
        {s for s in args.only.split(",") if s}, args.tune, args.trials)


if __name__ == "__main__":
    main()
