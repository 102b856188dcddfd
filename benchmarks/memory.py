"""Peak training memory: LoRA against full fine-tuning, and the memory levers, same batch.

    PEFTKIT_DATA_DIR=../shared/data python benchmarks/memory.py
    python benchmarks/memory.py --cases smollm2 --variants full,lora --markdown out.md

Each variant is one peftkit run_recipe in its own process, a few optimizer steps on the same data
slice and batch. Figures per run:
  before: RSS when training starts (weights loaded, data encoded, strategy applied);
  training peak: the highest RSS sampled every 5 ms from the first to the last training step
  (weights, gradients, optimizer state, activations); on a GPU also torch.cuda.max_memory_allocated
  over training;
  anonymous: the same two for RssAnon (heap and tensors, without the mapped library and weight-file
  pages that RSS also counts, whose number depends on which code ran);
  process peak: ru_maxrss over the whole run (loading a GGUF file de-quantizes it, which can be
  the process's high-water mark before training starts).
At train begin the C allocator is asked to return freed memory to the system (glibc malloc_trim;
every run does it there, peftkit/freed_memory.py), so "before" does not count what loading and
the plan's probe freed. Even so, RSS before training
varied by ~700 MB between runs of the same settings (LoRA: 1,196, 1,889 and 1,921 MB), which is
why the anonymous figures are reported too.
What they do not show: allocator caching during training (freed memory the process keeps counts
as RSS), other processes' load (none is measured here, but a shared machine slows the runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = {  # the same data slice and batch for every variant of a case
    "smollm2": {"model": "smollm2-135m", "task": "causal-lm", "data": "e2e_nlg", "batch_size": 8,
                "max_length": 128, "lora_lr": 2e-3, "full_lr": 5e-5},
    "minilm": {"model": "minilm-l6", "task": "token-classification", "data": "conll2003",
               "batch_size": 32, "max_length": 128, "lora_lr": 2e-3, "full_lr": 1e-4},
}
VARIANTS = {  # name -> (strategy, train overrides)
    "full": ("full", {}),
    "lora": ("lora", {}),
    "full+checkpointing": ("full", {"gradient_checkpointing": True}),
    "lora+checkpointing": ("lora", {"gradient_checkpointing": True}),
    "full+adamw_8bit": ("full", {"optimizer": "adamw_8bit"}),
    "full+paged_adamw_8bit": ("full", {"optimizer": "paged_adamw_8bit"}),
    "full+half batch x2 accumulation": ("full", {"batch_size": 0.5, "gradient_accumulation_steps": 2}),
    "lora+half batch x2 accumulation": ("lora", {"batch_size": 0.5, "gradient_accumulation_steps": 2}),
}


def anon_bytes() -> int:
    """Anonymous resident memory (Linux RssAnon: heap and tensors; no mapped library or weight
    file pages, which RSS also counts and which vary with what code ran); 0 where unknown."""
    try:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("RssAnon:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return 0


class Sampler:
    """A TrainerCallback that samples this process's RSS (and RssAnon) from train begin to end."""

    def __init__(self):
        import psutil

        self.proc, self.peak, self.start, self.stop = psutil.Process(), 0, 0, threading.Event()
        self.anon_start = self.anon_peak = 0

    def callback(self):
        from transformers import TrainerCallback

        sampler = self

        class Sample(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                sampler.begin()

            def on_train_end(self, args, state, control, **kwargs):
                sampler.stop.set()

        return Sample()

    def begin(self):
        import torch

        from peftkit.freed_memory import release_freed_memory

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        release_freed_memory()
        self.start = self.peak = self.proc.memory_info().rss
        self.anon_start = self.anon_peak = anon_bytes()
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.anon_peak = max(self.anon_peak, anon_bytes())
            time.sleep(0.005)


def worker(a) -> dict:
    import resource

    import torch

    from peftkit.pipeline import run_recipe
    from peftkit.recipe import build_recipe

    case = CASES[a.case]
    strategy, train = VARIANTS[a.variant]
    train = dict(train)
    batch = max(1, int((a.batch or case["batch_size"]) * train.pop("batch_size", 1)))
    lora = strategy == "lora"
    data = {"name": case["data"], "max_length": case["max_length"], "max_train_samples": a.train_samples,
            "max_eval_samples": 8, "max_test_samples": 8}
    spec = {"task": case["task"], "eval": {"fail_on_collapse": False}}
    if case["task"] == "causal-lm":
        data.update(prompt_column="mr", target_column="ref")
        spec["eval"]["max_new_tokens"] = 1
    sampler = Sampler()
    with tempfile.TemporaryDirectory() as out:
        recipe = build_recipe({
            **spec, "model": {"name": case["model"]}, "data": data,
            "strategy": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.1} if lora else {"name": "full"},
            "train": {"max_steps": a.steps, "batch_size": batch, "eval_batch_size": batch,
                      "learning_rate": case["lora_lr" if lora else "full_lr"], "eval_every": "no",
                      "seed": 42, **train},
            "output": {"dir": out}})
        r = run_recipe(recipe, overwrite=True, callbacks=(sampler.callback(),))
    mb = 2 ** 20
    return {"case": a.case, "variant": a.variant, "batch": batch, "steps": r["train_steps"],
            "precision": r["precision"], "before_mb": sampler.start / mb, "train_peak_mb": sampler.peak / mb,
            "before_anon_mb": sampler.anon_start / mb, "train_peak_anon_mb": sampler.anon_peak / mb,
            "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cuda_peak_mb": torch.cuda.max_memory_allocated() / mb if torch.cuda.is_available() else None,
            "train_seconds": r["train_seconds"]}


