"""Property tests: whatever YAML structure or override a user throws at the recipe loader, the only
error that comes out is RecipeError, and `peftkit validate` never prints a traceback."""

from __future__ import annotations

import dataclasses

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from peftkit.cli import main
from peftkit.errors import RecipeError
from peftkit.recipe import SECTIONS, TOP_KEYS, Recipe, build_recipe, load_recipe
from peftkit.strategies.configs import STRATEGIES

FIELDS = sorted({f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
                | {f.name for cls, _ in STRATEGIES.values() for f in dataclasses.fields(cls)})
NAMES = [*TOP_KEYS, *FIELDS, *STRATEGIES, "lora", "minilm-l6", "demo-ner"]

# Text that stresses paths and messages: NUL bytes, very long names, unicode, YAML syntax.
text = st.one_of(st.sampled_from(NAMES), st.text(max_size=12),
                 st.sampled_from(["\x00", "a" * 300, "../" * 5, "~", "/", "{", "\u2028", "1e400",
                                  "!!python/name:os.system", "-1", ".nan", "[1, 2", "*a", "&a x"]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), text)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(text, st.integers()), inner, max_size=4)),
    max_leaves=12)


def section(cls) -> st.SearchStrategy:
    """Mostly the section's own keys (so values reach the type, range and path checks)."""
    own = sorted(f.name for f in dataclasses.fields(cls))
    return st.dictionaries(st.one_of(st.sampled_from(own), st.sampled_from(own), text), values,
                           max_size=5)


sections = {name: section(cls) for name, cls in SECTIONS.items()}
sections["strategy"] = st.one_of(*(section(cls).map(lambda d, n=n: {"name": n, **d})
                                   for n, (cls, _) in STRATEGIES.items()), values)
recipes = st.one_of(
    st.fixed_dictionaries({}, optional={k: st.one_of(v, values) for k, v in sections.items()}
                          | {"task": values}),
    st.dictionaries(st.one_of(st.sampled_from(TOP_KEYS), text, st.integers(), st.none()), values,
                    max_size=6))
dotted = st.lists(st.one_of(st.sampled_from(NAMES), text), min_size=0, max_size=4).map(".".join)
overrides = st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", dotted, st.one_of(text, scalars.map(str))),
    text), max_size=4)

# ~330 examples in all: enough to reach every section, type and path check, and a few seconds.
FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
FILES = settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))


@FAST
@given(raw=recipes, over=overrides)
@example(raw={"model": {"name": "a" * 300}}, over=[])           # ENAMETOOLONG from stat()
@example(raw={"data": {"name": "x\x00"}}, over=[])              # NUL byte in a path
@example(raw={"train": {"learning_rate": float("nan")}}, over=["train.epochs=.inf"])
@example(raw={}, over=["train.seed=!!timestamp 2020-99-99"])   # YAML constructor ValueError
def test_build_recipe_raises_only_recipe_error(raw, over):
    try:
        recipe = build_recipe(raw, over)
    except RecipeError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        assert len(str(exc)) < 20_000  # one screen-ish, even for huge values
    else:
        assert isinstance(recipe, Recipe)


@FILES
@given(raw=recipes, over=overrides)
def test_load_recipe_from_file_raises_only_recipe_error(tmp_path_factory, raw, over):
    path = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    try:
        load_recipe(path, over)
    except RecipeError:
        pass


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.one_of(st.text(max_size=200), recipes.map(yaml.safe_dump),
                      recipes.map(lambda r: yaml.safe_dump(r) + "\n{[")),
       over=overrides)
@example(text="a: !!timestamp 2020-99-99\n", over=[])
@example(text="[" * 3000, over=[])                               # RecursionError in the parser
@example(text="a: &a [x, x]\nb: &b [*a, *a, *a]\nc: &c [*b, *b, *b]\ntrain: {seed: [*c, *c]}\n",
         over=[])
def test_validate_cli_never_prints_a_traceback(tmp_path_factory, text, over):
    path = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    args = ["validate", str(path)] + [x for o in over for x in ("-o", o)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def test_yaml_that_builds_python_objects_is_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("task: !!python/object/apply:os.system ['echo pwned']\n")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and "invalid YAML" in result.output
