"""benchmarks/robustness.py's matrix: the untuned runs with their gap to full fine-tuning, and with
--tune how far each shipped setting lands from the tuned best (hand-made results, no training)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "robustness.py"


@pytest.fixture(scope="module")
def robustness():
    spec = importlib.util.spec_from_file_location("robustness", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # benchmarks/ is not a package: loaded from its file
    return module


def record(variant, value, lr, group=None, **extra):
    return {"variant": variant, "group": group or variant, "strategy": variant.split("-")[0],
            "status": "ok", "health": "ok", "metric": "f1", "metric_value": value,
            "learning_rate": lr, "train_seconds": 10.0, **extra}


def write(folder: Path, records: list[dict]) -> None:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(records))


def test_tuned_table_says_how_far_the_shipped_setting_is(robustness, tmp_path):
    write(tmp_path / "conll-1k", [record("full", 0.80, 3e-4), record("lora", 0.70, "auto")])
    tuned = {"group_ci95": 0.02, "group_runs": 3}
    write(tmp_path / "conll-1k-tuned", [
        record(f"full-seed{s}", v, 2e-4, group="full", group_mean=0.81, **tuned,
               tuning={"trials": 4}) for s, v in ((1, 0.80), (2, 0.81), (3, 0.82))] + [
        record(f"lora-seed{s}", 0.78, 5e-3, group="lora", group_mean=0.78, **tuned)
        for s in (1, 2, 3)])
    config = {"sets": {"conll-1k": {}, "sst2-500": {}}}  # sst2-500 not run: left out

    robustness.write_matrix(tmp_path, config)

    matrix = json.loads((tmp_path / "matrix.json").read_text())
    assert [r["gap_to_full_points"] for r in matrix["runs"]] == [None, pytest.approx(-10.0)]
    full, lora = matrix["tuned"]
    # 0.80 is 1 point below the tuned mean 0.81 and inside its interval (0.02): as good as tuning
    assert (full["points"], full["verdict"], full["trials"]) == (pytest.approx(-1.0),
                                                                 "within the tuned interval", 4)
    assert (lora["points"], lora["verdict"]) == (pytest.approx(-8.0), "below tuned")
    text = (tmp_path / "matrix.md").read_text()
    assert "| conll-1k | lora | 0.7000 | auto | 0.7800 ± 0.0200 (3) | 0.005 | -8.00 | below tuned |" in text


def test_a_recipe_tuned_but_never_run_shipped_is_marked(robustness, tmp_path):
    write(tmp_path / "conll-1k", [record("full", 0.80, 3e-4)])
    write(tmp_path / "conll-1k-tuned", [record("ia3-seed1", 0.6, 1e-2, group="ia3", group_mean=0.6,
                                               group_ci95=None, group_runs=1)])
    robustness.write_matrix(tmp_path, {"sets": {"conll-1k": {}}})
    (row,) = json.loads((tmp_path / "matrix.json").read_text())["tuned"]
    assert (row["points"], row["verdict"]) == (None, "not run")
