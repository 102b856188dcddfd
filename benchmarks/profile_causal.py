"""Where a causal-LM LoRA training step spends its time: torch.profiler tables, model loss vs peftkit's.

    PEFTKIT_DATA_DIR=../shared/data python benchmarks/profile_causal.py --steps 4 --rows 15

SmolLM2-135M + LoRA r8 (peft's default targets), E2E references in batches of 8, fp32, the same
batches on both sides: (A) the model's own loss (full 49,152-word logits at every position,
upcast to fp32), (B) peftkit's completion-only chunked loss (peftkit/tasks/completion_loss.py).
Each side: 1 warm-up step, then --steps profiled steps of forward + backward + AdamW step.
Prints each side's ms per step and its top operators by self CPU time (docs/speed.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def setup(a):
    sys.path.insert(0, str(HERE))
    import baseline_trainer

    from peftkit.models_registry import resolve_model

    source = resolve_model("smollm2-135m")
    argv = ["--task", "causal", "--model", source.path, "--gguf-file", source.gguf_file,
            "--data", str(Path(a.data_dir) / "e2e_nlg"), "--train-samples", str(8 * (a.steps + 1)),
            "--test-samples", "8", "--max-length", "128"]
    model, tokenizer, train, _, collator, _ = baseline_trainer.build(baseline_trainer.parse(argv))
    from peft import LoraConfig, TaskType, get_peft_model

    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=16,
                                             lora_dropout=0.1))
    rows = [train[i] for i in range(len(train))]
    batches = [collator(rows[i:i + 8]) for i in range(0, len(rows), 8)]
    return model, batches


def step_fn(model, side: str):
    from peftkit.tasks.completion_loss import CompletionLoss

    ours = CompletionLoss()

    def step(batch, optimizer):
        count = (batch["labels"][:, 1:] != -100).sum()
        if side == "model":
            loss = model(**batch, num_items_in_batch=count).loss
        else:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            loss = ours(model, model, inputs, batch["labels"], count)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    return step


def profile_side(model, batches, side: str, rows: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    step = step_fn(model, side)
    step(batches[0], optimizer)  # warm-up (and the completion loss's one-time check)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        losses = [step(b, optimizer) for b in batches[1:]]
    ms = 1000 * (time.perf_counter() - start) / len(batches[1:])
    print(f"\n### {side} loss: {ms:.0f} ms/step (profiled), losses {[round(x, 3) for x in losses]}\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4, help="profiled steps per side")
    p.add_argument("--rows", type=int, default=15, help="operators shown per table")
    p.add_argument("--side", choices=["model", "peftkit", "both"], default="both")
    p.add_argument("--data-dir", default=os.environ.get("PEFTKIT_DATA_DIR", str(HERE.parent.parent / "shared" / "data")))
    a = p.parse_args(argv)
    import torch

    print(f"torch threads: {torch.get_num_threads()}")
    for side in (["model", "peftkit"] if a.side == "both" else [a.side]):
        torch.manual_seed(0)
        model, batches = setup(a)
        profile_side(model, batches, side, a.rows)


if __name__ == "__main__":
    main()
