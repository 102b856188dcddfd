"""peftkit bench: suite expansion, resumable runs, failure records, reports, Pareto plot, compare.

One real bench (two tiny-BERT trainings and one variant whose data is broken) runs once per
module through the CLI; the other tests read its folder or use hand-made records."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import SHARED_DATA, tiny_ner_recipe

from peftkit import pipeline
from peftkit.bench import compare, plot, report
from peftkit.bench.runner import run_suite
from peftkit.bench.suite import DEFAULT_SUITE, SuiteError, load_suite, select
from peftkit.cli import main
from peftkit.strategies.configs import STRATEGIES

REPO = Path(__file__).resolve().parents[1]


def base_recipe(model_dir: Path) -> dict:
    recipe = tiny_ner_recipe(model_dir, Path("unused"))
    del recipe["output"]  # the bench decides where runs go
    return recipe


def write_suite(folder: Path, suite: dict, name: str = "suite.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


# ---------------------------------------------------------------- suites

def test_grid_times_seeds_expands_every_combination(tiny_bert_dir, tmp_path):
    path = write_suite(tmp_path, {
        "base": base_recipe(tiny_bert_dir),
        "overrides": {"train.epochs": 2, "strategy": {"dropout": 0.0}},
        "seeds": [1, 2],
        "grid": {"train.learning_rate": [1.0e-3, 2.0e-3]},
        "variants": ["full",
                     {"name": "lora-r{strategy.r}", "strategy": "lora", "grid": {"strategy.r": [2, 4]}},
                     {"name": "houlsby", "strategy": {"name": "adapter", "bottleneck_size": 4}}],
    })
    suite = load_suite(path)
    assert suite.name == "suite"
    assert len(suite.variants) == (1 + 2 + 1) * 2 * 2  # entries x learning rates x seeds
    names = [v.name for v in suite.variants]
    assert len(set(names)) == len(names)
    assert "lora-r4-lr0.002-seed2" in names and "full-lr0.001-seed1" in names
    by_name = {v.name: v for v in suite.variants}
    lora = by_name["lora-r4-lr0.002-seed2"].recipe
    assert (lora.strategy.r, lora.strategy.dropout, lora.train.learning_rate, lora.train.seed,
            lora.train.epochs) == (4, 0.0, 2e-3, 2, 2)
    assert by_name["lora-r4-lr0.002-seed2"].group == "lora-r4-lr0.002"
    # switching strategy starts it from its defaults: the base's LoRA settings do not leak in
    houlsby = by_name["houlsby-lr0.001-seed1"].recipe
    assert houlsby.strategy_name == "adapter" and houlsby.strategy.bottleneck_size == 4
    assert by_name["full-lr0.001-seed1"].recipe.strategy_name == "full"
    # a base given as a file resolves relative to the suite, wherever the command runs from
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "base.yaml").write_text(yaml.safe_dump(base_recipe(tiny_bert_dir)))
    own = {**base_recipe(tiny_bert_dir), "strategy": {"name": "ia3"}}
    own["train"]["learning_rate"] = 0.05
    (tmp_path / "recipes" / "ia3.yaml").write_text(yaml.safe_dump(own))
    by_file = load_suite(write_suite(tmp_path, {
        "name": "f", "base": "recipes/base.yaml", "overrides": {"train.epochs": 3},
        "variants": ["lora", {"name": "own", "base": "recipes/ia3.yaml"}]}, "f.yaml"))
    lora, ia3 = (v.recipe for v in by_file.variants)
    assert lora.strategy.r == 4
    # a variant's own base recipe brings its settings; the suite's overrides still apply
    assert (ia3.strategy_name, ia3.train.learning_rate, ia3.train.epochs) == ("ia3", 0.05, 3)


def test_only_keeps_the_named_variants_and_groups(tiny_bert_dir, tmp_path):
    """--only: a group name takes every seed of it, a variant name one run; unknown names are a
    one-line usage error that lists the suite's variants, and nothing runs."""
    path = write_suite(tmp_path, {"base": base_recipe(tiny_bert_dir), "seeds": [1, 2],
                                  "variants": ["full", "lora", "ia3"]})
    cut = select(load_suite(path), "ia3, full-seed2")
    assert [v.name for v in cut.variants] == ["full-seed2", "ia3-seed1", "ia3-seed2"]  # suite order
    listed = CliRunner().invoke(main, ["bench", str(path), "--only", "lora", "--dry-run"])
    assert listed.exit_code == 0 and "2 variants" in listed.output
    assert "lora-seed1" in listed.output and "ia3" not in listed.output
    wrong = CliRunner().invoke(main, ["bench", str(path), "--only", "lora,dora",
                                      "--out", str(tmp_path / "out")])
    assert wrong.exit_code == 2 and "no variant named dora" in wrong.output
    assert "full, lora, ia3" in wrong.output and "Traceback" not in wrong.output
    assert not (tmp_path / "out").exists()


