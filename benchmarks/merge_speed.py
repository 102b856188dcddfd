"""Inference time of a LoRA run before and after `peftkit merge`, on the same inputs.

    python benchmarks/merge_speed.py RUN_DIR [--examples 512] [--repeats 5] [--threads N]

The unmerged model is the run as `peftkit predict` loads it (base + peft LoRA layers); the merged
one is the folder `peftkit merge` writes, loaded with plain transformers. Both run forward passes
over the run's own test split (tokenized and padded as in evaluation, batches of
train.eval_batch_size), interleaved repeat by repeat so that machine noise hits both alike.
Prints the median time per pass for each, the ratio, and the largest logit difference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def batches(loaded, recipe, limit: int):
    from peftkit.predict import encode_split

    data = encode_split(loaded, recipe)["test"]
    data = data.select(range(min(limit, len(data))))
    collate = loaded.task.collator(loaded.tokenizer)
    size = recipe.train.eval_batch_size
    keep = [c for c in data.column_names if c in ("input_ids", "attention_mask", "token_type_ids", "labels")]
    rows = data.select_columns(keep)
    out = []
    for start in range(0, len(rows), size):
        batch = collate([rows[i] for i in range(start, min(start + size, len(rows)))])
        batch.pop("labels", None)
        out.append(dict(batch))
    return out


def one_pass(model, data) -> tuple[float, list]:
    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        logits = [model(**b).logits for b in data]
    return time.perf_counter() - start, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--examples", type=int, default=512, help="test examples used (default 512)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per model (default 5)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    from peftkit.export import merge_run
    from peftkit.predict import eval_recipe, load_for_inference

    if args.threads:
        torch.set_num_threads(args.threads)
    unmerged = load_for_inference(args.run_dir)
    if unmerged.recipe.strategy_name != "lora":
        raise SystemExit(f"{args.run_dir} is a {unmerged.recipe.strategy_name} run; give a LoRA run")
    recipe = eval_recipe(unmerged.recipe)
    data = batches(unmerged, recipe, args.examples)
    with tempfile.TemporaryDirectory() as tmp:
        merged = load_for_inference(merge_run(args.run_dir, f"{tmp}/merged"))
    n = sum(len(b["input_ids"]) for b in data)
    tokens = sum(int(b["attention_mask"].sum()) for b in data)

    _, ref = one_pass(unmerged.model, data)       # warm-up, and the outputs to compare
    _, got = one_pass(merged.model, data)
    diff = max((a - b).abs().max().item() for a, b in zip(ref, got))
    times = {"unmerged": [], "merged": []}
    for _ in range(args.repeats):
        times["unmerged"].append(one_pass(unmerged.model, data)[0])
        times["merged"].append(one_pass(merged.model, data)[0])

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"run: {args.run_dir} ({unmerged.recipe.model.name}, lora r={unmerged.recipe.strategy.r})")
    print(f"inputs: {n} test examples, {tokens} tokens, {len(data)} batches of up to "
          f"{recipe.train.eval_batch_size}; {args.repeats} timed passes each, "
          f"{torch.get_num_threads()} threads")
    for k in ("unmerged", "merged"):
        print(f"{k:>9}: {med[k]:.3f} s per pass (median; min {min(times[k]):.3f}), "
              f"{n / med[k]:.0f} examples/s")
    print(f"    ratio: unmerged / merged = {med['unmerged'] / med['merged']:.2f}x")
    print(f"max |logit difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
