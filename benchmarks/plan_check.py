"""`peftkit plan` against what runs measure: predicted and measured peak memory, and time per epoch.

    PEFTKIT_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python benchmarks/plan_check.py [--only NAME ...]

Each case is a shipped recipe made short (a few optimizer steps, a fixed learning rate, fewer test
examples, no evaluation during training); `peftkit run` prints its plan first and records it in
result.json (`plan`), so the prediction and the measurement come from the same process. Runs go
one at a time. Measured peak: result.json `peak_memory_mb` (the process's ru_maxrss on CPU).
Time per epoch measured: train_seconds / train_steps x the plan's steps per epoch (this machine is
shared with other jobs: times move with its load; memory does not).
Prints a Markdown table (benchmarks/RESULTS.md#plan-predicted-against-measured-memory) and writes
the records to runs/plan_check/results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SHORT = ["train.eval_every=no", "train.learning_rate=0.001"]
ENCODER = [*SHORT, "train.max_steps=10", "data.max_test_samples=128"]
DECODER = [*SHORT, "train.max_steps=4", "data.max_test_samples=32", "eval.max_new_tokens=8"]

CASES = {  # name: (recipe, overrides)
    "lora_ner": ("recipes/lora_ner.yaml", ENCODER),
    "lora_gen": ("recipes/lora_gen.yaml", DECODER),
    "full_ner": ("recipes/full_ner.yaml", ENCODER),
    "lora_ner_8bit": ("recipes/lora_ner.yaml", [*ENCODER, "model.quantization=8bit"]),
    "adapter_ner": ("recipes/adapter_ner.yaml", ENCODER),
    "prefix_gen": ("recipes/prefix_gen.yaml", DECODER),
    "ia3_ner": ("recipes/ia3_ner.yaml", ENCODER),
    "prompt_ner": ("recipes/prompt_ner.yaml", ENCODER),
    "adalora_ner": ("recipes/adalora_ner.yaml", ENCODER),
    "dora_ner": ("recipes/dora_ner.yaml", ENCODER),
    "prefix_ner": ("recipes/prefix_ner.yaml", ENCODER),
    "sst2_lora": ("recipes/sst2/lora.yaml", [*ENCODER, "data.max_train_samples=2000"]),
    "conll_adapter_8bit": ("recipes/conll2003/adapter_pfeiffer.yaml",
                           [*ENCODER, "model.quantization=8bit", "data.max_train_samples=2000"]),
    # variants the rule was not calibrated on (2026-12-05, night)
    "conll_adapter": ("recipes/conll2003/adapter_pfeiffer.yaml", [*ENCODER, "data.max_train_samples=2000"]),
    "lora_gen_checkpointing": ("recipes/lora_gen.yaml", [*DECODER, "train.gradient_checkpointing=true"]),
    "lora_gen_batch4": ("recipes/lora_gen.yaml", [*DECODER, "train.batch_size=4", "train.eval_batch_size=8"]),
    "sst2_full": ("recipes/sst2/full.yaml", [*ENCODER, "data.max_train_samples=2000"]),
    "lora_sentiment": ("recipes/lora_sentiment.yaml", ENCODER),
    # evaluation-bound: a training batch of 4 beside evaluation batches of 64 x 128 (2026-12-06)
    "conll_lora_batch4": ("recipes/conll2003/lora_all_linear.yaml",
                          [*ENCODER, "data.max_train_samples=2000", "train.batch_size=4"]),
    # variants chosen after the evaluation working-memory rule (2026-12-06, second session)
    "conll_lora_8bit_batch4": ("recipes/conll2003/lora.yaml", [*ENCODER, "model.quantization=8bit",
                               "data.max_train_samples=2000", "train.batch_size=4"]),
    "conll_full_batch4": ("recipes/conll2003/full.yaml",
                          [*ENCODER, "data.max_train_samples=2000", "train.batch_size=4"]),
}


def run_case(name: str, recipe: str, overrides: list[str], out: Path) -> dict:
    folder = out / name
    cmd = [sys.executable, "-m", "peftkit", "-q", "run", recipe, *overrides, "--out", str(folder),
           "--overwrite"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    result_file = folder / "result.json"
    if not result_file.is_file():
        return {"name": name, "error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
    r = json.loads(result_file.read_text())
    plan = r.get("plan") or {}
    per_step = r["train_seconds"] / max(1, r["train_steps"])
    return {"name": name, "recipe": recipe, "overrides": overrides, "strategy": r["strategy"],
            "model": r["model"], "quantization": r["quantization"], "precision": r["precision"],
            "predicted_mb": plan.get("peak_memory_mb"), "measured_mb": r["peak_memory_mb"],
            "peak_phase": plan.get("peak_phase"), "memory_mb": plan.get("memory_mb"),
            "predicted_s_epoch": plan.get("seconds_per_epoch"),
            "measured_s_epoch": per_step * plan.get("steps_per_epoch", 0),
            "trainable_params": r["trainable_params"], "plan_trainable": plan.get("trainable_params")}


def replan(row: dict) -> dict:
    """The current code's prediction for a measured case (`peftkit plan --json`, same overrides)."""
    cmd = [sys.executable, "-m", "peftkit", "plan", row["recipe"], *row["overrides"], "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    plan = json.loads(done.stdout[done.stdout.index("{"):])
    return {**row, "predicted_mb": plan["peak_memory_mb"], "peak_phase": plan["peak_phase"],
            "memory_mb": plan["memory_mb"], "predicted_s_epoch": plan["seconds_per_epoch"]}


def table(rows: list[dict]) -> str:
    lines = ["| case | strategy | model | quant. | predicted MB | measured MB | error | peak in "
             "| s/epoch predicted | s/epoch measured |", "|" + "---|" * 10]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error']} |" + " |" * 8)
            continue
        err = 100 * (r["predicted_mb"] - r["measured_mb"]) / r["measured_mb"]
        lines.append(f"| {r['name']} | {r['strategy']} | {Path(r['model']).name[:24]} | "
                     f"{r['quantization']} | {r['predicted_mb']:,.0f} | {r['measured_mb']:,.0f} | "
                     f"{err:+.0f}% | {r['peak_phase']} | {r['predicted_s_epoch']:,.0f} | "
                     f"{r['measured_s_epoch']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    parser.add_argument("--out", default="runs/plan_check")
    parser.add_argument("--replan", action="store_true", help="keep the measured runs in "
                        "OUT/results.json, predict them again with the current code")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replan:
        rows = [replan(r) if "error" not in r else r
                for r in json.loads((out / "results.json").read_text())
                if not args.only or r["name"] in args.only]
        print(table(rows))
        return
    rows = []
    for name, (recipe, overrides) in CASES.items():
        if args.only and name not in args.only:
            continue
        rows.append(run_case(name, recipe, overrides, out))
        print(json.dumps(rows[-1]), flush=True)
        (out / "results.json").write_text(json.dumps(rows, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