def test_suite_problems_are_reported_together(tiny_bert_dir, tmp_path):
    path = write_suite(tmp_path, {
        "base": base_recipe(tiny_bert_dir),
        "seeds": "one",
        "variant": [],
        "variants": [{"name": "a", "strategy": {"name": "lora", "rank": 8}},
                     {"name": "a", "strategy": "adaptr"},
                     {"name": "b", "grid": {"strategy.r": 4}}],
    })
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    text = str(err.value)
    assert err.value.exit_code == 2 and "problems in the suite" in text
    for expected in ("variant: unknown key (did you mean 'variants'?)", "seeds:", "strategy.rank",
                     "did you mean 'adapter'?", "grid.strategy.r", "line "):
        assert expected in text
    result = CliRunner().invoke(main, ["bench", str(path)])
    assert result.exit_code == 2 and "strategy.rank" in result.output


def test_quick_suite_is_packaged_and_covers_every_strategy():
    assert DEFAULT_SUITE.is_file()
    suite = load_suite()
    assert suite.name == "quick"
    assert {v.recipe.strategy_name for v in suite.variants} == set(STRATEGIES)
    assert all(v.recipe.data.max_length <= 48 and v.recipe.train.epochs == 1 for v in suite.variants)


@pytest.mark.parametrize("name", ["conll2003", "sst2", "e2e", "adalora_short"])
def test_shipped_suites_validate_and_dry_run(name, monkeypatch):
    """--dry-run lists every variant, learning_rate: auto included (it used to crash on "auto")."""
    if not SHARED_DATA.is_dir():
        pytest.skip("shared benchmark data not present")
    monkeypatch.setenv("PEFTKIT_DATA_DIR", str(SHARED_DATA))
    suite = load_suite(REPO / "benchmarks" / f"{name}.yaml")
    assert suite.variants
    out = CliRunner().invoke(main, ["bench", str(REPO / "benchmarks" / f"{name}.yaml"), "--dry-run"])
    assert out.exit_code == 0, out.output
    assert all(v.name in out.output for v in suite.variants)
    assert ("lr=auto" in out.output) == any(v.recipe.train.learning_rate == "auto" for v in suite.variants)


# ---------------------------------------------------------------- a real bench

@pytest.fixture(scope="module")
def bench(tiny_bert_dir, tmp_path_factory):
    """full + lora on tiny BERT, and a variant whose training data lacks the tokens column."""
    tmp = tmp_path_factory.mktemp("bench")
    broken = tmp / "broken-data"
    broken.mkdir()
    (broken / "train.jsonl").write_text('{"text": "no tokens column here"}\n')
    path = write_suite(tmp, {"name": "tiny", "base": base_recipe(tiny_bert_dir), "variants": [
        {"name": "full", "strategy": "full", "train.learning_rate": 1.0e-3},
        {"name": "lora", "strategy": {"name": "lora", "r": 4}},
        {"name": "broken", "data": {"name": str(broken)}}]})
    out = tmp / "out"
    result = CliRunner().invoke(main, ["bench", str(path), "--out", str(out)])
    return load_suite(path), out, result


