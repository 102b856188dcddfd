"""Task registry. A task knows its model head, how to encode examples, and its metrics."""

from __future__ import annotations

import importlib

TASK_MODULES = {
    "token-classification": "peftkit.tasks.token_classification",
    "sequence-classification": "peftkit.tasks.sequence_classification",
    "causal-lm": "peftkit.tasks.causal_lm",
}


def get_task(name: str):
    return importlib.import_module(TASK_MODULES[name]).TASK