def run_one(case: str, variant: str, a) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--worker", "--case", case, "--variant", variant,
               "--out", out.name, "--steps", str(a.steps), "--train-samples", str(a.train_samples)]
        if a.batch:
            cmd += ["--batch", str(a.batch)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(HERE.parent)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{case} {variant} failed:\n" + "\n".join(proc.stderr.splitlines()[-12:]))
        return json.loads(Path(out.name).read_text())


def table(rows: list[dict]) -> str:
    lines = ["| case | variant | batch | precision | RSS before training | training peak RSS "
             "| training peak / full's | anonymous: before, peak | anonymous peak / full's "
             "| process peak RSS | GPU peak |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    full = {r["case"]: r for r in rows if r["variant"] == "full"}
    for r in rows:
        base = full.get(r["case"])
        ratio = f"{r['train_peak_mb'] / base['train_peak_mb']:.2f}×" if base else "–"
        anon = f"{r['train_peak_anon_mb'] / base['train_peak_anon_mb']:.2f}×" \
            if base and base["train_peak_anon_mb"] else "–"
        gpu = f"{r['cuda_peak_mb']:.0f} MB" if r["cuda_peak_mb"] is not None else "–"
        lines.append(f"| {r['case']} | {r['variant']} | {r['batch']} | {r['precision']} | {r['before_mb']:.0f} MB "
                     f"| {r['train_peak_mb']:.0f} MB | {ratio} | {r['before_anon_mb']:.0f} MB, "
                     f"{r['train_peak_anon_mb']:.0f} MB | {anon} | {r['process_peak_mb']:.0f} MB | {gpu} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    p.add_argument("--train-samples", type=int, default=64)
    p.add_argument("--batch", type=int, help="batch size (default: the case's)")
    p.add_argument("--markdown", help="also write the table here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        Path(a.out).write_text(json.dumps(worker(a)))
        return
    rows = []
    for case in a.cases.split(","):
        for variant in a.variants.split(","):
            try:
                rows.append(run_one(case, variant, a))
            except RuntimeError as exc:  # one broken variant must not cost the others
                print(exc, file=sys.stderr)
                continue
            r = rows[-1]
            print(f"{case} {variant}: before {r['before_mb']:.0f} MB, training peak {r['train_peak_mb']:.0f} MB, "
                  f"anonymous {r['before_anon_mb']:.0f} -> {r['train_peak_anon_mb']:.0f} MB, "
                  f"process peak {r['process_peak_mb']:.0f} MB", flush=True)
    text = table(rows)
    print("\n" + text)
    if a.markdown:
        Path(a.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