def test_failing_variant_is_recorded_and_the_others_finish(bench):
    suite, out, result = bench
    assert result.exit_code == 1, result.output  # exit 1: one run failed
    assert "[3/3] broken: FAILED" in result.output and "[1/3] full: running" in result.output
    records = {r["variant"]: r for r in json.loads((out / "results.json").read_text())}
    assert records["full"]["status"] == records["lora"]["status"] == "ok"
    assert records["broken"]["status"] == "failed"
    assert "tokens" in records["broken"]["error"]
    assert (out / "runs" / "broken" / "error.json").is_file()
    assert "broken" in (out / "results.md").read_text().split("Failed runs:")[1]
    for name in ("full", "lora"):
        assert (out / "runs" / name / "result.json").is_file()
        assert not (out / "runs" / name / "checkpoints").exists()  # weights are in model/adapter
    full, lora = records["full"], records["lora"]
    assert full["trainable_params"] == full["total_params"] > lora["trainable_params"] > 0
    assert lora["method"] == "lora" and lora["strategy_settings"]["r"] == 4
    for key in ("metric_value", "train_seconds", "tokens_per_second", "peak_memory_mb",
                "adapter_bytes", "versions", "seed", "quantization", "task", "model", "dataset"):
        assert lora[key] not in (None, {}), key


