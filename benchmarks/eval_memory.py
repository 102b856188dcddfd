"""What an evaluation forward adds to a process's resident memory: one plan_check case's model
(real weights, the recipe's quantization and strategy), its test sentences in batches of 64, no
gradients; resident memory and the peak after each batch, and the time of all passes.

    PEFTKIT_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python benchmarks/eval_memory.py CASE [--passes N]
    MALLOC_MMAP_THRESHOLD_=1048576 ... python benchmarks/eval_memory.py CASE   # glibc: fixed threshold

Cases are benchmarks/plan_check.py's. The peak over the RSS once the model is built is what the
plan would have to predict for the evaluation phase (benchmarks/RESULTS.md#plan).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case")
    parser.add_argument("--passes", type=int, default=1, help="passes over the test sentences")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import plan_check
    import torch

    from peftkit import pipeline
    from peftkit.freed_memory import release_freed_memory
    from peftkit.recipe import load_recipe

    path, overrides = plan_check.CASES[args.case]
    parts = pipeline.build(load_recipe(path, overrides))
    model, _ = parts.fresh_model()
    model.eval()
    release_freed_memory()
    built = rss_mb()
    print(f"model built: RSS {built:,.0f} MB, peak so far {peak_mb():,.0f} MB")
    test = parts.encoded["test"]
    rows = [test[i] for i in range(len(test))]
    collate = parts.task.collator(parts.tokenizer, pad_to_multiple_of=8)  # the run's own
    start = time.perf_counter()
    for n in range(args.passes):
        for b in range(0, len(rows), args.batch):
            batch = collate(rows[b:b + args.batch])
            with torch.no_grad():
                model(**batch)
            print(f"pass {n} batch {tuple(batch['input_ids'].shape)}: RSS {rss_mb():,.0f} MB, "
                  f"peak {peak_mb():,.0f} MB (+{peak_mb() - built:,.0f})", flush=True)
    print(f"{args.passes} pass(es): {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
