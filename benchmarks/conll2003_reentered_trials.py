"""Re-enter the CoNLL-2003 tuned bench's finished trials into a new study storage.

The first study database of `peftkit bench benchmarks/conll2003.yaml --tune` (20 trials run on
2026-12-06, each 6-52 minutes on one core) was lost with the machine it lived on. Its trials'
validation F1 and learning rates were published as they finished (benchmarks/RESULTS.md, "CoNLL-2003
tuned"); this adds them to STORAGE with Optuna's `add_trial` so that the bench resumes after them
instead of spending those core-hours again. The learning rates are the published two significant
digits (the trials ran at the unrounded rate: 2.5e-4 stands for a rate within 2% of it); every
re-entered trial says so in its user attribute `note` (trials.csv's note column).

    PEFTKIT_DATA_DIR=../shared/data python benchmarks/conll2003_reentered_trials.py journal:PATH
    PEFTKIT_DATA_DIR=../shared/data peftkit bench benchmarks/conll2003.yaml --tune --storage journal:PATH ...

A group whose study already holds trials is left alone (running this twice adds nothing).
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna

from peftkit.bench import tune
from peftkit.bench.suite import load_suite

SUITE = Path(__file__).with_name("conll2003.yaml")
SOURCE = "RESULTS.md, CoNLL-2003 tuned progress table of 2026-12-06 (study database lost)"
# group -> (validation entity F1 on the first 1,000 validation sentences, learning rate), in the
# order the trials ran
TRIALS = {
    "full": [(0.8388, 1.4e-4), (0.6493, 3.3e-5), (0.8451, 2.5e-4)],
    "adapter-houlsby": [(0.3503, 1.9e-4), (0.3181, 1.2e-4), (0.7044, 8.9e-4)],
    "adapter-pfeiffer": [(0.3539, 1.9e-4), (0.6874, 1.2e-3), (0.7308, 1.6e-3)],
    "lora-r8": [(0.7831, 2.0e-3), (0.6981, 8.4e-4), (0.3791, 1.9e-4)],
    "dora-r8": [(0.4181, 2.2e-4), (0.5026, 3.0e-4), (0.7257, 9.6e-4)],
    "adalora": [(0.0037, 2.2e-4), (0.0898, 3.0e-4), (0.5447, 9.6e-4)],
    "prefix": [(0.7669, 8.3e-3), (0.6456, 1.0e-3)],
}


def main(storage_url: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    suite = load_suite(SUITE, tune=True)
    storage, label = tune.open_storage(optuna, storage_url, Path("."))
    for group, variants in tune.groups(suite).items():
        if group not in TRIALS:
            continue
        study = tune.open_study(optuna, storage, f"{suite.name}:{group}", suite.tune,
                                variants[0], shared=True)
        if study.trials:
            print(f"{group}: {len(study.trials)} trials there already, left alone")
            continue
        low, high = suite.tune.lr_range or variants[0].recipe.strategy_impl.lr_range
        dist = {"learning_rate": optuna.distributions.FloatDistribution(low, high, log=True)}
        for value, lr in TRIALS[group]:
            study.add_trial(optuna.trial.create_trial(
                params={"learning_rate": lr}, distributions=dist, value=value,
                user_attrs={"note": f"re-entered from {SOURCE}"}))
        print(f"{group}: {len(TRIALS[group])} trials re-entered into {label}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