def test_output_files_agree(bench):
    suite, out, result = bench
    records = json.loads((out / "results.json").read_text())
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["variant"] for r in rows] == [r["variant"] for r in records]
    md = (out / "results.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    for rec, row in zip(records, rows):
        assert row["status"] == rec["status"]
        if rec["status"] != "ok":
            continue
        assert float(row["metric_value"]) == pytest.approx(rec["metric_value"])
        assert float(row[f"test_{rec['metric']}"]) == pytest.approx(rec["metric_value"])
        assert int(row["trainable_params"]) == rec["trainable_params"]
        assert json.loads(row["strategy_settings"]) == rec["strategy_settings"]
        line = next(line for line in table if f"| {rec['variant']} " in line)
        assert f"{rec['metric_value']:.4f}" in line
        assert line in result.output  # the terminal shows the same table
    ok = sorted((r for r in records if r["status"] == "ok"),
                key=lambda r: (-r["metric_value"], r["trainable_params"]))  # ties: fewer params first
    order = [next(i for i, line in enumerate(table) if f"| {r['variant']} " in line) for r in ok]
    assert order == sorted(order)  # sorted by the metric, best first


def test_rerun_skips_finished_variants_and_force_reruns(bench, monkeypatch):
    suite, out, _ = bench
    calls = []

    def counting(recipe, run_dir, **kwargs):
        calls.append(Path(run_dir).name)
        raise RuntimeError("still broken")

    monkeypatch.setattr(pipeline, "run_recipe", counting)
    before = {n: (out / "runs" / n / "result.json").stat().st_mtime_ns for n in ("full", "lora")}
    lines = []
    run_suite(suite, out, echo=lines.append)
    assert calls == ["broken"]  # only the unfinished variant runs again
    assert any("full: finished earlier, skipped" in line for line in lines)
    assert before == {n: (out / "runs" / n / "result.json").stat().st_mtime_ns for n in before}

    def interrupted(recipe, run_dir, **kwargs):
        calls.append(Path(run_dir).name)
        raise KeyboardInterrupt

    calls.clear()
    monkeypatch.setattr(pipeline, "run_recipe", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, out, force=True, echo=lines.append)
    assert calls == ["full"]  # --force reruns finished variants
    # Ctrl-C leaves the reports usable, still describing the finished runs
    records = json.loads((out / "results.json").read_text())
    assert {r["variant"] for r in records if r["status"] == "ok"} == {"full", "lora"}


def test_edited_variant_runs_again(bench, tmp_path, monkeypatch):
    suite, out, _ = bench
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    calls = []

    def interrupted(recipe, run_dir, **kwargs):
        calls.append(Path(run_dir).name)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_recipe", interrupted)
    edited = load_suite(suite.source, ["train.warmup=0.2"])  # every variant's settings change
    with pytest.raises(KeyboardInterrupt):
        run_suite(edited, copy, echo=lambda line: None)
    assert calls == ["full"]  # finished, but with other settings: not reused
    assert json.loads((copy / "results.json").read_text()) == []  # stale runs are not reported


def test_pareto_plot_is_a_png(bench):
    import matplotlib.image

    _, out, _ = bench
    png = out / "pareto.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(str(png))
    assert image.shape[0] > 500 and image.shape[1] > 800


def test_compare_shows_per_variant_differences(bench, tmp_path):
    _, out, _ = bench
    other = tmp_path / "other"
    other.mkdir()
    records = json.loads((out / "results.json").read_text())
    for rec in records:
        if rec["variant"] == "lora":
            rec["metric_value"] += 0.1
    records = [r for r in records if r["variant"] != "full"]
    records.append({**records[0], "variant": "extra", "group": "extra"})
    (other / "results.json").write_text(json.dumps(records))
    text = compare.compare_dirs(out, other)
    lora_line = next(line for line in text.splitlines() if line.startswith("| lora "))
    assert "+0.1000" in lora_line
    assert "only in A: full" in text and "only in B: extra" in text
    assert "B better on 1, worse on 0" in text
    result = CliRunner().invoke(main, ["bench", "--compare", str(out), str(other)])
    assert result.exit_code == 0 and "+0.1000" in result.output
    missing = CliRunner().invoke(main, ["bench", "--compare", str(out), str(tmp_path)])
    assert missing.exit_code == 2 and "no results.json" in missing.output


# ---------------------------------------------------------------- pure functions

def test_pareto_front_on_hand_made_points():
    points = [(100, 0.70), (1_000, 0.80), (1_000, 0.75), (10_000, 0.79), (50_000, 0.90),
              (50_000, 0.90), (200_000, 0.85), (20, 0.40)]
    assert plot.pareto_front(points) == [7, 0, 1, 4, 5]
    # lower-is-better metrics (loss) flip the comparison of y
    assert plot.pareto_front([(1, 3.0), (2, 2.0), (3, 2.5)], higher_is_better=False) == [0, 1]


def test_seeds_are_averaged_with_sample_std():
    def rec(variant, group, value, seed, params=10):
        return {"variant": variant, "group": group, "status": "ok", "metric": "f1",
                "metric_value": value, "seed": seed, "method": "lora", "strategy": "lora",
                "trainable_params": params, "error": None}

    rows = report.summarize([rec("a-seed1", "a", 0.5, 1), rec("a-seed2", "a", 0.7, 2),
                             rec("b", "b", 0.9, 1, params=20),
                             {**rec("c", "c", None, 1), "status": "failed", "error": "boom"}])
    assert [r["variant"] for r in rows] == ["b", "a", "c"]
    a = rows[1]
    assert (a["runs"], a["mean"], a["seeds"]) == (2, pytest.approx(0.6), [1, 2])
    assert a["std"] == pytest.approx(0.1414, abs=1e-4)
    # the table shows the 95% t interval: t(0.975, 1) = 12.706, x 0.1414 / sqrt(2) = 1.2706
    assert a["ci95"] == pytest.approx(12.7062 * 0.141421 / 2 ** 0.5, abs=1e-3)
    table = report.format_table(rows)
    assert "0.6000 ± 1.2706" in table and "c: boom" in table


def test_plot_with_many_close_points_writes_png(tmp_path):
    rows = [{"variant": f"v{i}", "method": m, "metric": "f1", "mean": 0.8 + i * 0.001,
             "std": 0.01 if i % 2 else None, "trainable_params": 10_000 + i * 50}
            for i, m in enumerate(["lora", "dora", "ia3", "prefix", "prompt", "new-method"])]
    plot.plot_pareto(rows, tmp_path / "p.png", title="close points")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
