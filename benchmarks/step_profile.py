"""One training step of MiniLM token classification, timed and profiled: full fine-tuning against
LoRA variants, the model alone (no Trainer, no data pipeline) (issue 19, parts 2 and 3).

    python benchmarks/step_profile.py [--threads 2] [--variants full,lora_all_nodrop,lora_all_nodrop_peft]
                                      [--rounds 12] [--profile lora_all]

Each variant: the packaged MiniLM with a 9-label head, random token ids (batch 32 x 40 tokens,
CoNLL-2003's packed rows are about this size), forward + backward + AdamW step. The variants' steps
are interleaved (one step of each per round, --rounds rounds after 3 warm-up rounds; the median
per variant), so a slower or faster stretch of the machine falls on all of them alike. LoRA
variants run as peftkit's LoRA strategy runs them (the update added inside one matmul,
peftkit/strategies/lora_addmm.py); `_peft` variants keep peft's own forward. MFU = model FLOPs (6 x matmul parameters x tokens for full
fine-tuning, 4x where the frozen base gets no weight gradients, plus attention) over the measured
2048^2 fp32 matmul rate at the same thread count. --profile prints torch.profiler's table of the
named variant's ops (self CPU time), which is where a step's time goes. Run it alone.
"""

from __future__ import annotations

import argparse
import time

import torch
from throughput import matmul_peak  # this folder: the throughput table's 2048^2 fp32 peak

ALL_LINEAR = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
VARIANTS = {  # name -> (LoRA r, target modules, lora dropout); None: full fine-tuning
    "full": None,
    "lora_qv": (8, ["query", "value"], 0.1),
    "lora_all": (4, ALL_LINEAR, 0.1),
    "lora_all_nodrop": (4, ALL_LINEAR, 0.0),
    "lora_all_nodrop_peft": (4, ALL_LINEAR, 0.0),
}
BATCH, TOKENS, LABELS = 32, 40, 9


def build(name: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForTokenClassification, logging

    from peftkit.models_registry import resolve_alias

    logging.set_verbosity_error()  # the head is new: the load report says so at length
    model = AutoModelForTokenClassification.from_pretrained(resolve_alias("minilm-l6").path,
                                                            num_labels=LABELS)
    if VARIANTS[name] is None:
        return model
    from peftkit.strategies.lora_addmm import add_inside_matmul

    r, targets, dropout = VARIANTS[name]
    model = get_peft_model(model, LoraConfig(task_type="TOKEN_CLS", r=r, lora_alpha=2 * r,
                                             lora_dropout=dropout, target_modules=targets))
    if not name.endswith("_peft"):
        add_inside_matmul(model)
    return model


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (BATCH, TOKENS), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, LABELS, (BATCH, TOKENS), generator=g)}


def stepper(model):
    inputs = batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        model(**inputs).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def median_steps(steppers: dict, rounds: int, warmup: int = 3) -> dict:
    """Median step seconds per variant, one step of each variant per round."""
    times = {name: [] for name in steppers}
    for i in range(warmup + rounds):
        for name, step in steppers.items():
            start = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def model_flops(model, name: str) -> float:
    cfg = model.config
    per_layer = 4 * cfg.hidden_size ** 2 + 2 * cfg.hidden_size * cfg.intermediate_size
    matmul = cfg.num_hidden_layers * per_layer
    attention = cfg.num_hidden_layers * 2 * TOKENS * cfg.hidden_size  # QK^T and AV per token
    passes = 6 if VARIANTS[name] is None else 4  # frozen base: no weight gradients
    return passes * (matmul + attention) * BATCH * TOKENS


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--profile", default="", help="a variant whose ops to profile")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    peak = matmul_peak("float32") * 1e9
    print(f"fp32 2048^2 matmul: {peak / 1e9:.0f} GFLOP/s on {a.threads} threads")
    models = {name: build(name).train() for name in a.variants.split(",")}
    rows = median_steps({name: stepper(model) for name, model in models.items()}, a.rounds)
    for name, seconds in rows.items():
        mfu = model_flops(models[name], name) / seconds / peak
        print(f"{name:20s} step {seconds * 1000:7.0f} ms  {BATCH * TOKENS / seconds:6.0f} tokens/s  "
              f"MFU {mfu:5.1%}" + (f"  {rows['full'] / seconds:.2f}x full" if "full" in rows else ""),
              flush=True)
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        step = stepper(build(a.profile).train())
        step(), step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
