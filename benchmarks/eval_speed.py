"""Evaluation speed: the split read in its own order against longest first (peftkit/eval_order.py).

    PEFTKIT_DATA_DIR=../shared/data python benchmarks/eval_speed.py \
        [--recipes conll2003/lora.yaml,sst2/lora.yaml] [--repeats 2]

Each recipe's test split (all of it unless --max-test-samples), evaluated by the run's own Trainer
(`build_trainer`, the recipe's eval_batch_size) on the recipe's model with its strategy freshly
attached (untrained: speed and padding do not depend on the weights, and the metrics must be equal
between the two orders whatever they are). Printed per recipe and order: seconds of
`trainer.evaluate` (best of --repeats), token slots (rows × width over all batches) against real
tokens, and the ratio to the split's own order. Run it alone: two processes on two cores halve
each other.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RECIPES = HERE.parent / "recipes"
TIMING = ("loss", "runtime", "samples_per_second", "steps_per_second", "preparation_time")


def measure(trainer, test, repeats: int) -> dict:
    """Best-of-repeats seconds, padded slots and the metrics of one evaluation order."""
    batches = list(trainer.get_eval_dataloader(test).batch_sampler)
    lengths = [len(ids) for ids in test["input_ids"]]
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    seconds, metrics = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        metrics = trainer.evaluate(test, metric_key_prefix="test")
        seconds.append(time.perf_counter() - start)
    return {"seconds": min(seconds), "slots": slots, "tokens": sum(lengths), "examples": len(test),
            "metrics": {k: v for k, v in metrics.items() if not k.endswith(TIMING)}}


def one_recipe(path: Path, a) -> list[dict]:
    from peftkit.pipeline import build
    from peftkit.recipe import load_recipe
    from peftkit.train import build_trainer
    from peftkit.env import set_threads

    overrides = ["data.max_train_samples=64", "train.learning_rate=1e-3", "train.precision=fp32"]
    if a.max_test_samples:
        overrides.append(f"data.max_test_samples={a.max_test_samples}")
    recipe = load_recipe(path, overrides)
    set_threads(recipe)
    parts = build(recipe)
    model, _ = parts.fresh_model()
    out = Path(a.out) / path.parent.name / path.stem
    trainer = build_trainer(parts.recipe, model, parts.tokenizer, parts.task, parts.encoded,
                            parts.labels, out, "fp32", [])
    test = parts.encoded["test"]
    sorted_eval = trainer._get_eval_sampler
    rows = []
    for order in ("own order", "longest first"):
        trainer._get_eval_sampler = (sorted_eval if order == "longest first" else
                                     lambda dataset: torch.utils.data.SequentialSampler(dataset))
        rows.append({"recipe": f"{path.parent.name}/{path.stem}", "order": order,
                     **measure(trainer, test, a.repeats)})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default="conll2003/lora.yaml,sst2/lora.yaml")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-test-samples", type=int, default=0, help="0: the whole test split")
    p.add_argument("--out", default="/tmp/peftkit-eval-speed")
    a = p.parse_args(argv)
    print("| recipe | order | examples | slots / real tokens | seconds | × own order | same metrics |")
    print("|---|---|--:|--:|--:|--:|---|")
    for name in a.recipes.split(","):
        own, first = one_recipe(RECIPES / name, a)
        for row in (own, first):
            same = all(abs(v - own["metrics"][k]) <= 1e-9 for k, v in row["metrics"].items())
            print(f"| {row['recipe']} | {row['order']} | {row['examples']} | "
                  f"{row['slots'] / row['tokens']:.2f} | {row['seconds']:.1f} | "
                  f"{own['seconds'] / row['seconds']:.2f} | {'yes' if same else 'NO'} |")
        print(f"  metrics: {own['metrics']}", flush=True)


if __name__ == "__main__":
    main()
