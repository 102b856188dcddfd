"""Training speed of every strategy against full fine-tuning on the same data (issue 19, part 2).

    PEFTKIT_DATA_DIR=../shared/data python benchmarks/strategy_speed.py [--steps 40] [--repeats 2]
    PEFTKIT_DATA_DIR=../shared/data python benchmarks/strategy_speed.py --task sst2 --recipes lora,full \
        --packing both          # packed against padded training batches, same runs otherwise

Each recipe of recipes/conll2003/ (--task: another recipe folder) trains --steps optimizer steps
on the first --train-samples training examples, every strategy from the same data with the same batch, precision and seed,
each run in its own process, one at a time (run it alone: two processes on two cores halve each
other). The learning rate is fixed (the recipe's fallback, not `auto`: the search is not part of
training speed). tokens/s counts real tokens over the wall time of `trainer.train()`
(result.json), so start-up, evaluation and saving are outside it. Printed: the median over
repeats, the ratio to full fine-tuning's median, peak RSS, and MFU: the model's Linear-layer
FLOPs per token (6N where every weight trains, 4N where the base is frozen: no weight gradients;
benchmarks/throughput.py's count without its attention term, about 1% at CoNLL's lengths; an
adapter's own small matmuls and prefix / prompt tuning's virtual tokens not counted) times
tokens/s, over the 2048² matmul rate measured in this process at the runs' thread count and
precision before the runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from throughput import flops_per_token, matmul_peak, model_shape  # this folder

HERE = Path(__file__).resolve().parent
RECIPES = HERE.parent / "recipes"
BASELINE = "full"


def speed_overrides(steps: int, train_samples: int, out: Path, seed: int = 42) -> list[str]:
    """A run timed for training speed: a fixed step count on a fixed slice, a fixed learning rate
    (no `auto` search), no evaluation during training, a small test split."""
    return [f"train.max_steps={steps}", f"data.max_train_samples={train_samples}",
            "data.max_test_samples=64", "train.eval_every=no", "train.learning_rate=1e-3",
            "train.min_steps=null", f"output.dir={out}", f"train.seed={seed}"]


def run_peftkit(recipe: Path, overrides: list[str], out: Path, env=None) -> dict:
    """`peftkit -q run` in its own process; its result.json."""
    cmd = [sys.executable, "-m", "peftkit", "-q", "run", str(recipe), *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode not in (0, 3):  # 3: learned nothing useful in a few steps, speed still valid
        raise SystemExit(f"{recipe.stem}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return json.loads((out / "result.json").read_text())


def run_one(recipe: Path, a, out: Path, packing: str = "") -> dict:
    overrides = speed_overrides(a.steps, a.train_samples, out, a.seed)
    if a.precision:
        overrides.append(f"train.precision={a.precision}")
    if packing:
        overrides.append(f"train.packing={packing}")
    r = run_peftkit(recipe, overrides, out)
    return {"tokens_per_s": r["train_tokens_per_second"], "peak_mb": r["peak_memory_mb"],
            "trainable": r["trainable_params"], "precision": r["precision"],
            "threads": r["threads"], "frozen_base": r["trainable_params"] < r["total_params"]}


def model_flops(recipe: Path) -> dict:
    """Linear-layer FLOPs per token: {frozen base: 4N, every weight trains: 6N}."""
    import yaml

    raw = yaml.safe_load(recipe.read_text())
    shape = model_shape(raw["model"]["name"], "causal" if raw["task"] == "causal-lm" else "ner")
    return {True: flops_per_token(shape, 0, "frozen"), False: flops_per_token(shape, 0, "full")}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default="", help="comma-separated stems (default: all)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--train-samples", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--precision", default="", help="override train.precision (fp32, bf16, ...)")
    p.add_argument("--threads", type=int, default=2, help="the runs' threads, for the MFU's peak")
    p.add_argument("--task", default="conll2003", help="recipe folder under recipes/")
    p.add_argument("--packing", choices=["recipe", "both"], default="recipe",
                   help="both: every recipe with train.packing true and false, rows side by side")
    a = p.parse_args(argv)
    folder = RECIPES / a.task
    stems = a.recipes.split(",") if a.recipes else sorted(x.stem for x in folder.glob("*.yaml"))
    stems = [BASELINE] + [x for x in stems if x != BASELINE]  # first: the ratios divide by it
    packings = ["true", "false"] if a.packing == "both" else [""]
    precision, threads = a.precision or "float32", a.threads
    torch.set_num_threads(threads)
    peak = matmul_peak("bfloat16" if precision == "bf16" else "float32")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):  # rounds over all recipes: drifting machine load hits every row
            for stem in stems:
                for packing in packings:
                    name = f"{stem}{' packing=' + packing if packing else ''}"
                    r = run_one(folder / f"{stem}.yaml", a, Path(tmp) / f"{stem}-{packing}-{i}", packing)
                    rows.setdefault(name, []).append(r)
                    print(f"  {name:26s} round {i + 1}: {r['tokens_per_s']:7.0f} tokens/s  "
                          f"{r['peak_mb']:6.0f} MB", file=sys.stderr, flush=True)
    base = statistics.median(r["tokens_per_s"] for r in rows[next(iter(rows))])  # full's first row
    flops = model_flops(folder / f"{stems[0]}.yaml")
    print(f"matmul peak: {peak:.0f} GFLOP/s ({precision}, {threads} threads, measured before the runs)")
    print("| recipe | precision | trainable | tokens/s: median (runs) | × full | MFU | peak RSS |")
    print("|---|---|--:|---|--:|--:|--:|")
    for stem, runs in rows.items():
        med = statistics.median(r["tokens_per_s"] for r in runs)
        each = ", ".join(f"{r['tokens_per_s']:.0f}" for r in runs)
        mfu = med * flops[runs[0]["frozen_base"]] / (peak * 1e9)
        print(f"| {stem} | {runs[0]['precision']} | {runs[0]['trainable']:,} | {med:,.0f} ({each}) | "
              f"{med / base:.2f} | {mfu:.0%} | {max(r['peak_mb'] for r in runs):,.0f} MB |")
    if a.packing == "both":
        for stem in stems:
            packed, padded = (statistics.median(r["tokens_per_s"] for r in rows[f"{stem} packing={p}"])
                              for p in ("true", "false"))
            print(f"{stem}: packed batches {packed / padded:.2f}x the padded batches' tokens/s")


if __name__ == "__main__":
    main()
