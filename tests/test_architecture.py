"""The layout rules of docs/architecture.md, checked on the source (no model is loaded).

- A strategy owns its facts: no module outside peftkit/strategies/ compares a strategy name to a
  string literal or keeps a table keyed by strategy names; it asks the Strategy object.
- No import circles: the graph of peftkit's import statements (module-level and function-local
  alike) has no cycle, and every module imports on its own in a fresh interpreter.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
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


# ---------------------------------------------------------------- import graph

def module_files() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def imported_names(module: str, path: Path, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if node.level:
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [prefix] + [f"{prefix}.{a.name}" for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """module -> the peftkit modules it imports (a `from pkg import name` counts pkg.name if that
    is a module, else pkg). The package root (peftkit/__init__) is left out: everything is in it."""
    mods = module_files()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in imported_names(name, path, node):
                    while target and target not in mods:
                        target = target.rpartition(".")[0]
                    if target and target not in (name, "peftkit"):
                        deps.add(target)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(root):
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


IMPORT_EACH = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for mod in [m for m in sys.modules if m == "peftkit" or m.startswith("peftkit.")]:
        del sys.modules[mod]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print("\\n".join(failed))
"""


def test_every_module_imports_on_its_own():
    """Each module first, in one fresh interpreter: peftkit's own modules are dropped from
    sys.modules before each import (torch and friends stay loaded: that keeps it fast)."""
    names = sorted(n for n in module_files() if n != "peftkit.__main__")
    proc = subprocess.run([sys.executable, "-c", IMPORT_EACH, *names], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "", proc.stdout


# ---------------------------------------------------------------- adding a strategy

VARIANT = '''
from peftkit.strategies.lora import LoraStrategy


class ScaledLora(LoraStrategy):
    name = "scaled-lora"
    plot_markers = {"scaled-lora": "h"}


STRATEGY = ScaledLora()
'''


def test_a_strategy_is_its_module_and_one_registry_line(tmp_path, monkeypatch):
    """docs/architecture.md#adding-a-strategy: a LoRA variant in its own module plus one line in
    STRATEGIES is validated, and says how it merges and is plotted, like the built-in ones."""
    from peftkit.bench.plot import method_markers
    from peftkit.recipe import build_recipe
    from peftkit.strategies.configs import LoraConfig

    (tmp_path / "scaled_lora_strategy.py").write_text(VARIANT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(STRATEGIES, "scaled-lora", (LoraConfig, "scaled_lora_strategy"))
    recipe = build_recipe({"task": "token-classification", "strategy": {"name": "scaled-lora", "r": 4}},
                          source=None, check_paths=False)
    strategy = recipe.strategy_impl
    assert strategy.name == "scaled-lora" and recipe.strategy.r == 4
    assert strategy.can_merge and "ties" in strategy.weighted_methods and strategy.peft_format
    assert method_markers()["scaled-lora"] == "h"
    assert strategy.method({"use_dora": False}) == "scaled-lora"
