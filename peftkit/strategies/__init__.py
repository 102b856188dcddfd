"""Strategy registry. `get_strategy(name)` imports the implementation on first use."""

from __future__ import annotations

import importlib

from peftkit.strategies.configs import STRATEGIES


def get_strategy(name: str):
    """The Strategy object for `name` (a key of STRATEGIES)."""
    _, module = STRATEGIES[name]
    return importlib.import_module(module).STRATEGY


def all_strategies() -> list:
    """Every Strategy object, in registry order (imports every implementation)."""
    return [get_strategy(name) for name in STRATEGIES]
