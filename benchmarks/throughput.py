"""Training throughput: peftkit against the plain Trainer + peft script, side by side.

    PEFTKIT_DATA_DIR=../shared/data python benchmarks/throughput.py
    python benchmarks/throughput.py --cases ner-lora --repeats 3 --markdown out.md

Each case trains the same model on the same data slice with the same strategy, hyper-parameters
and number of steps twice over: (A) peftkit's run_recipe with its defaults (precision auto, each
random batch packed into shared rows) and (B) benchmarks/baseline_trainer.py, the script a user
writes without peftkit (default TrainingArguments: fp32, random batches, dynamic padding).
Defaults: LoRA on all 14,041 CoNLL-2003 training sentences, full fine-tuning on the first 3,000,
causal LM on the first 128 E2E references; 1 epoch; test F1 on the full test set. Every run is
its own process (peak memory = its max RSS, fresh thread pools), in the order A B B A A B ... so drifting
machine load hits both sides alike; the table shows medians. Repeat i trains with seed 42 + i on
both sides, so the test metric is a mean over seeds rather than one draw of data order and dropout.

tokens/s counts real tokens only (attention_mask), over the wall time of trainer.train().
MFU = model FLOPs/s / measured matmul peak of the precision the side trains in, with model FLOPs
per real token = 6N + 12·layers·d·L (full) or 4N + 8·layers·d·L (frozen base + LoRA: no weight
gradients), N = weights of the Linear layers, L = mean attention context (PaLM paper, App. B).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"

# Hyper-parameters shared by both sides (recipes/conll2003/*.yaml, benchmarks/e2e.yaml); only
# precision and batching differ. LoRA: r 8, alpha 16, dropout 0.1 on peft's default targets.
CASES = {
    "ner-lora": {"task": "ner", "model": "minilm-l6", "strategy": "lora", "lr": 2e-3},
    "ner-full": {"task": "ner", "model": "minilm-l6", "strategy": "full", "lr": 1e-4},
    "causal-lora": {"task": "causal", "model": "smollm2-135m", "strategy": "lora", "lr": 2e-3},
}
TASKS = {  # per task: data folder, batch size, what the final metric is
    "ner": {"data": "conll2003", "batch_size": 32, "eval_batch_size": 64, "metric": "f1"},
    "causal": {"data": "e2e_nlg", "batch_size": 8, "eval_batch_size": 8, "metric": "loss"},
}
SHARED = {"warmup": 0.06, "max_length": 128}
LORA = {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.1}


# ---------------------------------------------------------------- workers (one process per run)

def peftkit_worker(case: dict, a) -> dict:
    """peftkit with its defaults (precision auto, packed batches) and the shared settings."""
    from peftkit.pipeline import run_recipe
    from peftkit.recipe import build_recipe

    task = TASKS[case["task"]]
    data = {"name": task["data"], "max_length": SHARED["max_length"],
            "max_train_samples": a.train_samples, "max_eval_samples": 8,
            "max_test_samples": a.test_samples}
    spec = {"task": "token-classification", "eval": {}}
    if case["task"] == "causal":  # the metric is the test loss: generate 1 token, not 64
        data.update(prompt_column="mr", target_column="ref")
        spec = {"task": "causal-lm", "eval": {"max_new_tokens": 1}}
    with tempfile.TemporaryDirectory() as out:
        recipe = build_recipe({
            **spec, "model": {"name": case["model"]}, "data": data,
            "strategy": LORA if case["strategy"] == "lora" else {"name": "full"},
            "train": {"epochs": a.epochs, "batch_size": task["batch_size"], "learning_rate": case["lr"],
                      "eval_batch_size": task["eval_batch_size"],  # the baseline's: peak memory compares
                      "warmup": SHARED["warmup"], "seed": a.seed, "eval_every": "no"},
            "output": {"dir": out}})
        r = run_recipe(recipe, overwrite=True)
    return {"side": "peftkit", "precision": r["precision"], "train_seconds": r["train_seconds"],
            "train_steps": r["train_steps"],
            "real_tokens": round(r["train_tokens_per_second"] * r["train_seconds"]),
            "tokens_per_second": r["train_tokens_per_second"],
            "padding_fraction": r["train_padding_fraction"], "peak_memory_mb": r["peak_memory_mb"],
            "metric": task["metric"], "metric_value": r["test"][task["metric"]]}


def baseline_worker(case: dict, a) -> dict:
    sys.path.insert(0, str(HERE))
    import baseline_trainer

    from peftkit.models_registry import resolve_model  # only to find the packaged model's files

    task, source = TASKS[case["task"]], resolve_model(case["model"])
    argv = ["--task", case["task"], "--model", source.path, "--data", str(Path(a.data_dir) / task["data"]),
            "--strategy", case["strategy"], "--epochs", str(a.epochs),
            "--batch-size", str(task["batch_size"]), "--lr", str(case["lr"]),
            "--warmup", str(SHARED["warmup"]), "--max-length", str(SHARED["max_length"]),
            "--seed", str(a.seed)]
    if a.train_samples:
        argv += ["--train-samples", str(a.train_samples)]
    if a.test_samples:
        argv += ["--test-samples", str(a.test_samples)]
    if source.gguf_file:
        argv += ["--gguf-file", source.gguf_file]
    return baseline_trainer.main(argv)


def run_worker(a) -> None:
    case = CASES[a.case]
    record = (peftkit_worker if a.worker == "peftkit" else baseline_worker)(case, a)
    Path(a.out).write_text(json.dumps(record))


# ---------------------------------------------------------------- machine and model FLOPs

def matmul_peak(dtype_name: str, n: int = 2048, repeats: int = 7) -> float:
    """Best GFLOP/s of an n×n matmul in this process's default thread pool."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * n**3 / best / 1e9


