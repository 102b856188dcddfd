"""train.learning_rate: auto (peftkit/lr_search.py): a rate inside the strategy's range, the same for
the same seed, probes that never see the test split, a budget the search keeps, and the record."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_ner_recipe
from peftkit import lr_search
from peftkit.lr_search import Probe, Search, candidates, sweep, verdict


def test_candidates_are_log_spaced_and_span_the_range():
    lrs = candidates(1e-4, 5e-3)
    assert lrs[0] == 1e-4 and lrs[-1] == 5e-3 and len(lrs) == 5
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert max(ratios) / min(ratios) < 1.1


def test_verdict_rejects_rates_that_sacrifice_the_rare_classes():
    start = Probe(0.0, 0, loss=1.0, balanced_loss=1.0)
    assert verdict(Probe(1e-3, 9, loss=0.3, balanced_loss=1.5), start) == "rare classes lost"
    assert verdict(Probe(1e-4, 9, loss=0.9, balanced_loss=1.01), start) == "admissible"
    assert verdict(Probe(1e-5, 9, loss=1.0, balanced_loss=1.0), start) == "learned nothing"
    assert verdict(Probe(1e-1, 9), start) == "diverged"


def test_sweep_takes_the_best_admissible_rate_and_spends_at_most_its_budget():
    # a fake probe: plain loss falls with the rate, the balanced loss rises above 1e-3
    calls = []

    def probe(lr, steps):
        calls.append((lr, steps))
        if lr == 0:
            return Probe(0.0, 0, loss=1.0, balanced_loss=1.0)
        return Probe(lr, steps, loss=1.0 - lr * 100, balanced_loss=1.0 if lr <= 1e-3 else 2.0)

    search = Search("sweep", (1e-4, 1e-2), heldback=32, trained_on=1000, budget_passes=4000,
                    probe_batch_size=8)
    chosen = sweep(probe, candidates(1e-4, 1e-2), 4000, 8, 32, search)
    assert chosen == 1e-3
    trained = sum(steps * 8 for _, steps in calls)
    assert trained + len(calls) * 32 <= 4000
    assert [p.note for p in search.probes[1:]] == ["admissible"] * 3 + ["rare classes lost"] * 2


def test_a_rate_above_a_damaging_one_is_not_trusted():
    """Prompt tuning on SST-2 at 90/10 classes: every rate from 7.2e-3 lost the minority class, 0.1
    alone passed its probe (and its run collapsed); the search falls back to the lowest rate."""
    def probe(lr, steps):
        if lr == 0:
            return Probe(0.0, 0, loss=0.368, balanced_loss=1.19)
        worse = {0.003: (0.369, 1.21), 0.1: (0.365, 1.155)}.get(lr, (0.40, 1.6))
        return Probe(lr, steps, *worse)

    search = Search("sweep", (3e-3, 0.1), heldback=100, trained_on=900, budget_passes=1440,
                    probe_batch_size=8)
    assert sweep(probe, candidates(3e-3, 0.1), 1440, 8, 100, search) == 0.003
    assert search.probes[-1].note == "above a damaging rate"
    assert "no rate kept" in search.reason


def test_a_run_too_short_to_search_falls_back_and_says_so():
    with pytest.raises(lr_search.TooShort):
        sweep(lambda lr, steps: Probe(lr, steps, 1.0, 1.0), candidates(1e-4, 1e-2), 100, 8, 32,
              Search("sweep", (1e-4, 1e-2), 32, 100, 100, 8))


@pytest.fixture(scope="module")
def auto_runs(tiny_bert_dir, tmp_path_factory):
    """Two searches with one seed and one with another, on a tiny BERT."""
    from peftkit import pipeline
    from peftkit.recipe import build_recipe

    out = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        folder = tmp_path_factory.mktemp(f"auto-{name}")
        raw = tiny_ner_recipe(tiny_bert_dir, folder / "run", {"name": "lora", "r": 4},
                              epochs=4, learning_rate="auto", seed=seed)
        raw["data"]["max_train_samples"] = 400
        recipe = pipeline.absolute_paths(build_recipe(raw, source=None))
        parts = pipeline.build(recipe)
        out[name] = (lr_search.find_learning_rate(recipe, parts, parts.ctx.total_steps,
                                                  folder / "work", echo=lambda *a: None), parts)
    return out


def test_auto_returns_a_rate_inside_the_strategy_range_the_same_for_a_seed(auto_runs):
    (a, parts), (b, _), _ = auto_runs["a"], auto_runs["b"], auto_runs["c"]
    low, high = parts.strategy.lr_range
    assert low <= a.chosen <= high
    assert a.chosen == b.chosen
    assert [p.loss for p in a.probes] == [p.loss for p in b.probes]  # deterministic, not just close
    assert len(a.probes) >= 4 and a.probes[0].learning_rate == 0.0


def test_the_search_keeps_its_budget_and_never_trains_on_held_back_examples(auto_runs):
    search, parts = auto_runs["a"]
    assert search.used_passes <= search.budget_passes
    assert search.heldback + search.trained_on == len(parts.encoded["train"])  # train split only
    train, held = lr_search.held_back(parts.encoded["train"], 1, search.budget_passes)
    ids = {tuple(x) for x in train["input_ids"]}
    assert len(held) > 0 and not any(tuple(x) in ids for x in held["input_ids"])


def test_an_auto_run_records_its_search_and_trains_at_the_chosen_rate(tiny_bert_dir, tmp_path):
    from peftkit.pipeline import run_recipe
    from peftkit.recipe import build_recipe

    raw = tiny_ner_recipe(tiny_bert_dir, tmp_path / "run", {"name": "lora", "r": 4}, epochs=4,
                          learning_rate="auto")
    raw["data"]["max_train_samples"] = 400
    result = run_recipe(build_recipe(raw, source=None))
    search = result["lr_search"]
    assert result["learning_rate"] == search["chosen"]
    assert {"learning_rate", "steps", "loss", "balanced_loss", "note"} <= set(search["probes"][1])
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    peak = max(r["learning_rate"] for r in logged if "learning_rate" in r)
    assert peak == pytest.approx(search["chosen"], rel=0.05)  # the real run's schedule peaks there
    assert "learning_rate: auto" in (tmp_path / "run" / "recipe.yaml").read_text()
    assert json.loads((tmp_path / "run" / "lr_search.json").read_text())["chosen"] == search["chosen"]
    assert not (tmp_path / "run" / "lr_search.tmp").exists()


def test_a_fresh_run_in_a_started_folder_does_not_reuse_a_stale_choice(tmp_path):
    """lr_search.json is reused by --resume only; a run killed before its first checkpoint starts
    again with a new search (its recipe may have changed)."""
    from peftkit.rundir import LR_SEARCH, make_run_dir, prepare

    folder = tmp_path / "run"
    make_run_dir(folder)  # a folder a killed peftkit run left: marked as its own
    (folder / "recipe.yaml").write_text("task: token-classification\n")
    (folder / LR_SEARCH).write_text(json.dumps({"chosen": 0.5}))
    assert prepare(folder, overwrite=False, resume=False) == "new"
    assert not (folder / LR_SEARCH).exists()
