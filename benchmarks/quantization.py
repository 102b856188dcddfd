"""LoRA on CoNLL-2003 with the packaged MiniLM: fp32 base against 8-bit (and optionally 4-bit) base, on CPU.

    PEFTKIT_DATA_DIR=../shared/data python benchmarks/quantization.py            # fp32 vs 8bit
    PEFTKIT_DATA_DIR=../shared/data python benchmarks/quantization.py --modes none,8bit,4bit

Every run is recipes/conll2003/lora.yaml through peftkit's one pipeline (run_recipe) with the
same training slice; only model.quantization differs. Both train in fp32 (train.precision=fp32;
bitsandbytes' CPU int8 path runs in fp32 anyway), so the base's weights are the one difference.
Prints a Markdown table (test entity F1, model memory, speed) and writes it with the full
result.json of each run to --out/quantization.json. Figures: benchmarks/QUANTIZATION.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "conll2003" / "lora.yaml"


def overrides(args, mode: str) -> list[str]:
    return [f"model.quantization={mode}", "train.precision=fp32", f"train.epochs={args.epochs}",
            f"data.max_train_samples={args.train}", f"data.max_test_samples={args.test}",
            f"train.batch_size={args.batch_size}", f"train.learning_rate={args.lr}",
            "train.eval_every='no'", "train.logging_steps=20", "output.save_model=true",
            f"output.dir={Path(args.out) / mode}"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="none,8bit")
    ap.add_argument("--train", type=int, default=1600, help="training sentences (first N)")
    ap.add_argument("--test", type=int, default=1000, help="test sentences (first N; 3453 = all)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--out", default="bench/quantization")
    args = ap.parse_args()

    from peftkit.pipeline import run_recipe
    from peftkit.recipe import load_recipe

    rows, results = [], {}
    for mode in args.modes.split(","):
        recipe = load_recipe(RECIPE, overrides(args, mode))
        start, cpu_start = time.perf_counter(), time.process_time()
        result = run_recipe(recipe, overwrite=True)
        result["wall_seconds"] = time.perf_counter() - start
        result["cpu_seconds"] = time.process_time() - cpu_start  # all threads: robust to a busy machine
        results[mode] = result
        rows.append([mode, f"{100 * result['test']['f1']:.2f}", f"{result['model_memory_mb']:.1f}",
                     f"{result['trainable_params']:,}", f"{result['total_params']:,}",
                     f"{result['train_seconds']:.0f}", f"{result['train_tokens_per_second']:.0f}",
                     f"{result['wall_seconds']:.0f}", f"{result['cpu_seconds']:.0f}"])

    head = ["base", "test F1", "model MB", "trainable", "total params", "train s", "train tok/s",
            "wall s", "CPU s"]
    table = "\n".join("| " + " | ".join(r) + " |" for r in [head, ["---"] * len(head), *rows])
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_name(),
            "cores": os.cpu_count(), "load_average": os.getloadavg(), "args": vars(args),
            "recipe": str(RECIPE)}
    print(f"\n{meta['date']}  {meta['cpu']}, {meta['cores']} cores, load {meta['load_average']}")
    print(table)
    if "none" in results:
        for mode in results.keys() - {"none"}:
            gap = 100 * (results[mode]["test"]["f1"] - results["none"]["test"]["f1"])
            ratio = results[mode]["model_memory_mb"] / results["none"]["model_memory_mb"]
            print(f"{mode}: F1 {gap:+.2f} points vs fp32 base, model memory x{ratio:.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantization.json").write_text(json.dumps({**meta, "table": table, "runs": results},
                                                      indent=2, default=str))


if __name__ == "__main__":
    main()
