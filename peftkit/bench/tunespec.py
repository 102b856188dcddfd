"""The `tune:` section of a suite: what `peftkit bench --tune` searches and how much.

    tune:
      trials: 12            # Optuna trials per variant (completed + pruned + failed count)
      seeds: 3              # the best setting then runs with seeds 1..3 (or a list: [1, 2, 3])
      size: false           # also search the strategy's size (Strategy.tune_size: LoRA r, ...)
      lr_range: null        # [low, high] for every variant (null: each strategy's lr_range)
      pruner: median        # median | halving | none: stop hopeless trials early
      reports: 4            # validation scores per trial, reported to the pruner
      startup_trials: 2     # trials never pruned (the pruner needs finished ones to compare)
      sampler_seed: 0       # TPE's seed: the same suite proposes the same trials

Checked like recipe keys (every problem at once, did-you-mean). Torch- and Optuna-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from peftkit.recipe import type_name, unknown_key

PRUNERS = ("median", "halving", "none")


@dataclass
class TuneSpec:
    trials: int = 12
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    size: bool = False
    lr_range: list[float] | None = None
    pruner: str = "median"
    reports: int = 4
    startup_trials: int = 2
    sampler_seed: int = 0

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


KEYS = [f.name for f in fields(TuneSpec)]


def check_tune(raw: Any, suite_seeds: list[int], problems: list[str]) -> TuneSpec:
    """The suite's `tune:` section (defaults where absent); its seeds default to the suite's."""
    spec = TuneSpec(seeds=list(suite_seeds) or [1, 2, 3])
    if raw is None:
        return spec
    if not isinstance(raw, dict):
        problems.append(f"tune: a mapping such as {{trials: 12, seeds: 3}}, not {type_name(raw)}")
        return spec
    problems += [f"tune.{unknown_key(str(k), KEYS)}" for k in raw if k not in KEYS]
    for key in ("trials", "reports", "startup_trials", "sampler_seed"):
        if key in raw:
            low = 0 if key in ("startup_trials", "sampler_seed") else 1
            setattr(spec, key, whole(raw[key], f"tune.{key}", low, problems, getattr(spec, key)))
    if "seeds" in raw:
        spec.seeds = seed_list(raw["seeds"], problems) or spec.seeds
    if "size" in raw:
        if isinstance(raw["size"], bool):
            spec.size = raw["size"]
        else:
            problems.append(f"tune.size: true or false, not {raw['size']!r}")
    if raw.get("pruner", spec.pruner) not in PRUNERS:
        problems.append(f"tune.pruner: one of {', '.join(PRUNERS)}; got {raw['pruner']!r}")
    else:
        spec.pruner = raw.get("pruner", spec.pruner)
    if raw.get("lr_range") is not None:
        spec.lr_range = lr_range(raw["lr_range"], problems)
    return spec


def whole(value: Any, where: str, low: int, problems: list[str], default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= low:
        return value
    problems.append(f"{where}: an integer of at least {low}, not {value!r}")
    return default


def seed_list(value: Any, problems: list[str]) -> list[int] | None:
    """`seeds: 3` means seeds 1, 2, 3; a list names them."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return list(range(1, value + 1))
    ok = isinstance(value, list) and value and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
    if ok and len(set(value)) == len(value):
        return list(value)
    problems.append(f"tune.seeds: a count (3 means seeds 1, 2, 3) or a list of distinct seeds; "
                    f"got {value!r}")
    return None


def lr_range(value: Any, problems: list[str]) -> list[float] | None:
    numbers = (isinstance(value, list) and len(value) == 2
               and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value))
    if numbers and 0 < value[0] < value[1] <= 1:
        return [float(value[0]), float(value[1])]
    problems.append(f"tune.lr_range: [low, high] with 0 < low < high <= 1, e.g. [1.0e-4, 1.0e-2]; "
                    f"got {value!r}")
    return None
