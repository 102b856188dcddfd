"""The layout rules of docs/architecture.md, checked on the source (no model is loaded).

- A strategy owns its facts: no module outside peftkit/strategies/ compares a strategy name to a
  string literal or keeps a table keyed by strategy names; it asks the Strategy object.
"""

from __future__ import annotations

import ast
from pathlib import Path

from peftkit.strategies.configs import STRATEGIES

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "peftkit"
NAMES = set(STRATEGIES)


def modules_outside_strategies() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "strategies" not in p.relative_to(PACKAGE).parts)


def literal_names(node: ast.AST) -> set[str]:
    """Strategy names written as a literal: "lora", or inside ("lora", "ia3") / [...] / {...}."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value} & NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(literal_names(e) for e in node.elts)) if node.elts else set()
    return set()


def name_uses(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                found += [(node.lineno, f"compares with {n!r}") for n in sorted(literal_names(side))]
        elif isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
            if len(keys & NAMES) >= 2:
                found.append((node.lineno, f"a table keyed by strategy names {sorted(keys & NAMES)}"))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("get", "pop"):
            # SOME_TABLE.get("lora"): a lookup by strategy name
            if node.args and literal_names(node.args[0]) and getattr(node.func.value, "id", "").isupper():
                found.append((node.lineno, f"looks up {sorted(literal_names(node.args[0]))}"))
    return found


def test_the_check_finds_name_tests():
    code = ('if recipe.strategy_name == "full": pass\nx = name in ("lora", "ia3")\n'
            'T = {"lora": 1, "ia3": 2}\ny = T.get("adalora")\n')
    assert sorted({line for line, _ in name_uses(ast.parse(code))}) == [1, 2, 3, 4]


def test_no_strategy_name_is_tested_outside_the_strategies():
    bad = [f"{path.relative_to(ROOT)}:{line}: {what}"
           for path in modules_outside_strategies()
           for line, what in name_uses(ast.parse(path.read_text(encoding="utf-8")))]
    assert not bad, "ask the Strategy object instead (peftkit/strategies/base.py):\n" + "\n".join(bad)
