"""Collapse detection (peftkit.health): fires on collapsed predictions, stays silent on healthy ones,
and a collapsed run exits with code 3 after writing its folder, while a healthy one exits 0."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from peftkit import health
from peftkit.health import check, check_loss, class_stats, generation_stats, token_stats


def kinds(findings) -> list[str]:
    return [f.kind for f in findings]


def ner_metrics(gold, pred, f1):
    return {"test_f1": f1, **{f"test_{k}": v for k, v in token_stats(gold, pred).items()}}


GOLD = [["B-PER", "I-PER", "O", "O", "B-LOC"], ["O", "O", "B-MISC", "O", "O"]] * 20


def test_all_o_predictions_are_a_collapse():
    all_o = [["O"] * len(s) for s in GOLD]
    assert kinds(check(ner_metrics(GOLD, all_o, 0.0), "test")) == ["all-O"]


def test_predictions_with_entities_but_none_right_are_a_collapse():
    wrong = [["O", "O", "B-PER", "I-PER", "O"], ["B-LOC", "O", "O", "O", "O"]] * 20
    assert kinds(check(ner_metrics(GOLD, wrong, 0.0), "test")) == ["no-entity"]


def test_a_healthy_ner_model_is_not_flagged_even_when_it_misses_some_entities():
    partly = [["B-PER", "I-PER", "O", "O", "O"], ["O", "O", "B-MISC", "O", "O"]] * 20
    assert check(ner_metrics(GOLD, partly, 0.67), "test") == []
    # a sparse set (2% entity tokens) and a model that finds a third of them: not a collapse
    sparse_gold = [["O"] * 49 + ["B-MISC"]] * 30
    sparse_pred = [["O"] * 50] * 20 + [["O"] * 49 + ["B-MISC"]] * 10
    assert check(ner_metrics(sparse_gold, sparse_pred, 0.5), "test") == []


def test_no_entities_in_the_gold_labels_is_not_a_collapse():
    nothing = [["O"] * 5] * 10
    assert check(ner_metrics(nothing, nothing, 0.0), "test") == []


def cls_metrics(true, pred):
    acc = sum(t == p for t, p in zip(true, pred)) / len(true)
    return {"test_accuracy": acc, **{f"test_{k}": v for k, v in class_stats(true, pred).items()}}


def test_one_class_predictions_on_balanced_gold_are_a_collapse():
    true = [0, 1] * 100
    assert kinds(check(cls_metrics(true, [1] * 200), "test")) == ["one-class"]


def test_accuracy_at_the_majority_baseline_is_chance():
    true = [0, 1] * 100
    coin = [0, 0, 1, 1] * 50  # half right: what guessing gets
    assert kinds(check(cls_metrics(true, coin), "test")) == ["chance"]


def test_a_healthy_classifier_is_not_flagged():
    true = [0, 1] * 100
    good = [0, 1] * 80 + [1, 0] * 20  # 80% right
    assert check(cls_metrics(true, good), "test") == []
    # imbalanced gold (90/10) and a model that mostly says the majority but beats the baseline
    true = [0] * 180 + [1] * 20
    pred = [0] * 180 + [1] * 15 + [0] * 5
    assert check(cls_metrics(true, pred), "test") == []


def test_chance_on_two_classes_is_judged_by_matthews_correlation():
    """Under class weights a model trades accuracy on an imbalanced split for the minority class:
    below always answering the majority, yet far from chance (the sst2-imbalanced trials of
    2026-12-06: accuracy 0.893 on a 90/10 split, MCC 0.35). Guessing has MCC 0 however the classes
    are balanced."""
    from sklearn.metrics import matthews_corrcoef

    def with_mcc(true, pred):
        return {**cls_metrics(true, pred), "test_mcc": matthews_corrcoef(true, pred)}

    true = [0] * 270 + [1] * 30
    weighted = [0] * 250 + [1] * 20 + [1] * 12 + [0] * 18  # 12 of 30 minority found, 20 false alarms
    m = with_mcc(true, weighted)
    assert m["test_accuracy"] < 0.9 and m["test_mcc"] > 0.3
    assert check(m, "test") == []
    assert kinds(check(cls_metrics(true, weighted), "test")) == ["chance"]  # accuracy alone: flagged
    always_majority = [0] * 300  # 90% accuracy, MCC 0
    assert kinds(check(with_mcc(true, always_majority), "test")) == ["chance"]
    assert kinds(check(with_mcc([0, 1] * 100, [0, 0, 1, 1] * 50), "test")) == ["chance"]


def test_generation_collapse_empty_and_repeated_outputs():
    assert kinds(check({f"test_{k}": v for k, v in generation_stats(["", "", "", "x", ""]).items()},
                       "test")) == ["empty-output"]
    same = generation_stats(["The Eagle is a pub."] * 8 + ["A", "B"])
    assert kinds(check({f"test_{k}": v for k, v in same.items()}, "test")) == ["same-output"]
    varied = generation_stats([f"The place number {i} is a pub." for i in range(10)])
    assert check({f"test_{k}": v for k, v in varied.items()}, "test") == []


def test_flat_and_falling_losses():
    assert kinds(check_loss([0.69, 0.70, 0.69, 0.70, 0.69, 0.70, 0.69, 0.69])) == ["flat-loss"]
    assert check_loss([2.3, 1.2, 0.8, 0.5, 0.4, 0.35, 0.3, 0.3]) == []
    assert check_loss([0.7, 0.7]) == []  # too few points to judge


def test_split_metrics_keeps_statistics_out_of_the_scores():
    metrics = ner_metrics(GOLD, [["O"] * 5] * 40, 0.0)
    scores, record = health.split_metrics(metrics, "test")
    assert not any("health" in k for k in scores) and scores["test_f1"] == 0.0
    assert record["status"] == "collapsed" and record["findings"][0]["kind"] == "all-O"
    assert record["checked"]["health_pred_entity_share"] == 0.0


# ---------------------------------------------------------------- the run's exit code

@pytest.mark.parametrize("lr, epochs, healthy", [(0.5, 1, False), (3e-3, 4, True)])
def test_a_collapsed_run_exits_3_with_the_warning_and_a_healthy_one_exits_0(
        lr, epochs, healthy, tiny_bert_dir, tmp_path):
    """A tiny BERT, fully fine-tuned on 256 demo sentences: at 3e-3 it finds entities (F1 ~0.45),
    at 0.5 it predicts only O. The run folder is complete either way."""
    from conftest import tiny_ner_recipe
    from peftkit.cli import main

    raw = tiny_ner_recipe(tiny_bert_dir, tmp_path / "run", {"name": "full"}, epochs=epochs,
                          learning_rate=lr)
    raw["data"].update(max_train_samples=256, max_test_samples=64)
    del raw["eval"]  # fail_on_collapse: true, the default
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = CliRunner().invoke(main, ["run", str(recipe)])
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    evaluations = result["health"]["evaluations"]   # the checks at every epoch's evaluation
    assert [e["epoch"] for e in evaluations] == pytest.approx(list(range(1, epochs + 1)))
    if healthy:
        assert out.exit_code == 0, out.output
        assert result["health"]["status"] == "ok" and "WARNING" not in out.output
        assert evaluations[-1]["status"] == "ok"
    else:
        assert out.exit_code == health.COLLAPSE_EXIT_CODE, out.output
        assert result["health"]["status"] == "collapsed"
        assert "learned nothing useful" in out.output and "train.learning_rate=" in out.output
        assert "all-O" in evaluations[0]["kinds"]
        assert "health at step 16 (validation): the model tags 0.0% of tokens" in out.output


def test_the_watch_speaks_only_when_the_state_changes(capsys):
    """health_watch.HealthWatch: one line ok -> collapsed, none while it stays so, one line back."""
    from types import SimpleNamespace

    from peftkit.health_watch import HealthWatch

    all_o = [["O"] * len(s) for s in GOLD]
    bad = {f"eval_{k}": v for k, v in token_stats(GOLD, all_o).items()} | {"eval_f1": 0.0}
    good = {f"eval_{k}": v for k, v in token_stats(GOLD, GOLD).items()} | {"eval_f1": 1.0}
    watch = HealthWatch()
    for step, metrics in enumerate([good, bad, bad, good], start=1):
        state = SimpleNamespace(global_step=step, epoch=step, is_world_process_zero=True,
                                log_history=[{"loss": 1.0 / step}])
        watch.on_evaluate(None, state, None, metrics=metrics)
    assert [e["status"] for e in watch.evaluations] == ["ok", "collapsed", "collapsed", "ok"]
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["health at step 2 (validation): the model tags 0.0% of tokens as entities "
                     "where the gold labels have 40.0%: it predicts (almost) only O (checked again "
                     "on test at the end)", "health at step 4 (validation): ok again"]


# ---------------------------------------------------------------- the head starts at the prior

@pytest.mark.parametrize("head_init", ["prior", "zero"])
def test_a_new_head_starts_at_the_training_labels_prior(head_init, tiny_bert_dir, tmp_path):
    """model.head_init: prior sets the classifier bias so that softmax(bias) is each label's share
    of the training tokens (add-one smoothed), counted here by hand; `zero` keeps transformers'."""
    import collections

    import torch
    from conftest import tiny_ner_recipe
    from peftkit.pipeline import build
    from peftkit.recipe import build_recipe

    raw = tiny_ner_recipe(tiny_bert_dir, tmp_path / "run")
    raw["model"]["head_init"] = head_init
    parts = build(build_recipe(raw))
    counts = collections.Counter(t for row in parts.encoded["train"]["labels"] for t in row if t >= 0)
    shares = torch.tensor([counts[i] + 1.0 for i in range(len(parts.labels))])
    shares /= shares.sum()
    model, _ = parts.fresh_model()
    heads = [m for n, m in model.named_modules()
             if n.endswith("classifier") or n.endswith("classifier.modules_to_save.default")]
    trained = [m for m in heads if m.bias.requires_grad]
    assert trained, "the LoRA run trains a copy of the head"
    for head in heads:
        if head_init == "prior":
            torch.testing.assert_close(head.bias.softmax(-1), shares)
        else:
            assert torch.count_nonzero(head.bias) == 0
