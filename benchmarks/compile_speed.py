"""torch.compile against eager training, steady state and the compile's own cost (issue 19, part 3).

    PEFTKIT_DATA_DIR=../shared/data python benchmarks/compile_speed.py [--recipes lora_all_linear,full]

Each recipe of recipes/conll2003/ trains twice per setting (`train.torch_compile` false / true),
--short and --long optimizer steps from the same seed (the first --short steps see the same
batches): the steady rate is (tokens of the long run - tokens of the short run) / (its extra
seconds of `trainer.train()`), so the compilations of the first steps (one per new batch shape
until dynamic shapes take over) fall out of it; what they cost is the short runs' difference.
Each run compiles from scratch (its own TORCHINDUCTOR_CACHE_DIR), as a first run on a machine does.
Runs go one at a time, each in its own process: run it alone (two processes on two cores halve
each other). Also printed: the long run's final training loss, eager against compiled.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from strategy_speed import run_peftkit, speed_overrides  # this folder: the same timed runs

HERE = Path(__file__).resolve().parent
RECIPES = HERE.parent / "recipes" / "conll2003"


def run(recipe: str, steps: int, compiled: bool, a, out: Path) -> dict:
    overrides = [*speed_overrides(steps, a.train_samples, out),
                 f"train.torch_compile={str(compiled).lower()}"]
    # a cache of its own: inductor would otherwise reuse the short run's kernels in the long one
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(out / "inductor-cache")}
    r = run_peftkit(RECIPES / f"{recipe}.yaml", overrides, out, env)
    losses = [json.loads(line).get("loss") for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = r["train_seconds"]
    return {"seconds": seconds, "tokens": r["train_tokens_per_second"] * seconds,
            "loss": [x for x in losses if x is not None][-1]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default="lora_all_linear,full")
    p.add_argument("--short", type=int, default=30)
    p.add_argument("--long", type=int, default=90)
    p.add_argument("--train-samples", type=int, default=4000)
    a = p.parse_args(argv)
    print("| recipe | torch.compile | steady tokens/s | x eager | first steps (s) | final loss |")
    print("|---|---|--:|--:|--:|--:|")
    with tempfile.TemporaryDirectory(prefix="peftkit-compile-") as tmp:
        for recipe in a.recipes.split(","):
            eager_rate = None
            for compiled in (False, True):
                short, long = (run(recipe, n, compiled, a, Path(tmp) / f"{recipe}-{compiled}-{n}")
                               for n in (a.short, a.long))
                rate = (long["tokens"] - short["tokens"]) / (long["seconds"] - short["seconds"])
                eager_rate = eager_rate or rate
                print(f"| {recipe} | {'on' if compiled else 'off'} | {rate:,.0f} | "
                      f"{rate / eager_rate:.2f} | {short['seconds']:.0f} | {long['loss']:.4f} |",
                      flush=True)


if __name__ == "__main__":
    main()
