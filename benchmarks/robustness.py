"""The robustness matrix (issue 15): every shipped recipe on data sets it was not tuned for.

    python benchmarks/robustness.py [--sets conll-1k,sst2-500] [--only lora,full] [--out DIR]

1. builds the stress sets from ../shared/data into DIR/data (benchmarks/stress_sets.py);
2. writes one bench suite per set into DIR/suites/ (every recipe of the set's task, only the data
   source overridden: benchmarks/robustness.yaml) and runs it with `peftkit bench`'s runner into
   DIR/<set>/ (a rerun skips finished variants);
3. writes DIR/matrix.md and DIR/matrix.json: every run's metric and health, and each PEFT
   strategy's gap to full fine-tuning on the same set.
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


def suite_for(name: str, spec: dict, config: dict, data_dir: Path, only: set[str]) -> dict:
    recipes = sorted((HERE / config[RECIPES_KEY[spec["task"]]]).glob("*.yaml"))
    overrides = {"data.name": str(data_dir / name), "data.data_dir": None, **config.get("common", {})}
    if spec["task"] == "sequence-classification":
        overrides.update(config.get("classification_overrides", {}))
    overrides.update(spec.get("overrides", {}))
    skip = set(spec.get("skip", []))
    variants = [{"name": r.stem, "base": str(r)} for r in recipes
                if (not only or r.stem in only) and r.stem not in skip]
    return {"name": name, "description": f"robustness matrix: {name}", "overrides": overrides,
            "variants": variants}


def run(config_path: Path, out: Path, sets: list[str] | None, only: set[str]) -> None:
    from peftkit.bench.runner import run_suite
    from peftkit.bench.suite import load_suite

    config = yaml.safe_load(config_path.read_text())
    data_dir = out / "data"
    stress_sets.build(data_dir, HERE.parents[1] / "shared" / "data")
    (out / "suites").mkdir(parents=True, exist_ok=True)
    for name, spec in config["sets"].items():
        if sets and name not in sets:
            continue
        path = out / "suites" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(suite_for(name, spec, config, data_dir.resolve(), only),
                                       sort_keys=False))
        print(f"== {name}", flush=True)
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
    (out / "matrix.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| set | recipe | metric | value | lr | health | gap to full (points) | train s |",
             "|---|---|---|--:|--:|---|--:|--:|"]
    for row in rows:
        value = f"{row['value']:.4f}" if isinstance(row["value"], float) else "—"
        gap = f"{row['gap_to_full_points']:+.2f}" if row["gap_to_full_points"] is not None else ""
        lr = f"{row['learning_rate']:g}" if isinstance(row["learning_rate"], float) else str(row["learning_rate"])
        secs = f"{row['train_seconds']:.0f}" if row["train_seconds"] else ""
        lines.append(f"| {row['set']} | {row['recipe']} | {row['metric']} | {value} | {lr} | "
                     f"{row['health']} | {gap} | {secs} |")
    (out / "matrix.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "robustness.yaml")
    parser.add_argument("--out", type=Path, default=Path("bench/robustness"))
    parser.add_argument("--sets", default="", help="comma-separated set names (default: all)")
    parser.add_argument("--only", default="", help="comma-separated recipe stems (default: all)")
    parser.add_argument("--matrix-only", action="store_true", help="rebuild matrix.md, run nothing")
    args = parser.parse_args()
    if args.matrix_only:
        write_matrix(args.out, yaml.safe_load(args.config.read_text()))
        return
    run(args.config, args.out, [s for s in args.sets.split(",") if s] or None,
        {s for s in args.only.split(",") if s})


if __name__ == "__main__":
    main()
