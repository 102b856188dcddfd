"""Strategy.size_caveat: a measured weakness of a method at a model size is said before training
(prompt tuning trails full fine-tuning by 4-15 points on MiniLM: benchmarks/RESULTS.md#robustness)."""

from __future__ import annotations

from peftkit.strategies import all_strategies, get_strategy


def test_prompt_tuning_says_it_trails_on_small_models_only():
    prompt = get_strategy("prompt")
    note = prompt.size_caveat(22_700_000)
    assert note and "23M parameters" in note and "strategy.name=lora" in note
    assert prompt.size_caveat(7_000_000_000) is None


def test_no_other_strategy_warns():
    others = [s for s in all_strategies() if s.name != "prompt"]
    assert others and all(s.size_caveat(22_700_000) is None for s in others)