def model_shape(alias: str, task: str) -> dict:
    """Linear weights N, layers and hidden size of the model, built on the meta device (no weights)."""
    import torch
    import transformers

    from peftkit.models_registry import resolve_model

    source = resolve_model(alias)
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    config = transformers.AutoConfig.from_pretrained(source.path, **kwargs)
    auto = transformers.AutoModelForTokenClassification if task == "ner" \
        else transformers.AutoModelForCausalLM
    if task == "ner":
        config.num_labels = 9
    with torch.device("meta"):
        model = auto.from_config(config)
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return {"linear_params": n, "layers": config.num_hidden_layers, "hidden": config.hidden_size}


def flops_per_token(shape: dict, context: float, strategy: str) -> float:
    n, layers, d = shape["linear_params"], shape["layers"], shape["hidden"]
    if strategy == "full":
        return 6 * n + 12 * layers * d * context
    return 4 * n + 8 * layers * d * context


# ---------------------------------------------------------------- orchestration

def run_side(side: str, case: str, seed: int, a, logs: Path) -> dict:
    out = logs / f"{case}-{side}-{time.monotonic_ns()}.json"
    log = out.with_suffix(".log")
    causal = CASES[case]["task"] == "causal"
    train_n, test_n = (a.causal_train_samples, a.causal_test_samples) if causal \
        else (a.full_train_samples if CASES[case]["strategy"] == "full" else a.train_samples,
              a.test_samples)
    cmd = [sys.executable, __file__, "--worker", side, "--case", case, "--out", str(out),
           "--epochs", str(a.epochs), "--data-dir", str(a.data_dir), "--seed", str(seed)]
    if train_n:
        cmd += ["--train-samples", str(train_n)]
    if test_n:
        cmd += ["--test-samples", str(test_n)]
    env = {**os.environ, "PEFTKIT_DATA_DIR": str(a.data_dir), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise RuntimeError(f"{case} {side} failed (log {log}):\n" + "\n".join(tail))
    record = json.loads(out.read_text())
    record["load_average"] = os.getloadavg()[0]
    return record


def run_case(case: str, a, tmp: Path) -> dict:
    """Repeat i: seed + i on both sides, order A B, then B A, ..."""
    runs = {"peftkit": [], "baseline": []}
    for rep in range(a.repeats):
        order = ("peftkit", "baseline") if rep % 2 == 0 else ("baseline", "peftkit")
        for side in order:
            r = run_side(side, case, a.seed + rep, a, tmp)
            runs[side].append(r)
            print(f"{case} {side:8s} {r['precision']}: {r['tokens_per_second']:7.0f} tok/s, "
                  f"padding {100 * r['padding_fraction']:4.1f}%, {r['train_steps']} steps in "
                  f"{r['train_seconds']:.0f} s, {shown(r['metric'], r['metric_value'])}, "
                  f"load {r['load_average']:.1f}", flush=True)
    return runs


def shown(metric: str, value: float) -> str:
    """F1 in points (x100), a loss as it is."""
    return f"{metric} {100 * value:.2f}" if metric == "f1" else f"{metric} {value:.4f}"


def seeds(r: dict) -> str:
    scale = 100 if r["metric"] == "f1" else 1
    return ", ".join(f"{scale * x:.2f}" for x in r["metric_all"])


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def summarize(case: str, runs: dict, shape: dict, peaks: dict) -> dict:
    context = median(runs["baseline"], "attention_context")  # the same data on both sides
    fpt = flops_per_token(shape, context, CASES[case]["strategy"])
    out = {"case": case, "flops_per_token": fpt, "sides": {}}
    for side, rows in runs.items():
        tps = median(rows, "tokens_per_second")
        precision = rows[0]["precision"]
        out["sides"][side] = {
            "precision": precision, "runs": len(rows), "tokens_per_second": tps,
            "tokens_per_second_all": [round(r["tokens_per_second"], 1) for r in rows],
            "padding_fraction": median(rows, "padding_fraction"),
            "peak_memory_mb": median(rows, "peak_memory_mb"),
            "metric": rows[0]["metric"],  # mean over the seeds (repeat i trains with seed + i)
            "metric_value": statistics.mean(r["metric_value"] for r in rows),
            "metric_all": [round(r["metric_value"], 4) for r in rows],
            "train_seconds": median(rows, "train_seconds"), "train_steps": rows[0]["train_steps"],
            "real_tokens": rows[0]["real_tokens"],
            "mfu": tps * fpt / (peaks[precision] * 1e9)}
    a, b = out["sides"]["peftkit"], out["sides"]["baseline"]
    out["speedup"] = a["tokens_per_second"] / b["tokens_per_second"]
    pairs = zip(runs["peftkit"], runs["baseline"])
    out["speedup_per_pair"] = [round(p["tokens_per_second"] / q["tokens_per_second"], 2) for p, q in pairs]
    scale = 100 if a["metric"] == "f1" else 1  # F1 in points
    out["metric_delta"] = scale * (a["metric_value"] - b["metric_value"])
    # per seed: both sides trained with the same seed; the spread says how much of Δ is noise
    out["metric_delta_per_seed"] = [round(scale * (p["metric_value"] - q["metric_value"]), 2)
                                    for p, q in zip(runs["peftkit"], runs["baseline"])]
    return out


def alias(peaks: dict) -> None:
    """The precision names the sides report (fp32, bf16) for torch's dtype names."""
    for short, name in (("fp32", "float32"), ("bf16", "bfloat16")):
        if name in peaks:
            peaks[short] = peaks[name]


def table(summaries: list[dict], peaks: dict) -> str:
    lines = ["| case | side | precision | tokens/s: median (runs) | padding | peak RSS "
             "| test metric: mean (seeds) | MFU | steps |", "|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        for side in ("peftkit", "baseline"):
            r = s["sides"][side]
            lines.append(f"| {s['case']} | {side} | {r['precision']} | {r['tokens_per_second']:.0f} "
                         f"({', '.join(f'{x:.0f}' for x in r['tokens_per_second_all'])}) "
                         f"| {100 * r['padding_fraction']:.1f}% | {r['peak_memory_mb']:.0f} MB "
                         f"| {shown(r['metric'], r['metric_value'])} ({seeds(r)}) | {100 * r['mfu']:.1f}% "
                         f"| {r['train_steps']} |")
    lines += ["", "| case | peftkit / baseline tokens/s | per A/B pair | metric Δ peftkit − baseline "
              "| Δ per seed |", "|---|---|---|---|---|"]
    for s in summaries:
        unit = "F1 points" if s["sides"]["peftkit"]["metric"] == "f1" else "loss"
        lines.append(f"| {s['case']} | **{s['speedup']:.2f}×** | {s['speedup_per_pair']} "
                     f"| {s['metric_delta']:+.2f} {unit} | {s['metric_delta_per_seed']} |")
    shown_peaks = ", ".join(f"{k} {peaks[k]:.0f} GFLOP/s" for k in ("fp32", "bf16") if k in peaks)
    lines += ["", f"matmul peak (2048², {peaks['threads']} threads): {shown_peaks}"]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    p.add_argument("--repeats", type=int, default=2, help="runs per side and case")
    p.add_argument("--train-samples", type=int, default=None,
                   help="NER: training sentences, the first N (default: all 14,041)")
    p.add_argument("--test-samples", type=int, default=None, help="NER: test sentences (default: all)")
    p.add_argument("--full-train-samples", type=int, default=3000,
                   help="NER full fine-tuning: training sentences, the first N (the fp32 baseline "
                   "needs about 7 minutes a run for all 14,041 here)")
    p.add_argument("--causal-train-samples", type=int, default=128, help="E2E: training references")
    p.add_argument("--causal-test-samples", type=int, default=64, help="E2E: test references")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42, help="repeat i uses seed + i on both sides")
    p.add_argument("--data-dir", default=os.environ.get("PEFTKIT_DATA_DIR", str(DEFAULT_DATA)))
    p.add_argument("--json", help="also write the summaries here")
    p.add_argument("--markdown", help="also write the table here")
    p.add_argument("--worker", choices=["peftkit", "baseline"], help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return run_worker(a)

    import torch

    cases = [c for c in a.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    from peftkit.train import resolve_precision

    # bf16 only where peftkit trains in it: a 2048² bf16 matmul without AVX-512 BF16 / AMX takes
    # seconds, and 31 of them minutes on a busy machine, for a figure no side uses
    dtypes = ["float32"] + (["bfloat16"] if resolve_precision("auto") == "bf16" else [])
    peaks = {d: matmul_peak(d) for d in dtypes}
    peaks["threads"] = torch.get_num_threads()
    alias(peaks)
    print("matmul peak: " + ", ".join(f"{d} {peaks[d]:.0f} GFLOP/s" for d in dtypes), flush=True)
    summaries = []
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        for case in cases:
            try:
                runs = run_case(case, a, Path(tmp))
            except RuntimeError as exc:  # one broken case must not cost the others' measurements
                print(exc, file=sys.stderr)
                continue
            shape = model_shape(CASES[case]["model"], CASES[case]["task"])
            summaries.append(summarize(case, runs, shape, peaks))
    # the peak again at the end: the best of both is the machine's, not the moment's
    for d in dtypes:
        peaks[d] = max(peaks[d], matmul_peak(d))
    alias(peaks)
    for s in summaries:
        for r in s["sides"].values():
            r["mfu"] = r["tokens_per_second"] * s["flops_per_token"] / (peaks[r["precision"]] * 1e9)
    text = table(summaries, peaks)
    print("\n" + text)
    if a.markdown:
        Path(a.markdown).write_text(text + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps({"peaks": peaks, "cases": summaries}, indent=2))


if __name__ == "__main__":
    main()
